//! Tests of catalogue loading, continued: cross-references, every job kind's keys, repositories,
//! recipients, value shapes, the example catalogue, verify jobs, metrics, WAL streaming keys.

use super::*;

#[test]
fn cross_references_between_jobs() {
    let text = small(
        r#"
[repository.offsite]
url = "gs://bdc-backups/prod"
wal-ack = "async"

[objectives.database]
jobs = ["db-dump", "db"]
rpo = "5m"

[[job]]
name = "base"
kind = "postgres-base"
full = "0 4 * * 0"
wal-job = "db-dump"
repositories = ["local"]

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["offsite"]

[[job]]
name = "db-dump"
kind = "verify"
schedule = "0 6 * * *"
jobs = ["uploads"]
repositories = ["local"]
"#,
    );
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "postgres.data-directory",
                "missing: the postgres-base job \"base\" needs the cluster's data directory here"
            ),
            (
                "job[3] \"db-dump\".name",
                "duplicate job name \"db-dump\" (already used by job[0] \"db-dump\")"
            ),
            (
                "job[1] \"base\".wal-job",
                "job \"db-dump\" is a postgres-dump job, not a postgres-wal job"
            ),
            (
                "job[2] \"wal\".repositories",
                "a postgres-wal job needs at least one repository with wal-ack = \"sync\" (a WAL segment is acknowledged to PostgreSQL only once it is durable there)"
            ),
            ("job[3] \"db-dump\".jobs[0]", "no job is named \"uploads\""),
            ("objectives.database.jobs[1]", "no job is named \"db\""),
        ])
    );
}

#[test]
fn every_job_kind_checks_its_required_keys() {
    let text = small(
        r#"
[[job]]
name = "d"
kind = "postgres-dump"
[[job]]
name = "f"
kind = "files"
repositories = []
[[job]]
name = "c"
kind = "config"
paths = []
repositories = ["local"]
[[job]]
kind = "backup"
repositories = ["local"]
"#,
    );
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "job[1] \"d\".repositories",
                "missing: every job needs `repositories`: at least one [repository.NAME]"
            ),
            (
                "job[1] \"d\".schedule",
                "missing: a postgres-dump job needs `schedule`, a cron expression such as \"0 2 * * *\""
            ),
            (
                "job[1] \"d\".databases",
                "missing: a postgres-dump job needs `databases`, e.g. [\"bdc_db\"]"
            ),
            (
                "job[2] \"f\".repositories",
                "must name at least one repository"
            ),
            (
                "job[2] \"f\".path",
                "missing: a files job needs `path`, the folder to back up"
            ),
            (
                "job[2] \"f\".full",
                "missing: a files job needs `full`, a cron expression such as \"0 4 * * 0\""
            ),
            ("job[3] \"c\".paths", "must name at least one file"),
            (
                "job[3] \"c\".schedule",
                "missing: a config job needs `schedule`, a cron expression such as \"*/30 * * * *\""
            ),
            ("job[4].name", "missing: every job needs a `name`"),
            (
                "job[4].kind",
                "\"backup\" is not one of \"postgres-dump\", \"postgres-base\", \"postgres-wal\", \"files\", \"config\", \"verify\""
            ),
        ])
    );
}

#[test]
fn repository_urls_and_values() {
    let text = small(
        r#"
[repository.a]
url = "file://backups"
[repository.b]
url = "http://example.net/x"
[repository.c]
url = "az://container/pre/fix"
bandwidth-limit = "20 furlongs"
[repository.d]
url = "s3://bucket"
bandwidth-limit = "20MiB"
wal-ack = "maybe"
[repository.e]
url = "file:///srv/backups"
region = "eu-central-1"
[retention.empty]
[retention.zero]
daily = 0
[retention.big]
daily = -1
keep-within = "forever"
"#,
    )
    .replace("recipients = [", "recipients = [\"age1notakey\", ");
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "encryption.recipients[0]",
                "\"age1notakey\" is not an age X25519 recipient (invalid Bech32 encoding); expected a public key starting with age1"
            ),
            (
                "repository.a.url",
                "a file URL needs an absolute path: write file:///PATH (three slashes)"
            ),
            (
                "repository.b.url",
                "unsupported scheme http://; use file://, s3://, gs:// or az://"
            ),
            (
                "repository.c.bandwidth-limit",
                "\"20 furlongs\" is not a size: unknown unit \"furlongs\" (use B, KB, MB, GB, KiB, MiB or GiB); write e.g. \"20MiB\" (bytes per second)"
            ),
            (
                "repository.d.wal-ack",
                "\"maybe\" is not one of \"sync\", \"async\""
            ),
            (
                "repository.e.region",
                "has no meaning for a file:// repository; remove it"
            ),
            (
                "retention.big.daily",
                "-1 is out of range: must be between 0 and 4294967295"
            ),
            (
                "retention.big.keep-within",
                "\"forever\" is not a duration (expected number at 0); write e.g. \"90s\", \"5m\", \"1h\", \"14d\""
            ),
            (
                "retention.empty",
                "keeps nothing: set at least one of last, hourly, daily, weekly, monthly, yearly (above 0) or keep-within"
            ),
            (
                "retention.zero",
                "keeps nothing: set at least one of last, hourly, daily, weekly, monthly, yearly (above 0) or keep-within"
            ),
        ])
    );
}

