//! WAL streaming end to end (issue 12): a real PostgreSQL 15 cluster with `archive_command` OFF,
//! the real daemon supervising the real `pg_receivewal` on a physical slot, the shipped
//! `.partial`, and `restore cluster [--use-partial]` recovering from the repository alone —
//! checked by the rows that come back. Also: the receiver killed (restarted, no segment
//! missing), the server restarted under it, the network to the server cut (a TCP relay), the
//! slot dropped (an error in status, no restart loop), a promote (timeline 2 and its history,
//! the old timeline's `.partial` gone from the spool).

mod common;

use common::daemon::Setup;
use common::stream::{Standby, Streaming, WAIT, continuity, lsn, stream_catalogue, text};
use std::time::Duration;

#[test]
fn a_lost_host_loses_seconds_with_use_partial_and_stops_at_the_last_segment_without() {
    let mut s = Streaming::start();
    s.cluster.psql(
        "postgres",
        "CREATE TABLE rpo (id int primary key, note text); INSERT INTO rpo VALUES (1, 'before the backup');",
    );
    let out = s.setup.ctl(&["run", "base", "--full", "--wait"]);
    assert!(
        out.status.success(),
        "base backup: {}\n{}",
        text(&out),
        s.log()
    );
    // The row of the test, committed into the segment the receiver is writing.
    let before = lsn(&s.cluster.psql("postgres", "SELECT pg_current_wal_lsn();"));
    s.cluster.psql(
        "postgres",
        "INSERT INTO rpo VALUES (2, 'committed seconds before the host died');",
    );
    std::thread::sleep(Duration::from_secs(10));
    let st = s.stream();
    let shipped = st["partial_shipped"]
        .as_str()
        .unwrap_or_else(|| panic!("no .partial shipped within 10 s: {st}\n{}", s.log()));
    // What status says is durable goes past where the row's WAL began (the restore below
    // proves the row itself); the receiver's lag is measured.
    assert!(
        st["durable_lsn"].as_str().map(lsn) > Some(before),
        "durable {} <= {before:X} (before the row): {st}",
        st["durable_lsn"]
    );
    assert!(st["flush_lag_bytes"].is_u64(), "{st}");
    // Only the written prefix was shipped; wal-fetch --use-partial gives back the full-size
    // segment file PostgreSQL wants: that prefix (as in the spool), then zeros.
    let segment = shipped.trim_end_matches(".partial");
    let dest = s.setup.path("fetched-partial");
    let out = common::wal::fetch(&s.setup, &s.cluster, segment, &dest, &["--use-partial"]);
    assert!(
        out.status.success(),
        "wal-fetch --use-partial: {}",
        text(&out)
    );
    let fetched = std::fs::read(&dest).unwrap();
    assert_eq!(
        fetched.len(),
        16 << 20,
        "the fetched .partial is not segment-sized"
    );
    let filled = fetched.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let spooled = std::fs::read(s.spool().join(shipped)).unwrap();
    assert!(filled > 40, "the fetched .partial holds no WAL");
    assert_eq!(
        fetched[..filled],
        spooled[..filled],
        "the fetched .partial is not a prefix of the spool's"
    );
    // The host dies: the server killed -9, its data directory gone, the daemon gone too.
    s.kill9_server();
    if let Some(d) = s.daemon.take() {
        d.kill9();
    }
    std::fs::remove_dir_all(s.cluster.data_dir()).unwrap();

    // Without --use-partial: the last complete segment, said so; the row is not there.
    let (out, without) = s.restore("without", &[]);
    let said = text(&out);
    assert!(out.status.success(), "restore: {said}");
    assert!(
        said.contains("recovery stops at the end of the last complete segment")
            && said.contains(".partial is not replayed without --use-partial"),
        "{said}"
    );
    assert_eq!(
        without.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM rpo;"
        ),
        "1",
        "{}",
        without.log()
    );
    without.stop();

    // With --use-partial: the row committed 10 s before the loss is back.
    let (out, with) = s.restore("with", &["--use-partial"]);
    let said = text(&out);
    assert!(out.status.success(), "restore --use-partial: {said}");
    assert!(
        said.contains("recovery replays it (--use-partial)"),
        "{said}"
    );
    assert_eq!(
        with.psql(
            "postgres",
            "SELECT string_agg(note, '|' ORDER BY id) FROM rpo;"
        ),
        "before the backup|committed seconds before the host died",
        "{}",
        with.log()
    );
}

#[test]
fn a_killed_receiver_is_restarted_and_no_segment_is_missing() {
    let s = Streaming::start();
    let first = s.switch();
    s.wait_archived(&first);
    let st = s.stream();
    let pid = st["receiver_pid"].as_u64().expect("receiver pid") as i32;
    let restarts = st["restarts"].as_u64().unwrap();
    // Meanwhile WAL goes on: segments completed while the receiver is down come afterwards.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..3 {
        s.switch();
    }
    let again = s.wait_stream(WAIT, "the receiver restarted", |st| {
        st["restarts"].as_u64() > Some(restarts)
            && st["state"] == "streaming"
            && st["receiver_pid"].as_u64().is_some_and(|p| p as i32 != pid)
    });
    // The server restarted under the receiver: it reconnects after its backoff.
    let before = again["restarts"].as_u64().unwrap();
    s.cluster.restart();
    s.switch();
    s.wait_restarted(WAIT, before, "streaming after the server restart");
    let last = s.switch();
    s.wait_archived(&last);
    // The lag is unknown until the supervisor has asked the restarted server once: poll for it.
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = text(&s.setup.ctl(&["metrics"]));
        if metrics.contains("bdc_backup_wal_stream_lag_bytes{job=\"wal\"}")
            || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let restarts_metric = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bdc_backup_wal_stream_restarts_total{job=\"wal\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(restarts_metric.is_some_and(|n| n >= 2), "{metrics}");
    assert!(
        metrics.contains("bdc_backup_wal_stream_lag_bytes{job=\"wal\"}"),
        "{metrics}"
    );
    let (names, missing) = continuity(&s.setup.path("repo"), 1);
    assert_eq!(
        missing,
        None,
        "a segment is missing: {names:?}\n{}",
        s.log()
    );
    assert!(names.contains(&first) && names.contains(&last), "{names:?}");
    assert_eq!(again["state"], "streaming", "{again}");
}

