//! The WAL change reader (`wal::changes`) against PostgreSQL's own `pg_waldump` on real WAL of a
//! real cluster: every block reference, relation creation and truncation pg_waldump lists is
//! in the summaries of the same segments, and nothing else is; full-page images plain and
//! compressed, records across pages and segments, TOAST, index builds, vacuum truncation;
//! `CREATE DATABASE` makes the account unusable.

mod common;

use bdc_backup::wal::changes::{Changes, Joiner, RelFork, store};
use common::pg::{PgCluster, pg_bin};
use std::collections::BTreeSet;
use std::process::Command;

const SEG: u64 = 16 << 20;

fn lsn(text: &str) -> u64 {
    bdc_backup::wal::name::parse_lsn(text).expect("an LSN")
}

/// What pg_waldump says the WAL from `start` to `end` changes: block references (rel, fork,
/// block), created relation forks and truncated relations (with the block).
#[derive(Debug, Default, PartialEq)]
struct Listed {
    blocks: BTreeSet<(u32, u32, u32, u8, u32)>,
    created: BTreeSet<(u32, u32, u32, u8)>,
    truncated: BTreeSet<(u32, u32, u32, u32)>,
}

fn fork_number(name: &str) -> u8 {
    match name {
        "main" => 0,
        "fsm" => 1,
        "vm" => 2,
        "init" => 3,
        other => panic!("fork {other}"),
    }
}

/// `base/5/16384_vm` (smgr descriptions): the relation and the fork.
fn path_of(text: &str) -> (u32, u32, u32, u8) {
    let (rel, fork) = match text.rsplit_once('_') {
        Some((r, f)) => (r, fork_number(f)),
        None => (text, 0),
    };
    let (spc, db, rel) = rel_of(rel);
    (spc, db, rel, fork)
}

/// `1663/5/16384` or `base/5/16384`.
fn rel_of(text: &str) -> (u32, u32, u32) {
    let parts: Vec<&str> = text.split('/').collect();
    let n = |s: &str| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("number in {text}"))
    };
    match parts.as_slice() {
        ["base", db, rel] => (1663, n(db), n(rel)),
        ["global", rel] => (1664, 0, n(rel)),
        [spc, db, rel] => (n(spc), n(db), n(rel)),
        _ => panic!("relation {text}"),
    }
}

fn waldump(pg: &PgCluster, start: u64, end: u64) -> Listed {
    let fmt = bdc_backup::wal::name::format_lsn;
    let out = Command::new(pg_bin().join("pg_waldump"))
        .arg("-p")
        .arg(pg.data_dir().join("pg_wal"))
        .args(["--start", &fmt(start), "--end", &fmt(end)])
        .output()
        .expect("pg_waldump");
    assert!(
        out.status.success(),
        "pg_waldump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut listed = Listed::default();
    for line in text.lines() {
        // ", blkref #0: rel 1663/5/16384 fork vm blk 0" (fork only when not main)
        for piece in line.split("blkref #").skip(1) {
            let rest = piece.split_once(": rel ").expect("blkref").1;
            let words: Vec<&str> = rest.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let (spc, db, rel) = rel_of(words[0]);
            let (fork, blk) = if words[1] == "fork" {
                (fork_number(words[2]), words[4])
            } else {
                assert_eq!(words[1], "blk", "{line}");
                (0, words[2])
            };
            let blk: u32 = blk.trim_end_matches(';').parse().expect("block number");
            listed.blocks.insert((spc, db, rel, fork, blk));
        }
        if line.contains("rmgr: Storage") {
            let desc = line.split_once("desc: ").expect("desc").1;
            let words: Vec<&str> = desc.split_whitespace().collect();
            match words[0] {
                "CREATE" => {
                    listed.created.insert(path_of(words[1]));
                }
                "TRUNCATE" => {
                    let (spc, db, rel) = rel_of(words[1]);
                    listed
                        .truncated
                        .insert((spc, db, rel, words[3].parse().expect("blocks")));
                }
                other => panic!("storage record {other}: {line}"),
            }
        }
    }
    listed
}

/// Our account of the segments holding `start`..`end` (read from pg_wal as the incremental
/// does, the last one up to `end`).
fn ours(pg: &PgCluster, timeline: u32, start: u64, end: u64) -> Changes {
    let mut j = Joiner::default();
    for segno in start / SEG..=(end - 1) / SEG {
        let name = bdc_backup::wal::name::segment_name(timeline, segno * SEG, SEG);
        let path = pg.data_dir().join("pg_wal").join(&name);
        let s = store::summarize_file(&path, segno * SEG, SEG, Some(end)).expect("summarized");
        // The summary files keep exactly what was read.
        assert_eq!(store::decode(&store::encode(&s)).as_ref(), Some(&s));
        j.add(&name, &s).expect("joined");
    }
    j.finish()
}

fn listed_of(c: &Changes) -> Listed {
    let mut l = Listed::default();
    for (RelFork { spc, db, rel, fork }, f) in &c.forks {
        for b in &f.blocks {
            l.blocks.insert((*spc, *db, *rel, *fork, *b));
        }
        if f.created {
            l.created.insert((*spc, *db, *rel, *fork));
        }
        if let Some(t) = f.truncated
            && *fork == 0
        {
            l.truncated.insert((*spc, *db, *rel, t));
        }
    }
    l
}

fn current(pg: &PgCluster, sql: &str) -> u64 {
    lsn(pg.psql("postgres", sql).trim())
}

/// A segment boundary to start from: the WAL switched, then the next segment's first byte.
fn fresh_segment(pg: &PgCluster) -> u64 {
    pg.psql("postgres", "SELECT pg_switch_wal()");
    current(pg, "SELECT pg_current_wal_insert_lsn()") / SEG * SEG
}

fn compare(pg: &PgCluster, start: u64, what: &str) -> Listed {
    pg.psql("postgres", "CHECKPOINT");
    let end = current(pg, "SELECT pg_current_wal_insert_lsn()");
    // Every record before `end` is on disk.
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let theirs = waldump(pg, start, end);
    let mine = ours(pg, 1, start, end);
    assert!(mine.opaque.is_none(), "{what}: {:?}", mine.opaque);
    let mine = listed_of(&mine);
    let missing: Vec<_> = theirs.blocks.difference(&mine.blocks).take(10).collect();
    let extra: Vec<_> = mine.blocks.difference(&theirs.blocks).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} blocks listed by pg_waldump, {} by us; missing {missing:?}, extra {extra:?}",
        theirs.blocks.len(),
        mine.blocks.len()
    );
    assert_eq!(mine.created, theirs.created, "{what}: created relations");
    assert_eq!(
        mine.truncated, theirs.truncated,
        "{what}: truncated relations"
    );
    theirs
}

