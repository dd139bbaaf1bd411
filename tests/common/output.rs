//! What the tests do with a finished command: its stderr, stdout and stderr together, and a
//! run of a command whose line, exit status and output go to the test's log.

use std::process::{Command, Output};

/// The command's stderr, lossily decoded.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout, then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with `args` appended; logs `$ SHOWN ARGS`, the exit status and the output.
pub fn run_logged(mut cmd: Command, shown: &str, args: &[&str]) -> Output {
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {shown}: {e}"));
    eprintln!(
        "$ {shown} {}\n[exit {:?}]\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
