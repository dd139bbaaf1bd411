//! Human-readable output of `alerts` and of the objectives in `status`.

use super::output::{table, time};
use crate::health::human;
use crate::model::alerts::{AlertsReport, ObjectiveHealth};
use std::fmt::Write;

/// OBJECTIVE / STATE / RPO (target) / RTO (target) / WHY.
pub fn objectives(list: &[ObjectiveHealth]) -> String {
    let figure = |v: Option<i64>, target: Option<u64>, none: &str| {
        let now = v.map_or_else(|| none.to_string(), human);
        match target {
            Some(t) => format!("{now} (target {})", human(t as i64)),
            None => format!("{now} (no target)"),
        }
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.state.as_str().to_string(),
                figure(o.rpo_seconds, o.target_rpo_seconds, "none"),
                figure(o.rto_seconds, o.target_rto_seconds, "unknown"),
                if o.reason.is_empty() {
                    "-".to_string()
                } else {
                    o.reason.clone()
                },
            ]
        })
        .collect();
    table(&["OBJECTIVE", "STATE", "RPO", "RTO", "WHY"], &rows)
}

pub fn alerts(report: &AlertsReport) -> String {
    let mut out = String::new();
    if report.open.is_empty() {
        out.push_str("no open alerts\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .open
            .iter()
            .map(|a| {
                vec![
                    a.event.to_string(),
                    a.job
                        .clone()
                        .or_else(|| a.objective.clone())
                        .unwrap_or_else(|| "-".into()),
                    time(a.since),
                    a.summary.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["OPEN", "JOB/OBJECTIVE", "SINCE", "SUMMARY"],
            &rows,
        ));
    }
    out.push('\n');
    if report.sinks.is_empty() {
        out.push_str("no [[alert]] sinks in the catalogue\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .sinks
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.kind.clone(),
                    s.target.clone(),
                    s.pending.to_string(),
                    s.delivered.to_string(),
                    s.gave_up.to_string(),
                    match (&s.last_error, s.last_error_at) {
                        (Some(e), Some(at)) => format!("{} {e}", time(at)),
                        (Some(e), None) => e.clone(),
                        _ => "-".into(),
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "SINK",
                "KIND",
                "TARGET",
                "PENDING",
                "DELIVERED",
                "GAVE UP",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    if !report.recent.is_empty() {
        let _ = writeln!(out, "\nrecent deliveries:");
        let rows: Vec<Vec<String>> = report
            .recent
            .iter()
            .map(|d| {
                let state = match (d.delivered_at, d.gave_up_at) {
                    (Some(t), _) => format!("delivered {}", time(t)),
                    (None, Some(t)) => format!("gave up {}", time(t)),
                    (None, None) => format!("pending (next {})", time(d.next_attempt_at)),
                };
                vec![
                    d.id.to_string(),
                    d.sink.clone(),
                    d.event.to_string(),
                    d.job.clone().unwrap_or_else(|| "-".into()),
                    time(d.created_at),
                    d.attempts.to_string(),
                    state,
                    d.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "ID",
                "SINK",
                "EVENT",
                "JOB",
                "AT",
                "ATTEMPTS",
                "STATE",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    out
}
