-- bdc-backup state DB, schema v2: retention passes (docs/retention.md). Append-only once
-- released. Times as in 0001 (RFC 3339 UTC text, microseconds, `Z`).

-- One retention pass over one job in one repository (dry runs are not recorded).
CREATE TABLE retention_passes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT    NOT NULL,
    repository  TEXT    NOT NULL,
    at          TEXT    NOT NULL,
    kept        INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
-- The last pass of a job per repository.
CREATE INDEX retention_passes_by_job ON retention_passes (job, repository, at, id);
