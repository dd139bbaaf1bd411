//! Secret files (password files): refused when group or others may read them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Refuses a secret file that group or others may read, as identity and credentials files are
/// refused: a secret readable by other users is a leaked secret. The error says how to fix it.
pub fn check_private(path: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "mode {:04o} lets other users read it; chmod 600 it",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_other_readable_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        std::fs::write(&p, "secret\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check_private(&p);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("chmod 600"), "{e}");
                assert!(!e.to_string().contains("secret"), "{e}");
            }
        }
    }
}
