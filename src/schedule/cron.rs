//! Cron expressions (croner) evaluated in a timezone (chrono-tz).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed cron expression. Displays as written.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    source: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid cron expression `{expression}`: {reason}")]
pub struct CronError {
    pub expression: String,
    pub reason: String,
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<CronSchedule, CronError> {
        Ok(CronSchedule { source: expression.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The first fire strictly after `after`, wall-clock in `tz`.
    pub fn next_after(&self, _after: DateTime<Utc>, _tz: Tz) -> Option<DateTime<Utc>> {
        todo!("schedule helper")
    }
}

impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}
