//! `bdc-backupctl verify` and `show`: a verify run through the daemon (or, with `--wait` and no
//! daemon, in the ctl itself, recording nothing), and one run in full with every check.
//! Exit codes: 0 every check passed, 1 any failed, 2 usage errors or no daemon.

use super::exit::{out, outln};
use super::{CtlError, CtlResult, Ctx, print_json, unexpected};
use crate::model::{CheckRecord, RunDetail, RunRecord, RunStatus, VerificationStatus};
use crate::protocol::{Event, Request, Response};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;
use std::io::IsTerminal;

/// `verify [--job J] [--integrity-only | --drill-only] [--backup ID] [--wait]`.
pub(super) async fn verify(
    ctx: &Ctx,
    job: Option<String>,
    integrity_only: bool,
    drill_only: bool,
    backup: Option<String>,
    wait: bool,
) -> CtlResult {
    let json = ctx.args.json;
    let request = Request::Verify {
        job: job.clone(),
        integrity_only,
        drill_only,
        backup: backup.clone(),
        wait,
    };
    let mut client = match ctx.client().await {
        Ok(c) => c,
        // No daemon: `--wait` runs here and prints the same report (nothing recorded).
        Err(err) if err.code == 2 && wait && ctx.catalogue_path().is_some() => {
            eprintln!(
                "bdc-backupctl: {}; verifying here, without the daemon (nothing is recorded)",
                err.message
            );
            let scope = crate::verify::run::Scope {
                job,
                integrity: !drill_only,
                drills: !integrity_only,
                backup,
            };
            return offline(ctx, scope).await;
        }
        Err(err) => return Err(err),
    };
    let run = match client.request(&request).await {
        Ok(Response::RunStarted { run }) => run,
        Ok(other) => return Err(unexpected(other)),
        // An unknown job, or one that is not a backup job, is a usage error (exit 2).
        Err(crate::control::client::ClientError::Daemon(body))
            if body.code == crate::protocol::ErrorCode::NotFound
                || body.message.contains("is a verify job") =>
        {
            return Err(CtlError::usage(body.message));
        }
        Err(e) => return Err(e.into()),
    };
    if !wait {
        return if json {
            print_json(&run)
        } else {
            outln(&format!("run {} of {} started", run.id, run.job))
        };
    }
    if !json {
        eprintln!("verify run {} of {} started", run.id, run.job);
    }
    let tty = std::io::stderr().is_terminal() && !json;
    let done = loop {
        let Some(event) = client.next_event().await? else {
            return Err(CtlError::usage(
                "the daemon closed the connection before the run ended",
            ));
        };
        match &event {
            Event::Progress {
                run_id, progress, ..
            } if *run_id == run.id && !json => {
                let line = super::output::progress_line(progress);
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
            }
            Event::RunFinished { run: done } if done.id == run.id => break done.clone(),
            _ => {}
        }
    };
    if tty {
        eprintln!();
    }
    let detail = match client.request(&Request::Show { run_id: done.id }).await? {
        Response::RunDetail(d) => d,
        other => return Err(unexpected(other)),
    };
    print_detail(ctx, &detail)?;
    verdict(Some(&done), &detail.checks)
}

/// The verify run in the ctl itself.
async fn offline(ctx: &Ctx, scope: crate::verify::run::Scope) -> CtlResult {
    let catalogue = ctx.load_catalogue()?;
    let job = crate::verify::run::choose_job(&catalogue, scope.job.as_deref())
        .map_err(CtlError::usage)?;
    let progress = crate::pipeline::ProgressCounter::default();
    let tty = std::io::stderr().is_terminal() && !ctx.args.json;
    let phase = |p: &str| {
        if tty {
            eprint!("\r\x1b[2K{p}");
        }
    };
    let outcome = crate::verify::run::run(crate::verify::run::VerifyRun {
        catalogue: &catalogue,
        job: &job,
        scope: &scope,
        run_id: 0,
        state: None,
        recorder: None,
        cancel: tokio_util::sync::CancellationToken::new(),
        phase: &phase,
        progress: &progress,
    })
    .await;
    if tty {
        eprintln!();
    }
    let now = Utc::now();
    let checks: Vec<CheckRecord> = outcome.checks.iter().map(|c| record_of(c, now)).collect();
    let detail = RunDetail {
        run: None,
        checks,
        provenance: None,
    };
    print_detail(ctx, &detail)?;
    verdict(None, &detail.checks)
}

fn record_of(c: &crate::verify::check::Check, at: DateTime<Utc>) -> CheckRecord {
    CheckRecord {
        id: 0,
        run_id: 0,
        job: c.job.clone(),
        repository: c.repository.clone(),
        backup_id: c.backup_id.clone(),
        kind: c.kind.as_str().to_string(),
        name: c.name.clone(),
        result: c.result.as_str().to_string(),
        detail: c.detail.clone(),
        seconds: c.seconds,
        bytes: c.bytes,
        at,
    }
}

