//! Logs: journald with structured fields `JOB`, `RUN_ID`, `BACKUP_ID` (no `F_` prefix) when the
//! journal is there, stderr otherwise (docs/design.md §9).

use crate::catalogue::LogTarget;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Where the logs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Journal,
    Stderr,
}

/// Installs the global subscriber. `level` is an EnvFilter directive (RUST_LOG wins if set).
/// Fields must be logged in lower case (`job`, `run_id`, `backup_id`): the journal upper-cases them.
pub fn init(target: LogTarget, level: &str) -> LogSink {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = match target {
        LogTarget::Stderr => None,
        LogTarget::Journal | LogTarget::Auto => match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("bdc-backupd".into()),
            ),
            Err(err) => {
                if target == LogTarget::Journal {
                    eprintln!(
                        "bdc-backupd: journald requested but not reachable ({err}); logging to stderr"
                    );
                }
                None
            }
        },
    };
    match journal {
        Some(layer) => {
            let _ = Registry::default().with(filter).with(layer).try_init();
            LogSink::Journal
        }
        None => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false);
            let _ = Registry::default().with(filter).with(fmt).try_init();
            LogSink::Stderr
        }
    }
}
