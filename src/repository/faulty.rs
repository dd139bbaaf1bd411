//! Test-only store faults: a wrapper over a repository's store that injects errors, latency, a
//! hang or truncated reads at chosen calls, and an observer log of every completed store call.
//!
//! Debug builds only, like [`crate::faults`]: in release builds [`wrap`] returns the store as it
//! is and reads no environment. [`super::Repository::open`] passes every store through [`wrap`], so
//! integration tests drive the real binaries.
//!
//! `BDC_BACKUP_TEST_STORE_FAULTS=RULE[;RULE…]`, each rule `REPO:OP:KEYTEXT:FAULT[@CALLS]`:
//! - `REPO`: a repository name of the catalogue, or `*`.
//! - `OP`: `put` (a create-only put, or the finish of a streamed upload), `get` (a whole read or a
//!   stream), `get-range`, `list`, `delete`, `head`, or `*`.
//! - `KEYTEXT`: the rule matches keys (for `list`, prefixes) containing this text; empty: any.
//! - `FAULT`: `transient` (an I/O error a retry may cure: connection reset), `permanent` (one
//!   it cannot: permission denied), `hang` (the call never returns), `truncate` (a read returns
//!   only the first half of its bytes, with no error), `latency=DURATION` (e.g. `300ms`, then the
//!   call runs).
//! - `CALLS`: `N` (the Nth matching call only), `N-M`, `N-` (from the Nth on); without it, every
//!   matching call. Calls are counted per rule over the life of the process.
//!
//! The first rule that matches a call (and whose call range holds it) applies. A bad spec is an
//! error of [`super::Repository::open`] naming the variable and the rule.
//!
//! `BDC_BACKUP_TEST_STORE_LOG=FILE` appends one line per completed store call, tab-separated:
//! `REPO  OP  KEY  ok|error|fault  durable=yes|no` (`durable=yes`: a put or delete the store
//! has made durable, i.e. returned after its fsyncs); for local stores also `REPO  fsync-file
//! PATH`, `REPO  rename PATH`, `REPO  fsync-dir PATH` as they happen; and whatever [`observe`]
//! is given (`wal-reply NAME exit=N`, written just before the daemon answers `wal-push`).

