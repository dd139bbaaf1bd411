//! Abnormal ends of the ctl: the panic hook (wal-fetch exits 255, wal-push 1, never 0), a closed
//! stdout (a quiet end, like every Unix tool), and the test-only panic switch.

use super::{Command, CtlError, CtlResult};
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicU8, Ordering};

/// The exit code of a panic; 0 = Rust's default (a message and 101).
static PANIC_EXIT: AtomicU8 = AtomicU8::new(0);

/// Installs the panic hook, before anything else runs. Until the arguments are parsed, the
/// command is guessed from them (as for usage errors).
pub fn install_panic_hook() {
    let args: Vec<String> = std::env::args().collect();
    let guess = if args.iter().any(|a| a == "wal-fetch") {
        super::wal::FETCH_FATAL
    } else if args.iter().any(|a| a == "wal-push") {
        1
    } else {
        0
    };
    PANIC_EXIT.store(guess, Ordering::SeqCst);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let code = PANIC_EXIT.load(Ordering::SeqCst);
        if code != 0 {
            // PostgreSQL reads wal-fetch's 1–125 as "not found" and ends recovery there; a
            // wal-push that exits 0 loses the segment. Exit at once, from whatever thread.
            eprintln!("bdc-backupctl: internal error: {info}");
            std::process::exit(code.into());
        }
        if is_broken_pipe_panic(info) {
            // A `println!` whose reader went away (`| head`): end quietly.
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Records the parsed command: from now on a panic exits with its code.
pub fn set_command(command: &Command) {
    PANIC_EXIT.store(
        super::wal::failure_code(command).unwrap_or(0),
        Ordering::SeqCst,
    );
}

fn is_broken_pipe_panic(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout")
        && message.contains(&std::io::Error::from(ErrorKind::BrokenPipe).to_string())
}

/// Writes `text` to stdout. A closed stdout (EPIPE: Rust programs ignore SIGPIPE) is no error:
/// the output is dropped and the command ends with its own result; any other write error fails.
pub fn out(text: &str) -> CtlResult {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CtlError::failed(format!("cannot write to stdout: {e}"))),
    }
}

/// [`out`] with a newline.
pub fn outln(text: &str) -> CtlResult {
    out(&format!("{text}\n"))
}

/// Test-only switch (debug builds; does nothing in release builds): `BDC_BACKUP_TEST_PANIC=POINT`
/// panics at `POINT` (e.g. `wal-fetch`), `POINT:thread` in another thread of the process.
pub fn test_panic(point: &str) {
    #[cfg(debug_assertions)]
    if let Ok(wanted) = std::env::var("BDC_BACKUP_TEST_PANIC") {
        if wanted == point {
            panic!("test panic at {point} (BDC_BACKUP_TEST_PANIC)");
        }
        if wanted.strip_suffix(":thread") == Some(point) {
            let thread = std::thread::spawn(move || {
                panic!("test panic in a thread at {wanted} (BDC_BACKUP_TEST_PANIC)")
            });
            let _ = thread.join();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
