//! `wal-push` and `wal-fetch`: PostgreSQL's archive_command and restore_command, with the exit
//! codes PostgreSQL needs (docs/design.md §5): wal-push never exits above 125 (PostgreSQL keeps the file
//! and retries); wal-fetch exits 1 only for "not found in every repository", 255 for any error
//! (PostgreSQL stops recovery instead of ending it early).

use super::{CtlError, CtlResult, Ctx, WalFetchArgs, WalPushArgs};
use crate::protocol::Response;
use crate::repository::Repository;
use crate::wal::fetch::{Spool, next_segments, segment_size_of, wal_repositories, write_atomic};
use crate::wal::{ClusterIdentity, WalName};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// The catalogue wal-fetch reads without --catalogue or BDC_BACKUP_CATALOGUE (bdc-backupd's
/// default too).
pub const DEFAULT_CATALOGUE: &str = "/etc/bdc-backup/catalogue.toml";

/// wal-fetch's exit code for every error but "not found".
pub const FETCH_FATAL: u8 = 255;

/// A command-line error: wal-push exits 1 and wal-fetch 255 instead of clap's 2.
pub fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        err.exit();
    }
    let args: Vec<String> = std::env::args().collect();
    let code = if args.iter().any(|a| a == "wal-fetch") {
        FETCH_FATAL
    } else if args.iter().any(|a| a == "wal-push") {
        1
    } else {
        err.exit();
    };
    let _ = err.print();
    ExitCode::from(code)
}

/// The exit code of a failure before the command ran: wal-push 1, wal-fetch 255.
pub fn failure_code(command: &super::Command) -> Option<u8> {
    match command {
        super::Command::WalPush(_) => Some(1),
        super::Command::WalFetch(_) => Some(FETCH_FATAL),
        _ => None,
    }
}

fn data_dir(given: &Option<PathBuf>) -> PathBuf {
    given.clone().unwrap_or_else(|| PathBuf::from("."))
}