use super::store::{ObjectMeta, ObjectWriter, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable holding the fault rules.
pub const FAULTS_ENV: &str = "BDC_BACKUP_TEST_STORE_FAULTS";
/// The environment variable naming the observer log.
pub const LOG_ENV: &str = "BDC_BACKUP_TEST_STORE_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    GetRange,
    List,
    Delete,
    Head,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::GetRange => "get-range",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Head => "head",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Op::Put => "writing",
            Op::Get | Op::GetRange => "reading",
            Op::List => "listing",
            Op::Delete => "deleting",
            Op::Head => "reading metadata of",
        }
    }

    fn parse(text: &str) -> Option<Option<Op>> {
        Some(Some(match text {
            "*" => return Some(None),
            "put" => Op::Put,
            "get" => Op::Get,
            "get-range" => Op::GetRange,
            "list" => Op::List,
            "delete" => Op::Delete,
            "head" => Op::Head,
            _ => return None,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Transient,
    Permanent,
    Hang,
    Truncate,
    Latency(Duration),
}

#[derive(Debug)]
pub struct Rule {
    repository: Option<String>,
    op: Option<Op>,
    key_text: String,
    fault: Fault,
    /// First and last call (1-based, inclusive) the fault applies to.
    calls: (u64, u64),
    seen: AtomicU64,
}

/// The parsed rules and the observer log of this process.
#[derive(Debug, Default)]
pub struct Plan {
    rules: Vec<Rule>,
    log: Option<std::path::PathBuf>,
}

fn rule_err(rule: &str, why: &str) -> String {
    format!("{FAULTS_ENV}: rule `{rule}`: {why} (expected REPO:OP:KEYTEXT:FAULT[@CALLS])")
}

fn parse_calls(rule: &str, text: &str) -> Result<(u64, u64), String> {
    let num = |t: &str| {
        t.parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| rule_err(rule, &format!("call number `{t}` is not a number ≥ 1")))
    };
    match text.split_once('-') {
        None => {
            let n = num(text)?;
            Ok((n, n))
        }
        Some((a, "")) => Ok((num(a)?, u64::MAX)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(rule_err(rule, "the call range ends before it starts"));
            }
            Ok((a, b))
        }
    }
}

impl Plan {
    /// Parses a rule list (see the module doc).
    pub fn parse(spec: &str) -> Result<Plan, String> {
        let mut rules = Vec::new();
        for rule in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let parts: Vec<&str> = rule.splitn(4, ':').collect();
            let [repo, op, key_text, fault] = parts[..] else {
                return Err(rule_err(rule, "four `:`-separated fields needed"));
            };
            let (fault, calls) = match fault.split_once('@') {
                Some((f, c)) => (f, parse_calls(rule, c)?),
                None => (fault, (1, u64::MAX)),
            };
            let op = Op::parse(op).ok_or_else(|| {
                rule_err(
                    rule,
                    &format!(
                        "unknown operation `{op}` (put, get, get-range, list, delete, head or *)"
                    ),
                )
            })?;
            let fault = match fault {
                "transient" => Fault::Transient,
                "permanent" => Fault::Permanent,
                "hang" => Fault::Hang,
                "truncate" => Fault::Truncate,
                f => match f.strip_prefix("latency=") {
                    Some(d) => Fault::Latency(
                        humantime::parse_duration(d)
                            .map_err(|e| rule_err(rule, &format!("latency `{d}`: {e}")))?,
                    ),
                    None => {
                        return Err(rule_err(
                            rule,
                            &format!(
                                "unknown fault `{f}` (transient, permanent, hang, truncate or latency=DURATION)"
                            ),
                        ));
                    }
                },
            };
            if fault == Fault::Truncate && !matches!(op, Some(Op::Get) | Some(Op::GetRange) | None)
            {
                return Err(rule_err(
                    rule,
                    "`truncate` applies to reads (get, get-range) only",
                ));
            }
            rules.push(Rule {
                repository: (repo != "*").then(|| repo.to_string()),
                op,
                key_text: key_text.to_string(),
                fault,
                calls,
                seen: AtomicU64::new(0),
            });
        }
        Ok(Plan { rules, log: None })
    }

    /// The fault for this call, if a rule names it (counting the call for every matching rule).
    fn fault_for(&self, repository: &str, op: Op, key: &str) -> Option<Fault> {
        let mut chosen = None;
        for rule in &self.rules {
            if rule.repository.as_deref().is_some_and(|r| r != repository)
                || rule.op.is_some_and(|o| o != op)
                || !key.contains(&rule.key_text)
                || (rule.fault == Fault::Truncate && !matches!(op, Op::Get | Op::GetRange))
            {
                continue;
            }
            let n = rule.seen.fetch_add(1, Ordering::SeqCst) + 1;
            if chosen.is_none() && n >= rule.calls.0 && n <= rule.calls.1 {
                chosen = Some(rule.fault);
            }
        }
        chosen
    }

    fn log_line(&self, line: &str) {
        let Some(path) = &self.log else { return };
        use std::io::Write;
        // One write(2) per line on an O_APPEND file: lines of concurrent calls never interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// The plan of this process: parsed once from the environment (debug builds only).
fn plan() -> Result<Option<Arc<Plan>>, String> {
    static PLAN: std::sync::OnceLock<Result<Option<Arc<Plan>>, String>> =
        std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return Ok(None);
        }
        let spec = std::env::var(FAULTS_ENV).ok();
        let log = std::env::var_os(LOG_ENV).map(std::path::PathBuf::from);
        if spec.is_none() && log.is_none() {
            return Ok(None);
        }
        let mut plan = Plan::parse(spec.as_deref().unwrap_or(""))?;
        plan.log = log;
        Ok(Some(Arc::new(plan)))
    })
    .clone()
}

/// Appends `line` to the observer log, if there is one (debug builds only).
pub fn observe(line: &str) {
    if let Ok(Some(plan)) = plan() {
        plan.log_line(line);
    }
}

