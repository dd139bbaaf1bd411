//! The recovery settings `restore cluster` writes: `restore_command` (quoted for the shell and
//! for postgresql.conf, `%` escaped), the recovery target lines, and `postgresql.auto.conf`.

use super::{ClusterRestoreError, ClusterRestoreOptions, PREFETCH, RecoveryTarget, io_err, usage};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A value as a single-quoted postgresql.conf string.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A word for `sh -c` (restore_command runs through the shell).
fn sh_quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// A path as one word of `restore_command`: quoted for the shell, and every `%` doubled, as
/// PostgreSQL replaces `%p`, `%f`, `%r` and `%%` in the command before running it.
fn command_word(path: &Path) -> String {
    sh_quote(&path.to_string_lossy()).replace('%', "%%")
}

/// The recovery settings for postgresql.auto.conf (and a usage error for bad combinations).
pub fn recovery_settings(
    o: &ClusterRestoreOptions,
    tz: chrono_tz::Tz,
    spool: Option<&Path>,
) -> Result<Vec<String>, ClusterRestoreError> {
    recovery_settings_from(o, tz, spool, None)
}

/// [`recovery_settings`], with `wal-fetch --repository R` in `restore_command` when the WAL is
/// to come from one repository only (see [`super::wal_source`]).
pub fn recovery_settings_from(
    o: &ClusterRestoreOptions,
    tz: chrono_tz::Tz,
    spool: Option<&Path>,
    wal_repository: Option<&str>,
) -> Result<Vec<String>, ClusterRestoreError> {
    let mut cmd = format!(
        "{} --catalogue {} wal-fetch %f %p",
        command_word(&o.ctl_binary),
        command_word(&o.catalogue_path)
    );
    if let Some(r) = wal_repository {
        cmd.push_str(&format!(" --repository {}", sh_quote(r).replace('%', "%%")));
    }
    if o.use_partial {
        cmd.push_str(" --use-partial");
    }
    if let Some(spool) = spool {
        cmd.push_str(&format!(
            " --spool {} --prefetch {PREFETCH}",
            command_word(spool)
        ));
    }
    let mut lines = vec![format!("restore_command = {}", conf_quote(&cmd))];
    let target = match &o.target {
        RecoveryTarget::EndOfArchive => None,
        RecoveryTarget::Time(t) => {
            let at =
                crate::timeparse::parse_time(t, tz).map_err(|e| usage(format!("--time: {e}")))?;
            Some(format!(
                "recovery_target_time = {}",
                conf_quote(&at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
            ))
        }
        RecoveryTarget::Lsn(l) => {
            crate::wal::name::parse_lsn(l)
                .ok_or_else(|| usage(format!("--lsn {l}: not an LSN (like 0/3000060)")))?;
            Some(format!("recovery_target_lsn = {}", conf_quote(l)))
        }
        RecoveryTarget::Xid(x) => {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(usage(format!("--xid {x}: not a transaction id")));
            }
            Some(format!("recovery_target_xid = {}", conf_quote(x)))
        }
        RecoveryTarget::Name(n) => Some(format!("recovery_target_name = {}", conf_quote(n))),
        RecoveryTarget::Immediate => Some("recovery_target = 'immediate'".to_string()),
    };
    if o.exclusive
        && !matches!(
            o.target,
            RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_) | RecoveryTarget::Xid(_)
        )
    {
        return Err(usage("--exclusive goes with --time, --lsn or --xid"));
    }
    let has_target = target.is_some();
    lines.extend(target);
    if o.exclusive {
        lines.push("recovery_target_inclusive = off".into());
    }
    let tl = o.target_timeline.as_deref().unwrap_or("latest");
    if !(tl == "latest" || tl == "current" || tl.bytes().all(|b| b.is_ascii_digit())) {
        return Err(usage(format!(
            "--target-timeline {tl}: latest, current or a timeline number"
        )));
    }
    lines.push(format!("recovery_target_timeline = {}", conf_quote(tl)));
    match (&o.target_action, has_target) {
        (Some(a), true) => {
            if !matches!(a.as_str(), "promote" | "pause" | "shutdown") {
                return Err(usage(format!(
                    "--target-action {a}: promote, pause or shutdown"
                )));
            }
            lines.push(format!("recovery_target_action = {}", conf_quote(a)));
        }
        (None, true) => lines.push("recovery_target_action = 'promote'".into()),
        (Some(_), false) => {
            return Err(usage(
                "--target-action needs a recovery target (--time, --lsn, --xid, --name, --immediate); at the end of the archive the server promotes",
            ));
        }
        (None, false) => {}
    }
    if let Some(p) = o.port {
        lines.push(format!("port = {p}"));
    }
    if o.no_archive {
        lines.push("archive_mode = 'off'".into());
    }
    lines.extend(o.extra_settings.iter().cloned());
    Ok(lines)
}

/// Is this postgresql.conf line one of the recovery settings we write?
pub(super) fn is_recovery_setting(line: &str) -> bool {
    let key = line
        .trim_start()
        .split(|c: char| c == '=' || c.is_whitespace())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    key == "restore_command" || key.starts_with("recovery_target")
}

