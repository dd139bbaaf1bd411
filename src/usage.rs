//! Usage: bytes stored per job and repository (from the commit records, or the state DB's
//! copy of them), what each of the last N weeks added, and projections: linear at the recent
//! weekly rate, and the steady state the job's retention policy converges to.
//!
//! The steady state is estimated by simulation: a synthetic history at the job's recent cadence
//! (mean interval between backups over the window, the same share of fulls, each incremental
//! chained to the one before), long enough to fill the policy's longest rule, is run through the
//! retention planner; the kept fulls and incrementals are priced at the recent mean sizes of each
//! type. It assumes the recent cadence and sizes hold; it is an estimate, not a promise.

use crate::catalogue::Catalogue;
use crate::model::{BackupRow, BackupType, RunRecord};
pub use crate::model::{CapacityRow, GrowthSource, Projection, UsageReport, UsageRow, WeekGrowth};
use crate::retention::{self, BackupInfo};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use std::fmt;

/// The default number of weeks of growth shown.
pub const DEFAULT_WEEKS: u32 = 8;
/// The largest synthetic history simulated for the steady state.
const MAX_SYNTHETIC: usize = 20_000;

/// One backup written: when it stopped, its type and stored bytes.
#[derive(Debug, Clone, Copy)]
struct Written {
    at: DateTime<Utc>,
    ty: BackupType,
    bytes: u64,
}

/// Builds the report from backup rows (any job / repository mix) and, when the daemon has it,
/// the run history (`runs`: for growth and cadence, as it still counts backups that retention
/// deleted since). Jobs not in the catalogue are reported without policy.
pub fn compute(
    catalogue: &Catalogue,
    rows: &[BackupRow],
    runs: Option<&[RunRecord]>,
    now: DateTime<Utc>,
    weeks: u32,
) -> UsageReport {
    let weeks = weeks.clamp(1, 520);
    let mut groups: BTreeMap<(&str, &str), Vec<&BackupRow>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.job.as_str(), r.repository.as_str()))
            .or_default()
            .push(r);
    }
    let window_start = now - Duration::days(7 * i64::from(weeks));
    let mut out = Vec::new();
    for ((job, repository), backups) in groups {
        let bytes_stored: u64 = backups.iter().map(|b| b.bytes_stored).sum();
        let oldest = backups.iter().map(|b| b.stopped_at).min();
        let newest = backups.iter().map(|b| b.stopped_at).max();
        let from_records: Vec<Written> = backups
            .iter()
            .map(|b| Written {
                at: b.stopped_at,
                ty: b.backup_type,
                bytes: b.bytes_stored,
            })
            .collect();
        let from_runs: Vec<Written> = runs
            .unwrap_or_default()
            .iter()
            .filter(|r| r.job == job && r.status.is_success() && r.bytes_stored > 0)
            .filter_map(|r| {
                Some(Written {
                    at: r.finished_at?,
                    ty: r.backup_type.unwrap_or(BackupType::Full),
                    bytes: r.bytes_stored,
                })
            })
            .collect();
        // The run history is preferred, unless it knows fewer backups in the window than the
        // repository holds (a daemon newer than the repository, e.g. after a host rebuild).
        let in_window = |w: &[Written]| {
            w.iter()
                .filter(|w| w.at > window_start && w.at <= now)
                .count()
        };
        let use_runs =
            in_window(&from_runs) > 0 && in_window(&from_runs) >= in_window(&from_records);
        let (source, written) = if use_runs {
            (GrowthSource::Runs, from_runs)
        } else {
            (GrowthSource::CommitRecords, from_records)
        };
        let weekly: Vec<WeekGrowth> = (0..weeks)
            .rev()
            .map(|k| {
                let to = now - Duration::days(7 * i64::from(k));
                let from = to - Duration::days(7);
                let inside: Vec<&Written> = written
                    .iter()
                    .filter(|w| w.at > from && w.at <= to)
                    .collect();
                WeekGrowth {
                    from,
                    to,
                    backups: inside.len(),
                    bytes: inside.iter().map(|w| w.bytes).sum(),
                }
            })
            .collect();
        // Average over the windows the history covers (a job two weeks old: two weeks).
        let first = written.iter().map(|w| w.at).min().or(oldest);
        let covered = first
            .map(|o| ((now - o).num_seconds().max(1) as f64 / (7.0 * 86_400.0)).ceil() as u32)
            .unwrap_or(1)
            .clamp(1, weeks);
        let added: u64 = weekly.iter().map(|w| w.bytes).sum();
        let weekly_rate = added / u64::from(covered);
        let projections = [30u32, 90, 365]
            .into_iter()
            .map(|days| Projection {
                days,
                bytes: bytes_stored
                    .saturating_add((weekly_rate as f64 * f64::from(days) / 7.0) as u64),
            })
            .collect();
        let (policy_name, policy) = match catalogue.job(job) {
            Some(j) => retention::policy_of(catalogue, j),
            None => (None, Default::default()),
        };
        let mut recent: Vec<Written> = written
            .iter()
            .copied()
            .filter(|w| w.at > window_start && w.at <= now)
            .collect();
        recent.sort_by_key(|w| std::cmp::Reverse(w.at));
        let (steady_state_bytes, steady_state_backups, note) = if policy_name.is_none() {
            (
                None,
                None,
                Some("no retention policy: grows without bound".to_string()),
            )
        } else if recent.len() < 2 {
            (
                None,
                None,
                Some("fewer than 2 backups in the window: no cadence to project".to_string()),
            )
        } else {
            let cadence = cadence_of(&recent, source);
            let (bytes, count) =
                steady_state(&recent, cadence, &policy, catalogue.daemon.timezone, now);
            (Some(bytes), Some(count), None)
        };
        out.push(UsageRow {
            job: job.to_string(),
            repository: repository.to_string(),
            backups: backups.len(),
            fulls: backups
                .iter()
                .filter(|b| b.backup_type == BackupType::Full)
                .count(),
            bytes_stored,
            oldest,
            newest,
            growth_source: source,
            weekly,
            weekly_rate,
            projections,
            policy: policy_name,
            steady_state_bytes,
            steady_state_backups,
            note,
        });
    }
    UsageReport {
        at: now,
        weeks,
        total_bytes: out.iter().map(|r| r.bytes_stored).sum(),
        rows: out,
        capacity: Vec::new(),
    }
}

