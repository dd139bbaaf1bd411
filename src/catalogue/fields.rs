//! Typed reads of raw catalogue values, each reporting its own error with the key path.
//!
//! Every getter returns `None` when the key is absent *or* its value is wrong; in the latter case
//! the error is already recorded in the [`Ctx`], so callers just carry on with the next key.

use super::raw::{Dict, Value};
use super::validate::CatalogueError;
use crate::schedule::CronSchedule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Collects errors while the catalogue is walked.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    /// The catalogue's folder: relative paths resolve against it.
    pub base: PathBuf,
    /// Key path → environment variable that set it.
    pub env_keys: BTreeMap<String, &'static str>,
    pub errors: Vec<CatalogueError>,
}

impl Ctx<'_> {
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(var) = self.env_keys.get(key) {
            message.push_str(&format!(
                " (this value comes from the environment variable {var})"
            ));
        }
        self.errors.push(CatalogueError {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            message,
        });
    }

    pub fn env_var(&self, key: &str) -> Option<&'static str> {
        self.env_keys.get(key).copied()
    }

    /// Resolves `raw` against the catalogue's folder unless it is absolute.
    pub fn resolve(&self, raw: &str) -> PathBuf {
        let p = Path::new(raw);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// How a value is described in "expected X, found Y".
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(..) | Value::Char(..) => "a string",
        Value::Bool(..) => "a boolean",
        Value::Num(_, n) => {
            if n.to_i128().is_some() || n.to_u128().is_some() {
                "an integer"
            } else {
                "a float"
            }
        }
        Value::Empty(..) => "an empty value",
        Value::Dict(_, d) if d.contains_key(TOML_DATETIME) => "a date-time",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}

/// How toml marks a date-time when read into a loose tree.
const TOML_DATETIME: &str = "$__toml_private_datetime";

/// The closest of `candidates` to `unknown`, if close enough to be a likely typo.
pub(crate) fn suggest<'c>(
    unknown: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let wanted = unknown.to_ascii_lowercase().replace('_', "-");
    let limit = (wanted.chars().count() / 4).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&wanted, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Job and repository names: `[A-Za-z0-9._-]+`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A table of the catalogue, with its key path (`""` for the root).
#[derive(Clone)]
pub(crate) struct Table<'v> {
    pub path: String,
    pub dict: &'v Dict,
}

