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
                    cx.error(&t.key(k), "is for kind = \"webhook\"; a command sink takes `command`");
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