/// Below this many days until full, `capacity-low` is raised (docs/alerts.md).
pub const CAPACITY_LOW_DAYS: f64 = 14.0;

/// Fills `report.capacity`: for every local (`file://`) repository of the catalogue, the free
/// space of its filesystem (statvfs) and the days until full at the growth the report measured
/// (the weekly rates of every job writing there, per day).
pub fn fill_capacity(report: &mut UsageReport, catalogue: &Catalogue) {
    use crate::catalogue::RepositoryLocation;
    report.capacity = catalogue
        .repositories
        .iter()
        .filter_map(|r| match &r.location {
            RepositoryLocation::File { path } => Some((r.name.clone(), path.clone())),
            _ => None,
        })
        .map(|(name, path)| {
            let growth_per_day = report
                .rows
                .iter()
                .filter(|row| row.repository == name)
                .map(|row| row.weekly_rate)
                .sum::<u64>()
                / 7;
            // The repository folder may not exist yet before its first backup: ask the nearest
            // existing folder above it (the same filesystem it will be created on).
            let probe = path
                .ancestors()
                .find(|p| p.exists())
                .unwrap_or(&path)
                .to_path_buf();
            match nix::sys::statvfs::statvfs(&probe) {
                // The widths of fsblkcnt_t / c_ulong differ between platforms.
                #[allow(clippy::unnecessary_cast)]
                Ok(st) => {
                    let frag = st.fragment_size() as u64;
                    let free_bytes = (st.blocks_available() as u64).saturating_mul(frag);
                    let total_bytes = (st.blocks() as u64).saturating_mul(frag);
                    CapacityRow {
                        repository: name,
                        path: path.display().to_string(),
                        free_bytes,
                        total_bytes,
                        growth_per_day,
                        days_until_full: days_until_full(free_bytes, growth_per_day),
                        error: None,
                    }
                }
                Err(e) => CapacityRow {
                    repository: name,
                    path: path.display().to_string(),
                    free_bytes: 0,
                    total_bytes: 0,
                    growth_per_day,
                    days_until_full: None,
                    error: Some(format!(
                        "cannot ask the filesystem of {}: {e}",
                        probe.display()
                    )),
                },
            }
        })
        .collect();
}

