//! The command line of `bdc-backupd` (its clap definition), public so that `bdc-backupctl generate man`
//! can render the daemon's man page from the same source.

use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bdc-backupd",
    version,
    about = "The bdc-backup daemon: schedules, runs and records backups"
)]
pub struct DaemonArgs {
    /// The job catalogue.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/bdc-backup/catalogue.toml"
    )]
    pub catalogue: PathBuf,
    /// Validate the catalogue, print every error, exit non-zero if any.
    #[arg(long)]
    pub check: bool,
}

/// The daemon's clap `Command` (for man pages).
pub fn command() -> clap::Command {
    <DaemonArgs as clap::CommandFactory>::command()
}