/// The store of repository `repository`, with the faults and the observer of the environment
/// (debug builds only; otherwise `store` as it is). Errs on a bad fault spec.
pub fn wrap(repository: &str, store: Store) -> Result<Store, String> {
    let Some(plan) = plan()? else {
        return Ok(store);
    };
    let store = match store {
        Store::Local(local) if plan.log.is_some() => {
            let (p, name) = (plan.clone(), repository.to_string());
            Store::Local(local.with_sync_observer(Arc::new(move |ev| {
                use super::local::SyncEvent;
                let line = match ev {
                    SyncEvent::File(path) => format!("{name}\tfsync-file\t{}", path.display()),
                    SyncEvent::Dir(path) => format!("{name}\tfsync-dir\t{}", path.display()),
                    SyncEvent::Rename { to, .. } => format!("{name}\trename\t{}", to.display()),
                };
                p.log_line(&line);
            })))
        }
        other => other,
    };
    Ok(Store::Faulty(Arc::new(FaultyStore {
        repository: repository.to_string(),
        inner: store,
        plan,
    })))
}

/// `store` with the faults of `spec` (the rule syntax of [`FAULTS_ENV`]), not the environment's:
/// for tests that hold a [`super::Repository`] in their own process. Debug builds only (in
/// release builds an error).
pub fn wrap_with(repository: &str, store: Store, spec: &str) -> Result<Store, String> {
    if !cfg!(debug_assertions) {
        return Err("store faults exist in debug builds only".into());
    }
    Ok(Store::Faulty(Arc::new(FaultyStore {
        repository: repository.to_string(),
        inner: store,
        plan: Arc::new(Plan::parse(spec)?),
    })))
}

/// A store with injected faults (see the module doc).
#[derive(Debug)]
pub struct FaultyStore {
    repository: String,
    inner: Store,
    plan: Arc<Plan>,
}

fn injected(op: Op, key: &str, fault: Fault) -> StoreError {
    let (kind, word) = match fault {
        Fault::Transient => (std::io::ErrorKind::ConnectionReset, "transient"),
        _ => (std::io::ErrorKind::PermissionDenied, "permanent"),
    };
    StoreError::Io {
        action: op.action(),
        key: key.to_string(),
        source: std::io::Error::new(kind, format!("injected {word} fault ({FAULTS_ENV})")),
    }
}

/// What to do before the real call: `Err` ends the call with an error (or never, for a hang);
/// `Ok(truncate)` runs it.
async fn before(plan: &Plan, repository: &str, op: Op, key: &str) -> Result<bool, StoreError> {
    match plan.fault_for(repository, op, key) {
        None => Ok(false),
        Some(Fault::Latency(d)) => {
            tokio::time::sleep(d).await;
            Ok(false)
        }
        Some(Fault::Hang) => {
            plan.log_line(&format!("{repository}\t{}\t{key}\thang", op.word()));
            std::future::pending::<()>().await;
            unreachable!("a pending future never resolves")
        }
        Some(Fault::Truncate) => Ok(true),
        Some(f @ (Fault::Transient | Fault::Permanent)) => {
            plan.log_line(&format!(
                "{repository}\t{}\t{key}\tfault\tdurable=no",
                op.word()
            ));
            Err(injected(op, key, f))
        }
    }
}

impl FaultyStore {
    /// The store the faults are injected over.
    pub(crate) fn inner(&self) -> &Store {
        &self.inner
    }

    fn done<T>(&self, op: Op, key: &str, result: &Result<T, StoreError>) {
        let durable = result.is_ok() && matches!(op, Op::Put | Op::Delete);
        self.plan.log_line(&format!(
            "{}\t{}\t{key}\t{}\tdurable={}",
            self.repository,
            op.word(),
            if result.is_ok() { "ok" } else { "error" },
            if durable { "yes" } else { "no" }
        ));
    }

    /// The deadline the wrapped store puts on this call, with the store's name for the error:
    /// an injected fault is the wrapped store misbehaving, so its deadline applies to it too.
    fn deadline(&self, op: Op) -> Option<(std::time::Duration, String)> {
        match &self.inner {
            Store::Local(s) if op != Op::Put && op != Op::Delete => {
                Some((s.read_timeout, s.root.display().to_string()))
            }
            Store::Object(s) => Some((s.options().call_timeout, s.location().to_string())),
            _ => None,
        }
    }

