//! Error policy: every library error keeps its source and answers [`Retry`]: may the same
//! operation succeed if simply tried again later? The scheduler and the uploaders decide backoff
//! from that answer alone; nothing matches on message strings. Messages name the thing at fault
//! (the job, the repository, the key, the file).

use serde::{Deserialize, Serialize};

/// Whether retrying the same operation may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retry {
    /// A passing fault (timeout, connection reset, server busy): try again with backoff.
    Transient,
    /// Retrying will fail the same way until someone changes something (bad key, missing file).
    Permanent,
}

/// Implemented by every error type of the library.
pub trait Classify {
    fn retry(&self) -> Retry;
}

/// Classifies an I/O error kind.
pub fn io_retry(err: &std::io::Error) -> Retry {
    use std::io::ErrorKind::*;
    match err.kind() {
        TimedOut | Interrupted | WouldBlock | ConnectionReset | ConnectionAborted | BrokenPipe
        | ConnectionRefused | NotConnected => Retry::Transient,
        _ => Retry::Permanent,
    }
}

/// An error and all its sources on one line (a source whose text the line already holds, in
/// any letter case — "No space left on device" inside "… no space left on device" — is not
/// repeated).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // An I/O error's text ends in " (os error N)"; the message before it is what repeats.
        let core = match s_text.rfind(" (os error ") {
            Some(i) if s_text.ends_with(')') => &s_text[..i],
            _ => s_text.as_str(),
        };
        if !text.to_lowercase().contains(&core.to_lowercase()) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// [`error_chain`] for a sized error type (saves the `&e as &dyn Error` at call sites).
pub fn error_chain_of<E: std::error::Error>(err: &E) -> String {
    error_chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing backups/x/data.age to repository local: no space left on device")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_source_already_in_the_line_in_another_case_is_not_repeated() {
        let e = Outer(std::io::Error::from_raw_os_error(28));
        let text = error_chain(&e);
        assert_eq!(
            text.to_lowercase()
                .matches("no space left on device")
                .count(),
            1,
            "{text}"
        );
    }
}
