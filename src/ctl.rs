//! The `bdc-backupctl` commands: one function per command, human output or `--json`.
