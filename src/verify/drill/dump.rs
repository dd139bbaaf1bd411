//! The dump drill: each database of a `postgres-dump` backup restored with the ordinary
//! `restore database` code into `bdc_drill_<job>_<run_id>` on `drill-url` (else the job's
//! server), answered a first query, checked with the job's SQL checks, then dropped. Roles are
//! not restored into a live cluster: the globals SQL is read and checked instead.

use super::guard::{self, Scratch};
use super::sql::{self, Target};
use super::{DrillOutcome, DrillRequest, new_check};
use crate::error::error_chain_of;
use crate::pipeline;
use crate::postgres::connection::{PgControl, quote_ident};
use crate::postgres::manifest::DumpManifest;
use crate::postgres::restore::{RestoreDatabaseOptions, restore_database};
use crate::verify::check::{CheckKind, CheckResult};
use std::time::Instant;

/// The live server of the job (its `connection`, else `[postgres] url`).
pub(super) fn source_url(req: &DrillRequest<'_>) -> Option<String> {
    req.job
        .connection
        .clone()
        .or_else(|| req.catalogue.postgres.as_ref().map(|p| p.url.clone()))
}

/// Where the drill restores: `drill-url`, else the job's server.
pub(super) fn drill_url(req: &DrillRequest<'_>) -> Option<String> {
    req.settings.drill_url.clone().or_else(|| source_url(req))
}

fn password_file(req: &DrillRequest<'_>) -> Option<std::path::PathBuf> {
    req.catalogue
        .postgres
        .as_ref()
        .and_then(|p| p.password_file.clone())
}

pub(super) async fn drill(req: &DrillRequest<'_>, scratch: &Scratch, out: &mut DrillOutcome) {
    let began = Instant::now();
    let fail = |out: &mut DrillOutcome, name: &str, detail: String| {
        out.checks.push(new_check(
            req,
            CheckKind::Drill,
            name,
            CheckResult::Fail,
            detail,
            began.elapsed().as_secs_f64(),
            out.backup_bytes,
        ))
    };
    let Some(url) = drill_url(req) else {
        return fail(
            out,
            "dump drill",
            "no server to restore into: set the verify job's drill-url or [postgres] url".into(),
        );
    };
    let identities = match req.source.identities() {
        Ok(i) => i,
        Err(e) => return fail(out, "dump drill", error_chain_of(&e)),
    };
    let store = &req.source.repository.store;
    let manifest: DumpManifest =
        match pipeline::load_bytes(store, &req.backup.manifest, &identities)
            .await
            .map_err(|e| format!("reading the manifest: {}", error_chain_of(&e)))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| format!("the manifest is malformed: {e}"))
            }) {
            Ok(m) => m,
            Err(e) => return fail(out, "dump drill", e),
        };
    let workers = req.job.compression.workers.max(1) as u32;
    // pg_restore --jobs needs the archive spooled into the scratch folder.
    let spooled: u64 = manifest
        .databases
        .iter()
        .map(|d| d.object.content_size)
        .max()
        .unwrap_or(0);
    if workers > 1
        && let Err(e) = guard::check_space(
            &scratch.path,
            spooled,
            "the largest archive, spooled for pg_restore --jobs",
        )
    {
        return fail(out, "dump drill", e);
    }
    let pw = password_file(req);
    let drill_target = Target {
        url: url.clone(),
        password_file: pw.clone(),
        socket: None,
    };
    let source_target = Target {
        url: source_url(req).unwrap_or_else(|| url.clone()),
        password_file: pw.clone(),
        socket: None,
    };
    let default_db = match &req.job.spec {
        crate::catalogue::JobSpec::PostgresDump(d) => d.databases.first().cloned(),
        _ => None,
    }
    .or_else(|| manifest.databases.first().map(|d| d.name.clone()))
    .unwrap_or_default();
    let checks = sql::checks_of(&req.settings.checks, &req.job.name, &default_db);
    for (check, db) in &checks {
        if manifest.database(Some(db)).is_err() {
            out.checks.push(new_check(
                req,
                CheckKind::Sql,
                check.display_name(),
                CheckResult::Fail,
                format!(
                    "database `{db}` is not in backup {} (it holds {})",
                    req.backup.id,
                    manifest.database_names().join(", ")
                ),
                0.0,
                0,
            ));
        }
    }
    // Restore time: each database's restore to its first answer, summed (the checks between
    // them are not part of it).
    let mut restore_total = 0.0;
    for (i, db) in manifest.databases.iter().enumerate() {
        let into = guard::database_name(&req.job.name, req.run_id, i);
        let name = format!("restore of `{}` into {into}", db.name);
        let t0 = Instant::now();
        let restored = restore_database(
            req.catalogue,
            RestoreDatabaseOptions {
                job: req.job.name.clone(),
                database: Some(db.name.clone()),
                backup: Some(req.backup.id.clone()),
                into: into.clone(),
                url: Some(url.clone()),
                create: true,
                jobs: (workers > 1).then_some(workers),
                repository: Some(req.source.repository_name().to_string()),
                work_dir: Some(scratch.path.clone()),
                low_priority: true,
                ..Default::default()
            },
        )
        .await;
        let answered = match restored {
            Ok(report) => sql::query_value(&drill_target, &into, "SELECT 1")
                .await
                .map(|_| report)
                .map_err(|e| format!("the restored database answers no query: {e}")),
            Err(e) => Err(error_chain_of(&e)),
        };
        match answered {
            Ok(report) => {
                restore_total += t0.elapsed().as_secs_f64();
                out.checks.push(new_check(
                    req,
                    CheckKind::Drill,
                    &name,
                    CheckResult::Pass,
                    format!(
                        "{} archive bytes restored and answering in {:.1}s",
                        report.bytes,
                        t0.elapsed().as_secs_f64()
                    ),
                    t0.elapsed().as_secs_f64(),
                    db.object.size,
                ));
                super::emit(req, out).await;
                crate::faults::kill_point("drill-dump-restored", &into);
                for (check, _) in checks.iter().filter(|(_, d)| d == &db.name) {
                    out.checks.push(
                        sql::run_check(req, check, &drill_target, &into, &source_target, &db.name)
                            .await,
                    );
                    super::emit(req, out).await;
                }
            }
            Err(e) => fail(out, &name, e),
        }
        if let Err(e) = drop_database(&url, pw.as_deref(), &into).await {
            fail(out, &format!("drop of {into}"), e);
        }
    }
    globals(req, &manifest, &identities, &url, out).await;
    // Every database restored.
    if !manifest.databases.is_empty()
        && out
            .checks
            .iter()
            .all(|c| c.kind != CheckKind::Drill || c.result == CheckResult::Pass)
    {
        out.restore_seconds = Some(restore_total);
    }
}