/// A table's key path owned, so [`Table`] can borrow it.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'v> Table<'v> {
    pub fn new(path: impl Into<String>, dict: &'v Dict) -> Table<'v> {
        Table {
            path: path.into(),
            dict,
        }
    }

    pub fn key(&self, k: &str) -> String {
        join(&self.path, k)
    }

    pub fn get(&self, k: &str) -> Option<&'v Value> {
        self.dict.get(k)
    }

    /// Reports every key not in `allowed`. `elsewhere` may explain a key that is valid in
    /// another context (e.g. a key of another job kind); otherwise a close match is suggested.
    pub fn check_keys(
        &self,
        cx: &mut Ctx,
        allowed: &[&str],
        elsewhere: &dyn Fn(&str) -> Option<String>,
    ) {
        for k in self.dict.keys() {
            if allowed.contains(&k.as_str()) {
                continue;
            }
            let message = if let Some(explained) = elsewhere(k) {
                explained
            } else if let Some(s) = suggest(k, allowed.iter().copied()) {
                format!("unknown key `{k}`; did you mean `{s}`?")
            } else {
                format!("unknown key `{k}`; allowed here: {}", allowed.join(", "))
            };
            cx.error(&self.key(k), message);
        }
    }

    fn wrong_type(&self, cx: &mut Ctx, k: &str, expected: &str, v: &Value) {
        cx.error(
            &self.key(k),
            format!("expected {expected}, found {}", type_name(v)),
        );
    }

    pub fn missing(&self, cx: &mut Ctx, k: &str, what: &str) {
        cx.error(&self.key(k), format!("missing: {what}"));
    }

    pub fn string(&self, cx: &mut Ctx, k: &str) -> Option<&'v str> {
        match self.get(k)? {
            Value::String(_, s) => Some(s.as_str()),
            v => {
                self.wrong_type(cx, k, "a string", v);
                None
            }
        }
    }

    /// A string that must not be empty.
    pub fn text(&self, cx: &mut Ctx, k: &str) -> Option<&'v str> {
        let s = self.string(cx, k)?;
        if s.trim().is_empty() {
            cx.error(&self.key(k), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn bool(&self, cx: &mut Ctx, k: &str) -> Option<bool> {
        match self.get(k)? {
            Value::Bool(_, b) => Some(*b),
            v => {
                self.wrong_type(cx, k, "a boolean (true or false)", v);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn integer(&self, cx: &mut Ctx, k: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.get(k)?;
        let n = match v {
            Value::Num(_, n) => n.to_i128(),
            _ => None,
        };
        let Some(n) = n else {
            self.wrong_type(cx, k, "an integer", v);
            return None;
        };
        if n < i128::from(min) || n > i128::from(max) {
            cx.error(
                &self.key(k),
                format!("{n} is out of range: must be between {min} and {max}"),
            );
            return None;
        }
        i64::try_from(n).ok()
    }

    /// One of `choices`.
    pub fn choice(&self, cx: &mut Ctx, k: &str, choices: &[&str]) -> Option<&'v str> {
        let s = self.string(cx, k)?;
        if choices.contains(&s) {
            return Some(s);
        }
        let hint = suggest(s, choices.iter().copied())
            .map(|c| format!("; did you mean \"{c}\"?"))
            .unwrap_or_default();
        let list = choices
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        cx.error(&self.key(k), format!("\"{s}\" is not one of {list}{hint}"));
        None
    }

    /// An array of strings. Bad elements are reported (as `key[i]`) and left out.
    pub fn strings(&self, cx: &mut Ctx, k: &str) -> Option<Vec<(String, &'v str)>> {
        let v = self.get(k)?;
        let Value::Array(_, items) = v else {
            self.wrong_type(cx, k, "an array of strings", v);
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{}[{i}]", self.key(k));
            match item {
                Value::String(_, s) if s.trim().is_empty() => cx.error(&key, "must not be empty"),
                Value::String(_, s) => out.push((key, s.as_str())),
                other => cx.error(
                    &key,
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table.
    pub fn table(&self, cx: &mut Ctx, k: &str, expected: &str) -> Option<&'v Dict> {
        match self.get(k)? {
            Value::Dict(_, d) if !d.contains_key(TOML_DATETIME) => Some(d),
            v => {
                self.wrong_type(cx, k, expected, v);
                None
            }
        }
    }

    /// A humantime duration ("30s", "5m", "14d"), greater than zero unless `allow_zero`.
    pub fn duration(&self, cx: &mut Ctx, k: &str, allow_zero: bool) -> Option<Duration> {
        let s = self.string(cx, k)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() && !allow_zero => {
                cx.error(&self.key(k), "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(
                    &self.key(k),
                    format!("\"{s}\" is not a duration ({e}); write e.g. \"90s\", \"5m\", \"1h\", \"14d\""),
                );
                None
            }
        }
    }

    /// A path, resolved against the catalogue's folder when relative. A path set from the
    /// environment must be absolute (there is no sensible folder to resolve it against).
    pub fn path(&self, cx: &mut Ctx, k: &str) -> Option<PathBuf> {
        let s = self.text(cx, k)?;
        let key = self.key(k);
        if cx.env_var(&key).is_some() && !Path::new(s).is_absolute() {
            cx.error(&key, format!("\"{s}\" must be an absolute path"));
            return None;
        }
        Some(cx.resolve(s))
    }

    /// A path that must name an existing file (`what` is e.g. "identity file").
    pub fn existing_file(&self, cx: &mut Ctx, k: &str, what: &str) -> Option<PathBuf> {
        let p = self.path(cx, k)?;
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                cx.error(
                    &self.key(k),
                    format!("{what} {} is a directory, not a file", p.display()),
                );
                None
            }
            Ok(_) => Some(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cx.error(
                    &self.key(k),
                    format!("{what} {} does not exist", p.display()),
                );
                None
            }
            Err(e) => {
                cx.error(
                    &self.key(k),
                    format!("cannot check {what} {}: {e}", p.display()),
                );
                None
            }
        }
    }

    /// A cron expression, parsed by the scheduler's parser.
    pub fn cron(&self, cx: &mut Ctx, k: &str) -> Option<CronSchedule> {
        let s = self.text(cx, k)?;
        match CronSchedule::parse(s) {
            Ok(c) => Some(c),
            Err(e) => {
                cx.error(&self.key(k), e.to_string());
                None
            }
        }
    }
}

/// Parses a size such as "20MiB", "512 KB" or "1G" (bytes; K/M/G/T are powers of 1000, KiB/MiB/…
/// of 1024; "/s" may follow). Returns the reason when it is not one.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let s = s.strip_suffix("/s").unwrap_or(s).trim_end();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "it does not start with a number".to_string())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit \"{other}\" (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err("it must be at least 1 byte".to_string());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("512 KB"), Ok(512_000));
        assert_eq!(parse_size("1.5GiB/s"), Ok(3 << 29));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("fast").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("0MiB").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("stat-db", ["state-db", "socket"]), Some("state-db"));
        assert_eq!(
            suggest("state_db", ["state-db", "socket"]),
            Some("state-db")
        );
        assert_eq!(suggest("jobs", ["job", "daemon"]), Some("job"));
        assert_eq!(suggest("frobnicate", ["job", "daemon"]), None);
    }
}
