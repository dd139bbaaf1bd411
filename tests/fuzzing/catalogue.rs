//! Near-valid catalogues: the real sections and keys of docs/catalogue.md, each value drawn from
//! valid and invalid forms (or any string), for the catalogue loader's fuzz target.

use proptest::prelude::*;
use proptest::sample::select;

pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A value for a key: mostly from the pool (valid and invalid forms), sometimes any string.
pub fn value(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(pool).prop_map(String::from),
        1 => ".{0,12}".prop_map(|s| toml_string(&s)),
        1 => select(&["1", "-1", "0", "true", "[]", "{}", "1.5", "99999999999999999999"][..])
            .prop_map(String::from),
    ]
}

pub const DURATIONS: &[&str] = &[
    "\"30s\"",
    "\"5m\"",
    "\"26h\"",
    "\"14d\"",
    "\"0s\"",
    "\"\"",
    "\"-1s\"",
    "\"1 fortnight\"",
    "\"18446744073709551615s\"",
    "\"9999999999999999d\"",
    "\"1h 30m\"",
];
pub const CRONS: &[&str] = &[
    "\"0 2 * * *\"",
    "\"*/30 * * * *\"",
    "\"0 4 * * 0\"",
    "\"60 * * * *\"",
    "\"* * * * * * *\"",
    "\"@daily\"",
    "\"@reboot\"",
    "\"0 0 31 2 *\"",
    "\"*/0 * * * *\"",
    "\"5-1 * * * *\"",
    "\"0 0 L * *\"",
    "\"0 0 * * 5#3\"",
    "\"0 0 ? * MON-FRI\"",
    "\"\"",
    "\"1,,2 * * * *\"",
    "\"0 0 1W * *\"",
    "\"0 0 * * 7L\"",
    "\"99999999999 * * * *\"",
    "\"-1 * * * *\"",
];
pub const REPO_URLS: &[&str] = &[
    "\"file:///tmp/bdc-fuzz-repo\"",
    "\"s3://bucket/prefix\"",
    "\"gs://bucket\"",
    "\"az://container/p\"",
    "\"ftp://host/x\"",
    "\"\"",
    "\"file://\"",
    "\"s3://\"",
    "\"file:///\"",
    "\"relative/path\"",
    "\"s3://b/p?region=x\"",
    "\"az://\"",
];
pub const ZONES: &[&str] = &[
    "\"UTC\"",
    "\"Europe/Istanbul\"",
    "\"Mars/Base\"",
    "\"\"",
    "\"utc\"",
    "\"+03:00\"",
];
pub const NAMES: &[&str] = &[
    "\"db\"",
    "\"wal\"",
    "\"files\"",
    "\"\"",
    "\"a/b\"",
    "\"db\"",
    "\"ü\"",
];
pub const KINDS: &[&str] = &[
    "\"postgres-dump\"",
    "\"postgres-base\"",
    "\"postgres-wal\"",
    "\"files\"",
    "\"config\"",
    "\"verify\"",
    "\"tarball\"",
];
pub const LISTS: &[&str] = &[
    "[\"local\"]",
    "[\"local\", \"offsite\"]",
    "[]",
    "[\"nowhere\"]",
    "[\"local\", \"local\"]",
    "[\"*.tmp\", \"[\"]",
    "[\"/etc/hosts\"]",
    "[\"{a,b}\", \"**/x\"]",
    "[1]",
];
pub const POSITIVE: &[&str] = &["2", "13", "0", "-3", "100000", "\"7\""];

