//! bdc-backup: the library behind `bdc-backupd` (the daemon) and `bdc-backupctl` (the control CLI).
//!
//! # Layout
//! - [`catalogue`]: the job catalogue (TOML) — permissive raw layer, then validation collecting every error.
//! - [`schedule`]: cron expressions in the catalogue's timezone, DST rules, what is due when (pure).
//! - [`clock`]: the injectable clock the scheduler runs on.
//! - [`pipeline`]: bounded-memory streaming: frame-parallel zstd (or gzip) → age → SHA-256 → store.
//! - [`repository`]: the repository format (ids, keys, commit records, manifests) and the stores.
//! - [`restore`]: what every restore shares: the source (repository, identities, chosen backup, chain).
//! - [`state`]: the SQLite state DB (runs, backups, schedule state, the chained audit trail). All SQL lives here.
//! - [`protocol`]: the control-socket wire types shared by both binaries.
//! - [`control`]: the socket server (peer credentials, authorization) and the client.
//! - [`snapshot`]: the tree-snapshot engine (walk, tar parts in zstd frames, manifests, restore).
//! - [`stream`]: the pure parts of WAL streaming (receiver backoff, spool files, flush lag); no supervisor yet.
//! - [`files`]: `files` and `config` jobs and their restores.
//! - [`postgres`]: the PostgreSQL side: control connection, pg_dump jobs, logical restore.
//! - [`daemon`]: wires it all together: scheduler loop, run executor, reload, systemd, logs.
//! - [`ctl`]: the `bdc-backupctl` commands.
//! - [`dr`]: disaster recovery: provenance, catalogue copies in the repositories, DR plans.
//! - [`retention`]: GFS retention per job and repository, cleanup of uncommitted backups.
//! - [`metrics`]: the Prometheus metrics, computed at scrape time from the state DB and the catalogue.
//! - [`usage`]: bytes stored per job and repository, weekly growth, projections.
//! - [`wal`]: continuous WAL archiving: names, headers, archive keys, push and fetch.
//! - [`model`]: plain data types shared by state, protocol and daemon.
//! - [`health`]: freshness of jobs and RPO/RTO of objectives from the state DB's facts (pure).
//! - [`events`]: alert events, the state-change rule, the HMAC signature, webhook/command/ping sinks.
//! - [`error`]: the retry classification every error answers; an error and its sources on one line.
//! - [`units`]: human-readable byte counts.
//! - [`timeparse`]: times operators type or paste (`--at`, `--time`), every form PostgreSQL prints.
//! - [`faults`]: test-only kill points (debug builds; nothing in release builds).
//! - [`secrets`]: secret files (password files) refused when others may read them.

pub mod catalogue;
pub mod clock;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod dr;
pub mod error;
pub mod events;
pub mod faults;
pub mod files;
pub mod health;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod postgres;
pub mod protocol;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod secrets;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod timeparse;
pub mod units;
pub mod usage;
pub mod verify;
pub mod wal;
