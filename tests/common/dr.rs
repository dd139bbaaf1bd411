//! The disaster-recovery command lines the DR tests repeat.

use std::path::Path;

/// `bootstrap --repository URL --identity KEY --output DIR`.
pub fn bootstrap_args<'a>(url: &'a str, identity: &'a Path, output: &'a Path) -> [&'a str; 7] {
    [
        "bootstrap",
        "--repository",
        url,
        "--identity",
        identity.to_str().expect("a UTF-8 identity path"),
        "--output",
        output.to_str().expect("a UTF-8 output path"),
    ]
}
