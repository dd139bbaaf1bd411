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

-- runs_total{job,status} counted from the index alone.
CREATE INDEX runs_by_job_status ON runs (job, status);
