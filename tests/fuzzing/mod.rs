//! Shared by the fuzz targets of tests/fuzz_parsers.rs: the runner (case counts and durations
//! from the environment, regression files) and generic generators (bytes, mutations, JSON).

#![allow(dead_code)]

pub mod catalogue;
pub mod records;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{
    Config, FailurePersistence, FileFailurePersistence, PersistedSeed, TestCaseError, TestError,
    TestRunner,
};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The runner

/// Runs `test` over `strategy` as the environment asks (module docs); panics with every
/// minimised failing input.
pub fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let deadline = env("BDC_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let cases = env("BDC_FUZZ_CASES").unwrap_or(if deadline.is_some() { 2000 } else { 200 });
    let calls = AtomicU64::new(0);
    let mut failures: Vec<String> = Vec::new();
    if deadline.is_some() {
        // Long runs: the reason of each failure carries the panic message; keep the log short.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let file = FileFailurePersistence::WithSource("proptest-regressions");
    for batch in 0.. {
        // The first batch replays the saved failures; later ones only add new ones.
        let persistence: Box<dyn FailurePersistence> = if batch == 0 {
            Box::new(file)
        } else {
            Box::new(SaveOnly(file))
        };
        let mut runner = TestRunner::new(Config {
            cases: u32::try_from(cases).unwrap_or(u32::MAX),
            failure_persistence: Some(persistence),
            // The saved failures live beside the test file, whatever module runs them.
            source_file: Some("tests/fuzz_parsers.rs"),
            max_shrink_iters: 2048,
            ..Config::default()
        });
        let result = runner.run(&strategy, |v| {
            calls.fetch_add(1, Ordering::Relaxed);
            test(v)
        });
        let failure = match result {
            Ok(()) => None,
            Err(TestError::Fail(reason, value)) => {
                Some(format!("{reason}; minimal input: {value:?}"))
            }
            Err(TestError::Abort(reason)) => Some(format!("aborted: {reason}")),
        };
        if let Some(f) = failure.filter(|f| !failures.contains(f)) {
            failures.push(f);
        }
        let more = deadline.is_some_and(|d| Instant::now() < d) && failures.len() < 20;
        if !more {
            break;
        }
    }
    if deadline.is_some() {
        let _ = std::panic::take_hook();
    }
    let n = calls.load(Ordering::Relaxed);
    for f in &failures {
        println!("fuzz {name}: FAILURE {f}");
    }
    println!("fuzz {name}: {n} cases, {} failures", failures.len());
    assert!(failures.is_empty(), "{name}: {}", failures.join("\n"));
}

/// Saves new failures in the regression file without replaying the saved ones (a long run's
/// later batches: a known failure would otherwise end each batch at once).
#[derive(Debug, Clone, PartialEq)]
pub struct SaveOnly(FileFailurePersistence);

impl FailurePersistence for SaveOnly {
    fn load_persisted_failures2(&self, _: Option<&'static str>) -> Vec<PersistedSeed> {
        Vec::new()
    }

    fn save_persisted_failure2(
        &mut self,
        source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn Debug,
    ) {
        self.0
            .save_persisted_failure2(source_file, seed, shrunken_value)
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<SaveOnly>() == Some(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Bytes with a few random edits: a byte replaced, inserted or removed, or a cut.
pub fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        base,
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..5),
    )
        .prop_map(|(mut v, edits)| {
            for (at, byte, op) in edits {
                let i = if v.is_empty() { 0 } else { at % (v.len() + 1) };
                match op {
                    0 if i < v.len() => v[i] = byte,
                    1 => v.insert(i, byte),
                    2 if i < v.len() => {
                        v.remove(i);
                    }
                    3 => v.truncate(i),
                    _ => {}
                }
            }
            v
        })
}

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// JSON values built from the keys and shapes the decoders look for, so type confusion (a
/// number where a string goes, a nested object, a huge integer) is reached often.
pub fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let keys = select(vec![
        "type",
        "job",
        "limit",
        "repository",
        "backup-type",
        "wait",
        "run-id",
        "dry-run",
        "weeks",
        "name",
        "system-identifier",
        "pg-major",
        "protocol",
        "software",
        "ok",
        "error",
        "code",
        "message",
        "event",
        "run",
        "jobs",
        "run_id",
        "sha256",
        "warnings",
        "hex",
        "end",
    ]);
    let texts = select(vec![
        "status",
        "runs",
        "backups",
        "run",
        "cancel",
        "reload",
        "follow",
        "retention",
        "usage",
        "wal-push",
        "full",
        "incremental",
        "log",
        "skipped",
        "reloaded",
        "event",
        "forbidden",
        "wal-pushed",
        "cancelled",
        "000000010000000000000003",
        "18446744073709551616",
        "-1",
        "",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        texts.prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    })
}

pub fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(".{0,16}")
}

pub fn json_line(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialises")
}
