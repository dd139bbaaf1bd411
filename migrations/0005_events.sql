-- bdc-backup state DB, schema v5: alert events (docs/alerts.md, DESIGN §14). Append-only once
-- released. Times as in 0001 (RFC 3339 UTC text, microseconds, `Z`).

-- Open alert states: one row per thing that is bad now (key e.g. `run:db-dump`, `stale:db-dump`,
-- `objective:database`, `capacity:local`). Removed when it recovers; `reminded_at` is the last
-- time the bad state was announced (the event itself or a reminder).
CREATE TABLE alert_states (
    key          TEXT PRIMARY KEY NOT NULL,
    event        TEXT NOT NULL,
    job          TEXT,
    objective    TEXT,
    since        TEXT NOT NULL,
    reminded_at  TEXT NOT NULL,
    summary      TEXT NOT NULL DEFAULT ''
);

-- The persistent outbox: one row per event and sink, written before any delivery attempt.
CREATE TABLE alert_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sink            TEXT NOT NULL,
    event           TEXT NOT NULL,
    job             TEXT,
    -- the event body as sent (JSON)
    body            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    last_attempt_at TEXT,
    delivered_at    TEXT,
    gave_up_at      TEXT
);
-- Pending deliveries, due first.
CREATE INDEX alert_outbox_pending ON alert_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX alert_outbox_by_sink ON alert_outbox (sink, id);
