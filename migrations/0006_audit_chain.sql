-- The tamper-evident audit trail (docs/metrics.md "Audit trail", DESIGN §14) and indexes for the
-- metrics scrape. Existing rows keep their values; the daemon chains them (prev_hash, hash) at its
-- first start after this migration, in id order, before it writes a new row.
ALTER TABLE audit ADD COLUMN job TEXT;
-- What came of it: `ok`, `denied`, `failed: …`, a run's status.
ALTER TABLE audit ADD COLUMN result TEXT NOT NULL DEFAULT '';
-- socket (a request, who = its peer) | daemon (the daemon's own work) | offline (a ctl without
-- the daemon, imported from the offline file; who = the local user).
ALTER TABLE audit ADD COLUMN source TEXT NOT NULL DEFAULT 'socket';
-- An offline row's id from the ctl (imported once even if the import is repeated).
ALTER TABLE audit ADD COLUMN origin TEXT;
-- Lowercase hex SHA-256: of the previous row (64 zeros for the first) and of this row.
ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX audit_by_origin ON audit (origin) WHERE origin IS NOT NULL;
CREATE INDEX audit_by_job ON audit (job, id);
CREATE INDEX audit_by_at ON audit (at, id);

-- runs_total{job,status}: counts kept by triggers, so a scrape reads a few hundred rows instead
-- of counting every run (docs/metrics.md; tests/bench-metrics).
CREATE TABLE run_counts (
    job    TEXT    NOT NULL,
    status TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (job, status)
) WITHOUT ROWID;
INSERT INTO run_counts (job, status, n) SELECT job, status, count(*) FROM runs GROUP BY job, status;
CREATE TRIGGER runs_count_insert AFTER INSERT ON runs BEGIN
    INSERT INTO run_counts (job, status, n) VALUES (NEW.job, NEW.status, 1)
        ON CONFLICT (job, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER runs_count_update AFTER UPDATE OF job, status ON runs
    WHEN OLD.job IS NOT NEW.job OR OLD.status IS NOT NEW.status BEGIN
    UPDATE run_counts SET n = n - 1 WHERE job = OLD.job AND status = OLD.status;
    INSERT INTO run_counts (job, status, n) VALUES (NEW.job, NEW.status, 1)
        ON CONFLICT (job, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER runs_count_delete AFTER DELETE ON runs BEGIN
    UPDATE run_counts SET n = n - 1 WHERE job = OLD.job AND status = OLD.status;
END;
