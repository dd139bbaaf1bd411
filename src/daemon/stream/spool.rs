//! The stream's spool: completed files pushed through the archiver's path (history files first)
//! and deleted once durable, the growing `.partial` shipped to the sync repositories, and the
//! `.partial` objects a complete segment replaced removed.

use super::*;

impl Generation {
    /// Pushes every completed file of the spool (history files first), deleting each once
    /// durable in every sync repository.
    pub(super) async fn drain(&mut self, p: &Prepared) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let names = spool_names(&self.spool);
        for w in push_order(names.iter().map(String::as_str)) {
            if self.over() {
                return;
            }
            let path = self.spool.join(&w.name);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(job = %self.job, "cannot open {}: {e}", path.display());
                    continue;
                }
            };
            match crate::daemon::wal::push_file(&self.shared, &w.name, p.cluster, file).await {
                Ok((_sha, _warnings)) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(job = %self.job, "cannot remove {}: {e}", path.display());
                    }
                    let _ = std::fs::File::open(&self.spool).and_then(|d| d.sync_all());
                    if w.kind == WalKind::History {
                        self.durable_histories.insert(w.timeline);
                    }
                    if w.kind == WalKind::Segment {
                        let end = {
                            let per_log = 0x1_0000_0000u64 / p.segment_size;
                            (u64::from(w.log) * per_log + u64::from(w.seg) + 1) * p.segment_size
                        };
                        self.note_durable(end, &w.name);
                        self.drop_partials(p, &w).await;
                    }
                    tracing::debug!(job = %self.job, wal = %w, "streamed segment archived");
                    if self.push_failing.take().is_some() {
                        self.retry_at = None;
                        self.hub().update(|s| s.error = None);
                    }
                }
                Err(e) => {
                    tracing::error!(job = %self.job, wal = %w, error = %e, "cannot archive a streamed file; kept in the spool, retried in 5 s");
                    let msg = format!("cannot archive {w}: {e}");
                    self.push_failing = Some(msg.clone());
                    self.retry_at = Some(Instant::now() + PUSH_RETRY);
                    self.hub().update(|s| s.error = Some(msg));
                    return;
                }
            }
        }
    }

    pub(super) fn note_durable(&mut self, lsn: u64, what: &str) {
        if self.durable_lsn.is_none_or(|d| lsn > d) {
            self.durable_lsn = Some(lsn);
            let (l, what) = (format_lsn(lsn), what.to_string());
            let now = self.shared.clock.now();
            self.hub().update(|s| {
                s.durable_lsn = Some(l);
                s.durable_file = Some(what);
                s.durable_at = Some(now);
            });
        }
    }

    /// The segment `w` is archived complete: its shipped `.partial` copies go.
    pub(super) async fn drop_partials(&mut self, p: &Prepared, w: &WalName) {
        let Some(partial) = partial_of(w) else { return };
        let Ok(setup) = crate::daemon::wal::sync_setup(&self.shared) else {
            return;
        };
        for repo in &setup.sync {
            if let Err(e) = remove_partials(repo, &p.cluster, &partial, None, STORE_TIMEOUT).await {
                tracing::warn!(job = %self.job, repository = %repo.name, error = %e, "cannot delete {partial}");
            }
        }
        if self
            .shipped
            .as_ref()
            .is_some_and(|(n, _)| *n == partial.name)
        {
            self.shipped = None;
        }
    }

    /// Ships the written prefix of the spool's newest `.partial` to every sync repository when
    /// it grew since the last time: its zero padding is neither read, hashed nor sealed, and the
    /// frames sealed by earlier ships are reused ([`PartialSealer`]; zstd at [`PARTIAL_LEVEL`]:
    /// it is replaced within seconds).
    pub(super) async fn ship_partial(&mut self, p: &Prepared) {
        let names = spool_names(&self.spool);
        let Some(partial) = names
            .iter()
            .filter_map(|n| match classify(n) {
                SpoolFile::Partial(w) => Some(w),
                _ => None,
            })
            .max_by_key(|w| (w.timeline, w.position()))
        else {
            return;
        };
        let path = self.spool.join(&partial.name);
        let Ok(file) = std::fs::File::open(&path) else {
            return;
        };
        let setup = match crate::daemon::wal::sync_setup(&self.shared) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "cannot ship {partial}");
                return;
            }
        };
        let shipped_len = self
            .shipped
            .as_ref()
            .filter(|(n, _)| *n == partial.name)
            .map(|(_, len)| *len);
        let sealer = self
            .sealer
            .take()
            .filter(|s| *s.name() == partial)
            .unwrap_or_else(|| PartialSealer::new(&partial, PARTIAL_LEVEL));
        let zstd = setup.settings().compression.algorithm == Compression::Zstd;
        let (name, cluster, s2) = (partial.clone(), p.cluster, setup.clone());
        let sealed = tokio::task::spawn_blocking(move || {
            let mut sealer = sealer;
            let sealed = (|| {
                let spooled = SpoolPartial::open(file, &name, &cluster)?;
                let len = spooled.written_len()?;
                if shipped_len.is_some_and(|s| len <= s) {
                    return Ok(None);
                }
                if !zstd {
                    // gzip is one stream: the whole prefix each time.
                    let (_, plain) = spooled.read_written(0, len)?;
                    let mut settings = s2.settings().clone();
                    settings.compression.level = PARTIAL_LEVEL;
                    let sealed = seal(&plain, &name, &settings)?;
                    return Ok(Some((sealed, plain.len() as u64)));
                }
                // Only the WAL past the frames sealed by earlier ships is read, hashed and
                // compressed.
                let (from, tail) = spooled.read_written(sealer.sealed_len(), len)?;
                if from < sealer.sealed_len() {
                    sealer.reset();
                }
                // A frame is kept only a page below the write position (never one with a page
                // being written).
                let keep_below = (from + tail.len() as u64).saturating_sub(spooled.page_size());
                let sealed = sealer.seal(&tail, keep_below, &s2.settings().recipients)?;
                let filled = sealed.size;
                Ok::<_, crate::wal::push::PushError>(Some((sealed, filled)))
            })();
            (sealer, sealed)
        })
        .await;
        let (sealed, filled) = match sealed {
            Ok((sealer, r)) => {
                self.sealer = Some(sealer);
                match r {
                    Ok(Some(s)) => s,
                    // Not grown since the last ship.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(job = %self.job, error = %crate::error::error_chain(&e), "cannot ship {partial}");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "cannot ship {partial}");
                return;
            }
        };
        let now = self.shared.clock.now();
        let results = futures::future::join_all(setup.sync.iter().map(|repo| {
            let sealed = &sealed;
            async move {
                ensure_archive_info(repo, &cluster, now, STORE_TIMEOUT).await?;
                store_partial(repo, &cluster, sealed, STORE_TIMEOUT).await
            }
        }))
        .await;
        let errors: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| crate::error::error_chain(e)))
            .collect();
        if !errors.is_empty() {
            tracing::warn!(job = %self.job, "cannot ship {partial}: {}", errors.join("; "));
            self.hub().update(|s| {
                s.error = Some(format!("cannot ship {partial}: {}", errors.join("; ")))
            });
            return;
        }
        tracing::debug!(job = %self.job, wal = %partial, filled, object = sealed.object.len(), "shipped the partial segment");
        self.shipped = Some((partial.name.clone(), filled));
        let per_log = 0x1_0000_0000u64 / p.segment_size;
        let start = (u64::from(partial.log) * per_log + u64::from(partial.seg)) * p.segment_size;
        self.note_durable(start + filled, &partial.name);
        self.hub().update(|s| {
            s.partial_shipped = Some(partial.name.clone());
            s.partial_shipped_at = Some(now);
        });
    }

    /// At a timeline switch pg_receivewal leaves the old timeline's segment unfinished as a
    /// `.partial` and follows the new timeline. Such a `.partial` (of a timeline older than the
    /// spool's newest) is removed once the newest timeline's `.history` is durable in every sync
    /// repository: a restore follows that timeline, whose first segment carries the old one's WAL
    /// up to the switch. Its copies already shipped stay in the repositories (like a promoted
    /// standby's `.partial`); `wal-fetch` never serves them (an older timeline).
    pub(super) async fn clean_replaced_partials(&mut self, p: &Prepared) {
        let files: Vec<SpoolFile> = spool_names(&self.spool)
            .iter()
            .map(|n| classify(n))
            .collect();
        let newest = files
            .iter()
            .filter_map(|f| match f {
                SpoolFile::Partial(w) | SpoolFile::Complete(w) => Some(w.timeline),
                SpoolFile::Other => None,
            })
            .max();
        let Some(newest) = newest else { return };
        let replaced: Vec<&WalName> = files
            .iter()
            .filter_map(|f| match f {
                SpoolFile::Partial(w) if w.timeline < newest => Some(w),
                _ => None,
            })
            .collect();
        if replaced.is_empty() || !self.history_durable(p, newest).await {
            return;
        }
        for w in replaced {
            let path = self.spool.join(&w.name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(job = %self.job, wal = %w, timeline = newest, "removed the replaced timeline's .partial from the spool ({newest:08X}.history is archived)");
                    if self.shipped.as_ref().is_some_and(|(n, _)| *n == w.name) {
                        self.shipped = None;
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %self.job, "cannot remove {}: {e}", path.display())
                }
            }
        }
        let _ = std::fs::File::open(&self.spool).and_then(|d| d.sync_all());
    }

    /// Whether `<timeline>.history` is durable in every sync repository (pushed from the spool
    /// by this generation, else looked up once).
    pub(super) async fn history_durable(&mut self, p: &Prepared, timeline: u32) -> bool {
        if self.durable_histories.contains(&timeline) {
            return true;
        }
        let Some(name) = WalName::parse(&format!("{timeline:08X}.history")) else {
            return false;
        };
        let Ok(setup) = crate::daemon::wal::sync_setup(&self.shared) else {
            return false;
        };
        for repo in &setup.sync {
            match stored_hashes(repo, &p.cluster, &name, STORE_TIMEOUT).await {
                Ok(h) if !h.is_empty() => {}
                Ok(_) => return false,
                Err(e) => {
                    tracing::warn!(job = %self.job, repository = %repo.name, error = %e, "cannot look for {name}");
                    return false;
                }
            }
        }
        self.durable_histories.insert(timeline);
        true
    }
}

/// The bare file names of the spool.
pub(super) fn spool_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