/// Rewrites postgresql.auto.conf: earlier recovery settings dropped, ours appended.
pub(super) fn write_auto_conf(
    dir: &Path,
    settings: &[String],
    backup: &str,
    uid: u32,
    gid: u32,
) -> Result<(), ClusterRestoreError> {
    let path = dir.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut text = String::new();
    for line in old.lines() {
        if is_recovery_setting(line) {
            text.push_str("# (replaced by bdc-backup restore cluster) ");
        }
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!("# bdc-backup restore cluster: backup {backup}\n"));
    for s in settings {
        text.push_str(s);
        text.push('\n');
    }
    let tmp = dir.join("postgresql.auto.conf.tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io_err(&tmp))?;
    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(())
}

/// The `port` of postgresql.conf / postgresql.auto.conf (the last one wins), default 5432.
pub(super) fn configured_port(dir: &Path) -> u16 {
    let mut port = 5432;
    for file in ["postgresql.conf", "postgresql.auto.conf"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if let Some((k, v)) = line.split_once('=')
                    && k.trim() == "port"
                    && let Ok(p) = v.trim().trim_matches('\'').parse()
                {
                    port = p;
                }
            }
        }
    }
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(target: RecoveryTarget) -> ClusterRestoreOptions {
        ClusterRestoreOptions {
            target,
            ctl_binary: "/usr/bin/bdc-backupctl".into(),
            catalogue_path: "/etc/bdc backup/catalogue.toml".into(),
            ..Default::default()
        }
    }

    #[test]
    fn settings_per_target() {
        let tz = chrono_tz::UTC;
        let s = recovery_settings(&opts(RecoveryTarget::EndOfArchive), tz, None).unwrap();
        assert_eq!(
            s,
            [
                "restore_command = '/usr/bin/bdc-backupctl --catalogue ''/etc/bdc backup/catalogue.toml'' wal-fetch %f %p'",
                "recovery_target_timeline = 'latest'",
            ]
        );
        let mut o = opts(RecoveryTarget::Time("2026-11-26 10:00:00".into()));
        o.exclusive = true;
        let s = recovery_settings(
            &o,
            chrono_tz::Europe::Istanbul,
            Some(Path::new("/d/pg_wal/.s")),
        )
        .unwrap();
        assert!(
            s[0].ends_with("--spool /d/pg_wal/.s --prefetch 8'"),
            "{s:?}"
        );
        assert_eq!(
            s[1],
            "recovery_target_time = '2026-11-26 07:00:00.000000+00'"
        );
        assert_eq!(s[2], "recovery_target_inclusive = off");
        assert_eq!(s[4], "recovery_target_action = 'promote'");
        let s = recovery_settings(&opts(RecoveryTarget::Immediate), tz, None).unwrap();
        assert_eq!(s[1], "recovery_target = 'immediate'");
        assert!(recovery_settings(&opts(RecoveryTarget::Lsn("zz".into())), tz, None).is_err());
        let mut o = opts(RecoveryTarget::EndOfArchive);
        o.target_action = Some("pause".into());
        assert!(recovery_settings(&o, tz, None).is_err());
        let mut o = opts(RecoveryTarget::Name("p".into()));
        o.exclusive = true;
        assert!(recovery_settings(&o, tz, None).is_err());
    }

    #[test]
    fn percent_in_paths_is_escaped() {
        let mut o = opts(RecoveryTarget::EndOfArchive);
        o.ctl_binary = "/opt/100%/bdc-backupctl".into();
        o.catalogue_path = "/etc/cat%p/catalogue.toml".into();
        let s = recovery_settings(&o, chrono_tz::UTC, Some(Path::new("/d/%f x/.s"))).unwrap();
        assert_eq!(
            s[0],
            "restore_command = '/opt/100%%/bdc-backupctl --catalogue /etc/cat%%p/catalogue.toml wal-fetch %f %p --spool ''/d/%%f x/.s'' --prefetch 8'"
        );
    }

    #[test]
    fn wal_from_one_sync_repository_when_restoring_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
[repository.local]
url = "file://{d}/a"
[repository.b]
url = "file://{d}/b"
[repository.c]
url = "file://{d}/c"
wal-ack = "async"
[postgres]
url = "postgresql://postgres@127.0.0.1/postgres"
data-directory = "{d}/data"
[[job]]
name = "base"
kind = "postgres-base"
full = "0 4 * * 0"
wal-job = "wal"
repositories = ["b", "c", "local"]
[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local", "b", "c"]
"#,
            d = dir.path().display()
        );
        let cat =
            crate::catalogue::parse_str(&text, &dir.path().join("c.toml"), &[]).expect("catalogue");
        use super::super::wal_source;
        assert_eq!(
            wal_source(&cat, Some("b")),
            Some("b"),
            "sync: WAL from it alone"
        );
        assert_eq!(
            wal_source(&cat, Some("c")),
            None,
            "async: may lag, all repositories"
        );
        assert_eq!(wal_source(&cat, None), None);
        assert_eq!(wal_source(&cat, Some("nope")), None);

        let o = opts(RecoveryTarget::EndOfArchive);
        let s = recovery_settings_from(&o, chrono_tz::UTC, None, Some("off site%")).unwrap();
        assert_eq!(
            s[0],
            "restore_command = '/usr/bin/bdc-backupctl --catalogue ''/etc/bdc backup/catalogue.toml'' wal-fetch %f %p --repository ''off site%%'''"
        );
    }

    #[test]
    fn recovery_lines() {
        assert!(is_recovery_setting("restore_command = 'x'"));
        assert!(is_recovery_setting("recovery_target_time='x'"));
        assert!(!is_recovery_setting("archive_command = 'x'"));
    }
}
