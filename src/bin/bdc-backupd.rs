//! `bdc-backupd`: the bdc-backup daemon (all logic lives in `bdc_backup::daemon`).

use bdc_backup::catalogue::Catalogue;
use bdc_backup::daemon::{self, DaemonOptions, args::DaemonArgs};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    daemon::tune_allocator();
    let args = DaemonArgs::parse();
    let catalogue = match Catalogue::load(&args.catalogue) {
        Ok(catalogue) => catalogue,
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            let n = errors.0.len();
            eprintln!(
                "{}: {n} error{}",
                args.catalogue.display(),
                if n == 1 { "" } else { "s" }
            );
            return ExitCode::from(1);
        }
    };
    if args.check {
        println!(
            "{}: OK ({} jobs, {} repositories)",
            args.catalogue.display(),
            catalogue.jobs.len(),
            catalogue.repositories.len()
        );
        return ExitCode::SUCCESS;
    }
    daemon::logging::init(catalogue.daemon.log, &catalogue.daemon.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("bdc-backupd: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(daemon::run(DaemonOptions::new(args.catalogue), catalogue)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", bdc_backup::error::error_chain_of(&err));
            eprintln!("bdc-backupd: {}", bdc_backup::error::error_chain_of(&err));
            ExitCode::from(1)
        }
    }
}
