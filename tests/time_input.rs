//! `--at` / `--time` take what PostgreSQL prints: a real cluster formats timestamps (its own
//! `timestamptz::text` output in several session zones, `to_char`, DST edge cases), and each
//! string must parse to the instant PostgreSQL itself reads from it (`extract(epoch …)`).

mod common;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use common::pg::PgCluster;

/// (session TimeZone, SQL giving the text an operator would paste, SQL giving PostgreSQL's
/// reading of that text `t` as an instant in the same session — usually `t::timestamptz`).
const CASES: &[(&str, &str, &str)] = &[
    // What `SELECT now()` prints in psql, UTC server.
    ("UTC", "now()::text", "t::timestamptz"),
    ("Asia/Kolkata", "now()::text", "t::timestamptz"),
    ("Asia/Kathmandu", "now()::text", "t::timestamptz"),
    ("America/Los_Angeles", "now()::text", "t::timestamptz"),
    ("America/St_Johns", "now()::text", "t::timestamptz"),
    // A whole second: PostgreSQL prints no fraction.
    (
        "Europe/Istanbul",
        "date_trunc('second', now())::text",
        "t::timestamptz",
    ),
    // Historical local mean time: an offset with seconds.
    (
        "Europe/Amsterdam",
        "'1900-01-01 00:00'::timestamptz::text",
        "t::timestamptz",
    ),
    // ISO 8601 with T and the offset with a colon, and without one.
    (
        "Asia/Kolkata",
        r#"to_char(now(), 'YYYY-MM-DD"T"HH24:MI:SS.USOF')"#,
        "t::timestamptz",
    ),
    (
        "Asia/Kolkata",
        "to_char(now(), 'YYYY-MM-DD HH24:MI:SS.US') || '+0530'",
        "t::timestamptz",
    ),
    (
        "UTC",
        r#"to_char(now(), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"#,
        "t::timestamptz",
    ),
    // Milliseconds only, a space before the offset.
    (
        "UTC",
        "to_char(now(), 'YYYY-MM-DD HH24:MI:SS.MS') || ' -08'",
        "t::timestamptz",
    ),
    // A trailing zone name.
    ("UTC", "now()::timestamp::text || ' UTC'", "t::timestamptz"),
    ("UTC", "now()::timestamp::text || ' GMT'", "t::timestamptz"),
    (
        "UTC",
        "now()::timestamp::text || ' Europe/Istanbul'",
        "t::timestamptz",
    ),
    (
        "UTC",
        "'2026-03-29 02:30'::timestamp::text || ' Europe/Berlin'",
        "t::timestamptz",
    ),
    // No offset: the session's (the catalogue's) zone, DST edges resolved as PostgreSQL does.
    ("Europe/Berlin", "now()::timestamp::text", "t::timestamptz"),
    (
        "Europe/Berlin",
        "'2026-03-29 02:30'::timestamp::text",
        "t::timestamptz",
    ),
    (
        "Europe/Berlin",
        "'2026-10-25 02:30'::timestamp::text",
        "t::timestamptz",
    ),
    (
        "America/New_York",
        "'2026-11-01 01:30:15.5'::timestamp::text",
        "t::timestamptz",
    ),
    // HH:MM without seconds.
    (
        "Asia/Kolkata",
        "to_char(now(), 'YYYY-MM-DD HH24:MI')",
        "t::timestamptz",
    ),
    // A date alone means the end of that day (the newest backup of the day).
    (
        "Europe/Berlin",
        "current_date::text",
        "(t || ' 23:59:59')::timestamptz",
    ),
];

#[test]
fn times_printed_by_postgresql_parse_to_the_instant_postgresql_reads() {
    let pg = PgCluster::start();
    let mut failures = Vec::new();
    for (zone, text_sql, instant_sql) in CASES {
        let sql = format!(
            "SET TimeZone = '{zone}';\n\
             SELECT t || '|' || (extract(epoch FROM {instant_sql}) * 1000000)::bigint \
             FROM (SELECT ({text_sql}) AS t) s;"
        );
        let out = pg.psql("postgres", &sql);
        let (text, micros) = out.rsplit_once('|').expect("text|micros");
        let micros: i64 = micros.parse().expect("micros");
        let expected = DateTime::<Utc>::from_timestamp_micros(micros).expect("in range");
        let tz: Tz = zone.parse().expect("zone");
        match bdc_backup::timeparse::parse_at(text, tz) {
            Some(got) if got == expected => {}
            Some(got) => failures.push(format!(
                "{zone}: {text:?} parsed as {got}, PostgreSQL reads {expected}"
            )),
            None => failures.push(format!("{zone}: {text:?} refused")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
