-- Issue 11: a queued copy whose last attempt failed with a permanent error (credentials refused,
-- bucket missing, a local path that is not a directory) is retried hourly, not with the
-- doubling backoff; `status` and the replica-lagging alert say so.
ALTER TABLE replication_queue ADD COLUMN permanent INTEGER NOT NULL DEFAULT 0;
