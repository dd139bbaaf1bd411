//! The DR plan (`plan.toml`): what `restore all --plan` restores where, in the seed's order —
//! system/application config, the database (PITR cluster or dump), the files, then hook
//! commands that start services — written by `bootstrap` or by hand; and its progress file
//! (`plan.toml.progress`), one fsynced JSON line per finished step, read by `--resume`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A DR plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Plan {
    /// The catalogue the restores read (bootstrap's recovered copy).
    pub catalogue: PathBuf,
    /// The application version to check out first (from the newest commit record's provenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

/// One step: a unique name, what it does, and optionally the repository to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Step {
    pub name: String,
    #[serde(flatten)]
    pub action: Action,
}

/// What a step does (`kind = "config" | "cluster" | "database" | "files" | "command"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Action {
    /// `restore config`: to `target` (the original paths beneath it) or `in-place`.
    Config {
        job: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<PathBuf>,
        #[serde(default)]
        in_place: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
    },
    /// `restore cluster`: PITR into `target-dir` (to the end of the archive, or `--at`).
    Cluster {
        job: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
        target_dir: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default)]
        start: bool,
        #[serde(default)]
        no_archive: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
    },
    /// `restore database`: a dump into database `into` on `url` (default: the catalogue's).
    Database {
        job: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        into: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default)]
        create: bool,
        #[serde(default)]
        roles: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
    },
    /// `restore files`: to `target`.
    Files {
        job: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
        target: PathBuf,
        #[serde(default)]
        overwrite: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
    },
    /// A hook: argv run without a shell, killed after `timeout` (default 5m).
    Command {
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Config { .. } => "config",
            Action::Cluster { .. } => "cluster",
            Action::Database { .. } => "database",
            Action::Files { .. } => "files",
            Action::Command { .. } => "command",
        }
    }

    /// The job and repository a restore step reads (None for commands).
    pub fn source(&self) -> Option<(&str, Option<&str>, Option<&str>)> {
        match self {
            Action::Config {
                job,
                backup,
                repository,
                ..
            }
            | Action::Cluster {
                job,
                backup,
                repository,
                ..
            }
            | Action::Database {
                job,
                backup,
                repository,
                ..
            }
            | Action::Files {
                job,
                backup,
                repository,
                ..
            } => Some((job, backup.as_deref(), repository.as_deref())),
            Action::Command { .. } => None,
        }
    }
}

/// The default hook timeout.
pub const DEFAULT_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Plan {
    /// Reads and parses a plan; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Plan, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the plan {}: {e}", path.display()))?;
        let mut plan: Plan =
            toml::from_str(&text).map_err(|e| format!("plan {}: {e}", path.display()))?;
        if plan.catalogue.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            plan.catalogue = base.join(&plan.catalogue);
        }
        let problems = plan.problems();
        if !problems.is_empty() {
            return Err(format!("plan {}:\n{}", path.display(), problems.join("\n")));
        }
        Ok(plan)
    }

    /// What is wrong with the plan on its own (names unique, commands non-empty, timeouts).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            let at = format!("step[{i}] \"{}\"", s.name);
            if s.name.trim().is_empty() {
                out.push(format!("step[{i}]: name must not be empty"));
            } else if !names.insert(s.name.as_str()) {
                out.push(format!("{at}: the name is used by an earlier step"));
            }
            if let Action::Command { command, timeout } = &s.action {
                if command.is_empty() || command[0].trim().is_empty() {
                    out.push(format!("{at}: command must name a program"));
                }
                if let Some(t) = timeout
                    && humantime::parse_duration(t).is_err()
                {
                    out.push(format!(
                        "{at}: timeout \"{t}\" is not a duration (e.g. \"5m\")"
                    ));
                }
            }
        }
        out
    }

    /// The plan as TOML, with a header comment.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string_pretty(self)?;
        Ok(format!(
            "# DR plan: `bdc-backupctl restore all --plan FILE [--dry-run] [--at T] [--resume]`.\n\
             # Steps run in order; edit targets, ports and URLs before running (docs/operations.md).\n\
             {body}"
        ))
    }
}

/// One finished step in the progress file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Finished {
    pub step: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// `plan.toml.progress` beside the plan.