#[test]
fn a_dropped_slot_is_an_error_in_status_not_a_restart_loop() {
    let s = Streaming::start();
    let seg = s.switch();
    s.wait_archived(&seg);
    // The walsender holds the slot: end it and drop the slot (retried: the receiver comes back
    // after its backoff).
    common::daemon::wait_for(Duration::from_secs(30), "the slot dropped", || {
        s.cluster
            .try_psql(
                "postgres",
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'bdc_backup' AND active_pid IS NOT NULL; \
                 SELECT pg_sleep(0.2); SELECT pg_drop_replication_slot('bdc_backup');",
            )
            .ok()
    });
    let failed = s.wait_state("failed");
    let error = failed["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("bdc_backup") && error.contains("vanished"),
        "{failed}"
    );
    // It stays failed: no receiver is started again while the slot is gone.
    let restarts = failed["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later2 = s.stream();
    assert_eq!(later2["state"], "failed", "{later2}");
    assert_eq!(
        later2["restarts"].as_u64(),
        Some(restarts),
        "{failed} {later2}"
    );
    assert!(later2["receiver_pid"].is_null(), "{later2}");
    let out = s.setup.ctl(&["status"]);
    assert!(text(&out).contains("vanished"), "{}", text(&out));
}

#[test]
fn a_promote_during_streaming_brings_the_new_timeline_and_its_history() {
    let primary = Streaming::replicating_cluster();
    let standby = Standby::start(&primary);
    // The daemon streams from the standby (a cascading walsender), then the standby is promoted.
    let catalogue = stream_catalogue(standby.port, None, Some("2s"), "");
    let s = Streaming::with(Setup::new(), primary, &catalogue);
    let old = s.switch();
    s.wait_archived(&old);
    // The receiver writes timeline 1's next segment; it is shipped as a .partial.
    s.cluster.psql(
        "postgres",
        "CREATE TABLE before_promote AS SELECT g FROM generate_series(1, 1000) g;",
    );
    s.wait_stream(WAIT, "timeline 1's .partial shipped", |st| {
        st["partial_shipped"]
            .as_str()
            .is_some_and(|p| p.starts_with("00000001") && p.ends_with(".partial"))
    });
    standby.promote();
    standby.psql(
        "CREATE TABLE after_promote AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
    );
    let seg = standby.switch();
    assert!(seg.starts_with("00000002"), "{seg}");
    s.wait_repo("timeline 2's history and segments archived", |names| {
        names.iter().any(|n| n == "00000002.history")
            && names
                .iter()
                .any(|n| n.len() == 24 && n.starts_with("00000002") && **n <= *seg)
    });
    // The old timeline's unfinished segment is left as a .partial by pg_receivewal; it leaves
    // the spool once 00000002.history is durable.
    // (The log line comes right after the file's removal: waited for too.)
    common::daemon::wait_for(WAIT, "timeline 1's .partial gone from the spool", || {
        let names = s.spool_names();
        (!names
            .iter()
            .any(|n| n.starts_with("00000001") && n.ends_with(".partial"))
            && s.log()
                .contains("removed the replaced timeline's .partial from the spool"))
        .then_some(names)
    });
    let st = s.stream();
    assert_eq!(st["state"], "streaming", "{st}\n{}", s.log());
}

#[test]
fn a_cut_network_to_the_server_is_retried_and_no_segment_is_missing() {
    let cluster = Streaming::replicating_cluster();
    // The daemon reaches the server only through a TCP relay that the test cuts.
    let relay = common::objstores::Proxy::start(cluster.port);
    let catalogue = stream_catalogue(relay.port, None, None, "");
    let s = Streaming::with(Setup::new(), cluster, &catalogue);
    let first = s.switch();
    s.wait_archived(&first);
    let restarts = s.restarts();
    relay.cut();
    // WAL goes on while the network is down (the slot keeps it on the server).
    s.switch();
    s.switch();
    let down = s.wait_stream(WAIT, "the cut noticed", |st| {
        st["state"] != "streaming" && st["error"].is_string()
    });
    relay.restore();
    s.wait_restarted(Duration::from_secs(90), restarts, "streaming again");
    let last = s.switch();
    s.wait_archived(&last);
    let (names, missing) = continuity(&s.setup.path("repo"), 1);
    assert_eq!(
        missing,
        None,
        "a segment is missing: {names:?}\n{down}\n{}",
        s.log()
    );
    assert!(names.contains(&first) && names.contains(&last), "{names:?}");
}
