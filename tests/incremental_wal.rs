//! Block incrementals that read only what the WAL changed (docs/design.md §4, "WAL change
//! tracking"), end to end with the real daemon and PostgreSQL: a chain of incrementals over
//! every kind of change (scattered updates, vacuum truncating a table, TRUNCATE, new and
//! dropped tables and indexes, TOAST, sequences) each restores to its own state, checked by
//! the data; when the WAL's account is incomplete (summaries damaged, a database created) the
//! run says why and reads changed files whole, and still restores.

mod common;

use common::physical::{Fingerprint, Physical, fingerprints};
use std::time::Duration;

const TRACKED: &str = "reads only the blocks the WAL changed";
const WHOLE: &str = "reads every changed file whole";

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

fn restores_each(p: &Physical, runs: &[(serde_json::Value, Fingerprint)]) {
    let pairs: Vec<_> = runs.iter().map(|(r, f)| (r, f)).collect();
    p.restores_each("app", &pairs);
}

#[test]
fn a_chain_of_wal_tracked_incrementals_restores_every_state() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.load_pgbench("app", 5);
    c.psql(
        "app",
        "CREATE TABLE docs (id int PRIMARY KEY, body text); \
         INSERT INTO docs SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 300) g; \
         CREATE TABLE shrinking AS SELECT g, repeat('s', 100) AS pad FROM generate_series(1, 50000) g; \
         CREATE TABLE emptied AS SELECT g FROM generate_series(1, 20000) g; \
         CREATE SEQUENCE seq;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let full = p.backup("--full");
    let mut runs = vec![(full, fingerprints(c.port, "app"))];
    let steps = [
        // Scattered and contiguous updates, TOAST rewritten, a sequence moved.
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 997 = 0; \
         UPDATE pgbench_accounts SET abalance = abalance - 5 WHERE aid BETWEEN 100000 AND 103000; \
         UPDATE docs SET body = repeat(md5((id * 7)::text), 300) WHERE id % 3 = 0; \
         SELECT nextval('seq') FROM generate_series(1, 50);",
        // The end of a table deleted and vacuum truncating it; TRUNCATE (a new file); a new
        // table and index.
        "DELETE FROM shrinking WHERE g > 5000; VACUUM shrinking; \
         TRUNCATE emptied; INSERT INTO emptied VALUES (1), (2); \
         CREATE TABLE fresh AS SELECT g, g * 2 AS h FROM generate_series(1, 30000) g; \
         CREATE INDEX fresh_h ON fresh (h); \
         UPDATE pgbench_branches SET bbalance = bbalance + 1;",
        // A table dropped, another rewritten (VACUUM FULL: new relfilenode), the truncated
        // table growing again, history appended.
        "DROP TABLE docs; VACUUM FULL fresh; \
         INSERT INTO shrinking SELECT g, 'again' FROM generate_series(1, 40000) g; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
           SELECT 1, 1, g, g, now() FROM generate_series(1, 20000) g;",
    ];
    for (i, sql) in steps.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(1100));
        c.psql("app", sql);
        std::thread::sleep(Duration::from_millis(1100));
        let before = count(&p.daemon_log(), TRACKED);
        let run = p.backup("--incremental");
        assert_eq!(run["backup_type"], "incremental", "step {i}: {run}");
        assert_eq!(
            count(&p.daemon_log(), TRACKED),
            before + 1,
            "step {i}: the incremental did not use the WAL:\n{}",
            p.daemon_log()
        );
        runs.push((run, fingerprints(c.port, "app")));
    }
    // The incrementals read far less than the full did.
    let full_read = runs[0].0["bytes_read"].as_u64().unwrap();
    for (run, _) in &runs[1..] {
        let read = run["bytes_read"].as_u64().unwrap();
        assert!(
            read * 3 < full_read,
            "read {read} B, the full {full_read} B: {run}"
        );
    }
    p.switch_wal();
    restores_each(&p, &runs);
}

#[test]
fn an_incomplete_wal_account_reads_changed_files_whole_and_still_restores() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.load_pgbench("app", 2);
    std::thread::sleep(Duration::from_millis(1100));
    let full = p.backup("--full");
    let mut runs = vec![(full, fingerprints(c.port, "app"))];

    // Damaged summaries: named in the log, the run reads every changed file.
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid % 101 = 0;",
    );
    p.switch_wal();
    let dir = p.setup.path("state/wal-changes");
    let mut damaged = 0;
    for f in common::files_under(&dir) {
        std::fs::write(&f, b"not a summary").unwrap();
        damaged += 1;
    }
    assert!(damaged > 0, "no summaries under {}", dir.display());
    std::thread::sleep(Duration::from_millis(1100));
    let before = count(&p.daemon_log(), WHOLE);
    runs.push((p.backup("--incremental"), fingerprints(c.port, "app")));
    let log = p.daemon_log();
    assert_eq!(count(&log, WHOLE), before + 1, "{log}");
    assert!(log.contains("is damaged"), "{log}");

    // A database created: the WAL cannot say which of its files changed.
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid % 77 = 0;",
    );
    c.create_database("other");
    std::thread::sleep(Duration::from_millis(1100));
    runs.push((p.backup("--incremental"), fingerprints(c.port, "app")));
    let log = p.daemon_log();
    assert_eq!(count(&log, WHOLE), before + 2, "{log}");
    assert!(log.contains("a database was created"), "{log}");

    // And the next one is tracked again.
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = abalance + 9 WHERE aid % 55 = 0;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let tracked = count(&p.daemon_log(), TRACKED);
    runs.push((p.backup("--incremental"), fingerprints(c.port, "app")));
    assert_eq!(count(&p.daemon_log(), TRACKED), tracked + 1);
    p.switch_wal();
    restores_each(&p, &runs);
}