/// Days until `free` bytes are used at `per_day`; None when nothing grows.
pub fn days_until_full(free: u64, per_day: u64) -> Option<f64> {
    (per_day > 0).then(|| free as f64 / per_day as f64)
}

/// The recent cadence: (interval between backups, every k-th backup a full).
///
/// From the run history: the mean interval and the share of fulls in the window. From commit
/// records (retention has thinned older weeks): the median interval among the newest eight
/// backups, and the spacing of the two newest fulls in those intervals.
fn cadence_of(recent_newest_first: &[Written], source: GrowthSource) -> (Duration, usize) {
    let r = recent_newest_first;
    let n = r.len();
    let fulls = r.iter().filter(|w| w.ty == BackupType::Full).count();
    let (interval, k) = match source {
        GrowthSource::Runs => {
            let span = r[0].at - r[n - 1].at;
            let interval = span / (n as i32 - 1).max(1);
            let k = if fulls == 0 {
                n
            } else {
                (n as f64 / fulls as f64).round().max(1.0) as usize
            };
            (interval, k)
        }
        GrowthSource::CommitRecords => {
            let mut gaps: Vec<Duration> = r.windows(2).take(8).map(|p| p[0].at - p[1].at).collect();
            gaps.sort();
            let interval = gaps[gaps.len() / 2];
            let full_times: Vec<DateTime<Utc>> = r
                .iter()
                .filter(|w| w.ty == BackupType::Full)
                .map(|w| w.at)
                .take(2)
                .collect();
            let k = match full_times.as_slice() {
                _ if fulls == n => 1,
                [a, b] => {
                    let secs = interval.num_seconds().max(1) as f64;
                    ((*a - *b).num_seconds() as f64 / secs).round().max(1.0) as usize
                }
                _ => n,
            };
            (interval, k)
        }
    };
    (interval.max(Duration::minutes(1)), k.max(1))
}

/// The horizon a policy needs to be full: its longest rule, plus one period.
fn horizon(policy: &crate::catalogue::RetentionPolicy, interval: Duration) -> Duration {
    let n = |v: Option<u32>| i64::from(v.unwrap_or(0));
    let mut h = Duration::zero();
    h = h.max(interval * (n(policy.last) as i32 + 1));
    h = h.max(Duration::hours(n(policy.hourly) + 1));
    h = h.max(Duration::days(n(policy.daily) + 1));
    h = h.max(Duration::weeks(n(policy.weekly) + 1));
    h = h.max(Duration::days(31 * (n(policy.monthly) + 1)));
    h = h.max(Duration::days(366 * (n(policy.yearly) + 1)));
    if let Some(w) = policy.keep_within {
        h = h.max(Duration::from_std(w).unwrap_or(Duration::MAX) + Duration::days(1));
    }
    h
}