/// Exit 0 when the run succeeded and no check failed, else 1 (the report says why).
fn verdict(run: Option<&RunRecord>, checks: &[CheckRecord]) -> CtlResult {
    let failed = checks.iter().any(|c| c.result == "fail");
    let run_ok = run.is_none_or(|r| r.status == RunStatus::Succeeded);
    if failed || !run_ok {
        Err(CtlError {
            code: 1,
            message: String::new(),
        })
    } else {
        Ok(())
    }
}

/// `show RUN_ID`.
pub(super) async fn show(ctx: &Ctx, run_id: i64) -> CtlResult {
    match ctx.request(Request::Show { run_id }).await? {
        Response::RunDetail(detail) => print_detail(ctx, &detail),
        other => Err(unexpected(other)),
    }
}

fn print_detail(ctx: &Ctx, detail: &RunDetail) -> CtlResult {
    if ctx.args.json {
        print_json(detail)
    } else {
        out(&report(detail))
    }
}

/// Where the run's backup came from: one indented line per recorded fact (`  host db1`).
fn provenance_lines(p: &crate::model::Provenance) -> String {
    let mut out = String::new();
    if let Some(h) = p.host.as_deref().filter(|h| !h.is_empty()) {
        let _ = writeln!(out, "  host {h}");
    }
    if let Some(v) = &p.bdc_backup_version {
        let _ = writeln!(out, "  bdc-backup {v}");
    }
    if let Some(v) = p.postgres_version {
        // server_version_num: 150004 is 15.4 (10 and later: major * 10000 + minor).
        let _ = writeln!(out, "  PostgreSQL {}.{} ({v})", v / 10000, v % 10000);
    }
    if let Some(s) = &p.system_identifier {
        let _ = writeln!(out, "  system identifier {s}");
    }
    match (&p.application_version, &p.application_version_error) {
        (Some(a), _) => {
            let _ = writeln!(out, "  application version {a}");
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "  application version unknown: {e}");
        }
        (None, None) => {}
    }
    out
}

/// One run in full, for people.
pub fn report(detail: &RunDetail) -> String {
    let mut out = String::new();
    match &detail.run {
        Some(run) => {
            let _ = writeln!(
                out,
                "run {} of {} ({}, {}): {}",
                run.id, run.job, run.kind, run.trigger, run.status
            );
            let _ = writeln!(
                out,
                "  started {}, finished {}",
                run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                run.finished_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|| "-".into())
            );
            if let Some(id) = &run.backup_id {
                let _ = writeln!(out, "  backup {id}");
            }
            if run.bytes_read > 0 || run.bytes_stored > 0 {
                let _ = writeln!(
                    out,
                    "  read {}, stored {}",
                    crate::units::human_bytes(run.bytes_read),
                    crate::units::human_bytes(run.bytes_stored)
                );
            }
            if let Some(e) = &run.error {
                let label = if run.status.is_success() {
                    "note"
                } else {
                    "error"
                };
                let _ = writeln!(out, "  {label}: {e}");
            }
        }
        None => {
            let _ = writeln!(out, "verify (in the ctl, not recorded)");
        }
    }
    if let Some(p) = &detail.provenance {
        out.push_str(&provenance_lines(p));
    }
    if !detail.checks.is_empty() {
        let pass = detail.checks.iter().filter(|c| c.result == "pass").count();
        let fail = detail.checks.iter().filter(|c| c.result == "fail").count();
        let skipped = detail.checks.len() - pass - fail;
        let _ = writeln!(
            out,
            "\n{} checks: {pass} passed, {fail} failed, {skipped} skipped",
            detail.checks.len()
        );
        for c in &detail.checks {
            let mark = match c.result.as_str() {
                "pass" => "ok  ",
                "fail" => "FAIL",
                _ => "skip",
            };
            let place = match (&c.repository, &c.backup_id) {
                (Some(r), Some(b)) => format!(" [{r} {b}]"),
                (Some(r), None) => format!(" [{r}]"),
                _ => String::new(),
            };
            let timing = if c.seconds > 0.0 {
                format!(" ({:.1} s)", c.seconds)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {mark} {} {}: {}{place}{timing}\n       {}",
                c.job, c.kind, c.name, c.detail
            );
        }
    }
    out
}

/// The `status` lines of one backup job's verification.
pub fn status_lines(
    job: &str,
    v: &VerificationStatus,
    now: DateTime<Utc>,
    local: &dyn Fn(DateTime<Utc>) -> String,
) -> String {
    let drill = match &v.last_drill {
        Some(d) => format!(
            "last drill {} {} (restore {:.1} s)",
            local(d.at),
            d.result,
            d.seconds
        ),
        None => "no drill yet".to_string(),
    };
    let proven = if v.newest_backup_proven { "yes" } else { "no" };
    let coverage = match (v.objects, v.all_read_since) {
        (0, _) => "no object read by integrity checks yet".to_string(),
        (_, Some(since)) => {
            let days = (now - since).num_days().max(0) + 1;
            let unit = if days == 1 { "day" } else { "days" };
            format!("every object of `{job}` read within the last {days} {unit}")
        }
        (n, None) => format!(
            "{} of {n} objects of `{job}` not read yet in the sample cycle",
            v.never_read
        ),
    };
    format!("{job}: {drill}; newest backup proven by a drill: {proven}; {coverage}")
}