    async fn call<'a, T>(
        &'a self,
        op: Op,
        key: &'a str,
        f: impl FnOnce(&'a Store) -> BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<(T, bool), StoreError> {
        let run = async {
            let truncate = before(&self.plan, &self.repository, op, key).await?;
            let result = f(&self.inner).await;
            self.done(op, key, &result);
            result.map(|v| (v, truncate))
        };
        let Some((limit, store)) = self.deadline(op) else {
            return run.await;
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::TimedOut {
                action: op.action(),
                key: key.to_string(),
                store,
                after: limit,
            }),
        }
    }

    // The public calls return boxed futures: a named `Send` type breaks the cycle
    // Store → FaultyStore → Store that the compiler cannot prove `Send` through.

    pub fn writer<'a>(
        &'a self,
        key: &'a str,
        limited: bool,
    ) -> BoxFuture<'a, Result<FaultyWriter, StoreError>> {
        Box::pin(async move {
            Ok(FaultyWriter {
                inner: self.inner.writer_with_limit(key, limited).await?,
                repository: self.repository.clone(),
                plan: self.plan.clone(),
            })
        })
    }

    pub fn put_create<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.call(Op::Put, key, |s| Box::pin(s.put_create(key, bytes)))
                .await
                .map(|_| ())
        })
    }

    pub fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let (b, truncate) = self.call(Op::Get, key, |s| Box::pin(s.get(key))).await?;
            Ok(if truncate { b.slice(..b.len() / 2) } else { b })
        })
    }

    pub fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let (b, truncate) = self
                .call(Op::GetRange, key, |s| Box::pin(s.get_range(key, range)))
                .await?;
            Ok(if truncate { b.slice(..b.len() / 2) } else { b })
        })
    }

    pub fn get_stream<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>> {
        Box::pin(async move {
            let (stream, truncate) = self
                .call(Op::Get, key, |s| Box::pin(s.get_stream(key)))
                .await?;
            if !truncate {
                return Ok(stream);
            }
            // Half of the first chunk, then the end, as a connection closed early would look.
            let cut: BoxStream<'static, Result<Bytes, StoreError>> = Box::pin(
                stream
                    .take(1)
                    .map(|chunk| chunk.map(|b| b.slice(..b.len() / 2))),
            );
            Ok(cut)
        })
    }

    pub fn head<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectMeta>, StoreError>> {
        Box::pin(async move {
            self.call(Op::Head, key, |s| Box::pin(s.head(key)))
                .await
                .map(|(v, _)| v)
        })
    }

    pub fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(async move {
            self.call(Op::List, prefix, |s| Box::pin(s.list(prefix)))
                .await
                .map(|(v, _)| v)
        })
    }

    pub fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.call(Op::Delete, key, |s| Box::pin(s.delete(key)))
                .await
                .map(|_| ())
        })
    }
}

/// A streamed upload through a [`FaultyStore`]: `put` faults apply at `finish`.
pub struct FaultyWriter {
    inner: ObjectWriter,
    repository: String,
    plan: Arc<Plan>,
}

impl FaultyWriter {
    pub fn key(&self) -> &str {
        self.inner.key()
    }

