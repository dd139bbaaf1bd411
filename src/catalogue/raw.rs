//! The permissive raw layer of the catalogue: the TOML text as a loose value tree, before
//! validation.
//!
//! The text is parsed once, by `toml` (order-preserving): a syntax error stops reading and is
//! reported with its line and column; otherwise the table is turned into a loose value tree
//! ([`Dict`] of [`Value`]s, figment's value types, which validation is written against): nothing
//! is typed yet, so one bad value never stops the rest of the file from being checked. The
//! `[repository.NAME]` order is taken from the same parse. The three documented environment
//! overrides are then written into that tree from the environment passed in (and remembered, so
//! an error in an overridden value names the variable). docs/decisions.md says why figment no
//! longer reads the file or the environment.

pub use figment::value::{Dict, Value};

use super::{ENV_LOG, ENV_SOCKET, ENV_STATE_DB};

/// The environment overrides, in the order they are applied: (variable, key in `[daemon]`).
pub const ENV_OVERRIDES: [(&str, &str); 3] = [
    (ENV_STATE_DB, "state-db"),
    (ENV_SOCKET, "socket"),
    (ENV_LOG, "log"),
];

/// The catalogue as read, before validation.
#[derive(Debug, Clone)]
pub struct RawCatalogue {
    /// The top-level table, environment overrides applied.
    pub root: Dict,
    /// The `[repository.NAME]` names in the order the file declares them ([`Dict`] is sorted).
    pub repository_order: Vec<String>,
    /// Key paths set from the environment, with the variable that set them
    /// (e.g. `("daemon.state-db", "BDC_BACKUP_STATE_DB")`).
    pub env_overrides: Vec<(String, &'static str)>,
}

/// A TOML syntax error, with a 1-based position when the parser gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(
                f,
                "TOML syntax error at line {l}, column {c}: {}",
                self.message
            ),
            _ => write!(f, "TOML syntax error: {}", self.message),
        }
    }
}

/// Reads `text` into the raw layer and applies the environment overrides found in `env` (only the
/// three documented variables are looked at; every other pair is ignored).
pub fn read(text: &str, env: &[(String, String)]) -> Result<RawCatalogue, SyntaxError> {
    // toml's error carries a byte span, which gives an exact line and column.
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(text, &e))?;
    let repository_order = match table.get("repository") {
        Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut root = loose_table(table);

    let mut env_overrides = Vec::new();
    for (var, key) in ENV_OVERRIDES {
        // The last assignment wins, as in a shell environment.
        let Some((_, value)) = env.iter().rev().find(|(name, _)| name == var) else {
            continue;
        };
        let daemon = root
            .entry("daemon".to_string())
            .or_insert_with(|| Value::from(Dict::new()));
        // A `daemon` that is not a table is reported by validation; the override has nowhere to go.
        if let Value::Dict(_, dict) = daemon {
            dict.insert(key.to_string(), Value::from(value.clone()));
            env_overrides.push((format!("daemon.{key}"), var));
        }
    }

    Ok(RawCatalogue {
        root,
        repository_order,
        env_overrides,
    })
}

/// The key under which a TOML date-time appears in the loose tree (as serde sees it from `toml`).
const TOML_DATETIME: &str = "$__toml_private_datetime";

fn loose_table(table: toml::Table) -> Dict {
    table.into_iter().map(|(k, v)| (k, loose(v))).collect()
}

/// The loose value of a TOML value, exactly as `toml::from_str::<Dict>` (what figment's TOML
/// provider did) builds it: integers as i64, floats as f64, a date-time as a one-key table.
fn loose(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::from(s),
        toml::Value::Integer(n) => Value::from(n),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::from(b),
        toml::Value::Datetime(d) => {
            let mut dict = Dict::new();
            dict.insert(TOML_DATETIME.to_string(), Value::from(d.to_string()));
            Value::from(dict)
        }
        toml::Value::Array(items) => Value::from(items.into_iter().map(loose).collect::<Vec<_>>()),
        toml::Value::Table(t) => Value::from(loose_table(t)),
    }
}

fn syntax_error(text: &str, e: &toml::de::Error) -> SyntaxError {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            SyntaxError {
                line: Some(line),
                column: Some(column),
                message,
            }
        }
        None => SyntaxError {
            line: None,
            column: None,
            message,
        },
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_has_position() {
        let err = read("[daemon]\nsocket = \"/run/x.sock\"\ntimezone = \n", &[]).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.column, Some(12));
        assert!(
            err.to_string()
                .starts_with("TOML syntax error at line 3, column 12: "),
            "{err}"
        );
    }

    #[test]
    fn loose_tree_is_what_figment_read() {
        // figment's TOML provider was `toml::from_str::<Dict>`; one parse must give the same tree.
        let text = r#"
            top = "s"
            n = -42
            f = 1.5
            yes = true
            when = 2026-12-01T19:47:57.901925+00:00
            day = 2026-12-01
            mixed = [1, "two", [3.0], { four = 4 }]
            [daemon]
            timezone = "Europe/Berlin"
            [[job]]
            name = "a"
            schedule = { full = "0 2 * * *" }
            [[job]]
            name = "b"
            [repository.zz.deep]
            x = 1979-05-27T07:32:00
        "#;
        let figment: Dict = toml::from_str(text).unwrap();
        assert_eq!(read(text, &[]).unwrap().root, figment);
        let Some(Value::Dict(_, when)) = figment.get("when") else {
            panic!("a date-time is a one-key table")
        };
        assert!(when.contains_key(TOML_DATETIME));
    }

    #[test]
    fn repository_order_is_declaration_order() {
        let raw = read(
            "[repository.zz]\nurl = \"file:///a\"\n[repository.aa]\nurl = \"file:///b\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(raw.repository_order, ["zz", "aa"]);
    }

    #[test]
    fn only_documented_env_vars_apply() {
        let env = vec![
            ("BDC_BACKUP_SOCKET".to_string(), "/tmp/s.sock".to_string()),
            (
                "BDC_BACKUP_TIMEZONE".to_string(),
                "Mars/Olympus".to_string(),
            ),
        ];
        let raw = read("", &env).unwrap();
        let Some(Value::Dict(_, daemon)) = raw.root.get("daemon") else {
            panic!("no daemon table")
        };
        assert_eq!(daemon.len(), 1);
        assert_eq!(
            daemon.get("socket").and_then(Value::as_str),
            Some("/tmp/s.sock")
        );
        assert_eq!(
            raw.env_overrides,
            vec![("daemon.socket".to_string(), "BDC_BACKUP_SOCKET")]
        );
    }
}
