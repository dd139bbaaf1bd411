//! The integrity reads of one verify run in one repository: every object, or the next sample
//! buckets within the budget, each backup's manifest read once for the per-file checks.

use super::*;

/// The integrity reads of one repository: all objects (`full`, a `--job`/`--backup` run, or no
/// state DB) or the next sample buckets within the budget. One check per backup read (and one
/// for archived WAL), plus one `sample` line saying which buckets were read.
pub(super) async fn integrity_reads(
    r: &VerifyRun<'_>,
    spec: &VerifyJob,
    h: &Holdings,
    jobs: &[&Job],
    identities: Option<&Identities>,
    out: &mut VerifyOutcome,
) {
    let repo = h.repository.name.as_str();
    let items = items_of(h, jobs, r.scope.backup.as_deref());
    let sampling = spec.integrity == IntegrityMode::Sample
        && r.scope.job.is_none()
        && r.scope.backup.is_none()
        && r.state.is_some();
    if let Some(state) = r.state {
        // A `--backup` run sees only part of the jobs' objects: it makes its chain's objects
        // known but forgets nothing (and leaves the WAL to the WAL job's rows).
        let partial = r.scope.backup.is_some();
        let known: Vec<KnownObject> = items
            .iter()
            .filter(|i| !partial || i.backup_id.is_some())
            .map(|i| KnownObject {
                repository: repo.to_string(),
                key: i.key.clone(),
                job: i.job.clone(),
                bucket: i.bucket(),
            })
            .collect();
        let names: Vec<String> = if partial {
            Vec::new()
        } else {
            jobs.iter().map(|j| j.name.clone()).collect()
        };
        if let Err(e) = state.sync_objects(repo, &names, &known).await {
            tracing::warn!(repository = repo, error = %e, "state DB: cannot record the objects to verify");
        }
    }
    let started = Instant::now();
    let now = Utc::now();
    let mut cursor = None;
    if sampling && let Some(state) = r.state {
        cursor = Some(
            state
                .sample_cursor(&r.job.name, repo)
                .await
                .ok()
                .flatten()
                .unwrap_or(SampleCursor {
                    next_bucket: 0,
                    cycles: 0,
                    cycle_started_at: now,
                }),
        );
    }
    // Group the items by bucket; a sample run reads whole buckets from the cursor on, never past
    // the end of a cycle, and starts no new bucket once the budget is spent.
    let mut by_bucket: BTreeMap<u32, Vec<&Item>> = BTreeMap::new();
    for i in &items {
        by_bucket.entry(i.bucket()).or_default().push(i);
    }
    let first_bucket = cursor
        .as_ref()
        .map_or(0, |c| c.next_bucket.min(BUCKETS - 1));
    let mut results: Vec<(&Item, integrity::Read)> = Vec::new();
    // Per backup: the manifest's files and blocks per object (or why they are unknown).
    // Keyed by (job, backup id): ids are unique per job only.
    let mut spans: HashMap<(String, String), Result<crate::verify::content::Spans, String>> =
        HashMap::new();
    let mut bucket = first_bucket;
    let budget = spec.budget;
    while bucket < BUCKETS {
        if sampling && bucket > first_bucket && started.elapsed() >= budget {
            break;
        }
        if r.cancel.is_cancelled() {
            out.cancelled = true;
            return;
        }
        if let Some(list) = by_bucket.get(&bucket) {
            (r.phase)(&format!(
                "integrity: repository {repo}, bucket {} of {BUCKETS}",
                bucket + 1
            ));
            // Two objects at a time: reads overlap with hashing and decryption.
            let store = &h.repository.store;
            let mut reads: Vec<(&Item, integrity::Read)> = Vec::with_capacity(list.len());
            for pair in list.chunks(2) {
                if let Some(ids) = identities {
                    for item in pair {
                        load_spans(h, item, ids, &mut spans).await;
                    }
                }
                let span_of = |item: &Item| -> Option<&[crate::verify::content::Span]> {
                    let backup = item.backup_id.clone()?;
                    let all = spans.get(&(item.job.clone(), backup))?.as_ref().ok()?;
                    Some(all.get(&item.key).map_or(&[][..], Vec::as_slice))
                };
                match pair {
                    [a, b] => {
                        let (ra, rb) = tokio::join!(
                            integrity::read(store, a, identities, span_of(a)),
                            integrity::read(store, b, identities, span_of(b))
                        );
                        reads.push((a, ra));
                        reads.push((b, rb));
                    }
                    [a] => reads.push((a, integrity::read(store, a, identities, span_of(a)).await)),
                    _ => {}
                }
            }
            // The bucket's reads recorded in one transaction (one write per object made the
            // state DB the bound of a full run).
            if let Some(state) = r.state {
                let done: Vec<(&str, &str)> = reads
                    .iter()
                    .map(|(item, read)| {
                        let result = if read.error.is_some() { "fail" } else { "pass" };
                        (item.key.as_str(), result)
                    })
                    .collect();
                if let Err(e) = state.objects_read(repo, &done, Utc::now()).await {
                    tracing::warn!(repository = repo, error = %e, "state DB: cannot record the bucket's object reads");
                }
            }
            for (item, read) in reads {
                r.progress
                    .bytes_read
                    .fetch_add(read.bytes, Ordering::Relaxed);
                results.push((item, read));
            }
        }
        bucket += 1;
    }
    if let (Some(state), Some(mut c)) = (r.state, cursor) {
        let detail;
        if bucket >= BUCKETS {
            c.cycles += 1;
            detail = format!(
                "buckets {}–{BUCKETS} of {BUCKETS}: cycle {} complete (started {})",
                first_bucket + 1,
                c.cycles,
                c.cycle_started_at.format("%Y-%m-%d %H:%M UTC")
            );
            c.next_bucket = 0;
            c.cycle_started_at = Utc::now();
        } else {
            detail = format!(
                "buckets {}–{bucket} of {BUCKETS} (the budget of {} is spent; the next run goes on with bucket {})",
                first_bucket + 1,
                humantime::format_duration(Duration::from_secs(budget.as_secs())),
                bucket + 1
            );
            c.next_bucket = bucket;
        }
        if let Err(e) = state.set_sample_cursor(&r.job.name, repo, &c).await {
            tracing::warn!(repository = repo, error = %e, "state DB: cannot record the sample cursor");
        }
        let mut line = check(
            &r.job.name,
            Some(repo),
            None,
            CheckKind::Integrity,
            format!("sample of repository {repo}"),
            CheckResult::Pass,
            format!("{detail}; {} objects read", results.len()),
        );
        line.seconds = started.elapsed().as_secs_f64();
        line.bytes = results.iter().map(|(_, x)| x.bytes).sum();
        out.checks.push(line);
    }
    // One check per backup (and per job's archived WAL), in the order the objects came.
    let mut groups: Vec<(GroupKey, Vec<&(&Item, integrity::Read)>)> = Vec::new();
    for res in &results {
        let k = (res.0.job.clone(), res.0.backup_id.clone());
        match groups.iter_mut().find(|(g, _)| g == &k) {
            Some((_, v)) => v.push(res),
            None => groups.push((k, vec![res])),
        }
    }
    for ((job, backup), reads) in groups {
        let failures: Vec<&String> = reads.iter().filter_map(|(_, x)| x.error.as_ref()).collect();
        let bytes: u64 = reads.iter().map(|(_, x)| x.bytes).sum();
        let content = reads.iter().all(|(_, x)| x.content_checked);
        let files: u64 = reads.iter().map(|(_, x)| x.files_checked).sum();
        let per_file = match backup
            .as_ref()
            .and_then(|b| spans.get(&(job.clone(), b.clone())))
        {
            Some(Ok(_)) => format!("; {files} files or blocks match the manifest"),
            Some(Err(e)) => format!("; per-file hashes not checked ({e})"),
            None => String::new(),
        };
        let name = match (&backup, &r.scope.backup) {
            (Some(id), _) => format!("objects of backup {id}"),
            (None, Some(id)) => format!("archived WAL backup {id} needs to be consistent"),
            (None, None) => "archived WAL".to_string(),
        };
        let (result, detail) = if failures.is_empty() {
            let how = if content {
                "stored hashes and decrypted content match"
            } else {
                "stored hashes match (content not checked: no identity-file)"
            };
            (
                CheckResult::Pass,
                format!(
                    "{} objects, {}: {how}{per_file}",
                    reads.len(),
                    crate::units::human_bytes(bytes)
                ),
            )
        } else {
            let mut parts: Vec<String> = failures.iter().take(5).map(|s| s.to_string()).collect();
            if failures.len() > 5 {
                parts.push(format!("and {} more", failures.len() - 5));
            }
            (
                CheckResult::Fail,
                format!(
                    "{} of {} objects are bad: {}",
                    failures.len(),
                    reads.len(),
                    parts.join("; ")
                ),
            )
        };
        let mut c = check(
            &job,
            Some(repo),
            backup.as_deref(),
            CheckKind::Integrity,
            name,
            result,
            detail,
        );
        c.bytes = bytes;
        out.checks.push(c);
    }
}

/// Reads the manifest of `item`'s backup once (snapshot kinds), for the per-file checks.
async fn load_spans(
    h: &Holdings,
    item: &Item,
    ids: &Identities,
    spans: &mut HashMap<(String, String), Result<crate::verify::content::Spans, String>>,
) {
    let Some(backup) = &item.backup_id else {
        return;
    };
    let cache_key = (item.job.clone(), backup.clone());
    if spans.contains_key(&cache_key) {
        return;
    }
    let Some(record) = h
        .records
        .get(&item.job)
        .and_then(|list| list.iter().find(|r| &r.id == backup))
    else {
        return;
    };
    match crate::verify::content::spans_of(&h.repository.store, record, ids).await {
        Ok(Some(s)) => {
            spans.insert(cache_key, Ok(s));
        }
        Ok(None) => {}
        Err(e) => {
            spans.insert(cache_key, Err(e));
        }
    }
}
