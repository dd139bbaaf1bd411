//! The permissive raw layer of the catalogue: what figment reads, before validation.
//!
//! figment reads the TOML text into a loose value tree ([`Dict`] of [`Value`]s): nothing is typed
//! yet, so one bad value never stops the rest of the file from being checked. The three documented
//! environment overrides are then written into that tree (and remembered, so an error in an
//! overridden value names the variable). A TOML syntax error is the only thing that stops reading;
//! it is reported with its line and column.

use figment::Figment;
use figment::providers::{Format, Toml};
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
    /// The `[repository.NAME]` names in the order the file declares them (figment's tables are
    /// sorted, so the order is taken from a second, order-preserving read of the same text).
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
    // The order-preserving read doubles as the syntax check: toml's error carries a byte span,
    // which gives an exact line and column.
    let ordered: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(text, &e))?;
    let repository_order = match ordered.get("repository") {
        Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    };

    let figment = Figment::from(Toml::string(text));
    let mut root = match figment.extract::<Dict>() {
        Ok(dict) => dict,
        Err(e) => {
            return Err(SyntaxError {
                line: None,
                column: None,
                message: e.to_string(),
            });
        }
    };

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