    pub fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.inner.write(chunk))
    }

    pub fn finish(self) -> BoxFuture<'static, Result<u64, StoreError>> {
        Box::pin(async move {
            let key = self.inner.key().to_string();
            // On an injected error the inner writer is dropped: aborted, as after a real failure.
            before(&self.plan, &self.repository, Op::Put, &key).await?;
            let result = self.inner.finish().await;
            let durable = result.is_ok();
            self.plan.log_line(&format!(
                "{}\tput\t{key}\t{}\tdurable={}",
                self.repository,
                if durable { "ok" } else { "error" },
                if durable { "yes" } else { "no" }
            ));
            result
        })
    }

    pub fn abort(self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(self.inner.abort())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_counts_calls() {
        let plan =
            Plan::parse("offsite:put:data/:transient@2-3; *:get::truncate ;local:*:wal/:hang@1")
                .unwrap();
        assert_eq!(plan.fault_for("local", Op::Put, "backups/a"), None);
        assert_eq!(plan.fault_for("offsite", Op::Put, "backups/x/data/1"), None);
        assert_eq!(
            plan.fault_for("offsite", Op::Put, "backups/x/data/2"),
            Some(Fault::Transient)
        );
        assert_eq!(
            plan.fault_for("offsite", Op::Put, "backups/x/data/3"),
            Some(Fault::Transient)
        );
        assert_eq!(plan.fault_for("offsite", Op::Put, "backups/x/data/4"), None);
        assert_eq!(plan.fault_for("a", Op::Get, "k"), Some(Fault::Truncate));
        assert_eq!(plan.fault_for("a", Op::List, "k"), None);
        assert_eq!(
            plan.fault_for("local", Op::List, "wal/1"),
            Some(Fault::Hang)
        );
        assert_eq!(plan.fault_for("local", Op::List, "wal/1"), None);
        let p = Plan::parse("r:head:k:latency=250ms@3-").unwrap();
        assert_eq!(p.rules[0].fault, Fault::Latency(Duration::from_millis(250)));
        assert_eq!(p.rules[0].calls, (3, u64::MAX));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule() {
        for (spec, text) in [
            ("r:put:k", "four"),
            ("r:post:k:hang", "unknown operation `post`"),
            ("r:put:k:explode", "unknown fault `explode`"),
            ("r:put:k:hang@0", "call number `0`"),
            ("r:put:k:hang@5-2", "ends before"),
            ("r:put:k:truncate", "reads"),
            ("r:get:k:latency=soon", "latency `soon`"),
        ] {
            let err = Plan::parse(spec).unwrap_err();
            assert!(err.contains(text) && err.contains(spec), "{spec}: {err}");
            assert!(err.contains(FAULTS_ENV), "{err}");
        }
    }

    #[tokio::test]
    async fn injects_over_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(
            Plan::parse("r:put:a:transient@1;r:get:b:truncate;r:get:c:permanent").unwrap(),
        );
        let store = Store::Faulty(Arc::new(FaultyStore {
            repository: "r".into(),
            inner: Store::local(dir.path()).unwrap(),
            plan,
        }));
        let err = store
            .put_create("a", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(
            crate::error::Classify::retry(&err),
            crate::error::Retry::Transient
        );
        assert!(
            err.to_string().contains("injected transient fault"),
            "{err}"
        );
        store
            .put_create("a", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let mut w = store.writer("b").await.unwrap();
        w.write(Bytes::from_static(b"abcdef")).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(&store.get("b").await.unwrap()[..], b"abc");
        assert_eq!(&store.get_range("b", 0..6).await.unwrap()[..], b"abcdef");
        let mut s = store.get_stream("b").await.unwrap();
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"abc");
        assert!(s.next().await.is_none());
        store
            .put_create("c", Bytes::from_static(b"y"))
            .await
            .unwrap();
        let err = store.get("c").await.unwrap_err();
        assert_eq!(
            crate::error::Classify::retry(&err),
            crate::error::Retry::Permanent
        );
        let hang = Plan::parse("r:head::hang").unwrap();
        let store = Store::Faulty(Arc::new(FaultyStore {
            repository: "r".into(),
            inner: Store::local(dir.path()).unwrap(),
            plan: Arc::new(hang),
        }));
        let t = tokio::time::timeout(Duration::from_millis(200), store.head("a")).await;
        assert!(t.is_err(), "a hang returned");

        // The wrapped store's read deadline ends an injected hang.
        let store = Store::Faulty(Arc::new(FaultyStore {
            repository: "r".into(),
            inner: Store::Local(
                super::super::local::LocalStore::open(dir.path())
                    .unwrap()
                    .with_read_timeout(Duration::from_millis(100)),
            ),
            plan: Arc::new(Plan::parse("r:get::hang").unwrap()),
        }));
        let err = store.get("a").await.unwrap_err();
        assert!(matches!(err, StoreError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("reading a in"), "{err}");
    }
}
