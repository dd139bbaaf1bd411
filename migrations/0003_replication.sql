-- Replication of committed backups from a job's first repository to its others (DESIGN §2).
-- One row per backup still to be copied to a repository; removed once it has landed there.
CREATE TABLE replication_queue (
    job             TEXT NOT NULL,
    backup_id       TEXT NOT NULL,
    repository      TEXT NOT NULL,
    -- the primary repository it is copied from
    source          TEXT NOT NULL,
    enqueued_at     TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TEXT NOT NULL,
    PRIMARY KEY (job, backup_id, repository)
);
CREATE INDEX replication_queue_due ON replication_queue (next_attempt_at);

-- Per job and repository: the last replica that landed and the last failure.
CREATE TABLE replica_status (
    job             TEXT NOT NULL,
    repository      TEXT NOT NULL,
    last_success_at TEXT,
    last_backup_id  TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    PRIMARY KEY (job, repository)
);
