//! Catalogue fragments the integration tests repeat: the `[postgres]` table with the nightly
//! `postgres-dump` job `db-dump` of database `app`, and a `files` job with weekly fulls and
//! nightly incrementals, both into the repository `local` that `Setup` declares.

use std::path::Path;

/// `[postgres] url = URL` and the job `db-dump` (database `app`, nightly, into `local`). Lines
/// written right after it belong to the job's table (e.g. `compression-workers = 2`).
pub fn dump_job(url: &str) -> String {
    format!(
        r#"
[postgres]
url = "{url}"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
"#
    )
}

/// The `files` job `name` of the tree `path` (full on Sundays, incremental nightly, into
/// `local`). Lines written right after it belong to the job's table.
pub fn files_job(name: &str, path: &Path) -> String {
    format!(
        r#"
[[job]]
name = "{name}"
kind = "files"
path = "{path}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["local"]
"#,
        path = path.display()
    )
}

/// A drill's SQL check of the dump job `db-dump`: table `users` of `app` is not empty (the
/// sample data of `PgCluster::load_sample`). Written right after a `verify` job's table.
pub const USERS_PRESENT_CHECK: &str = r#"
[[job.check]]
job = "db-dump"
database = "app"
name = "users present"
sql = "SELECT count(*) FROM users"
min = 1
"#;