/// (bytes, backups) kept at steady state, by simulating the cadence (module docs).
fn steady_state(
    recent: &[Written],
    (interval, k): (Duration, usize),
    policy: &crate::catalogue::RetentionPolicy,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> (u64, usize) {
    let mean = |ty: BackupType| {
        let v: Vec<u64> = recent
            .iter()
            .filter(|w| w.ty == ty)
            .map(|w| w.bytes)
            .collect();
        if v.is_empty() {
            0
        } else {
            v.iter().sum::<u64>() / v.len() as u64
        }
    };
    let (full_size, inc_size) = (mean(BackupType::Full), mean(BackupType::Incremental));
    let span = horizon(policy, interval);
    let count =
        ((span.num_seconds() / interval.num_seconds().max(1)) as usize + 1).clamp(2, MAX_SYNTHETIC);
    let mut synthetic: Vec<BackupInfo> = Vec::with_capacity(count);
    let mut parent: Option<String> = None;
    for i in 0..count {
        let stop = now - interval * (count - 1 - i) as i32;
        let ty = if i % k == 0 {
            BackupType::Full
        } else {
            BackupType::Incremental
        };
        let id = format!("s{i}");
        synthetic.push(BackupInfo {
            id: id.clone(),
            backup_type: ty,
            ancestors: match ty {
                BackupType::Full => vec![],
                BackupType::Incremental => parent.clone().into_iter().collect(),
            },
            started_at: stop,
            stopped_at: stop,
            bytes_stored: match ty {
                BackupType::Full => full_size,
                BackupType::Incremental => inc_size,
            },
        });
        parent = Some(id);
    }
    let plan = retention::plan(&synthetic, policy, tz, now);
    let bytes = plan.kept().map(|d| d.bytes_stored).sum();
    (bytes, plan.kept().count())
}

impl fmt::Display for UsageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::units::human_bytes as hb;
        let header = [
            "JOB",
            "REPOSITORY",
            "BACKUPS",
            "STORED",
            "PER WEEK",
            "IN 30D",
            "IN 90D",
            "IN 365D",
            "STEADY (RETENTION)",
        ];
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let p = |d: u32| {
                    r.projections
                        .iter()
                        .find(|p| p.days == d)
                        .map(|p| hb(p.bytes))
                        .unwrap_or_default()
                };
                vec![
                    r.job.clone(),
                    r.repository.clone(),
                    r.backups.to_string(),
                    hb(r.bytes_stored),
                    hb(r.weekly_rate),
                    p(30),
                    p(90),
                    p(365),
                    match (r.steady_state_bytes, r.steady_state_backups, &r.policy) {
                        (Some(b), Some(n), Some(pol)) => format!("{} ({n} backups, {pol})", hb(b)),
                        _ => r.note.clone().unwrap_or_else(|| "-".into()),
                    },
                ]
            })
            .collect();
        let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            let last = cells.len() - 1;
            for (i, c) in cells.iter().enumerate() {
                if i == last {
                    write!(f, "{c}")?;
                } else {
                    write!(f, "{c:<w$}  ", w = w[i])?;
                }
            }
            writeln!(f)
        };
        line(f, &header.map(String::from))?;
        for r in &rows {
            line(f, r)?;
        }
        writeln!(f, "total stored: {}", hb(self.total_bytes))?;
        writeln!(
            f,
            "\nadded per week (last {} weeks, oldest first):",
            self.weeks
        )?;
        for r in &self.rows {
            let series: Vec<String> = r.weekly.iter().map(|g| hb(g.bytes)).collect();
            writeln!(f, "  {}/{}: {}", r.job, r.repository, series.join(" "))?;
        }
        if !self.capacity.is_empty() {
            writeln!(f, "\nfree space of local repositories:")?;
            for c in &self.capacity {
                match (&c.error, c.days_until_full) {
                    (Some(e), _) => writeln!(f, "  {}: {e}", c.repository)?,
                    (None, Some(days)) => writeln!(
                        f,
                        "  {} ({}): {} free of {}, growing {}/day: full in {days:.1} days{}",
                        c.repository,
                        c.path,
                        hb(c.free_bytes),
                        hb(c.total_bytes),
                        hb(c.growth_per_day),
                        if days < CAPACITY_LOW_DAYS {
                            " (LOW)"
                        } else {
                            ""
                        }
                    )?,
                    (None, None) => writeln!(
                        f,
                        "  {} ({}): {} free of {}, not growing",
                        c.repository,
                        c.path,
                        hb(c.free_bytes),
                        hb(c.total_bytes)
                    )?,
                }
            }
        }
        writeln!(
            f,
            "\nIN 30D/90D/365D: stored now + the weekly rate, before retention deletes anything;\nSTEADY: what the retention policy keeps at the recent cadence and sizes (an estimate)."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobKindName;
    use chrono::TimeZone;

    #[test]
    fn capacity_of_a_local_repository_and_days_until_full() {
        let dir = tempfile::tempdir().unwrap();
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let text = format!(
            "[encryption]\nrecipients = [\"{recipient}\"]\n[repository.local]\nurl = \"file://{}/repo\"\n",
            dir.path().display()
        );
        let c =
            crate::catalogue::parse_str(&text, std::path::Path::new("/tmp/c.toml"), &[]).unwrap();
        let mut report = compute(&c, &[], None, Utc::now(), 4);
        fill_capacity(&mut report, &c);
        let row = &report.capacity[0];
        assert_eq!(row.repository, "local");
        assert!(row.error.is_none(), "{row:?}");
        assert!(
            row.free_bytes > 0 && row.total_bytes >= row.free_bytes,
            "{row:?}"
        );
        assert_eq!(row.days_until_full, None, "nothing grows");
        assert_eq!(days_until_full(1000, 100), Some(10.0));
        assert!(days_until_full(1000, 100).unwrap() < CAPACITY_LOW_DAYS);
        assert_eq!(days_until_full(1000, 0), None);
    }

    fn catalogue() -> Catalogue {
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let text = format!(
            r#"
[daemon]
timezone = "Europe/Berlin"
[postgres]
url = "postgresql://bdc_backup@localhost:5432/bdc_db"
[encryption]
recipients = ["{recipient}"]
[repository.local]
url = "file:///tmp/bdc-usage-test-repo"
[retention.standard]
daily = 7
weekly = 4
monthly = 12
yearly = 5
[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["bdc_db"]
repositories = ["local"]
retention = "standard"
[[job]]
name = "config"
kind = "config"
paths = ["/etc/hostname"]
schedule = "*/30 * * * *"
repositories = ["local"]
"#
        );
        crate::catalogue::parse_str(&text, std::path::Path::new("/tmp/c.toml"), &[])
            .expect("catalogue")
    }

    fn row(job: &str, stop: DateTime<Utc>, bytes: u64) -> BackupRow {
        BackupRow {
            job: job.into(),
            backup_id: format!("{}", stop.timestamp()),
            repository: "local".into(),
            kind: JobKindName::PostgresDump,
            backup_type: BackupType::Full,
            started_at: stop,
            stopped_at: stop,
            bytes_read: bytes,
            bytes_stored: bytes,
            ancestors: vec![],
            summary: String::new(),
        }
    }

    #[test]
    fn totals_weekly_growth_projection_and_steady_state() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        // 28 daily dumps of 1 MB, the newest this morning; 1 config backup.
        let mut rows: Vec<BackupRow> = (0..28)
            .map(|d| row("db-dump", now - Duration::hours(10 + 24 * d), 1_000_000))
            .collect();
        rows.push(row("config", now - Duration::days(3), 500));
        let report = compute(&catalogue(), &rows, None, now, 4);
        assert_eq!(report.rows.len(), 2);
        assert_eq!(report.total_bytes, 28_000_500);
        let db = report.rows.iter().find(|r| r.job == "db-dump").unwrap();
        assert_eq!(db.backups, 28);
        assert_eq!(db.bytes_stored, 28_000_000);
        assert_eq!(db.weekly.len(), 4);
        assert!(
            db.weekly
                .iter()
                .all(|w| w.backups == 7 && w.bytes == 7_000_000)
        );
        assert_eq!(db.weekly_rate, 7_000_000);
        assert_eq!(db.projections[0].bytes, 28_000_000 + 30_000_000);
        // Daily fulls with 7/4/12/5 settle at about 24–28 backups (docs/retention.md).
        let n = db.steady_state_backups.unwrap();
        assert!((22..=28).contains(&n), "{n}");
        assert_eq!(db.steady_state_bytes, Some(n as u64 * 1_000_000));
        let cfg = report.rows.iter().find(|r| r.job == "config").unwrap();
        assert_eq!(cfg.steady_state_bytes, None);
        assert!(cfg.note.as_deref().unwrap().contains("no retention policy"));
        let text = report.to_string();
        assert!(
            text.contains("db-dump") && text.contains("STEADY"),
            "{text}"
        );
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<UsageReport>(&json).unwrap(), report);
    }

    fn run(job: &str, at: DateTime<Utc>, ty: BackupType, bytes: u64) -> RunRecord {
        RunRecord {
            id: at.timestamp(),
            job: job.into(),
            kind: JobKindName::PostgresBase,
            trigger: crate::model::Trigger::Scheduled,
            backup_type: Some(ty),
            status: crate::model::RunStatus::Succeeded,
            started_at: at - Duration::minutes(5),
            finished_at: Some(at),
            bytes_read: bytes,
            bytes_stored: bytes,
            error: None,
            backup_id: Some(format!("{}", at.timestamp())),
        }
    }

    #[test]
    fn commit_records_thinned_by_retention_still_give_the_daily_cadence() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        // What 7/4/12/5 leaves of a year of daily dumps.
        let all: Vec<BackupInfo> = (0..365)
            .map(|d| {
                let t = now - Duration::hours(10 + 24 * d);
                BackupInfo {
                    id: format!("b{d}"),
                    backup_type: BackupType::Full,
                    ancestors: vec![],
                    started_at: t,
                    stopped_at: t,
                    bytes_stored: 1_000_000,
                }
            })
            .collect();
        let c = catalogue();
        let (_, policy) = retention::policy_of(&c, c.job("db-dump").unwrap());
        let plan = retention::plan(&all, &policy, c.daemon.timezone, now);
        let rows: Vec<BackupRow> = plan
            .kept()
            .map(|d| row("db-dump", d.stopped_at, d.bytes_stored))
            .collect();
        let report = compute(&c, &rows, None, now, 8);
        let r = &report.rows[0];
        assert_eq!(r.growth_source, GrowthSource::CommitRecords);
        assert_eq!(r.backups, rows.len());
        let n = r.steady_state_backups.unwrap();
        assert!(
            n.abs_diff(rows.len()) <= 2,
            "steady {n} vs kept now {}",
            rows.len()
        );
    }

    #[test]
    fn run_history_gives_growth_including_deleted_backups() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        // 8 weeks: a 10 MB full every 7th day, 1 MB incrementals in between.
        let runs: Vec<RunRecord> = (0..56)
            .map(|d| {
                let at = now - Duration::hours(8 + 24 * d);
                if d % 7 == 0 {
                    run("db-dump", at, BackupType::Full, 10_000_000)
                } else {
                    run("db-dump", at, BackupType::Incremental, 1_000_000)
                }
            })
            .collect();
        // Only the last 10 days are still stored.
        let rows: Vec<BackupRow> = runs[..10]
            .iter()
            .map(|r| {
                let mut b = row("db-dump", r.finished_at.unwrap(), r.bytes_stored);
                b.backup_type = r.backup_type.unwrap();
                b
            })
            .collect();
        let report = compute(&catalogue(), &rows, Some(&runs), now, 8);
        let r = &report.rows[0];
        assert_eq!(r.growth_source, GrowthSource::Runs);
        assert!(
            r.weekly
                .iter()
                .all(|w| w.backups == 7 && w.bytes == 16_000_000)
        );
        assert_eq!(r.weekly_rate, 16_000_000);
        let n = r.steady_state_backups.unwrap();
        let bytes = r.steady_state_bytes.unwrap();
        println!("chain steady state: {n} backups, {bytes} bytes");
        assert!((20..=60).contains(&n), "{n}");
    }
}
