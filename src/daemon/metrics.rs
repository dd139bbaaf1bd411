//! Serving the metrics (docs/metrics.md): the scrape (facts from the state DB, rendered by
//! `crate::metrics`), the `metrics-listen` HTTP listener (`GET /metrics`, 404 elsewhere), the
//! `metrics-file` written every minute (temp file + fsync + rename), and the WAL lag asked of the
//! cluster in the background so a scrape never waits for PostgreSQL.

use super::core::Shared;
use crate::catalogue::Catalogue;
use crate::model::JobKindName;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the metrics file is rewritten and the WAL lag asked of the cluster.
const INTERVAL: Duration = Duration::from_secs(60);
/// Scrapes served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;

/// What the metrics keep between scrapes.
#[derive(Default)]
pub struct MetricsState {
    /// Per WAL job: completed segments not yet archived, as last asked of the cluster.
    wal_lag: Mutex<BTreeMap<String, u64>>,
    /// The cluster's `archive_timeout` as last asked (a WAL job's default `max-age`).
    archive_timeout: Mutex<Option<Duration>>,
}

/// The Prometheus text now.
pub async fn scrape(shared: &Shared) -> Result<String, String> {
    let catalogue = shared.catalogue();
    let names: Vec<&str> = catalogue.jobs.iter().map(|j| j.name.as_str()).collect();
    let facts = shared
        .state
        .metrics_facts(&names)
        .await
        .map_err(|e| e.to_string())?;
    let now = shared.clock.now();
    // The same health evaluation as `status` and the alerts (daemon/alerts.rs, health.rs).
    let mut health_facts = super::alerts::facts(shared, &catalogue, now).await;
    health_facts.archive_timeout = shared
        .metrics
        .archive_timeout
        .lock()
        .map(|t| *t)
        .unwrap_or_default();
    let deliveries = shared
        .state
        .delivery_counts()
        .await
        .map_err(|e| e.to_string())?;
    let extras = crate::metrics::Extras {
        wal_lag_segments: shared
            .metrics
            .wal_lag
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        wal_stream: match (super::wal::wal_job(&catalogue), shared.wal.stream.status()) {
            (Some(job), Some(st)) => [(job.name.clone(), (st.flush_lag_bytes, st.restarts))]
                .into_iter()
                .collect(),
            _ => Default::default(),
        },
        health: crate::health::jobs(&catalogue, &health_facts, now),
        objectives: crate::health::objectives(&catalogue, &health_facts, now),
        deliveries,
    };
    crate::metrics::render(&catalogue, &facts, &extras).map_err(|e| e.to_string())
}

/// Binds `metrics-listen` (an error if it cannot) and starts the listener and the minute loop.
pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    let catalogue = shared.catalogue();
    if let Some(addr) = catalogue.daemon.metrics_listen {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("metrics-listen {addr}: cannot listen: {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(address = %addr, "serving metrics on /metrics");
        tokio::spawn(serve(shared.clone(), listener));
    }
    tokio::spawn(minute_loop(shared.clone()));
    Ok(())
}

async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shared.shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(60), conn).await {
                tracing::debug!(error = %e, "metrics connection timed out");
            }
        });
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; the metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match scrape(shared).await {
        Ok(text) => {
            let mut r = plain(StatusCode::OK, text);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n"))
        }
    }
}

/// Every minute (and at start): the WAL lag, then the metrics file.
async fn minute_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let catalogue = shared.catalogue();
        refresh_wal_lag(&shared, &catalogue).await;
        if let Some(path) = &catalogue.daemon.metrics_file {
            let written = match scrape(&shared).await {
                Ok(text) => write_atomically(path, text.as_bytes()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::error!(file = %path.display(), error = %e, "cannot write the metrics file");
            }
        }
    }
}

/// Writes `bytes` to a temp file beside `path` (0644: node_exporter reads it), syncs it and renames
/// it over `path`, so a reader sees the old or the new file, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Asks the cluster where it writes now, for each WAL job (5 s at most each).
async fn refresh_wal_lag(shared: &Shared, catalogue: &Catalogue) {
    let Some(pg) = &catalogue.postgres else {
        return;
    };
    let mut lags = BTreeMap::new();
    let mut archive_timeout = None;
    for job in catalogue
        .jobs
        .iter()
        .filter(|j| j.kind() == JobKindName::PostgresWal)
    {
        let last = shared.state.last_wal(&job.name).await.ok().flatten();
        let url = job.connection.as_deref().unwrap_or(&pg.url);
        let asked = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c =
                crate::postgres::connection::PgControl::connect(url, pg.password_file.as_deref())
                    .await?;
            let r = c.wal_archiver_status().await;
            let timeout = c.archive_timeout_seconds().await.ok();
            c.close().await;
            r.map(|r| (r, timeout))
        })
        .await;
        if let Ok(Ok((_, Some(t)))) = &asked
            && *t > 0
        {
            archive_timeout = Some(Duration::from_secs(t.unsigned_abs()));
        }
        if let Ok(Ok(((current, ..), _))) = asked
            && let Some(last) = last
            && let (Some(cur), Some(last_name)) = (
                crate::wal::WalName::parse(&current),
                crate::wal::WalName::parse(&last.name),
            )
        {
            lags.insert(
                job.name.clone(),
                super::wal::lag_segments(&last_name, &cur, last.size),
            );
        }
    }
    if let Ok(mut m) = shared.metrics.wal_lag.lock() {
        *m = lags;
    }
    if let Ok(mut t) = shared.metrics.archive_timeout.lock() {
        *t = archive_timeout;
    }
}
