//! Where a backup came from: host name, bdc-backup version, PostgreSQL version and system
//! identifier (when the job reads a cluster) and the application's version from the
//! catalogue's `[application] version-command`. Stored in the commit record under
//! `details.provenance`; records written before it simply have none.

use crate::catalogue::{ApplicationSettings, Catalogue};
use crate::repository::CommitRecord;

/// The `details` key of the commit record.
pub const DETAILS_KEY: &str = "provenance";

pub use crate::model::Provenance;

impl Provenance {
    /// The provenance stored in `record`, if any (malformed: none).
    pub fn of(record: &CommitRecord) -> Option<Provenance> {
        record
            .details
            .get(DETAILS_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Stores it into the record's details.
    pub fn store(&self, details: &mut serde_json::Map<String, serde_json::Value>) {
        if let Ok(v) = serde_json::to_value(self) {
            details.insert(DETAILS_KEY.into(), v);
        }
    }

    /// The run warning of a failed version command, if any.
    pub fn warning(&self) -> Option<String> {
        self.application_version_error
            .as_ref()
            .map(|e| format!("application version unknown: {e}"))
    }
}

/// The provenance recorded for backup `id` of `job`: from the first repository (the job's, or
/// every repository when the job left the catalogue) holding its commit record. None when none
/// holds it or the record has none; a repository that cannot be read is skipped with a warning
/// in the log (`show` still shows the run).
pub async fn of_backup(catalogue: &Catalogue, job: &str, id: &str) -> Option<Provenance> {
    let names: Vec<&str> = match catalogue.job(job) {
        Some(j) if !j.repositories.is_empty() => {
            j.repositories.iter().map(String::as_str).collect()
        }
        _ => catalogue
            .repositories
            .iter()
            .map(|r| r.name.as_str())
            .collect(),
    };
    for name in names {
        let Some(settings) = catalogue.repository(name) else {
            continue;
        };
        let repo = match crate::repository::Repository::open(settings) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(repository = name, error = %crate::error::error_chain_of(&e), "provenance: cannot open the repository");
                continue;
            }
        };
        match repo.commit_record(job, id).await {
            Ok(Some(record)) => return Provenance::of(&record),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(repository = name, job, backup = id, error = %crate::error::error_chain_of(&e), "provenance: cannot read the commit record");
            }
        }
    }
    None
}

/// This host's name (empty when it cannot be read).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Host, software version and, when the catalogue has `[application]`, the application version.
pub async fn collect(catalogue: &Catalogue) -> Provenance {
    let mut p = Provenance {
        host: Some(host_name()),
        bdc_backup_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        ..Provenance::default()
    };
    if let Some(app) = &catalogue.application {
        match application_version(app).await {
            Ok(v) => p.application_version = Some(v),
            Err(e) => p.application_version_error = Some(e),
        }
    }
    p
}

/// Runs the version command (no shell, stdin closed, killed after the timeout); its trimmed
/// stdout. Errors name the command and what went wrong.
pub async fn application_version(app: &ApplicationSettings) -> Result<String, String> {
    let shown = app.version_command.join(" ");
    let (program, args) = app
        .version_command
        .split_first()
        .ok_or_else(|| "[application] version-command is empty".to_string())?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("`{shown}` cannot be started: {e}"))?;
    let out = match tokio::time::timeout(app.version_timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(format!(
                "`{shown}` did not finish within {}",
                humantime::format_duration(app.version_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("`{shown}`: {e}")),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            stderr.trim().chars().take(300).collect::<String>()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        return Err(format!("`{shown}` printed nothing"));
    }
    Ok(text.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn app(cmd: &[&str], secs: u64) -> ApplicationSettings {
        ApplicationSettings {
            version_command: cmd.iter().map(|s| s.to_string()).collect(),
            version_timeout: Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn version_command_output_failure_and_timeout() {
        assert_eq!(
            application_version(&app(&["echo", "  v1.2.3 \n"], 5)).await,
            Ok("v1.2.3".into())
        );
        let e = application_version(&app(&["false"], 5)).await.unwrap_err();
        assert!(e.contains("`false` failed"), "{e}");
        let e = application_version(&app(&["sleep", "5"], 1))
            .await
            .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        let e = application_version(&app(&["/nonexistent/x"], 1))
            .await
            .unwrap_err();
        assert!(e.contains("cannot be started"), "{e}");
    }

    #[test]
    fn old_records_without_provenance_read_as_none() {
        let text = include_str!("../../tests/fixtures/commit-record-v1.json");
        let mut rec = CommitRecord::from_json(text.as_bytes()).unwrap();
        assert_eq!(Provenance::of(&rec), None);
        let p = Provenance {
            host: Some("db1".into()),
            application_version: Some("abc".into()),
            ..Default::default()
        };
        p.store(&mut rec.details);
        let again = CommitRecord::from_json(&rec.to_json().unwrap()).unwrap();
        assert_eq!(Provenance::of(&again), Some(p));
    }
}