/// Reads the globals SQL of the backup and checks it is complete; roles it names that the drill
/// server lacks are reported (objects owned by them could not be restored there).
async fn globals(
    req: &DrillRequest<'_>,
    manifest: &DumpManifest,
    identities: &pipeline::Identities,
    url: &str,
    out: &mut DrillOutcome,
) {
    let Some(g) = &manifest.globals else {
        return;
    };
    let t0 = Instant::now();
    let verdict =
        match pipeline::load_bytes(&req.source.repository.store, &g.object, identities).await {
            Err(e) => Err(format!("reading the globals: {}", error_chain_of(&e))),
            Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
                Err(_) => Err("the globals SQL is not UTF-8 text".into()),
                Ok(text) => {
                    let roles = roles_in(&text);
                    if !text.contains("PostgreSQL database cluster dump complete") {
                        Err(
                            "the globals SQL is truncated (pg_dumpall's closing line is missing)"
                                .into(),
                        )
                    } else {
                        let missing = missing_roles(url, req, &roles).await;
                        Ok(format!(
                            "{} roles, complete; not restored into the drill server{}",
                            roles.len(),
                            match missing {
                                Ok(m) if m.is_empty() => String::new(),
                                Ok(m) => format!(" (which lacks the roles {})", m.join(", ")),
                                Err(e) => format!(" (its roles could not be listed: {e})"),
                            }
                        ))
                    }
                }
            },
        };
    let (result, detail) = match verdict {
        Ok(d) => (CheckResult::Pass, d),
        Err(d) => (CheckResult::Fail, d),
    };
    out.checks.push(new_check(
        req,
        CheckKind::Drill,
        "globals (roles, tablespaces)",
        result,
        detail,
        t0.elapsed().as_secs_f64(),
        g.object.size,
    ));
}

/// The role names of `CREATE ROLE name;` lines (pg_dumpall quotes names when needed).
pub fn roles_in(sql: &str) -> Vec<String> {
    sql.lines()
        .filter_map(|l| l.strip_prefix("CREATE ROLE "))
        .map(|r| {
            let r = r.trim_end_matches(';').trim();
            match r.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                Some(q) => q.replace("\"\"", "\""),
                None => r.to_string(),
            }
        })
        .collect()
}

async fn missing_roles(
    url: &str,
    req: &DrillRequest<'_>,
    roles: &[String],
) -> Result<Vec<String>, String> {
    let mut pg = PgControl::connect(url, password_file(req).as_deref())
        .await
        .map_err(|e| error_chain_of(&e))?;
    let have: Vec<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_roles")
        .fetch_all(pg.conn())
        .await
        .map_err(|e| e.to_string())?;
    pg.close().await;
    Ok(roles
        .iter()
        .filter(|r| !have.contains(r))
        .cloned()
        .collect())
}

/// `DROP DATABASE IF EXISTS … WITH (FORCE)` (sessions still on it are ended).
pub(super) async fn drop_database(
    url: &str,
    password_file: Option<&std::path::Path>,
    name: &str,
) -> Result<(), String> {
    let mut pg = PgControl::connect(url, password_file)
        .await
        .map_err(|e| error_chain_of(&e))?;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pg.conn())
        .await
        .map_err(|e| format!("dropping database `{name}` on {}: {e}", pg.target()));
    pg.close().await;
    r.map(|_| ())
}

/// Drops every drill database of this drill (`bdc_drill_<job>_<run_id>` and `…_<n>`) left on
/// the server; returns the names dropped.
pub(super) async fn drop_drill_databases(req: &DrillRequest<'_>) -> Result<Vec<String>, String> {
    let Some(url) = drill_url(req) else {
        return Ok(Vec::new());
    };
    let first = guard::database_name(&req.job.name, req.run_id, 0);
    let pw = password_file(req);
    let mut pg = PgControl::connect(&url, pw.as_deref())
        .await
        .map_err(|e| error_chain_of(&e))?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname = $1 OR starts_with(datname, $1 || '_')",
    )
    .bind(&first)
    .fetch_all(pg.conn())
    .await
    .map_err(|e| e.to_string())?;
    pg.close().await;
    for n in &names {
        drop_database(&url, pw.as_deref(), n).await?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    #[test]
    fn roles_of_the_globals() {
        let sql =
            "--\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\nCREATE ROLE \"Odd \"\"x\"\"\";\n";
        assert_eq!(super::roles_in(sql), vec!["app", "Odd \"x\""]);
    }
}