/// A near-valid catalogue: the real sections and keys, values drawn from valid and invalid forms.
pub fn catalogue_text() -> impl Strategy<Value = String> {
    let daemon = prop::collection::vec(
        prop_oneof![
            value(ZONES).prop_map(|v| format!("timezone = {v}")),
            value(POSITIVE).prop_map(|v| format!("max-concurrent-runs = {v}")),
            value(&["\"once\"", "\"skip\"", "\"all\""]).prop_map(|v| format!("catch-up = {v}")),
            value(DURATIONS).prop_map(|v| format!("shutdown-timeout = {v}")),
            value(DURATIONS).prop_map(|v| format!("replica-retry = {v}")),
            value(CRONS).prop_map(|v| format!("retention-schedule = {v}")),
            value(&["\"auto\"", "\"journal\"", "\"stderr\"", "\"syslog\""])
                .prop_map(|v| format!("log = {v}")),
            value(&["\"info\"", "\"debug,sqlx=warn\"", "\"[[\"", "\"=\""])
                .prop_map(|v| format!("log-level = {v}")),
            value(&["\"/tmp/bdc-fuzz/state.db\"", "\"\"", "\"state.db\""])
                .prop_map(|v| format!("state-db = {v}")),
            value(&["\"bdc-backup\"", "\"\"", "\"root\""])
                .prop_map(|v| format!("read-group = {v}")),
        ],
        0..6,
    );
    let postgres = prop::option::of(prop::collection::vec(
        prop_oneof![
            value(&[
                "\"postgresql://u@localhost:5432/db\"",
                "\"postgresql://u:pw@h/db\"",
                "\"postgres://\"",
                "\"http://x\"",
                "\"\"",
                "\"postgresql://h:99999/db\"",
            ])
            .prop_map(|v| format!("url = {v}")),
            value(&["\"/var/lib/postgresql/15/main\"", "\"\"", "\"rel\""])
                .prop_map(|v| format!("data-directory = {v}")),
            value(&["\"/nonexistent/pw\"", "\"/etc/hostname\""])
                .prop_map(|v| format!("password-file = {v}")),
        ],
        0..3,
    ));
    let recipients = value(&[
        "[\"age1seyd6yqn0m6e2k6kkgtf0n4m9n58tjffvqrv7e90kgahzxdwc2gqcdz53w\"]",
        "[\"age1notakey\"]",
        "[]",
        "\"age1seyd6yqn0m6e2k6kkgtf0n4m9n58tjffvqrv7e90kgahzxdwc2gqcdz53w\"",
    ]);
    let repository = (
        select(&["local", "offsite", "x y", "local"][..]),
        value(REPO_URLS),
        prop::option::of(value(&["\"sync\"", "\"async\"", "\"maybe\""])),
        prop::option::of(value(DURATIONS)),
    )
        .prop_map(|(name, url, ack, timeout)| {
            let mut s = format!("[repository.\"{name}\"]\nurl = {url}\n");
            if let Some(a) = ack {
                s += &format!("wal-ack = {a}\n");
            }
            if let Some(t) = timeout {
                s += &format!("timeout = {t}\n");
            }
            s
        });
    let retention = (
        select(&["standard", "short"][..]),
        prop::collection::vec(
            (
                select(&["daily", "weekly", "monthly", "yearly", "hourly"][..]),
                value(POSITIVE),
            ),
            0..4,
        ),
    )
        .prop_map(|(name, keys)| {
            let mut s = format!("[retention.{name}]\n");
            for (k, v) in keys {
                s += &format!("{k} = {v}\n");
            }
            s
        });
    let job_key = prop_oneof![
        value(CRONS).prop_map(|v| format!("schedule = {v}")),
        value(CRONS).prop_map(|v| format!("full = {v}")),
        value(CRONS).prop_map(|v| format!("incremental = {v}")),
        value(LISTS).prop_map(|v| format!("repositories = {v}")),
        value(&["\"standard\"", "\"short\"", "\"none\""]).prop_map(|v| format!("retention = {v}")),
        value(DURATIONS).prop_map(|v| format!("max-age = {v}")),
        value(DURATIONS).prop_map(|v| format!("pitr-window = {v}")),
        value(POSITIVE).prop_map(|v| format!("max-chain = {v}")),
        value(&["\"/tmp\"", "\"\"", "\"relative\"", "\"/nonexistent\""])
            .prop_map(|v| format!("path = {v}")),
        value(LISTS).prop_map(|v| format!("paths = {v}")),
        value(LISTS).prop_map(|v| format!("exclude = {v}")),
        value(&["[\"bdc_db\"]", "[]", "[\"\"]"]).prop_map(|v| format!("databases = {v}")),
        value(&["true", "false"]).prop_map(|v| format!("globals = {v}")),
        value(&["true", "false"]).prop_map(|v| format!("watch = {v}")),
        value(NAMES).prop_map(|v| format!("wal-job = {v}")),
        ".{0,8}".prop_map(|k| format!("{} = 1", toml_string(&k))),
    ];
    let job = (
        value(NAMES),
        value(KINDS),
        prop::collection::vec(job_key, 0..7),
    )
        .prop_map(|(name, kind, keys)| {
            format!(
                "[[job]]\nname = {name}\nkind = {kind}\n{}\n",
                keys.join("\n")
            )
        });
    (
        daemon,
        postgres,
        recipients,
        prop::collection::vec(repository, 0..3),
        prop::collection::vec(retention, 0..2),
        prop::collection::vec(job, 0..4),
    )
        .prop_map(|(daemon, postgres, recipients, repos, retention, jobs)| {
            let mut s = format!("[daemon]\n{}\n", daemon.join("\n"));
            if let Some(pg) = postgres {
                s += &format!("[postgres]\n{}\n", pg.join("\n"));
            }
            s += &format!("[encryption]\nrecipients = {recipients}\n");
            s += &repos.concat();
            s += &retention.concat();
            s += &jobs.concat();
            s
        })
}