#[test]
fn recipients_are_required_and_secret_keys_refused() {
    let text = small("").replace("recipients = [", "recipients = [] #");
    assert_eq!(
        errors(&text),
        pairs(&[(
            "encryption.recipients",
            "must list at least one age recipient (age1…)"
        )])
    );
    let text = small("").replace("[encryption]\nrecipients", "[encryption]\nunused");
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "encryption.unused",
                "unknown key `unused`; allowed here: recipients, identity-file"
            ),
            (
                "encryption.recipients",
                "missing: at least one age recipient is required because every backup is encrypted (make a key pair with `bdc-backupctl keygen`)"
            ),
        ])
    );
    let secret = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&secret.to_string()).to_string();
    let text = small("").replace("recipients = [", &format!("recipients = [\"{secret}\", "));
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, "encryption.recipients[0]");
    assert!(
        errs[0].1.starts_with("this is an age SECRET key"),
        "{}",
        errs[0].1
    );
    assert!(!errs[0].1.contains(&secret));
}

#[test]
fn wrong_shapes_are_named() {
    let text = small("")
        .replace("[[job]]", "[job]")
        .replace("[repository.local]", "[repository]");
    let errs = errors(&text);
    assert_eq!(
        errs,
        pairs(&[
            (
                "repository.url",
                "expected a table, found a string: each repository is its own table, e.g. [repository.local]"
            ),
            (
                "job",
                "expected an array of tables, found a table: write [[job]] (double brackets) before each job"
            ),
        ])
    );
}

#[test]
fn example_catalogue_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/bdc-backup/catalogue.toml");
    let c = match Catalogue::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let dump = c.job("db-dump").expect("the example has the db-dump job");
    let JobSpec::PostgresDump(d) = &dump.spec else {
        panic!("db-dump is not a dump job")
    };
    assert_eq!(d.schedule.as_str(), "0 2 * * *");
    assert_eq!(d.databases, ["bdc_db"]);
    assert!(d.globals);
    assert_eq!(
        c.retention[dump.retention.as_deref().expect("retention")],
        RetentionPolicy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            yearly: Some(5),
            ..Default::default()
        }
    );
    assert!(!c.objectives.is_empty());
}

#[test]
fn example_validates_with_its_nightly_verify_job() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/bdc-backup/catalogue.toml");
    let text = std::fs::read_to_string(&path).expect("read the example");
    let mut out = String::new();
    for line in text.lines() {
        let rest = line.strip_prefix("# ").unwrap_or_default();
        out.push_str(if rest.starts_with("data-directory") {
            rest
        } else {
            line
        });
        out.push('\n');
    }
    let c = match parse_str(&out, &path, &[]) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "db-dump",
            "uploads",
            "config",
            "db",
            "wal",
            "nightly-verify"
        ]
    );
    let crate::catalogue::JobSpec::Verify(v) = &c.job("nightly-verify").unwrap().spec else {
        panic!("not a verify job")
    };
    let tables: Vec<&str> = v.drill.checks.iter().map(|c| c.sql.as_str()).collect();
    assert_eq!(
        tables,
        [
            "SELECT count(*) FROM users",
            "SELECT count(*) FROM beneficiaries",
            "SELECT count(*) FROM programs"
        ]
    );
}

#[test]
fn dates_and_floats_are_named_as_such() {
    let text = small("[daemon]\ntimezone = 1979-05-27\nmax-concurrent-runs = 2.5\n");
    assert_eq!(
        errors(&text),
        pairs(&[
            ("daemon.timezone", "expected a string, found a date-time"),
            (
                "daemon.max-concurrent-runs",
                "expected an integer, found a float"
            ),
        ])
    );
}

#[test]
fn a_mistyped_section_is_one_error() {
    let text = small("").replace(
        "[postgres]\nurl = \"postgresql://bdc_backup@localhost/bdc_db\"",
        "postgres = \"postgresql://bdc_backup@localhost/bdc_db\"",
    );
    assert_eq!(
        errors(&text),
        pairs(&[("postgres", "expected a table ([postgres]), found a string")])
    );
}

