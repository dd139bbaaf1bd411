//! The retention planner (pure): restic's GFS rules over one job's backups in one repository,
//! plus the chain rules of full/incremental jobs. See docs/retention.md for every rule with
//! worked examples.
//!
//! Rules, in the order reasons are listed:
//! - `keep-within D`: every backup that stopped after `latest − D`, where `latest` is the newest
//!   backup that is not in the future (whole days of D are calendar days in the timezone);
//! - `last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly` N: walking newest → oldest, the
//!   newest backup of each period is kept until N periods *that hold a backup* are used; the
//!   oldest candidate is also kept while the rule still has room (restic). Periods come from the
//!   backup's **stop** time in the catalogue's timezone; weeks are ISO weeks (week-year).
//!   `weekly`, `monthly` and `yearly` choose among **fulls** only; the others among all;
//! - the newest full is never deleted;
//! - every ancestor of a kept incremental is kept;
//! - future-dated backups (stopped after `now`) are kept, reported, and take no rule's slot.

use crate::catalogue::RetentionPolicy;
use crate::model::BackupType;
pub use crate::model::{Reason, Rule};
use crate::repository::CommitRecord;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// What the planner needs to know of one committed backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: String,
    pub backup_type: BackupType,
    /// Ancestor ids, nearest first (empty for a full).
    pub ancestors: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    pub bytes_stored: u64,
}

impl From<&CommitRecord> for BackupInfo {
    fn from(r: &CommitRecord) -> Self {
        BackupInfo {
            id: r.id.clone(),
            backup_type: r.backup_type,
            ancestors: r.ancestors.clone(),
            started_at: r.started_at,
            stopped_at: r.stopped_at,
            bytes_stored: r.bytes_stored,
        }
    }
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::Last,
        Rule::Hourly,
        Rule::Daily,
        Rule::Weekly,
        Rule::Monthly,
        Rule::Yearly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// Weekly, monthly and yearly choose among fulls only.
    pub fn fulls_only(self) -> bool {
        matches!(self, Rule::Weekly | Rule::Monthly | Rule::Yearly)
    }

    fn count(self, p: &RetentionPolicy) -> u32 {
        match self {
            Rule::Last => p.last,
            Rule::Hourly => p.hourly,
            Rule::Daily => p.daily,
            Rule::Weekly => p.weekly,
            Rule::Monthly => p.monthly,
            Rule::Yearly => p.yearly,
        }
        .unwrap_or(0)
    }

