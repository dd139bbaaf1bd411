//! Validation of the alerting keys: `[[alert]]` sinks (webhook, command) and a job's `ping-url`
//! (docs/catalogue.md, docs/alerts.md). A URL holding credentials is refused without echoing it.

use super::fields::{Ctx, Table, suggest, type_name, valid_name};
use super::raw::Value;
use super::{AlertSink, SinkKind};
use crate::model::alerts::EventKind;
use std::collections::BTreeSet;
use std::time::Duration;

const ALERT_KEYS: &[&str] = &[
    "name",
    "kind",
    "url",
    "secret-file",
    "command",
    "events",
    "jobs",
    "remind",
    "timeout",
];

/// The default `timeout` of a sink.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks an alert or ping URL: http(s), no credentials (never echoed), no fragment. Returns it.
pub(crate) fn sink_url(cx: &mut Ctx, key: &str, s: &str) -> Option<String> {
    let parsed = match url::Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            // The text may hold a secret when it does not parse: name the error only.
            cx.error(key, format!("is not a valid URL ({e})"));
            return None;
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        cx.error(
            key,
            "holds credentials (user:password@host); they are not shown here: remove them from \
             the URL and use `secret-file` (HMAC signature) or a token the receiver puts in the path",
        );
        return None;
    }
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            cx.error(
                key,
                format!("scheme `{other}` is not supported: use https:// (or http:// for a local receiver)"),
            );
            return None;
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        cx.error(key, "has no host");
        return None;
    }
    Some(s.to_string())
}

/// A job's `ping-url`.
pub(crate) fn ping_url(cx: &mut Ctx, t: &Table) -> Option<String> {
    let s = t.text(cx, "ping-url")?;
    sink_url(cx, &t.key("ping-url"), s.trim_end_matches('/'))
}

