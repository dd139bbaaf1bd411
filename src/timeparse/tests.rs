use super::*;
use chrono_tz::{America, Asia, Europe, UTC};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

#[test]
fn accepts_what_postgresql_prints() {
    // (input, zone for a time without offset, the instant)
    let cases: &[(&str, Tz, &str)] = &[
        // psql `SELECT now()` and friends
        (
            "2026-12-01 19:47:57.901925+00",
            Europe::Berlin,
            "2026-12-01T19:47:57.901925Z",
        ),
        (
            "2026-12-01 19:47:57+00",
            Europe::Berlin,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-02 01:17:57.901925+05:30",
            UTC,
            "2026-12-01T19:47:57.901925Z",
        ),
        (
            "2026-12-02 01:17:57.901925+0530",
            UTC,
            "2026-12-01T19:47:57.901925Z",
        ),
        ("2026-12-01 11:47:57.9-08", UTC, "2026-12-01T19:47:57.9Z"),
        ("2026-12-01 11:47:57.9 -08", UTC, "2026-12-01T19:47:57.9Z"),
        ("1900-01-01 00:00:00+00:19:32", UTC, "1899-12-31T23:40:28Z"),
        ("1900-01-01 00:00:00+001932", UTC, "1899-12-31T23:40:28Z"),
        // RFC 3339 / ISO 8601
        (
            "2026-12-01T19:47:57Z",
            Europe::Berlin,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01t19:47:57z",
            Europe::Berlin,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01T22:47:57.123+03:00",
            UTC,
            "2026-12-01T19:47:57.123Z",
        ),
        (
            "2026-12-01T19:47:57.123456789Z",
            UTC,
            "2026-12-01T19:47:57.123456789Z",
        ),
        // zone names
        (
            "2026-12-01 19:47:57 UTC",
            Asia::Kolkata,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01 19:47:57 GMT",
            Asia::Kolkata,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01 22:47:57 Europe/Istanbul",
            UTC,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01 22:47:57 europe/istanbul",
            UTC,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01 19:47:57.5utc",
            Asia::Kolkata,
            "2026-12-01T19:47:57.5Z",
        ),
        // no offset: the given zone
        (
            "2026-12-01 20:47:57",
            Europe::Berlin,
            "2026-12-01T19:47:57Z",
        ),
        (
            "2026-12-01T20:47:57.25",
            Europe::Berlin,
            "2026-12-01T19:47:57.25Z",
        ),
        ("2026-12-01 20:47", Europe::Berlin, "2026-12-01T19:47:00Z"),
        ("2026-12-01 9:05", UTC, "2026-12-01T09:05:00Z"),
        (
            "  2026-12-01 20:47  ",
            Europe::Berlin,
            "2026-12-01T19:47:00Z",
        ),
        // a date alone: the end of that day
        ("2026-12-01", Europe::Berlin, "2026-12-01T22:59:59Z"),
        ("2026-12-01 UTC", Europe::Berlin, "2026-12-01T23:59:59Z"),
        ("2026-12-01+05:30", UTC, "2026-12-01T18:29:59Z"),
        // DST, as PostgreSQL: ambiguous → later instant; gap → offset before the gap
        ("2026-10-25 02:30", Europe::Berlin, "2026-10-25T01:30:00Z"),
        ("2026-03-29 02:30", Europe::Berlin, "2026-03-29T01:30:00Z"),
        (
            "2026-03-29 02:30 Europe/Berlin",
            UTC,
            "2026-03-29T01:30:00Z",
        ),
        (
            "2026-11-01 01:30",
            America::New_York,
            "2026-11-01T06:30:00Z",
        ),
        (
            "2026-03-08 02:15",
            America::New_York,
            "2026-03-08T07:15:00Z",
        ),
    ];
    let mut failures = Vec::new();
    for (input, zone, want) in cases {
        match parse_time(input, *zone) {
            Ok(got) if got == utc(want) => {}
            other => failures.push(format!("{input:?} in {zone}: {other:?}, want {want}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn refuses_with_what_is_wrong_and_what_was_expected() {
    let cases: &[(&str, &str)] = &[
        ("", "it is empty"),
        ("yesterday", "does not start with a date YYYY-MM-DD"),
        ("12/01/2026", "does not start with a date YYYY-MM-DD"),
        ("2026-12-1x", "`x` is not a time zone name"),
        ("2026-12-012", "does not start with a date YYYY-MM-DD"),
        ("2026-02-30 10:00", "there is no date 2026-02-30"),
        ("2026-12-01T", "a time HH:MM[:SS] must follow the T"),
        ("2026-12-01 25:00", "there is no time 25:00:00"),
        ("2026-12-01 10", "the time must be HH:MM"),
        ("2026-12-01 10:00:00.", "fractional seconds need digits"),
        (
            "2026-12-01 10:00:00.1234567890",
            "at most 9 fractional digits",
        ),
        ("2026-12-01 10:00:00+", "an offset must be +HH"),
        ("2026-12-01 10:00:00+16", "offset hours must be at most 15"),
        ("2026-12-01 10:00:00+05:", "an offset must be +HH"),
        (
            "2026-12-01 10:00:00 Mars/Olympus",
            "`Mars/Olympus` is not a time zone name",
        ),
        (
            "2026-12-01 10:00:00+00 UTC",
            "unexpected ` UTC` after the time",
        ),
        ("2026-12-01 10:00:00 ?", "unexpected `?` after the time"),
    ];
    let mut failures = Vec::new();
    for (input, problem) in cases {
        match parse_time(input, UTC) {
            Err(e) => {
                let text = e.to_string();
                if !text.contains(problem) || !text.contains(EXPECTED) {
                    failures.push(format!("{input:?}: {text}"));
                }
                assert_eq!(e.retry(), Retry::Permanent);
            }
            Ok(t) => failures.push(format!("{input:?}: accepted as {t}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
