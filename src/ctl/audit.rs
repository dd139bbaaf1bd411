//! `metrics`, `audit [--since T] [--job J] [--verify]`, and the audit report of every restore:
//! handed to the daemon when it answers, else appended to the offline file it imports at its next
//! start (docs/metrics.md "Audit trail").

use super::exit::{out, outln};
use super::{CtlError, CtlResult, Ctx, RestoreCommand, print_json, unexpected};
use crate::model::{AuditChainReport, AuditRow};
use crate::protocol::{Request, Response};
use chrono::{DateTime, Utc};

/// `metrics`: the daemon's Prometheus text, as served on `metrics-listen`.
pub async fn metrics(ctx: &Ctx) -> CtlResult {
    match ctx.request(Request::Metrics).await? {
        Response::Metrics { text } => {
            if ctx.args.json {
                print_json(&serde_json::json!({ "text": text }))
            } else {
                out(&text)
            }
        }
        other => Err(unexpected(other)),
    }
}

/// `--since`: a date alone is its start; otherwise what `--time` accepts.
fn parse_since(text: &str, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, CtlError> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return Ok(crate::timeparse::in_zone(
            date.and_hms_opt(0, 0, 0).unwrap_or_default(),
            tz,
        ));
    }
    crate::timeparse::parse_time(text, tz).map_err(|e| CtlError::usage(format!("--since: {e}")))
}

/// `audit`: through the daemon; when it does not answer, from the state DB opened read-only.
pub async fn audit(
    ctx: &Ctx,
    since: Option<String>,
    job: Option<String>,
    limit: u32,
    verify: bool,
) -> CtlResult {
    let catalogue = ctx.catalogue_path().and_then(|_| ctx.load_catalogue().ok());
    let tz = catalogue
        .as_ref()
        .map_or(chrono_tz::UTC, |c| c.daemon.timezone);
    let since = since.as_deref().map(|s| parse_since(s, tz)).transpose()?;
    let asked = ctx
        .request(Request::Audit {
            since,
            job: job.clone(),
            limit: Some(limit),
            verify,
        })
        .await;
    let (rows, truncated, chain) = match asked {
        Ok(Response::Audit {
            rows,
            truncated,
            chain,
        }) => (rows, truncated, chain),
        Ok(other) => return Err(unexpected(other)),
        Err(err) if err.code == 2 && catalogue.is_some() => {
            let catalogue = catalogue.as_ref().expect("checked");
            let path = &catalogue.daemon.state_db;
            eprintln!(
                "bdc-backupctl: {}; reading the state DB {} directly",
                err.message,
                path.display()
            );
            let db = crate::state::StateDb::open_read_only(path)
                .await
                .map_err(|e| CtlError::failed(e.to_string()))?;
            let rows = db
                .audit_rows(since, job.as_deref(), limit)
                .await
                .map_err(|e| CtlError::failed(e.to_string()))?;
            let chain = if verify {
                Some(
                    db.verify_audit()
                        .await
                        .map_err(|e| CtlError::failed(e.to_string()))?,
                )
            } else {
                None
            };
            (rows, false, chain)
        }
        Err(err) => return Err(err),
    };
    if ctx.args.json {
        print_json(&serde_json::json!({
            "rows": rows,
            "truncated": truncated,
            "chain": chain,
        }))?;
    } else if let Some(chain) = &chain {
        print_chain(chain)?;
    } else {
        if truncated {
            eprintln!("bdc-backupctl: older rows left out; narrow with --since, --job or --limit");
        }
        out(&table(&rows, tz))?;
    }
    match chain.and_then(|c| c.broken) {
        Some(b) => Err(CtlError::failed(format!(
            "the audit trail's hash chain is broken at row {}: {}",
            b.id, b.reason
        ))),
        None => Ok(()),
    }
}

fn print_chain(chain: &AuditChainReport) -> CtlResult {
    match (&chain.broken, &chain.head) {
        (Some(_), _) => Ok(()),
        (None, Some(head)) => outln(&format!(
            "audit chain intact: {} rows, newest row's hash {head}",
            chain.rows
        )),
        (None, None) => outln("audit chain intact: no rows yet"),
    }
}

fn who(r: &AuditRow) -> String {
    let base = match (&r.user, r.uid) {
        (Some(u), Some(uid)) => format!("{u} (uid {uid})"),
        (None, Some(uid)) => format!("uid {uid}"),
        (Some(u), None) => u.clone(),
        (None, None) => "-".to_string(),
    };
    match r.source.as_str() {
        "socket" => base,
        other => format!("{base} [{other}]"),
    }
}

fn table(rows: &[AuditRow], tz: chrono_tz::Tz) -> String {
    if rows.is_empty() {
        return "no audit rows\n".to_string();
    }
    let mut text = String::new();
    for r in rows {
        text.push_str(&format!(
            "{:>6}  {}  {}  {}{}  {}{}\n",
            r.id,
            r.at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
            who(r),
            r.action,
            r.job
                .as_deref()
                .map(|j| format!(" {j}"))
                .unwrap_or_default(),
            if r.result.is_empty() { "-" } else { &r.result },
            if r.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", r.detail)
            },
        ));
    }
    text
}

