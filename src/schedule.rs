//! Cron schedules in the catalogue's timezone and the pure decision of what is due (docs/design.md §2).
//!
//! [`cron`]: parsing (5 fields, optional seconds, Vixie day-of-month/day-of-week OR) and the next
//! fire after an instant in a timezone, DST-correct (a time in a gap fires right after the gap, an
//! ambiguous time fires once). [`plan`]: given the persisted last fires and the clock, which run
//! type is due for a job now (full wins over incremental; catch-up of the strongest missed type).
//! The exact rules, with worked DST examples, are in docs/scheduling.md.

pub mod cron;
pub mod plan;

pub use cron::{CronError, CronSchedule};
pub use plan::{CATCH_UP_TOLERANCE, CatchUp, Due, JobSchedule, due_now, next_fire};
