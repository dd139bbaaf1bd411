-- bdc-backup state DB, schema v1 (DESIGN §7). Append-only once released: change the schema
-- with a new numbered migration, never by editing this file.
-- Times are RFC 3339 UTC text with microseconds and a `Z` (`2026-11-26T02:00:00.000000Z`):
-- fixed width, so text order is time order.

CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job          TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    "trigger"    TEXT    NOT NULL,
    backup_type  TEXT,
    status       TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    finished_at  TEXT,
    bytes_read   INTEGER NOT NULL DEFAULT 0,
    bytes_stored INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    backup_id    TEXT
);
-- Newest run of a job; run history per job.
CREATE INDEX runs_by_job ON runs (job, started_at, id);
-- Newest successful run of a job (status values: RunStatus::is_success).
CREATE INDEX runs_success_by_job ON runs (job, started_at, id)
    WHERE status IN ('succeeded', 'partial', 'unchanged');
-- Start-up: runs left `running`.
CREATE INDEX runs_by_status ON runs (status);
-- Global history, newest first.
CREATE INDEX runs_by_start ON runs (started_at, id);

CREATE TABLE backups (
    job          TEXT    NOT NULL,
    backup_id    TEXT    NOT NULL,
    repository   TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    backup_type  TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    stopped_at   TEXT    NOT NULL,
    bytes_read   INTEGER NOT NULL DEFAULT 0,
    bytes_stored INTEGER NOT NULL DEFAULT 0,
    ancestors    TEXT    NOT NULL DEFAULT '[]',   -- JSON array of backup ids, nearest first
    summary      TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (job, backup_id, repository)
);
CREATE INDEX backups_by_start ON backups (job, started_at);

CREATE TABLE schedule_state (
    job          TEXT NOT NULL,
    backup_type  TEXT NOT NULL,
    last_fire    TEXT NOT NULL,
    PRIMARY KEY (job, backup_type)
);

CREATE TABLE jobs_seen (
    job          TEXT PRIMARY KEY NOT NULL,
    first_seen   TEXT NOT NULL
);

CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT    NOT NULL,
    uid      INTEGER,
    gid      INTEGER,
    pid      INTEGER,
    user     TEXT,
    action   TEXT    NOT NULL,
    allowed  INTEGER NOT NULL CHECK (allowed IN (0, 1)),
    detail   TEXT    NOT NULL DEFAULT ''
);

-- Plaintext local copies of committed manifests (DESIGN §4), keyed by backup id.
CREATE TABLE manifest_copies (
    job        TEXT NOT NULL,
    backup_id  TEXT NOT NULL,
    sha256     TEXT NOT NULL,   -- hex SHA-256 of the manifest's ciphertext
    path       BLOB NOT NULL,   -- the local file (mode 0600) in the state directory, raw bytes
    PRIMARY KEY (job, backup_id)
);