    /// restic's bucket key: distinct per period (`last`: per backup).
    fn key<T: Datelike + Timelike>(self, t: &T, nr: usize) -> i64 {
        let (y, m, d, h) = (
            i64::from(t.year()),
            i64::from(t.month()),
            i64::from(t.day()),
            i64::from(t.hour()),
        );
        match self {
            Rule::Last => nr as i64,
            Rule::Hourly => y * 1_000_000 + m * 10_000 + d * 100 + h,
            Rule::Daily => y * 10_000 + m * 100 + d,
            Rule::Weekly => {
                let w = t.iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Rule::Monthly => y * 100 + m,
            Rule::Yearly => y,
        }
    }

    /// The period a backup counted for, for people: `2026-11-26 14h`, `2026-W48`, ….
    fn period<T: Datelike + Timelike>(self, t: &T) -> String {
        match self {
            Rule::Last => String::new(),
            Rule::Hourly => format!(
                "{:04}-{:02}-{:02} {:02}h",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            ),
            Rule::Daily => format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
            Rule::Weekly => {
                let w = t.iso_week();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Rule::Monthly => format!("{:04}-{:02}", t.year(), t.month()),
            Rule::Yearly => format!("{:04}", t.year()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule {
                rule,
                slot,
                of,
                oldest,
                ..
            } => {
                write!(f, "{rule} {slot}/{of}")?;
                if *oldest {
                    f.write_str(" (oldest)")?;
                }
                Ok(())
            }
            Reason::KeepWithin { within } => write!(f, "keep-within {within}"),
            Reason::NewestFull => f.write_str("newest full"),
            Reason::ParentOf { child } => write!(f, "parent of kept incremental {child}"),
            Reason::Future => f.write_str("future-dated"),
            Reason::NoPolicy => f.write_str("no retention policy"),
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    pub id: String,
    pub backup_type: BackupType,
    pub stopped_at: DateTime<Utc>,
    pub bytes_stored: u64,
    pub keep: bool,
    /// Empty when deleted.
    pub reasons: Vec<Reason>,
}

/// The plan: one decision per backup, newest first (by stop time).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Things the operator should know (a kept incremental whose ancestor is missing, …).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep)
    }
    pub fn deleted(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep)
    }
}

/// Whether the policy keeps anything at all (the catalogue rejects empty policies; a job
/// without a policy keeps everything).
pub fn policy_is_empty(p: &RetentionPolicy) -> bool {
    Rule::ALL.iter().all(|r| r.count(p) == 0) && p.keep_within.is_none_or(|d| d.is_zero())
}

/// `2d`, `36h`, `90m`, else humantime's words.
pub fn format_within(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && d.subsec_nanos() == 0 {
        if s.is_multiple_of(86_400) {
            return format!("{}d", s / 86_400);
        }
        if s.is_multiple_of(3_600) {
            return format!("{}h", s / 3_600);
        }
        if s.is_multiple_of(60) {
            return format!("{}m", s / 60);
        }
    }
    humantime::format_duration(d).to_string()
}

/// `latest − within`: whole days as calendar days in `tz` (as restic's `AddDate`), the rest
/// as elapsed time.
pub fn within_threshold(latest: DateTime<Utc>, within: Duration, tz: Tz) -> DateTime<Utc> {
    let days = within.as_secs() / 86_400;
    let rest = within - Duration::from_secs(days * 86_400);
    let rest = chrono::Duration::from_std(rest).unwrap_or(chrono::Duration::MAX);
    let local = latest.with_timezone(&tz).naive_local();
    let day_back = local
        .checked_sub_days(chrono::Days::new(days))
        .and_then(|n| tz.from_local_datetime(&n).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| {
            latest
                - chrono::Duration::from_std(Duration::from_secs(days * 86_400))
                    .unwrap_or(chrono::Duration::MAX)
        });
    day_back
        .checked_sub_signed(rest)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Plans retention for the backups of ONE job in ONE repository.
pub fn plan(backups: &[BackupInfo], policy: &RetentionPolicy, tz: Tz, now: DateTime<Utc>) -> Plan {
    // Newest first by stop time; ties by start time, then id (deterministic).
    let mut order: Vec<usize> = (0..backups.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&backups[a], &backups[b]);
        b.stopped_at
            .cmp(&a.stopped_at)
            .then_with(|| b.started_at.cmp(&a.started_at))
            .then_with(|| b.id.cmp(&a.id))
    });
    let mut decisions: Vec<Decision> = order
        .iter()
        .map(|&i| {
            let b = &backups[i];
            Decision {
                id: b.id.clone(),
                backup_type: b.backup_type,
                stopped_at: b.stopped_at,
                bytes_stored: b.bytes_stored,
                keep: false,
                reasons: Vec::new(),
            }
        })
        .collect();
    let mut warnings = Vec::new();
    let keep = |d: &mut Decision, r: Reason| {
        d.keep = true;
        d.reasons.push(r);
    };

    if policy_is_empty(policy) {
        for d in &mut decisions {
            keep(d, Reason::NoPolicy);
        }
        return Plan {
            decisions,
            warnings,
        };
    }

    // Positions (in `decisions`) of backups not in the future, newest first.
    let present: Vec<usize> = (0..decisions.len())
        .filter(|&i| decisions[i].stopped_at <= now)
        .collect();
    let local: Vec<_> = decisions
        .iter()
        .map(|d| d.stopped_at.with_timezone(&tz))
        .collect();

    // keep-within, from the newest backup that is not in the future.
    if let (Some(within), Some(&newest)) = (policy.keep_within, present.first())
        && !within.is_zero()
    {
        let from = within_threshold(decisions[newest].stopped_at, within, tz);
        let text = format_within(within);
        for &i in &present {
            if decisions[i].stopped_at > from {
                keep(
                    &mut decisions[i],
                    Reason::KeepWithin {
                        within: text.clone(),
                    },
                );
            }
        }
    }

    // The counted rules: restic's buckets, one pass each (they are independent).
    let fulls: Vec<usize> = present
        .iter()
        .copied()
        .filter(|&i| decisions[i].backup_type == BackupType::Full)
        .collect();
    for rule in Rule::ALL {
        let count = rule.count(policy);
        if count == 0 {
            continue;
        }
        let candidates = if rule.fulls_only() { &fulls } else { &present };
        let mut left = count;
        let mut last: Option<i64> = None;
        for (nr, &i) in candidates.iter().enumerate() {
            if left == 0 {
                break;
            }
            let val = rule.key(&local[i], nr);
            let new_period = last != Some(val);
            let oldest = nr + 1 == candidates.len();
            if new_period || oldest {
                last = Some(val);
                let slot = count - left + 1;
                left -= 1;
                keep(
                    &mut decisions[i],
                    Reason::Rule {
                        rule,
                        slot,
                        of: count,
                        period: rule.period(&local[i]),
                        oldest: !new_period,
                    },
                );
            }
        }
    }

    // The newest full (not in the future) is never deleted.
    if let Some(&i) = fulls.first() {
        keep(&mut decisions[i], Reason::NewestFull);
    }

    // Future-dated backups are kept and reported; they took no slot above.
    for d in decisions.iter_mut().filter(|d| d.stopped_at > now) {
        keep(d, Reason::Future);
        warnings.push(format!(
            "backup {} stopped at {}, after now ({}): kept; check the clocks",
            d.id,
            d.stopped_at.to_rfc3339(),
            now.to_rfc3339()
        ));
    }

    // Every ancestor of a kept incremental is kept (newest kept child named).
    let index: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(pos, &i)| (backups[i].id.as_str(), pos))
        .collect();
    let ancestors: Vec<&[String]> = order
        .iter()
        .map(|&i| backups[i].ancestors.as_slice())
        .collect();
    let mut work: Vec<usize> = (0..decisions.len())
        .filter(|&i| decisions[i].keep && !ancestors[i].is_empty())
        .collect();
    work.reverse(); // pop() takes the newest first
    let mut missing_reported = std::collections::HashSet::new();
    while let Some(child) = work.pop() {
        for parent in ancestors[child] {
            match index.get(parent.as_str()) {
                Some(&p) => {
                    let has = decisions[p]
                        .reasons
                        .iter()
                        .any(|r| matches!(r, Reason::ParentOf { .. }));
                    if !has {
                        let was_kept = decisions[p].keep;
                        let child_id = decisions[child].id.clone();
                        keep(&mut decisions[p], Reason::ParentOf { child: child_id });
                        if !was_kept && !ancestors[p].is_empty() {
                            work.push(p);
                        }
                    }
                }
                None => {
                    if missing_reported.insert((child, parent.clone())) {
                        warnings.push(format!(
                            "kept incremental {} needs ancestor {parent}, which is not in this repository",
                            decisions[child].id
                        ));
                    }
                }
            }
        }
    }

    Plan {
        decisions,
        warnings,
    }
}