const WORKLOAD: &str = "
CREATE TABLE t (id int PRIMARY KEY, v text, pad text);
INSERT INTO t SELECT g, md5(g::text), repeat('x', 200) FROM generate_series(1, 60000) g;
CREATE INDEX t_v ON t (v);
CREATE INDEX t_h ON t USING hash (id);
CREATE INDEX t_b ON t USING brin (id);
UPDATE t SET v = v || 'u' WHERE id % 10 = 0;
DELETE FROM t WHERE id > 50000;
VACUUM t;
CREATE TABLE toasty (id int, big text);
INSERT INTO toasty SELECT g, string_agg(md5((g * 1000 + i)::text), '') FROM generate_series(1, 40) g, generate_series(1, 3000) i GROUP BY g;
CREATE SEQUENCE s;
SELECT nextval('s') FROM generate_series(1, 100);
CREATE TABLE gone AS SELECT g FROM generate_series(1, 5000) g;
TRUNCATE gone;
CREATE TABLE j (doc jsonb);
INSERT INTO j SELECT jsonb_build_object('k', g, 'tags', jsonb_build_array(g % 7, g % 11)) FROM generate_series(1, 20000) g;
CREATE INDEX j_g ON j USING gin (doc);
CLUSTER t USING t_pkey;
BEGIN; CREATE TABLE inside (g int); INSERT INTO inside SELECT generate_series(1, 3000); TRUNCATE inside; INSERT INTO inside VALUES (1); COMMIT;
";

#[test]
fn our_block_references_are_pg_waldumps() {
    let pg = PgCluster::start_with(
        "wal_level = replica\nfull_page_writes = on\nwal_keep_size = 4GB\nmax_wal_size = 4GB\ncheckpoint_timeout = 1h",
    );
    // Plain full-page images (the first change of every page after the checkpoint).
    let start = fresh_segment(&pg);
    pg.psql("postgres", "CHECKPOINT");
    pg.psql("postgres", WORKLOAD);
    let listed = compare(&pg, start, "plain images");
    assert!(listed.blocks.len() > 5000, "{} blocks", listed.blocks.len());
    assert!(!listed.created.is_empty() && !listed.truncated.is_empty());
    let end = current(&pg, "SELECT pg_current_wal_lsn()");
    assert!(end - start > 2 * SEG, "the workload spans segments");

    // Compressed images (with holes: their own length field), and vacuum truncating a table.
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET wal_compression = 'pglz'; SELECT pg_reload_conf();",
    );
    let start = fresh_segment(&pg);
    pg.psql("postgres", "CHECKPOINT");
    pg.psql(
        "postgres",
        "DROP TABLE t, toasty, gone, j, inside; DROP SEQUENCE s;",
    );
    pg.psql("postgres", WORKLOAD);
    pg.psql("postgres", "DELETE FROM t WHERE id > 1000; VACUUM t;");
    compare(&pg, start, "compressed images");
}

#[test]
fn a_database_created_makes_the_account_unusable() {
    let pg = PgCluster::start_with("wal_level = replica\nwal_keep_size = 1GB");
    let start = fresh_segment(&pg);
    pg.psql(
        "postgres",
        "CREATE TABLE a AS SELECT generate_series(1, 100) g",
    );
    pg.psql("postgres", "CREATE DATABASE other");
    pg.psql("postgres", "CHECKPOINT");
    let end = current(&pg, "SELECT pg_current_wal_insert_lsn()");
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let c = ours(&pg, 1, start, end);
    assert!(
        c.opaque.as_deref().is_some_and(|o| o.contains("database")),
        "{:?}",
        c.opaque
    );
}
