//! The DR plan (`plan.toml`): what `restore all --plan` restores where, in the seed's order —
//! system/application config, the database (PITR cluster or dump), the files, then hook
//! commands that start services — written by `bootstrap` or by hand; and its progress file
//! (`plan.toml.progress`), one fsynced JSON line per finished step, read by `--resume`.

use crate::state::DrillFact;
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

/// The assumed restore rate without a drill (stored bytes per second).
pub const FALLBACK_BYTES_PER_SECOND: f64 = 50.0 * 1024.0 * 1024.0;

/// What a step restores: its backup's chain, stored and as read at backup time (plaintext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSize {
    pub stored: u64,
    pub plaintext: u64,
}

/// A step's time estimate and what it rests on ("from drill run 42 on 2026-12-01: 180 MiB/s").
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub seconds: f64,
    pub basis: String,
}

/// The estimate of restoring `size`: from the job's newest passed drill when it measured a time
/// and a size, else at [`FALLBACK_BYTES_PER_SECOND`], saying why (`no_drill` is the reason when
/// there is no drill, e.g. "no drill recorded").
///
/// A cluster or dump drill restores the whole chain: its rate is stored bytes per second. A files
/// or config drill restores a sample ("X of Y files (B bytes) restored …"): when that is not every
/// file, its rate is plaintext bytes per second, applied to the chain's plaintext size.
pub fn estimate(size: StepSize, drill: Option<&DrillFact>, no_drill: &str) -> Estimate {
    let fallback = |why: String| Estimate {
        seconds: size.stored as f64 / FALLBACK_BYTES_PER_SECOND,
        basis: format!(
            "{why}: estimate at {} MiB/s",
            FALLBACK_BYTES_PER_SECOND / MIB
        ),
    };
    let Some(d) = drill else {
        return fallback(no_drill.to_string());
    };
    let run = format!("drill run {} on {}", d.run_id, d.at.format("%Y-%m-%d"));
    if d.seconds <= 0.0 || !d.seconds.is_finite() {
        return fallback(format!("{run} recorded no restore time"));
    }
    if let Some((restored, of, bytes)) = sample_of(&d.detail)
        && restored < of
    {
        if bytes == 0 || size.plaintext == 0 {
            return fallback(format!(
                "{run} restored a sample of {restored} of {of} files without a size"
            ));
        }
        let rate = bytes as f64 / d.seconds;
        return Estimate {
            seconds: size.plaintext as f64 / rate,
            basis: format!(
                "from {run} (a sample of {restored} of {of} files): {} MiB/s of file data",
                rate_text(rate)
            ),
        };
    }
    if d.bytes == 0 {
        return fallback(format!("{run} recorded no size"));
    }
    let rate = d.bytes as f64 / d.seconds;
    Estimate {
        seconds: size.stored as f64 / rate,
        basis: format!("from {run}: {} MiB/s", rate_text(rate)),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn rate_text(bytes_per_second: f64) -> String {
    let m = bytes_per_second / MIB;
    if m >= 10.0 {
        format!("{m:.0}")
    } else {
        format!("{m:.1}")
    }
}

/// A files drill's sample from its detail: (files restored, files in the backup, bytes restored).
fn sample_of(detail: &str) -> Option<(u64, u64, u64)> {
    let mut words = detail.split_whitespace();
    let restored = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let of = words.next()?.parse().ok()?;
    (words.next()? == "files").then_some(())?;
    let bytes = words.next()?.strip_prefix('(')?.parse().ok()?;
    (words.next()? == "bytes)").then_some(())?;
    Some((restored, of, bytes))
}

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

    fn drill(seconds: f64, bytes: u64, detail: &str) -> DrillFact {
        DrillFact {
            run_id: 42,
            at: "2026-12-01T03:00:00Z".parse().unwrap(),
            seconds,
            bytes,
            detail: detail.into(),
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn without_a_drill_the_estimate_says_so_and_uses_the_fixed_rate() {
        let size = StepSize {
            stored: 500 * (1 << 20),
            plaintext: GIB,
        };
        let e = estimate(size, None, "no drill recorded");
        assert_eq!(e.seconds, 10.0);
        assert_eq!(e.basis, "no drill recorded: estimate at 50 MiB/s");
    }

    #[test]
    fn a_whole_restore_drill_gives_the_rate_of_stored_bytes() {
        // 180 MiB restored in 1 s; 1 GiB stored now → 1024/180 s.
        let d = drill(1.0, 180 * (1 << 20), "cluster restored and promoted");
        let size = StepSize {
            stored: GIB,
            plaintext: 4 * GIB,
        };
        let e = estimate(size, Some(&d), "unused");
        assert!((e.seconds - 1024.0 / 180.0).abs() < 1e-9, "{e:?}");
        assert_eq!(e.basis, "from drill run 42 on 2026-12-01: 180 MiB/s");
        // A files drill whose sample was every file is a whole restore too.
        let d = drill(2.0, GIB, "3 of 3 files (5000 bytes) restored in 2.0s");
        let e = estimate(size, Some(&d), "unused");
        assert_eq!(e.seconds, 2.0);
        assert_eq!(e.basis, "from drill run 42 on 2026-12-01: 512 MiB/s");
    }

    #[test]
    fn a_sampled_files_drill_gives_the_rate_of_file_data() {
        // 100 of 3000 files, 10 MiB in 0.5 s = 20 MiB/s of file data; 2 GiB of file data now.
        let d = drill(
            0.5,
            GIB,
            "100 of 3000 files (10485760 bytes) restored in 0.5s",
        );
        let size = StepSize {
            stored: GIB,
            plaintext: 2 * GIB,
        };
        let e = estimate(size, Some(&d), "unused");
        assert!((e.seconds - 2048.0 / 20.0).abs() < 1e-9, "{e:?}");
        assert_eq!(
            e.basis,
            "from drill run 42 on 2026-12-01 (a sample of 100 of 3000 files): 20 MiB/s of file data"
        );
    }

    #[test]
    fn a_drill_without_time_or_size_falls_back_naming_the_run() {
        let size = StepSize {
            stored: 50 << 20,
            plaintext: 50 << 20,
        };
        let e = estimate(size, Some(&drill(0.0, GIB, "")), "unused");
        assert_eq!(
            (e.seconds, e.basis.as_str()),
            (
                1.0,
                "drill run 42 on 2026-12-01 recorded no restore time: estimate at 50 MiB/s"
            )
        );
        let e = estimate(size, Some(&drill(3.0, 0, "")), "unused");
        assert_eq!(
            e.basis,
            "drill run 42 on 2026-12-01 recorded no size: estimate at 50 MiB/s"
        );
        let e = estimate(
            size,
            Some(&drill(3.0, GIB, "1 of 9 files (0 bytes) restored")),
            "unused",
        );
        assert!(e.basis.contains("without a size"), "{e:?}");
        assert_eq!(e.seconds, 1.0);
    }

    #[test]
    fn the_sample_is_read_from_the_files_drill_detail() {
        assert_eq!(
            sample_of("12 of 40 files (123 bytes) restored in 0.1s"),
            Some((12, 40, 123))
        );
        assert_eq!(sample_of("cluster restore and recovery"), None);
        assert_eq!(sample_of(""), None);
    }
}