pub fn progress_path(plan: &Path) -> PathBuf {
    let mut s = plan.as_os_str().to_owned();
    s.push(".progress");
    PathBuf::from(s)
}

/// The finished steps recorded so far (none when the file is missing). A torn last line (a
/// crash while writing) is ignored: that step is redone.
pub fn read_progress(path: &Path) -> Result<Vec<Finished>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Finished>(line) {
            Ok(f) => out.push(f),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => return Err(format!("{} line {}: {e}", path.display(), i + 1)),
        }
    }
    Ok(out)
}

/// Appends one finished step and fsyncs the file (and its folder when the file is new).
pub fn record_finished(path: &Path, finished: &Finished) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot record progress in {}: {e}", path.display());
    let existed = path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail)?;
    let mut line = serde_json::to_vec(finished).map_err(|e| e.to_string())?;
    line.push(b'\n');
    f.write_all(&line).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    if !existed && let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}

/// A time estimate for restoring `bytes`: the drill's seconds scaled by size when known, else
/// at `FALLBACK_BYTES_PER_SECOND`.
pub fn estimate_seconds(bytes: u64, drill: Option<(u64, f64)>) -> f64 {
    match drill {
        Some((drill_bytes, secs)) if drill_bytes > 0 => secs * bytes as f64 / drill_bytes as f64,
        _ => bytes as f64 / FALLBACK_BYTES_PER_SECOND,
    }
}

/// The assumed restore rate without a drill (stored bytes per second).
pub const FALLBACK_BYTES_PER_SECOND: f64 = 50.0 * 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
catalogue = "catalogue.toml"
application-version = "abc123"

[[step]]
name = "config etc"
kind = "config"
job = "etc"
target = "/dr/etc"

[[step]]
name = "cluster"
kind = "cluster"
job = "pgbase"
target-dir = "/dr/pgdata"
port = 5544
start = true

[[step]]
name = "dump"
kind = "database"
job = "dump"
into = "app_copy"
create = true

[[step]]
name = "uploads"
kind = "files"
job = "uploads"
target = "/dr/uploads"

[[step]]
name = "start app"
kind = "command"
command = ["systemctl", "start", "app"]
timeout = "2m"
"#;

    #[test]
    fn plan_parses_round_trips_and_resolves_the_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, PLAN).unwrap();
        let plan = Plan::load(&path).unwrap();
        assert_eq!(plan.catalogue, dir.path().join("catalogue.toml"));
        assert_eq!(plan.steps.len(), 5);
        assert!(matches!(
            &plan.steps[1].action,
            Action::Cluster {
                port: Some(5544),
                start: true,
                ..
            }
        ));
        let again: Plan = toml::from_str(&plan.to_toml().unwrap()).unwrap();
        assert_eq!(again, plan);
    }

    #[test]
    fn bad_plans_name_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.toml");
        let bad = PLAN
            .replace("name = \"dump\"", "name = \"cluster\"")
            .replace("\"2m\"", "\"soon\"");
        std::fs::write(&path, bad).unwrap();
        let e = Plan::load(&path).unwrap_err();
        assert!(e.contains("step[2] \"cluster\": the name is used"), "{e}");
        assert!(e.contains("timeout \"soon\""), "{e}");
        std::fs::write(&path, PLAN.replace("kind = \"files\"", "kind = \"tapes\"")).unwrap();
        assert!(Plan::load(&path).unwrap_err().contains("tapes"));
    }

    #[test]
    fn progress_appends_and_ignores_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = progress_path(&dir.path().join("plan.toml"));
        assert!(read_progress(&path).unwrap().is_empty());
        let f = Finished {
            step: "a".into(),
            kind: "files".into(),
            backup: Some("X-F".into()),
            started_at: Utc::now(),
            finished_at: Utc::now(),
        };
        record_finished(&path, &f).unwrap();
        record_finished(
            &path,
            &Finished {
                step: "b".into(),
                ..f.clone()
            },
        )
        .unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\":\"c\",\"ki");
        std::fs::write(&path, text).unwrap();
        let got = read_progress(&path).unwrap();
        assert_eq!(
            got.iter().map(|f| f.step.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
