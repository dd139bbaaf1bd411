-- Continuous WAL archiving (DESIGN §5). Every file archived by wal-push, once per content.
CREATE TABLE wal_archived (
    job               TEXT NOT NULL,
    system_identifier TEXT NOT NULL,
    pg_major          INTEGER NOT NULL,
    name              TEXT NOT NULL,
    timeline          INTEGER NOT NULL,
    -- segment | partial | backup | history
    kind              TEXT NOT NULL,
    size              INTEGER NOT NULL,
    sha256            TEXT NOT NULL,
    archived_at       TEXT NOT NULL,
    duration_ms       INTEGER NOT NULL,
    PRIMARY KEY (system_identifier, pg_major, name, sha256)
);
CREATE INDEX wal_archived_job_at ON wal_archived (job, archived_at);

-- Archived files still to be copied to an async repository (from the committed sync copy).
CREATE TABLE wal_backlog (
    job             TEXT NOT NULL,
    repository      TEXT NOT NULL,
    key             TEXT NOT NULL,
    name            TEXT NOT NULL,
    -- the sync repository holding the committed copy
    source          TEXT NOT NULL,
    enqueued_at     TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TEXT NOT NULL,
    PRIMARY KEY (repository, key)
);
CREATE INDEX wal_backlog_due ON wal_backlog (next_attempt_at);
