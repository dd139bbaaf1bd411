//! Throwaway PostgreSQL clusters for integration tests (docs/design.md §11): `initdb` (as the `postgres`
//! OS user when running as root) into a fresh temp folder, a free port on 127.0.0.1, the unix
//! socket in that folder, `pg_ctl -w start`; stopped (`-m immediate`) and removed on drop.
//! Plus sample data and fingerprints to compare restores by their data, not by exit codes.
//!
//! [`PgCluster::start`] (no extra configuration: the dump, restore, drill and daemon tests) copies
//! (`cp -a`) one `initdb`'d template made once per test process instead of running `initdb`
//! each time (~0.2 s instead of ~2.7 s, more under load). Those copies share a system
//! identifier, which only matters where WAL is archived or a base backup is taken (WAL archive
//! keys and the archive's cluster check use it), so [`PgCluster::start_with`] with extra
//! configuration (archiving, WAL level, streaming: every WAL and physical test) still runs its own
//! `initdb` and gets a distinct identifier.
//!
//! Authentication: trust for local and 127.0.0.1, except the role [`PASSWORD_ROLE`] which must
//! give its password ([`PASSWORD`]) over TCP (scram-sha-256), for wrong-password tests.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A login role that must authenticate with [`PASSWORD`].
pub const PASSWORD_ROLE: &str = "bdc_pw";
pub const PASSWORD: &str = "right-password";

/// The directory of the newest installed PostgreSQL's binaries.
pub fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (run tests/setup)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A command run as the postgres OS user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `initdb` of a test cluster into `data` (its parent owned by the postgres OS user when root).
fn initdb(bin: &Path, data: &Path) {
    run_ok(
        as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--data-checksums",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdout(Stdio::null()),
        "initdb",
    );
}

/// The folder of this process's template `data` (made once by [`initdb`]); removed when the
/// test process exits. Templates of processes that died without exiting are removed here.
fn template(bin: &Path) -> &'static Path {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove_template() {
        if let Some(t) = TEMPLATE.get().and_then(|d| d.parent()) {
            let _ = std::fs::remove_dir_all(t);
        }
    }
    TEMPLATE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("bdc-pg-template-")
                .and_then(|p| p.parse::<i32>().ok())
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tmp.join(format!("bdc-pg-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("the template folder");
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres OS user (run tests/setup)");
            nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).expect("chown the template");
        }
        let data = dir.join("data");
        initdb(bin, &data);
        // SAFETY: registers a plain function without captures, run once at exit.
        unsafe { libc::atexit(remove_template) };
        data
    })
}

/// A running throwaway cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    pub bin: PathBuf,
}

impl PgCluster {
    /// initdb + start. Panics with the server log if the cluster does not come up.
    pub fn start() -> PgCluster {
        Self::start_with("")
    }

    /// Like [`PgCluster::start`], with extra `postgresql.conf` lines (e.g. `wal_level = replica`,
    /// `archive_mode = on`, `archive_command = '…'`).
    pub fn start_with(extra_conf: &str) -> PgCluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("bdc-pg-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres OS user (run tests/setup)");
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid))
                .expect("chown the cluster folder");
        }
        let data = dir.path().join("data");
        if extra_conf.is_empty() {
            run_ok(
                Command::new("cp").arg("-a").arg(template(&bin)).arg(&data),
                "copying the initdb template",
            );
        } else {
            initdb(&bin, &data);
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
                 host all all 127.0.0.1/32 trust\n"
            ),
        )
        .expect("pg_hba.conf");
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .expect("postgresql.conf");
            writeln!(
                conf,
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\nmax_connections = 40\n{extra_conf}\n",
                dir.path().display()
            )
            .expect("write postgresql.conf");
            let log = dir.path().join("server.log");
            let status = as_postgres(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .status()
                .expect("pg_ctl start");
            if status.success() {
                let cluster = PgCluster { dir, port, bin };
                cluster.psql(
                    "postgres",
                    &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}';"),
                );
                return cluster;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("the PostgreSQL test cluster did not start:\n{last_log}");
    }

    /// The cluster's folder (owned by postgres): `data/`, `server.log`, the unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Restarts the server (fast shutdown), e.g. after changing its configuration.
    pub fn restart(&self) {
        run_ok(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-m", "fast", "restart"])
                .stdout(Stdio::null()),
            "pg_ctl restart",
        );
    }

    /// `postgresql://postgres@127.0.0.1:PORT/db` (trusted superuser).
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", db)
    }

    /// The same over the unix socket in the cluster's folder (libpq's empty-host form).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@/{db}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{db}", self.port)
    }

    fn psql_cmd(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-U", "postgres", "-d", db, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    }

    /// Runs SQL (several statements allowed) with psql; its output, trimmed, or the error text.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut child = self.psql_cmd(db).spawn().map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL; panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {db} failed: {e}\nSQL: {sql}"))
    }

    pub fn create_database(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\";"));
    }

    pub fn database_exists(&self, db: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}';"),
        ) == "1"
    }

    /// Loads the BDC-shaped sample (programs, users, beneficiaries, documents: bdc-data.sql)
    /// at `percent` of its scale 1 (~60 MB at 100).
    pub fn load_sample(&self, db: &str, percent: u32) {
        let sql = scale_sample(&sample_sql(), percent);
        self.psql(db, &sql);
    }

    /// Adds what a restore must carry besides rows: a role with grants on a table and a
    /// sequence, a comment, a view, a trigger (and its function), an extra index, a check
    /// constraint, an identity column, a row-level security policy, and a sequence whose value
    /// is ahead of its table's max id. Needs [`PgCluster::load_sample`] first.
    pub fn load_extras(&self, db: &str) {
        self.psql(
            db,
            r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_reader') THEN CREATE ROLE app_reader; END IF;
END $$;
GRANT SELECT ON users, programs TO app_reader;
GRANT USAGE, SELECT ON SEQUENCE users_id_seq TO app_reader;
COMMENT ON TABLE users IS 'application users';
CREATE VIEW active_users AS SELECT id, email FROM users WHERE role <> 'viewer';
CREATE FUNCTION users_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.created_at := now(); RETURN NEW; END $$;
CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION users_touch();
CREATE INDEX users_role_idx ON users (role);
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'trainer', 'case_worker', 'viewer'));
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_visible ON users USING (role <> 'admin');
CREATE TABLE audit_log (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
                        msg text NOT NULL CHECK (msg <> ''));
