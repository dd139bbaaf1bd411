//! What is due for one job, from its schedules, its persisted last fires and the time (pure).

use crate::catalogue::CatchUp;
use crate::model::{BackupType, Trigger};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::CronSchedule;

/// One job's schedules, strongest (full) first, with the last fire recorded for each type.
#[derive(Debug, Clone)]
pub struct JobSchedule<'a> {
    pub job: &'a str,
    pub entries: Vec<(BackupType, &'a CronSchedule)>,
    /// The last fire handled (run, skipped or caught up) per type; None = never.
    pub last_fire: Vec<(BackupType, Option<DateTime<Utc>>)>,
    /// When the job first appeared (daemon start or catalogue reload); fires before this are
    /// not "missed".
    pub known_since: DateTime<Utc>,
}

/// A decision: run this type now, for this fire time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub backup_type: BackupType,
    pub trigger: Trigger,
    /// The scheduled fire time this run stands for (recorded as the last fire of every type it covers).
    pub fire_time: DateTime<Utc>,
    /// Fires of other (weaker) types at the same time, covered by this run and to be marked handled.
    pub covers: Vec<BackupType>,
}

/// The decision for `now`: None when nothing is due.
pub fn due_now(_job: &JobSchedule<'_>, _now: DateTime<Utc>, _tz: Tz, _catch_up: CatchUp) -> Option<Due> {
    todo!("schedule helper")
}

/// The next fire of the job after `now` (any type), with its type (full wins a tie).
pub fn next_fire(_job: &JobSchedule<'_>, _now: DateTime<Utc>, _tz: Tz) -> Option<(DateTime<Utc>, BackupType)> {
    todo!("schedule helper")
}
