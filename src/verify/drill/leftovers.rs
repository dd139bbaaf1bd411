//! Leftovers of drills a killed daemon could not clean up, recognised by name: `drill-*`
//! folders under the scratch directory (a drill cluster still running from one is stopped
//! first) and `bdc_drill_*` databases on the drill server and the dump jobs' servers.

use super::cluster;
use super::dump::drop_database;
use super::guard::{DATABASE_PREFIX, FOLDER_PREFIX};
use crate::catalogue::{Catalogue, JobSpec};
use crate::error::error_chain_of;
use crate::postgres::connection::{PgControl, connect_options, describe};
use crate::verify::check::DrillSettings;

pub(super) async fn remove(catalogue: &Catalogue, settings: &DrillSettings) -> Vec<String> {
    let mut removed = Vec::new();
    folders(settings, &mut removed).await;
    databases(catalogue, settings, &mut removed).await;
    removed
}

async fn folders(settings: &DrillSettings, removed: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(&settings.scratch_directory) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !name.to_string_lossy().starts_with(FOLDER_PREFIX) {
            continue;
        }
        // A drill cluster's data directory is a folder of the drill's folder.
        for sub in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            let data = sub.path();
            if let Some(pid) = cluster::postmaster_pid(&data)
                && cluster::runs_in(pid, &data)
            {
                match cluster::stop(&data, "immediate").await {
                    Ok(()) => removed.push(format!(
                        "stopped the drill cluster (postmaster pid {pid}) in {}",
                        data.display()
                    )),
                    Err(e) => tracing::warn!("leftover drill cluster: {e}"),
                }
            }
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(format!("removed the scratch folder {}", path.display())),
            Err(e) => tracing::warn!("removing the leftover drill folder {}: {e}", path.display()),
        }
    }
}

async fn databases(catalogue: &Catalogue, settings: &DrillSettings, removed: &mut Vec<String>) {
    let mut servers: Vec<String> = settings.drill_url.iter().cloned().collect();
    let default = catalogue.postgres.as_ref().map(|p| p.url.clone());
    for job in &catalogue.jobs {
        if matches!(job.spec, JobSpec::PostgresDump(_))
            && let Some(url) = job.connection.clone().or_else(|| default.clone())
            && !servers.contains(&url)
        {
            servers.push(url);
        }
    }
    let pw = catalogue
        .postgres
        .as_ref()
        .and_then(|p| p.password_file.clone());
    for url in servers {
        let shown = connect_options(&url, None)
            .map(|o| describe(&o))
            .unwrap_or_else(|_| "(bad URL)".into());
        let names = async {
            let mut pg = PgControl::connect(&url, pw.as_deref())
                .await
                .map_err(|e| error_chain_of(&e))?;
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
            )
            .bind(DATABASE_PREFIX)
            .fetch_all(pg.conn())
            .await
            .map_err(|e| e.to_string())?;
            pg.close().await;
            Ok::<_, String>(names)
        }
        .await;
        match names {
            Ok(names) => {
                for n in names {
                    match drop_database(&url, pw.as_deref(), &n).await {
                        Ok(()) => removed.push(format!("dropped the database `{n}` on {shown}")),
                        Err(e) => tracing::warn!("leftover drill database: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("looking for leftover drill databases on {shown}: {e}"),
        }
    }
}
