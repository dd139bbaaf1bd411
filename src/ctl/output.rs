//! Human-readable output of the ctl: tables and one-line events.

use crate::model::{BackupRow, Progress, RunRecord, StatusReport};
use crate::protocol::Event;
use crate::units::human_bytes;
use chrono::{DateTime, Utc};
use std::fmt::Write;

pub(super) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn duration(run: &RunRecord) -> String {
    match run.finished_at {
        Some(end) => {
            let secs = (end - run.started_at).num_milliseconds().max(0) as f64 / 1000.0;
            if secs < 120.0 {
                format!("{secs:.1}s")
            } else {
                format!("{:.1}m", secs / 60.0)
            }
        }
        None => "-".into(),
    }
}

/// A table with left-aligned columns.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                let _ = write!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

/// The WAL archiving lines of `status` for a postgres-wal job.
fn wal_lines(
    job: &str,
    w: &crate::model::WalStatus,
    local: &dyn Fn(DateTime<Utc>) -> String,
) -> String {
    let mut out = format!(
        "{job}: last archived {} at {} ({} files archived)",
        w.last_archived.as_deref().unwrap_or("none"),
        w.last_archived_at.map(local).unwrap_or_else(|| "-".into()),
        w.archived_count
    );
    if let Some(cur) = &w.current_wal {
        let _ = write!(
            out,
            "; current {cur}, lag {} segments / {} s",
            w.lag_segments.map_or("?".into(), |n| n.to_string()),
            w.lag_seconds.map_or("?".into(), |n| n.to_string())
        );
    }
    if let Some(failed) = w.failed_count.filter(|n| *n > 0) {
        let _ = write!(
            out,
            "\n{job}: PostgreSQL archive failures: {failed} (last {} at {})",
            w.last_failed_wal.as_deref().unwrap_or("?"),
            w.last_failed_at.map(local).unwrap_or_else(|| "?".into())
        );
    }
    if let Some(e) = &w.cluster_error {
        let _ = write!(out, "\n{job}: cluster not reachable for WAL figures: {e}");
    }
    if let Some(st) = &w.stream {
        let _ = write!(
            out,
            "\n{job}: streaming {} on slot {}: flush lag {} bytes, {} restarts, durable to {}{}",
            st.state,
            st.slot,
            st.flush_lag_bytes.map_or("?".into(), |n| n.to_string()),
            st.restarts,
            st.durable_lsn.as_deref().unwrap_or("-"),
            st.error
                .as_deref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
    }
    for b in &w.backlog {
        let _ = write!(
            out,
            "\n{job}: async `{}`: {} pending{}{}",
            b.repository,
            b.pending,
            b.lag_seconds
                .map(|s| format!(", oldest {s} s"))
                .unwrap_or_default(),
            b.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    out
}

/// The `status` line of a job's replica with copies pending and an error.
fn replica_line(
    job: &str,
    repository: &str,
    rep: &crate::model::ReplicaReport,
    local: &dyn Fn(DateTime<Utc>) -> String,
) -> String {
    let err = rep.last_error.as_deref().unwrap_or_default();
    if rep.permanent {
        let next = rep
            .next_attempt_at
            .map(|t| format!("; next attempt {}", local(t)))
            .unwrap_or_default();
        format!(
            "{job}: replica `{repository}`: {} pending, PERMANENT error (retried with backoff until fixed{next}): {err}",
            rep.pending
        )
    } else {
        format!(
            "{job}: replica `{repository}`: {} pending, last error: {err}",
            rep.pending
        )
    }
}

pub fn status(report: &StatusReport) -> String {
    let tz: chrono_tz::Tz = report.timezone.parse().unwrap_or(chrono_tz::UTC);
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
    let mut out = format!(
        "bdc-backupd {} (pid {}), up since {}; timezone {}; catalogue {}\n\n",
        report.version,
        report.pid,
        local(report.started_at),
        report.timezone,
        report.catalogue
    );
    let rows: Vec<Vec<String>> = report
        .jobs
        .iter()
        .map(|j| {
            // A wal job archives without runs: its last archived segment is its last result.
            let archived = j
                .wal
                .as_ref()
                .and_then(|w| Some((w.last_archived.as_deref()?, w.last_archived_at?)));
            let last = match (&j.last_run, archived) {
                (Some(r), _) => format!(
                    "{} {}",
                    r.status,
                    local(r.finished_at.unwrap_or(r.started_at))
                ),
                (None, Some((_, at))) => format!("archived {}", local(at)),
                (None, None) => "never".into(),
            };
            let next = match (j.next_run, j.next_type) {
                (Some(t), Some(ty)) => format!("{} ({ty})", local(t)),
                (Some(t), None) => local(t),
                _ => "-".into(),
            };
            let repos = j
                .repositories
                .iter()
                .map(|r| {
                    if let (None, Some((segment, _))) = (&r.last_backup_id, archived) {
                        let behind = j
                            .wal
                            .iter()
                            .flat_map(|w| &w.backlog)
                            .find(|b| b.repository == r.repository && b.pending > 0)
                            .map(|b| format!(" ({} pending)", b.pending))
                            .unwrap_or_default();
                        return format!("{}: {segment}{behind}", r.repository);
                    }
                    let pending = match &r.replica {
                        Some(rep) if rep.pending > 0 => format!(" ({} pending)", rep.pending),
                        _ => String::new(),
                    };
                    format!(
                        "{}: {}{pending}",
                        r.repository,
                        r.last_backup_id.as_deref().unwrap_or("none")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let state = if j.running.is_some() {
                "running"
            } else if j.stale {
                "STALE"
            } else {
                "ok"
            };
            vec![
                j.name.clone(),
                j.kind.to_string(),
                state.into(),
                last,
                next,
                repos,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "JOB",
            "KIND",
            "STATE",
            "LAST RUN",
            "NEXT RUN",
            "LAST BACKUP",
        ],
        &rows,
    ));
    for j in &report.jobs {
        if let Some((run, progress)) = &j.running {
            let _ = writeln!(
                out,
                "\n{}: run {} {}",
                j.name,
                run.id,
                progress_line(progress)
            );
        }
        for r in &j.repositories {
            if let Some(rep) = &r.replica
                && rep.pending > 0
                && rep.last_error.is_some()
            {
                let _ = writeln!(
                    out,
                    "\n{}",
                    replica_line(&j.name, &r.repository, rep, &local)
                );
            }
        }
        if let Some(w) = &j.wal {
            let _ = writeln!(out, "\n{}", wal_lines(&j.name, w, &local));
        }
        if let Some(v) = &j.verification {
            let _ = writeln!(
                out,
                "\n{}",
                super::verify::status_lines(&j.name, v, Utc::now(), &local)
            );
        }
        if !j.retention.is_empty() {
            let passes: Vec<String> = j
                .retention
                .iter()
                .map(|p| {
                    format!(
                        "{} {} ({} kept, {} deleted{})",
                        p.repository,
                        local(p.at),
                        p.kept,
                        p.deleted,
                        p.error
                            .as_deref()
                            .map(|e| format!(", error: {e}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(out, "\n{}: last retention: {}", j.name, passes.join("; "));
        }
        if let Some(run) = &j.last_run
            && let Some(err) = &run.error
            && !run.status.is_success()
        {
            let _ = writeln!(
                out,
                "\n{}: last run {} {}: {}",
                j.name, run.id, run.status, err
            );
        }
    }
    if !report.objectives.is_empty() {
        out.push('\n');
        out.push_str(&super::alerts_output::objectives(&report.objectives));
    }
    out
}

pub fn runs(runs: &[RunRecord]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.job.clone(),
                r.trigger.to_string(),
                r.backup_type.map(|t| t.to_string()).unwrap_or_default(),
                r.status.to_string(),
                time(r.started_at),
                duration(r),
                human_bytes(r.bytes_read),
                human_bytes(r.bytes_stored),
                r.backup_id.clone().unwrap_or_default(),
                r.error
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "JOB", "TRIGGER", "TYPE", "STATUS", "STARTED", "TOOK", "READ", "STORED",
            "BACKUP", "ERROR",
        ],
        &rows,
    )
}

pub fn backups(rows: &[BackupRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.job.clone(),
                b.backup_id.clone(),
                b.repository.clone(),
                b.backup_type.to_string(),
                time(b.stopped_at),
                human_bytes(b.bytes_stored),
                b.summary.clone(),
            ]
        })
        .collect();
    table(
        &[
            "JOB",
            "BACKUP",
            "REPOSITORY",
            "TYPE",
            "FINISHED",
            "STORED",
            "CONTENTS",
        ],
        &rows,
    )
}

/// `retention`: one table per job and repository (KEEP/DELETE with the rules).
pub fn retention(reports: &[crate::retention::RetentionReport]) -> String {
    if reports.is_empty() {
        return "no job with a retention policy matches\n".to_string();
    }
    reports
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn progress_line(p: &Progress) -> String {
    let ratio = if p.bytes_read > 0 {
        format!(
            " ({:.0}%)",
            100.0 * p.bytes_stored as f64 / p.bytes_read as f64
        )
    } else {
        String::new()
    };
    format!(
        "{}: {} read, {} stored{ratio}",
        p.phase,
        human_bytes(p.bytes_read),
        human_bytes(p.bytes_stored)
    )
}

pub fn finished(run: &RunRecord) -> String {
    let mut out = format!(
        "run {} of {} {} in {}: {} read, {} stored",
        run.id,
        run.job,
        run.status,
        duration(run),
        human_bytes(run.bytes_read),
        human_bytes(run.bytes_stored)
    );
    if let Some(id) = &run.backup_id
        && run.status.is_success()
    {
        let _ = write!(out, ", backup {id}");
    }
    out.push('\n');
    if let Some(err) = &run.error {
        let _ = writeln!(out, "error: {err}");
    }
    out
}

pub fn event(e: &Event) -> String {
    let now = time(Utc::now());
    match e {
        Event::RunStarted { run } => format!(
            "{now} run {} of {} started ({})",
            run.id, run.job, run.trigger
        ),
        Event::Progress {
            run_id,
            job,
            progress,
        } => format!("{now} run {run_id} of {job}: {}", progress_line(progress)),
        Event::RunFinished { run } => format!("{now} {}", finished(run).trim_end()),
        Event::Skipped { job, reason } => format!("{now} {job}: skipped: {reason}"),
        Event::Reloaded { jobs } => format!("{now} catalogue reloaded ({jobs} jobs)"),
        Event::Log { level, message } => format!("{now} {level}: {message}"),
        #[allow(unreachable_patterns)]
        other => format!("{now} {other:?}"),
    }
}

#[cfg(test)]
mod wal_tests {
    use super::*;
    use crate::model::{WalBacklog, WalStatus};

    #[test]
    fn replica_line_says_permanent() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T03:00:00Z")
            .unwrap()
            .to_utc();
        let mut rep = crate::model::ReplicaReport {
            pending: 2,
            lag_seconds: Some(60),
            last_success_at: None,
            last_error: Some("bucket `b` does not exist".into()),
            last_error_at: None,
            permanent: true,
            next_attempt_at: Some(at),
        };
        let local = |t: DateTime<Utc>| t.to_rfc3339();
        let line = replica_line("db", "offsite", &rep, &local);
        assert_eq!(
            line,
            "db: replica `offsite`: 2 pending, PERMANENT error (retried with backoff until fixed; next attempt 2026-11-26T03:00:00+00:00): bucket `b` does not exist"
        );
        rep.permanent = false;
        let line = replica_line("db", "offsite", &rep, &local);
        assert_eq!(
            line,
            "db: replica `offsite`: 2 pending, last error: bucket `b` does not exist"
        );
    }

    #[test]
    fn wal_status_lines() {
        let w = WalStatus {
            last_archived: Some("000000010000000000000042".into()),
            archived_count: 66,
            current_wal: Some("000000010000000000000045".into()),
            lag_segments: Some(2),
            lag_seconds: Some(90),
            failed_count: Some(3),
            last_failed_wal: Some("000000010000000000000043".into()),
            backlog: vec![WalBacklog {
                repository: "offsite".into(),
                pending: 4,
                lag_seconds: Some(600),
                last_error: Some("timeout".into()),
            }],
            ..WalStatus::default()
        };
        let text = wal_lines("wal", &w, &|t: DateTime<Utc>| t.to_rfc3339());
        for want in [
            "last archived 000000010000000000000042",
            "(66 files archived)",
            "current 000000010000000000000045, lag 2 segments / 90 s",
            "archive failures: 3 (last 000000010000000000000043",
            "async `offsite`: 4 pending, oldest 600 s, last error: timeout",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
    }

    /// A wal job archives without runs: LAST RUN and LAST BACKUP show its last archived segment
    /// (not "never" / "none" while segments are being archived).
    #[test]
    fn wal_job_row_shows_the_last_archived_segment() {
        use crate::model::{JobKindName, JobStatus, RepositoryStatus, StatusReport};
        let at = "2026-12-01T19:47:57Z".parse::<DateTime<Utc>>().unwrap();
        let repo = |name: &str| RepositoryStatus {
            repository: name.into(),
            last_backup_id: None,
            last_backup_at: None,
            replica: None,
        };
        let report = StatusReport {
            version: "0".into(),
            pid: 1,
            started_at: at,
            catalogue: "c.toml".into(),
            timezone: "UTC".into(),
            max_concurrent_runs: 2,
            jobs: vec![JobStatus {
                name: "wal".into(),
                kind: JobKindName::PostgresWal,
                next_run: None,
                next_type: None,
                last_run: None,
                last_success: None,
                running: None,
                repositories: vec![repo("local"), repo("offsite")],
                stale: false,
                retention: vec![],
                verification: None,
                wal: Some(WalStatus {
                    last_archived: Some("00000001000000000000000A".into()),
                    last_archived_at: Some(at),
                    archived_count: 10,
                    backlog: vec![WalBacklog {
                        repository: "offsite".into(),
                        pending: 3,
                        lag_seconds: Some(5),
                        last_error: None,
                    }],
                    ..WalStatus::default()
                }),
            }],
            objectives: vec![],
        };
        let text = status(&report);
        let row = text.lines().find(|l| l.starts_with("wal ")).unwrap();
        assert!(row.contains("archived 2026-12-01 19:47 UTC"), "{row}");
        assert!(row.contains("local: 00000001000000000000000A"), "{row}");
        assert!(
            row.contains("offsite: 00000001000000000000000A (3 pending)"),
            "{row}"
        );
        assert!(!row.contains("never") && !row.contains("none"), "{row}");
    }
}