INSERT INTO audit_log (msg) SELECT 'event ' || g FROM generate_series(1, 50) g;
SELECT setval('users_id_seq', (SELECT max(id) FROM users) + 100);
"#,
        );
    }

    /// `pgbench -i -s SCALE` tables (100 000 accounts per scale unit).
    pub fn load_pgbench(&self, db: &str, scale: u32) {
        run_ok(
            Command::new(self.bin.join("pgbench"))
                .args(["-i", "-q", "-h", "127.0.0.1", "-U", "postgres"])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-s")
                .arg(scale.to_string())
                .arg(db)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "pgbench -i",
        );
    }

    /// Ordinary and partitioned tables of `db` as `schema.table`.
    pub fn tables(&self, db: &str) -> Vec<String> {
        self.psql(
            db,
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1;",
        )
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Every table → (row count, md5 of its rows' text in sorted order).
    pub fn table_fingerprints(&self, db: &str) -> BTreeMap<String, (i64, String)> {
        let mut out = BTreeMap::new();
        for table in self.tables(db) {
            let (schema, name) = table.split_once('.').expect("schema.table");
            let q = format!("\"{schema}\".\"{name}\"");
            let row = self.psql(
                db,
                &format!(
                    "SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {q} t;"
                ),
            );
            let (count, md5) = row.split_once('|').expect("count|md5");
            out.insert(table, (count.parse().expect("count"), md5.to_string()));
        }
        out
    }

    /// The schema as sorted lines: indexes, constraints, triggers, sequences with their last
    /// values, views, policies, row security, comments, owners and grants (ACLs) — from pg_catalog.
    pub fn schema_fingerprint(&self, db: &str) -> Vec<String> {
        const SYS: &str = "('pg_catalog', 'information_schema')";
        let sql = format!(
            "SELECT line FROM (\n\
             SELECT 'index ' || schemaname || '.' || tablename || ': ' || indexdef AS line FROM pg_indexes WHERE schemaname NOT IN {SYS}\n\
             UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ': ' || conname || ' ' || pg_get_constraintdef(oid)\n\
               FROM pg_constraint WHERE conrelid <> 0 AND connamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname IN {SYS})\n\
             UNION ALL SELECT 'trigger ' || tgrelid::regclass::text || ': ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal\n\
             UNION ALL SELECT 'sequence ' || schemaname || '.' || sequencename || ': last_value=' || coalesce(last_value::text, 'null')\n\
               FROM pg_sequences WHERE schemaname NOT IN {SYS}\n\
             UNION ALL SELECT 'view ' || schemaname || '.' || viewname || ': ' || definition FROM pg_views WHERE schemaname NOT IN {SYS}\n\
             UNION ALL SELECT 'policy ' || schemaname || '.' || tablename || ': ' || policyname || ' ' || coalesce(qual, '') FROM pg_policies\n\
             UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname || ': kind=' || c.relkind::text || ' owner=' || pg_get_userbyid(c.relowner)\n\
               || ' rls=' || c.relrowsecurity::text || ' acl=' || coalesce(c.relacl::text, '-') || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')\n\
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n\
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname NOT IN {SYS} AND n.nspname NOT LIKE 'pg_toast%'\n\
             ) s ORDER BY line;"
        );
        self.psql(db, &sql).lines().map(str::to_string).collect()
    }

    /// Whether a role exists.
    pub fn role_exists(&self, role: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}';"),
        ) == "1"
    }

    /// Stops the cluster now (also done on drop).
    pub fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sample SQL: the repository's fixture if present, else the shared bench file.
pub fn sample_sql() -> String {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample-app.sql"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/bdc-data.sql"),
        PathBuf::from("/work/shared/bench/bdc-data.sql"),
    ];
    for c in &candidates {
        if let Ok(text) = std::fs::read_to_string(c) {
            return text;
        }
    }
    panic!("no sample SQL; looked at {candidates:?}");
}

/// Replaces every `N * :scale` of the sample by `max(1, N * percent / 100)`.
pub fn scale_sample(sql: &str, percent: u32) -> String {
    const PAT: &str = " * :scale";
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(pos) = rest.find(PAT) {
        let head = &rest[..pos];
        let digits_start = head
            .rfind(|c: char| !c.is_ascii_digit())
            .map(|i| i + 1)
            .unwrap_or(0);
        let n: u64 = head[digits_start..]
            .parse()
            .expect("a number before `* :scale`");
        out.push_str(&head[..digits_start]);
        out.push_str(&(n * u64::from(percent) / 100).max(1).to_string());
        rest = &rest[pos + PAT.len()..];
    }
    out.push_str(rest);
    out
}
