//! `bdc-backupctl`: the companion CLI of bdc-backupd (all logic lives in `bdc_backup::ctl`).

fn main() -> std::process::ExitCode {
    bdc_backup::ctl::main()
}