/// The action, job and arguments of a restore, for its audit row (no secrets: `--url` is never
/// copied; a password in it is refused anyway).
fn describe(what: &RestoreCommand) -> (String, Option<String>, String) {
    match what {
        RestoreCommand::Database(a) => (
            "restore database".into(),
            Some(a.job.clone()),
            format!(
                "into {} backup {} database {}{}",
                a.into,
                a.backup.as_deref().unwrap_or("newest"),
                a.database.as_deref().unwrap_or("-"),
                if a.tables.is_empty() {
                    String::new()
                } else {
                    format!(" tables {}", a.tables.join(","))
                }
            ),
        ),
        RestoreCommand::Cluster(a) => (
            "restore cluster".into(),
            Some(a.job.clone()),
            format!(
                "target-dir {} backup {}{}",
                a.target_dir.display(),
                a.backup.as_deref().unwrap_or("chosen"),
                if a.dry_run { " dry-run" } else { "" }
            ),
        ),
        RestoreCommand::Files(a) => (
            "restore files".into(),
            Some(a.job.clone()),
            format!(
                "target {} backup {}{}",
                a.target.display(),
                a.backup.as_deref().or(a.at.as_deref()).unwrap_or("newest"),
                if a.dry_run { " dry-run" } else { "" }
            ),
        ),
        RestoreCommand::Config(a) => (
            "restore config".into(),
            Some(a.job.clone()),
            format!(
                "{} backup {}{}",
                a.target.as_ref().map_or_else(
                    || "in-place".to_string(),
                    |t| format!("target {}", t.display())
                ),
                a.backup.as_deref().or(a.at.as_deref()).unwrap_or("newest"),
                if a.dry_run { " dry-run" } else { "" }
            ),
        ),
        RestoreCommand::All(a) => (
            "restore all".into(),
            None,
            format!(
                "plan {}{}{}{}",
                a.plan.display(),
                a.at.as_deref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default(),
                if a.resume { " resume" } else { "" },
                if a.dry_run { " dry-run" } else { "" }
            ),
        ),
    }
}

/// Records a restore: to the daemon when it answers (it adds our peer credentials), else in the
/// offline file (`<state-directory>/offline-audit.jsonl`, or `~/.local/state/bdc-backup/` when that
/// is not writable; `restore all`: `offline-audit.jsonl` beside its plan). Never changes the restore's outcome; a failure is a warning on stderr.
pub async fn report_restore(ctx: &Ctx, what: &RestoreCommand, result: &CtlResult) {
    let (action, job, detail) = describe(what);
    let result_text = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("failed: {}", e.message.lines().next().unwrap_or_default()),
    };
    let to_daemon = match ctx.client().await {
        Ok(mut client) => client
            .request(&Request::AuditReport {
                action: action.clone(),
                job: job.clone(),
                result: result_text.clone(),
                detail: detail.clone(),
            })
            .await
            .map_err(|e| crate::error::error_chain_of(&e)),
        Err(e) => Err(e.message),
    };
    if to_daemon.is_ok() {
        return;
    }
    let mut event = local_event(&action);
    event.detail = detail;
    event.job = job;
    event.result = result_text;
    if let RestoreCommand::All(a) = what {
        // A DR run: beside its plan, not in the old host's state directory (docs/decisions.md).
        super::restore_all::audit_beside_plan(&a.plan, &event);
        return;
    }
    let state_dir = ctx.load_catalogue().ok().map(|c| c.daemon.state_directory);
    append_offline(state_dir.as_deref(), &event);
}

/// A row of this ctl's own work, by the local user.
fn local_event(action: &str) -> crate::state::AuditEvent {
    let uid = nix::unistd::getuid();
    crate::state::AuditEvent {
        at: Utc::now(),
        uid: Some(uid.as_raw()),
        gid: Some(nix::unistd::getgid().as_raw()),
        pid: i32::try_from(std::process::id()).ok(),
        user: nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name),
        action: action.to_string(),
        allowed: true,
        source: crate::state::AuditSource::Offline,
        ..Default::default()
    }
}

/// Each backup an offline `retention` (no daemon) deleted or failed to delete, to the offline file.
pub fn offline_retention(
    catalogue: &crate::catalogue::Catalogue,
    reports: &[crate::model::RetentionReport],
) {
    for report in reports.iter().filter(|r| !r.dry_run) {
        for b in report
            .backups
            .iter()
            .filter(|b| b.action == crate::retention::Action::Delete)
        {
            let mut event = local_event("retention-delete");
            event.job = Some(report.job.clone());
            event.result = match &b.error {
                Some(e) => format!("failed: {e}"),
                None => "deleted".to_string(),
            };
            event.detail = format!(
                "backup {} in repository {} ({} bytes)",
                b.id, report.repository, b.bytes_stored
            );
            append_offline(Some(&catalogue.daemon.state_directory), &event);
        }
    }
}

/// Appends to `<state-directory>/offline-audit.jsonl`, else to the user's state folder (with a
/// warning saying so); a row that cannot be written anywhere is a warning.
fn append_offline(state_dir: Option<&std::path::Path>, event: &crate::state::AuditEvent) {
    let primary = state_dir.map(crate::state::offline_audit_path);
    let first = primary
        .as_deref()
        .map(|p| crate::state::append_offline_audit(p, event));
    if let Some(Ok(())) = first {
        return;
    }
    let home = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
        })
        .map(|d| d.join("bdc-backup").join("offline-audit.jsonl"));
    match home.map(|p| (crate::state::append_offline_audit(&p, event), p)) {
        Some((Ok(()), p)) => eprintln!(
            "warning: the daemon did not take the audit row and {} is not writable; recorded in {} — move its lines into that file for the daemon to import them",
            primary.map_or_else(
                || "the state directory".to_string(),
                |p| p.display().to_string()
            ),
            p.display()
        ),
        Some((Err(e), _)) => eprintln!(
            "warning: this operation could not be audited: {}",
            crate::error::error_chain_of(&e)
        ),
        None => eprintln!(
            "warning: this operation could not be audited (no writable offline audit file)"
        ),
    }
}