/// `wal-push PATH`: hands the open file to the daemon and waits for "durable in every sync
/// repository".
pub async fn push(ctx: &Ctx, args: WalPushArgs) -> CtlResult {
    super::exit::test_panic("wal-push");
    let shown = args.path.display().to_string();
    let fail = |cause: String| CtlError::failed(format!("wal-push {shown}: {cause}"));
    let name = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| fail("the path names no file".into()))?
        .to_string();
    if WalName::parse(&name).is_none() {
        return Err(fail(format!(
            "`{name}` is not a WAL file name PostgreSQL archives"
        )));
    }
    let cluster = ClusterIdentity::read(&data_dir(&args.data_directory))
        .map_err(|e| fail(format!("cannot identify the cluster: {e}")))?;
    let file = std::fs::File::open(&args.path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let socket = ctx.lean_socket_path().map_err(|e| fail(e.message))?;
    let exchange = async {
        let mut client = crate::control::client::Client::connect(&socket).await?;
        client.set_reply_timeout(None);
        client.wal_push(&name, cluster, file.as_fd()).await
    };
    match tokio::time::timeout(args.timeout, exchange).await {
        Err(_) => Err(fail(format!(
            "no answer from bdc-backupd within {} s",
            args.timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(fail(crate::error::error_chain_of(&e))),
        Ok(Ok(Response::WalPushed { warnings, .. })) => {
            for w in warnings {
                eprintln!("bdc-backupctl: wal-push {name}: warning: {w}");
            }
            Ok(())
        }
        Ok(Ok(other)) => Err(fail(format!(
            "unexpected answer from the daemon: {other:?}"
        ))),
    }
}

/// `wal-fetch NAME DEST`.
pub async fn fetch(ctx: &Ctx, args: WalFetchArgs) -> CtlResult {
    super::exit::test_panic("wal-fetch");
    let name = args.name.clone();
    let fatal = |cause: String| CtlError {
        code: FETCH_FATAL,
        message: format!("wal-fetch {name}: {cause}"),
    };
    let wal =
        WalName::parse(&name).ok_or_else(|| fatal(format!("`{name}` is not a WAL file name")))?;
    let path = ctx
        .catalogue_path()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CATALOGUE));
    let catalogue = crate::catalogue::Catalogue::load(&path).map_err(|errors| {
        fatal(format!(
            "the catalogue {} cannot be used:\n{errors}",
            path.display()
        ))
    })?;
    let identity_file = catalogue
        .encryption
        .identity_file
        .clone()
        .ok_or_else(|| fatal("the catalogue has no [encryption] identity-file".into()))?;
    let identities =
        crate::pipeline::Identities::load(&identity_file).map_err(|e| fatal(e.to_string()))?;
    let cluster = ClusterIdentity::read(&data_dir(&args.data_directory))
        .map_err(|e| fatal(format!("cannot identify the cluster: {e}")))?;
    let repos = wal_repositories(&catalogue, args.repository.as_deref()).map_err(fatal)?;
    // A `.partial` is fetched only when asked for by its exact name (PostgreSQL never does);
    // never in place of a missing segment (docs/decisions.md).
    let spool = args.spool.as_ref().map(|dir| Spool { dir: dir.clone() });
    if let Some(spool) = &spool {
        std::fs::create_dir_all(&spool.dir)
            .map_err(|e| fatal(format!("spool {}: {e}", spool.dir.display())))?;
        spool.clean_before(&wal);
        if spool
            .take(&wal, &args.dest)
            .map_err(|e| fatal(e.to_string()))?
        {
            if args.prefetch > 0
                && let Ok(bytes) = std::fs::read(&args.dest)
            {
                prefetch(spool, &repos, &cluster, &wal, &bytes, &identities, &args).await;
            }
            return Ok(());
        }
    }
    match crate::wal::fetch(&repos, &cluster, &wal, &identities, args.timeout).await {
        Ok(Some(fetched)) => {
            write_atomic(&args.dest, &fetched.bytes).map_err(|e| fatal(e.to_string()))?;
            if let Some(spool) = &spool
                && args.prefetch > 0
            {
                prefetch(
                    spool,
                    &repos,
                    &cluster,
                    &wal,
                    &fetched.bytes,
                    &identities,
                    &args,
                )
                .await;
            }
            Ok(())
        }
        Ok(None) if args.use_partial && wal.kind == crate::wal::WalKind::Segment => {
            for repo in &repos {
                match crate::wal::partial::fetch_partial(repo, &cluster, &wal, &identities).await {
                    Ok(Some(f)) => {
                        write_atomic(&args.dest, &f.bytes).map_err(|e| fatal(e.to_string()))?;
                        eprintln!(
                            "wal-fetch {name}: served the shipped {name}.partial of repository `{}` (--use-partial)",
                            repo.name
                        );
                        return Ok(());
                    }
                    Ok(None) => {}
                    Err(e) => return Err(fatal(crate::error::error_chain_of(&e))),
                }
            }
            Err(CtlError {
                code: 1,
                message: format!(
                    "wal-fetch {name}: not found (nor a .partial that may stand in for it)"
                ),
            })
        }
        Ok(None) => Err(CtlError {
            code: 1,
            message: format!(
                "wal-fetch {name}: not found in {}",
                repos
                    .iter()
                    .map(|r| format!("`{}`", r.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        Err(e) => Err(fatal(crate::error::error_chain_of(&e))),
    }
}

async fn prefetch(
    spool: &Spool,
    repos: &[Repository],
    cluster: &ClusterIdentity,
    wal: &WalName,
    bytes: &[u8],
    identities: &crate::pipeline::Identities,
    args: &WalFetchArgs,
) {
    let Some(size) = segment_size_of(bytes) else {
        return;
    };
    let next = next_segments(wal, size, args.prefetch);
    let window = args.timeout.min(std::time::Duration::from_secs(10));
    spool
        .prefetch(repos, cluster, next, identities, window)
        .await;
}