#[test]
fn base_job_chain_and_wal_timeout() {
    let text = small(
        r#"
[[job]]
name = "db"
kind = "postgres-base"
full = "0 4 * * 0"
wal-job = "wal"
max-chain = 6
wal-timeout = "90s"
repositories = ["local"]

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local"]
"#,
    )
    .replace(
        "[encryption]",
        "data-directory = \"/var/lib/postgresql/15/main\"\n\n[encryption]",
    );
    let c = parse(&text).expect("valid");
    let JobSpec::PostgresBase(b) = &c.job("db").expect("db").spec else {
        panic!("not base")
    };
    assert_eq!(b.max_chain, Some(6));
    assert_eq!(b.wal_timeout, Some(Duration::from_secs(90)));
    let bad = text.replace("wal-timeout = \"90s\"", "wal-timeout = \"soon\"");
    let errs = errors(&bad);
    assert!(
        errs.iter().any(|(k, _)| k == "job[1] \"db\".wal-timeout"),
        "{errs:?}"
    );
}

#[test]
fn repository_call_timeout_is_a_duration() {
    let c = parse(&small(
        "[repository.slow]\nurl = \"file:///srv/slow\"\ncall-timeout = \"2s\"\n",
    ))
    .unwrap();
    let slow = c.repository("slow").unwrap();
    assert_eq!(slow.call_timeout, Some(Duration::from_secs(2)));
    assert_eq!(c.repository("local").map(|r| r.call_timeout), Some(None));
    let errs = errors(&small(
        "[repository.slow]\nurl = \"file:///srv/slow\"\ncall-timeout = \"soon\"\n",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "repository.slow.call-timeout");
}

#[test]
fn verify_job_keys_and_defaults() {
    let text = small(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "/app/uploads"
full = "0 4 * * 0"
repositories = ["local"]

[[job]]
name = "drill"
kind = "verify"
schedule = "0 5 * * *"
jobs = ["db-dump", "uploads"]
integrity = "full"
budget = "5m"
drills = false
drill-url = "postgresql://bdc_drill@localhost:5432/postgres"
files-sample = 7

[[job.check]]
job = "db-dump"
name = "users present"
sql = "SELECT count(*) FROM users"
min = 1

[[job.check]]
job = "db-dump"
sql = "SELECT 'x'"
equals = "x"

[[job]]
name = "nightly"
kind = "verify"
schedule = "0 6 * * *"
"#,
    );
    let c = parse(&text).expect("valid");
    let crate::catalogue::JobSpec::Verify(v) = &c.job("drill").unwrap().spec else {
        panic!("not a verify job")
    };
    assert_eq!(v.jobs, vec!["db-dump", "uploads"]);
    assert_eq!(v.integrity, crate::catalogue::IntegrityMode::Full);
    assert_eq!(v.budget, Duration::from_secs(300));
    assert!(!v.drills);
    assert_eq!(v.drill.files_sample, 7);
    assert_eq!(v.drill.checks.len(), 2);
    assert_eq!(v.drill.checks[0].expect.min, Some(1.0));
    assert_eq!(v.drill.checks[1].expect.equals.as_deref(), Some("x"));
    assert!(c.job("drill").unwrap().repositories.is_empty());
    let crate::catalogue::JobSpec::Verify(n) = &c.job("nightly").unwrap().spec else {
        panic!("not a verify job")
    };
    assert_eq!(n.integrity, crate::catalogue::IntegrityMode::Sample);
    assert!(n.drills && n.jobs.is_empty());
    assert_eq!(
        n.drill.scratch_directory,
        c.daemon.state_directory.join("drills")
    );
}

#[test]
fn verify_job_errors_name_the_job() {
    let text = small(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "/app/uploads"
full = "0 4 * * 0"
repositories = ["local"]

[[job]]
name = "drill"
kind = "verify"
schedule = "0 5 * * *"
jobs = ["db-dump", "uploads"]
integrity = "most"
drill-url = "postgresql://bdc_drill:secret@localhost/postgres"

[[job.check]]
job = "uploads"
sql = "SELECT 1"
min = 1

[[job.check]]
job = "db-dump"
sql = "SELECT 1"

[[job.check]]
job = "nope"
sql = "SELECT 1"
max = "ten"
"#,
    );
    let found = errors(&text);
    let has = |key: &str, part: &str| {
        assert!(
            found.iter().any(|(k, m)| k == key && m.contains(part)),
            "no error {key}: …{part}… in {found:#?}"
        )
    };
    has("job[2] \"drill\".integrity", "\"most\" is not one of");
    has("job[2] \"drill\".drill-url", "contains a password");
    has("job[2] \"drill\".check[0].job", "is a files job");
    has(
        "job[2] \"drill\".check[1]",
        "set at least one of min, max, equals",
    );
    has("job[2] \"drill\".check[2].job", "no job is named \"nope\"");
    has("job[2] \"drill\".check[2].max", "expected a number");
}

#[test]
fn a_check_must_be_covered_by_its_verify_job() {
    let text = small(
        r#"
[[job]]
name = "other-dump"
kind = "postgres-dump"
schedule = "0 3 * * *"
databases = ["x"]
repositories = ["local"]

[[job]]
name = "drill"
kind = "verify"
schedule = "0 5 * * *"
jobs = ["db-dump"]

[[job.check]]
job = "other-dump"
sql = "SELECT 1"
min = 1
"#,
    );
    assert_eq!(
        errors(&text),
        pairs(&[(
            "job[2] \"drill\".check[0].job",
            "job \"other-dump\" is not covered by this verify job (its `jobs`: db-dump); add it there"
        )])
    );
}

#[test]
fn metrics_listen_must_be_an_address_and_port() {
    let ok = parse(&format!(
        "[daemon]\nmetrics-listen = \"127.0.0.1:9187\"\nmetrics-file = \"/var/lib/node/bdc.prom\"\n{}",
        small("")
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok.daemon.metrics_listen,
        Some("127.0.0.1:9187".parse().unwrap())
    );
    assert_eq!(
        ok.daemon.metrics_file.as_deref(),
        Some(Path::new("/var/lib/node/bdc.prom"))
    );
    assert_eq!(parse(&small("")).unwrap().daemon.metrics_listen, None);
    assert_eq!(
        errors(&format!(
            "[daemon]\nmetrics-listen = \"localhost\"\n{}",
            small("")
        )),
        pairs(&[(
            "daemon.metrics-listen",
            "\"localhost\" is not an address and port; write e.g. \"127.0.0.1:9187\""
        )])
    );
}

#[test]
fn wal_streaming_keys() {
    let base = small(
        r#"
[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local"]
"#,
    );
    let c = parse(&base).expect("valid");
    let JobSpec::PostgresWal(w) = &c.job("wal").expect("wal").spec else {
        panic!("not wal")
    };
    assert_eq!(w.stream, None);
    let on = base.replace(
        "kind = \"postgres-wal\"",
        "kind = \"postgres-wal\"\nstream = true",
    );
    let c = parse(&on).expect("streaming is accepted");
    let JobSpec::PostgresWal(w) = &c.job("wal").expect("wal").spec else {
        panic!("not wal")
    };
    let s = w.stream.as_ref().expect("stream on");
    assert_eq!(s.slot, "bdc_backup");
    assert!(!s.synchronous);
    assert_eq!(s.partial_interval, std::time::Duration::from_secs(5));
    let bad = on.replace(
        "stream = true",
        "stream = true\nslot = \"Bad-Slot\"\npartial-interval = \"0s\"",
    );
    let errs = errors(&bad);
    assert!(
        errs.iter()
            .any(|(k, m)| k == "job[1] \"wal\".slot" && m.contains("Bad-Slot")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|(k, _)| k == "job[1] \"wal\".partial-interval"),
        "{errs:?}"
    );
    let off = base.replace(
        "kind = \"postgres-wal\"",
        "kind = \"postgres-wal\"\nslot = \"s1\"",
    );
    assert_eq!(
        errors(&off),
        pairs(&[(
            "job[1] \"wal\".slot",
            "only meaningful with `stream = true`"
        )])
    );
}

#[test]
fn application_version_command_is_validated() {
    let c = parse(&small(
        "\n[application]\nversion-command = [\"git\", \"-C\", \"/app\", \"rev-parse\", \"HEAD\"]\n",
    ))
    .unwrap();
    let app = c.application.expect("[application]");
    assert_eq!(
        app.version_command,
        ["git", "-C", "/app", "rev-parse", "HEAD"]
    );
    assert_eq!(app.version_timeout, Duration::from_secs(10));
    assert!(parse(&small("")).unwrap().application.is_none());
    let got = errors(&small(
        "\n[application]\nversion-command = []\nversion-timeout = \"soon\"\ncolour = 1\n",
    ));
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"application.version-command"), "{got:?}");
    assert!(keys.contains(&"application.colour"), "{got:?}");
    let got = errors(&small("\n[application]\nversion-timeout = \"5s\"\n"));
    assert_eq!(got[0].0, "application.version-command", "{got:?}");
    assert!(got[0].1.starts_with("missing"), "{got:?}");
}