/// The `[[alert]]` array. `job_names` are the catalogue's jobs (for `jobs`).
pub(crate) fn sinks(cx: &mut Ctx, root: &Table, job_names: &BTreeSet<&str>) -> Vec<AlertSink> {
    let items = match root.get("alert") {
        None => return Vec::new(),
        Some(Value::Array(_, items)) => items,
        Some(Value::Dict(..)) => {
            cx.error(
                "alert",
                "expected an array of tables, found a table: write [[alert]] (double brackets) before each sink",
            );
            return Vec::new();
        }
        Some(other) => {
            cx.error(
                "alert",
                format!(
                    "expected an array of tables ([[alert]]), found {}",
                    type_name(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Dict(_, dict) = item else {
            cx.error(
                &format!("alert[{i}]"),
                format!("expected a table ([[alert]]), found {}", type_name(item)),
            );
            continue;
        };
        let key = match dict.get("name") {
            Some(Value::String(_, name)) if !name.is_empty() => format!("alert[{i}] {name:?}"),
            _ => format!("alert[{i}]"),
        };
        let t = Table::new(key, dict);
        if let Some(sink) = sink(cx, &t, job_names) {
            if !seen.insert(sink.name.clone()) {
                cx.error(
                    &t.key("name"),
                    format!("another [[alert]] is already named \"{}\"", sink.name),
                );
                continue;
            }
            out.push(sink);
        }
    }
    out
}

fn sink(cx: &mut Ctx, t: &Table, job_names: &BTreeSet<&str>) -> Option<AlertSink> {
    t.check_keys(cx, ALERT_KEYS, &|_| None);
    let name = match t.text(cx, "name") {
        Some(n) if valid_name(n) => Some(n.to_string()),
        Some(n) => {
            cx.error(
                &t.key("name"),
                format!("\"{n}\" is not a valid name: use letters, digits, `-` and `_`"),
            );
            None
        }
        None => {
            if t.get("name").is_none() {
                t.missing(cx, "name", "a name for this sink, e.g. \"ops\"");
            }
            None
        }
    };
    let kind = match t.choice(cx, "kind", &["webhook", "command"]) {
        Some("webhook") => {
            let url = match t.text(cx, "url") {
                Some(u) => sink_url(cx, &t.key("url"), u),
                None => {
                    if t.get("url").is_none() {
                        t.missing(cx, "url", "the URL events are POSTed to");
                    }
                    None
                }
            };
            let secret_file = t.existing_file(cx, "secret-file", "secret file");
            if let Some(p) = &secret_file
                && let Err(e) = crate::secrets::check_private(p)
            {
                cx.error(&t.key("secret-file"), e.to_string());
            }
            if t.get("command").is_some() {
                cx.error(
                    &t.key("command"),
                    "is for kind = \"command\"; a webhook takes `url`",
                );
            }
            url.map(|url| SinkKind::Webhook { url, secret_file })
        }
        Some(_) => {
            let command: Vec<String> = t
                .strings(cx, "command")
                .unwrap_or_default()
                .into_iter()
                .map(|(_, s)| s.to_string())
                .collect();
            for k in ["url", "secret-file"] {
                if t.get(k).is_some() {
                    cx.error(
                        &t.key(k),
                        "is for kind = \"webhook\"; a command sink takes `command`",
                    );
                }
            }
            if command.is_empty() {
                if t.get("command").is_none() {
                    t.missing(
                        cx,
                        "command",
                        "the program and its arguments, e.g. [\"/usr/local/bin/page-oncall\"]",
                    );
                } else {
                    cx.error(&t.key("command"), "must name a program");
                }
                None
            } else {
                Some(SinkKind::Command { command })
            }
        }
        None => {
            if t.get("kind").is_none() {
                t.missing(cx, "kind", "\"webhook\" or \"command\"");
            }
            None
        }
    };
    let mut events = Vec::new();
    for (k, e) in t.strings(cx, "events").unwrap_or_default() {
        match e.parse::<EventKind>() {
            Ok(kind) => events.push(kind),
            Err(_) => {
                let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                let hint = suggest(e, all.iter().copied())
                    .map(|s| format!("did you mean \"{s}\"? "))
                    .unwrap_or_default();
                cx.error(
                    &k,
                    format!("unknown event \"{e}\"; {hint}events: {}", all.join(", ")),
                );
            }
        }
    }
    let mut jobs = Vec::new();
    for (k, j) in t.strings(cx, "jobs").unwrap_or_default() {
        if !job_names.contains(j) {
            let hint = suggest(j, job_names.iter().copied())
                .map(|s| format!("; did you mean \"{s}\"?"))
                .unwrap_or_default();
            cx.error(&k, format!("no job is named \"{j}\"{hint}"));
        }
        jobs.push(j.to_string());
    }
    let remind = t.duration(cx, "remind", false);
    let timeout = t
        .duration(cx, "timeout", false)
        .unwrap_or(DEFAULT_SINK_TIMEOUT);
    Some(AlertSink {
        name: name?,
        kind: kind?,
        events,
        jobs,
        remind,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::catalogue::{SinkKind, parse_str};
    use crate::model::alerts::EventKind;
    use std::path::Path;

    fn catalogue(job_extra: &str, extra: &str) -> String {
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        format!(
            r#"
[postgres]
url = "postgresql://bdc_backup@localhost/bdc_db"
[encryption]
recipients = ["{recipient}"]
[repository.local]
url = "file:///backups"
[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["bdc_db"]
repositories = ["local"]
{job_extra}
{extra}"#
        )
    }

    fn errors(text: &str) -> Vec<(String, String)> {
        match parse_str(text, Path::new("/etc/bdc-backup/catalogue.toml"), &[]) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        }
    }

    #[test]
    fn sinks_and_ping_url_parse() {
        let text = catalogue(
            r#"ping-url = "https://hc-ping.com/0b1c/""#,
            r#"
[[alert]]
name = "ops"
kind = "webhook"
url = "https://hooks.example.net/backup?token=abc"
events = ["run-failed", "stale"]
jobs = ["db-dump"]
remind = "6h"
timeout = "5s"

[[alert]]
name = "pager"
kind = "command"
command = ["/usr/local/bin/page-oncall", "--team", "db"]
"#,
        );
        let c = parse_str(&text, Path::new("/tmp/c.toml"), &[]).expect("valid");
        assert_eq!(
            c.jobs[0].ping_url.as_deref(),
            Some("https://hc-ping.com/0b1c")
        );
        assert_eq!(c.alerts.len(), 2);
        let ops = &c.alerts[0];
        assert!(
            matches!(&ops.kind, SinkKind::Webhook { url, secret_file: None } if url.ends_with("token=abc"))
        );
        assert_eq!(ops.events, vec![EventKind::RunFailed, EventKind::Stale]);
        assert_eq!(ops.remind, Some(std::time::Duration::from_secs(6 * 3600)));
        assert!(ops.wants(EventKind::RunFailed, Some("db-dump")));
        assert!(!ops.wants(EventKind::Fresh, Some("db-dump")));
        assert!(!ops.wants(EventKind::RunFailed, Some("other")));
        assert!(ops.wants(EventKind::AlertTest, None));
        let pager = &c.alerts[1];
        assert!(matches!(&pager.kind, SinkKind::Command { command } if command.len() == 3));
        assert_eq!(pager.timeout, super::DEFAULT_SINK_TIMEOUT);
        assert!(pager.wants(EventKind::CapacityLow, None));
    }

    #[test]
    fn credentials_in_a_url_are_refused_without_echoing_them() {
        let text = catalogue(
            r#"ping-url = "https://user:hunter2@hc-ping.com/abc""#,
            r#"
[[alert]]
name = "ops"
kind = "webhook"
url = "https://bob:s3cret-token@hooks.example.net/backup"
"#,
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].0, "job[0] \"db-dump\".ping-url");
        assert_eq!(errs[1].0, "alert[0] \"ops\".url");
        for (_, m) in &errs {
            assert!(m.contains("holds credentials"), "{m}");
            assert!(
                !m.contains("s3cret") && !m.contains("hunter2") && !m.contains("bob"),
                "{m}"
            );
        }
    }

    #[test]
    fn unknown_events_jobs_and_kinds_are_named() {
        let text = catalogue(
            "",
            r#"
[[alert]]
name = "ops"
kind = "webhook"
url = "ftp://hooks.example.net/x"
events = ["run-faild", "everything"]
jobs = ["db-dunp"]

[[alert]]
name = "ops"
kind = "pager"

[[alert]]
kind = "command"
"#,
        );
        let errs = errors(&text);
        let find = |k: &str| {
            errs.iter()
                .find(|(key, _)| key == k)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| panic!("no error for {k}: {errs:?}"))
        };
        assert!(find("alert[0] \"ops\".url").contains("scheme `ftp`"));
        let e0 = find("alert[0] \"ops\".events[0]");
        assert!(e0.contains("did you mean \"run-failed\"?"), "{e0}");
        assert!(
            e0.contains("run-failed, run-recovered, stale, fresh"),
            "{e0}"
        );
        let e1 = find("alert[0] \"ops\".events[1]");
        assert!(
            e1.starts_with("unknown event \"everything\"; events: "),
            "{e1}"
        );
        assert!(find("alert[0] \"ops\".jobs[0]").contains("did you mean \"db-dump\"?"));
        assert!(find("alert[1] \"ops\".kind").contains("\"pager\" is not one of"));
        assert!(find("alert[2].name").starts_with("missing"));
        assert!(find("alert[2].command").starts_with("missing"));
    }
}
