-- Verification (issue 13): every check of a verify run, and each object's last integrity read.
CREATE TABLE verify_checks (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL,
    job         TEXT    NOT NULL,
    repository  TEXT,
    backup_id   TEXT,
    -- integrity | wal | drill | sql | amcheck | sample
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    -- pass | fail | skipped
    result      TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    seconds     REAL    NOT NULL,
    bytes       INTEGER NOT NULL,
    at          TEXT    NOT NULL
);
CREATE INDEX verify_checks_by_run ON verify_checks (run_id, id);
CREATE INDEX verify_checks_by_job ON verify_checks (job, kind, at);

-- One row per stored object integrity reads know of (per repository): its sample bucket and
-- its last verification. Rows of objects no longer stored are removed by the next run.
CREATE TABLE verify_objects (
    repository     TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    job            TEXT    NOT NULL,
    bucket         INTEGER NOT NULL,
    reads          INTEGER NOT NULL DEFAULT 0,
    last_read_at   TEXT,
    last_result    TEXT,
    PRIMARY KEY (repository, key)
);
CREATE INDEX verify_objects_by_job ON verify_objects (job, last_read_at);

-- Where each verify job's sample cycle stands in each repository.
CREATE TABLE verify_cursor (
    verify_job        TEXT    NOT NULL,
    repository        TEXT    NOT NULL,
    next_bucket       INTEGER NOT NULL,
    cycles            INTEGER NOT NULL DEFAULT 0,
    cycle_started_at  TEXT    NOT NULL,
    PRIMARY KEY (verify_job, repository)
);
