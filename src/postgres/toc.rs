//! Selecting tables from a custom-format archive: filters `pg_restore -l` (the table of contents)
//! down to the entries that belong to the chosen tables — the table, its data, owned sequences
//! (serial and identity) with their values, defaults, constraints, foreign keys, triggers,
//! indexes, row security, policies, rules, grants and comments — for `pg_restore -L`.
//!
//! `-l` names an index or a sequence but not its table, so the owning table is read from the
//! archive's schema-only script (`pg_restore -s -f -`): `CREATE [UNIQUE] INDEX … ON [ONLY] s.t`,
//! `ALTER SEQUENCE … OWNED BY s.t.col`, identity columns' `SEQUENCE NAME`, and each foreign key's
//! `REFERENCES s.t`. Limitation: schema and owner names containing spaces are not supported.

use std::collections::{BTreeMap, BTreeSet};

/// (schema, name)
pub type QName = (String, String);

/// Entry types that can belong to a table, longest first so prefixes do not shadow them.
const KNOWN_DESCS: &[&str] = &[
    "SEQUENCE OWNED BY",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "ROW SECURITY",
    "SEQUENCE SET",
    "TABLE DATA",
    "CONSTRAINT",
    "SEQUENCE",
    "COMMENT",
    "FUNCTION",
    "DEFAULT",
    "TRIGGER",
    "POLICY",
    "INDEX",
    "TABLE",
    "RULE",
    "ACL",
];

/// One parsed `pg_restore -l` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    pub line: String,
    pub desc: String,
    pub schema: String,
    pub tag: String,
}

/// Parses one TOC line (`id; catalog-oid oid DESC SCHEMA TAG OWNER`); None for comments and
/// entry types that never belong to a table.
pub fn parse_toc_line(line: &str) -> Option<TocEntry> {
    let line = line.trim_end();
    if line.starts_with(';') || line.is_empty() {
        return None;
    }
    let (_id, rest) = line.split_once("; ")?;
    let mut parts = rest.splitn(3, ' ');
    let _catalog = parts.next()?;
    let _oid = parts.next()?;
    let rest = parts.next()?;
    let desc = KNOWN_DESCS
        .iter()
        .find(|d| rest.starts_with(&format!("{d} ")))?;
    let rest = &rest[desc.len() + 1..];
    let (schema, rest) = rest.split_once(' ')?;
    // The owner is the last word; it may be empty ("… TAG ").
    let tag = match rest.rsplit_once(' ') {
        Some((tag, _owner)) => tag,
        None => rest,
    };
    Some(TocEntry {
        line: line.to_string(),
        desc: desc.to_string(),
        schema: schema.to_string(),
        tag: tag.to_string(),
    })
}

/// Parses an SQL identifier at the start of `s` (bare or double-quoted); returns it unquoted and
/// the rest.
fn ident(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if body[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &body[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(s.len());
        if end == 0 {
            None
        } else {
            Some((s[..end].to_string(), &s[end..]))
        }
    }
}

/// Parses a dotted name (`a.b.c`, quoted parts allowed) into its parts and the rest.
fn dotted(s: &str) -> Option<(Vec<String>, &str)> {
    let (first, mut rest) = ident(s)?;
    let mut parts = vec![first];
    while let Some(after) = rest.strip_prefix('.') {
        let (p, r) = ident(after)?;
        parts.push(p);
        rest = r;
    }
    Some((parts, rest))
}

fn qualified(s: &str) -> Option<(QName, &str)> {
    let (parts, rest) = dotted(s)?;
    match parts.as_slice() {
        [schema, name] => Some(((schema.clone(), name.clone()), rest)),
        _ => None,
    }
}

/// What the schema-only script says about ownership.
#[derive(Debug, Default, Clone)]
pub struct SchemaFacts {
    /// (schema, index) → table
    pub index_table: BTreeMap<QName, QName>,
    /// (schema, sequence) → owning table (serial `OWNED BY` and identity columns)
    pub sequence_table: BTreeMap<QName, QName>,
    /// (schema, table, constraint) → referenced table
    pub foreign_keys: BTreeMap<(String, String, String), QName>,
    /// (schema, table, trigger) → the trigger's function
    pub trigger_functions: BTreeMap<(String, String, String), QName>,
}

/// Reads a `pg_restore -s -f -` script.
pub fn parse_schema_facts(sql: &str) -> SchemaFacts {
    let mut facts = SchemaFacts::default();
    // The table of the last `ALTER TABLE [ONLY] x` line, for statements continued on the next line.
    let mut last_table: Option<QName> = None;
    for raw in sql.lines() {
        let line = raw.trim_start();
        if let Some(rest) = line
            .strip_prefix("CREATE UNIQUE INDEX ")
            .or_else(|| line.strip_prefix("CREATE INDEX "))
        {
            if let Some((index, rest)) = ident(rest)
                && let Some(rest) = rest.strip_prefix(" ON ")
            {
                let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
                if let Some((table, _)) = qualified(rest) {
                    facts.index_table.insert((table.0.clone(), index), table);
                }
            }
        } else if let Some(rest) = line
            .strip_prefix("CREATE TRIGGER ")
            .or_else(|| line.strip_prefix("CREATE CONSTRAINT TRIGGER "))
        {
            if let Some((trigger, rest)) = ident(rest)
                && let Some(on) = rest.find(" ON ")
                && let Some((table, rest)) = qualified(&rest[on + 4..])
                && let Some(f) = rest
                    .find(" EXECUTE FUNCTION ")
                    .or_else(|| rest.find(" EXECUTE PROCEDURE "))
            {
                let after = &rest[f..];
                let after = after
                    .trim_start_matches(" EXECUTE FUNCTION ")
                    .trim_start_matches(" EXECUTE PROCEDURE ");
                if let Some((function, _)) = qualified(after) {
                    facts
                        .trigger_functions
                        .insert((table.0, table.1, trigger), function);
                }
            }
        } else if let Some(rest) = line.strip_prefix("ALTER SEQUENCE ") {
            if let Some((seq, rest)) = qualified(rest)
                && let Some(rest) = rest.strip_prefix(" OWNED BY ")
                && let Some((parts, _)) = dotted(rest)
                && parts.len() == 3
            {
                facts
                    .sequence_table
                    .insert(seq, (parts[0].clone(), parts[1].clone()));
            }
        } else if let Some(rest) = line.strip_prefix("ALTER TABLE ") {
            let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
            last_table = qualified(rest).map(|(t, _)| t);
            if let Some(t) = &last_table {
                handle_continued(&mut facts, t, rest);
            }
        } else if let Some(t) = &last_table {
            handle_continued(&mut facts, &t.clone(), line);
            if line.is_empty() || line.starts_with("--") {
                last_table = None;
            }
        }
    }
    facts
}

fn handle_continued(facts: &mut SchemaFacts, table: &QName, text: &str) {
    if let Some(pos) = text.find("SEQUENCE NAME ")
        && let Some((seq, _)) = qualified(&text[pos + "SEQUENCE NAME ".len()..])
    {
        facts.sequence_table.insert(seq, table.clone());
    }
    if let Some(pos) = text.find("ADD CONSTRAINT ")
        && let Some((name, rest)) = ident(&text[pos + "ADD CONSTRAINT ".len()..])
        && rest.starts_with(" FOREIGN KEY")
        && let Some(r) = rest.find(" REFERENCES ")
        && let Some((referenced, _)) = qualified(&rest[r + " REFERENCES ".len()..])
    {
        facts
            .foreign_keys
            .insert((table.0.clone(), table.1.clone(), name), referenced);
    }
}

/// The result of a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocSelection {
    /// The `-L` list: the kept TOC lines.
    pub list: String,
    /// The tables selected.
    pub tables: Vec<QName>,
    pub kept: usize,
    /// Foreign keys left out because the table they reference is neither restored nor present.
    pub skipped_foreign_keys: Vec<String>,
}

/// Splits a requested name (`users`, `public.users`, `"Odd Name"`) into (schema?, table).
fn requested_name(s: &str) -> (Option<String>, String) {
    if let Some((parts, rest)) = dotted(s.trim())
        && rest.is_empty()
    {
        match parts.as_slice() {
            [t] => return (None, t.clone()),
            [schema, t] => return (Some(schema.clone()), t.clone()),
            _ => {}
        }
    }
    (None, s.trim().to_string())
}

/// What already exists in the target database.
pub trait TargetObjects {
    /// A table (a foreign key to it can be restored).
    fn has_table(&self, schema: &str, table: &str) -> bool;
    /// A function (a selected table's trigger function is then not recreated).
    fn has_function(&self, schema: &str, function: &str) -> bool;
}

/// An empty target.
pub struct EmptyTarget;

impl TargetObjects for EmptyTarget {
    fn has_table(&self, _: &str, _: &str) -> bool {
        false
    }
    fn has_function(&self, _: &str, _: &str) -> bool {
        false
    }
}

/// Selects the entries of `requested` tables, plus the functions their triggers call when the
/// target lacks them. Foreign keys are kept when the referenced table is selected too or exists
/// in the target.
pub fn select_tables(
    toc: &str,
    schema_sql: &str,
    requested: &[String],
    target: &dyn TargetObjects,
) -> Result<TocSelection, String> {
    let entries: Vec<TocEntry> = toc.lines().filter_map(parse_toc_line).collect();
    let facts = parse_schema_facts(schema_sql);
    let all_tables: BTreeSet<QName> = entries
        .iter()
        .filter(|e| e.desc == "TABLE")
        .map(|e| (e.schema.clone(), e.tag.clone()))
        .collect();

    let mut selected: BTreeSet<QName> = BTreeSet::new();
    for r in requested {
        let (schema, table) = requested_name(r);
        let matches: Vec<&QName> = all_tables
            .iter()
            .filter(|(s, t)| *t == table && schema.as_ref().is_none_or(|want| want == s))
            .collect();
        match matches.as_slice() {
            [] => return Err(format!("table `{r}` is not in this backup")),
            [one] => {
                selected.insert((*one).clone());
            }
            many => {
                let names: Vec<String> = many.iter().map(|(s, t)| format!("{s}.{t}")).collect();
                return Err(format!(
                    "table `{r}` is ambiguous ({}); qualify it with its schema",
                    names.join(", ")
                ));
            }
        }
    }

    // The table a "TABLE rest…" tag starts with: the longest known table name of the schema.
    let table_prefix = |schema: &str, tag: &str| -> Option<(QName, String)> {
        all_tables
            .iter()
            .filter(|(s, t)| s == schema && (tag == t || tag.starts_with(&format!("{t} "))))
            .max_by_key(|(_, t)| t.len())
            .map(|q| (q.clone(), tag[q.1.len()..].trim_start().to_string()))
    };
    let in_sel = |q: &QName| selected.contains(q);
    let seq_in = |schema: &str, name: &str| {
        facts
            .sequence_table
            .get(&(schema.to_string(), name.to_string()))
            .is_some_and(in_sel)
    };
    let index_in = |schema: &str, name: &str| {
        facts
            .index_table
            .get(&(schema.to_string(), name.to_string()))
            .is_some_and(in_sel)
    };

    // Trigger functions of the selected tables that the target lacks.
    let functions: BTreeSet<QName> = facts
        .trigger_functions
        .iter()
        .filter(|((s, t, _), f)| {
            in_sel(&(s.clone(), t.clone())) && !target.has_function(&f.0, &f.1)
        })
        .map(|(_, f)| f.clone())
        .collect();
    // A FUNCTION tag is `name(args)`; trigger functions take none.
    let function_in = |schema: &str, tag: &str| {
        tag.strip_suffix("()")
            .is_some_and(|name| functions.contains(&(schema.to_string(), name.to_string())))
    };

    let mut list = String::new();
    let mut kept = 0;
    let mut skipped_foreign_keys = Vec::new();
    for e in &entries {
        let s = e.schema.as_str();
        let keep = match e.desc.as_str() {
            "TABLE" | "TABLE DATA" | "ROW SECURITY" => in_sel(&(e.schema.clone(), e.tag.clone())),
            "SEQUENCE" | "SEQUENCE SET" | "SEQUENCE OWNED BY" => seq_in(s, &e.tag),
            "INDEX" => index_in(s, &e.tag),
            "FUNCTION" => function_in(s, &e.tag),
            "DEFAULT" | "CONSTRAINT" | "CHECK CONSTRAINT" | "TRIGGER" | "POLICY" | "RULE" => {
                table_prefix(s, &e.tag).is_some_and(|(t, _)| in_sel(&t))
            }
            "FK CONSTRAINT" => match table_prefix(s, &e.tag) {
                Some((t, name)) if in_sel(&t) => {
                    match facts
                        .foreign_keys
                        .get(&(t.0.clone(), t.1.clone(), name.clone()))
                    {
                        Some(r) if in_sel(r) || target.has_table(&r.0, &r.1) => true,
                        Some(r) => {
                            skipped_foreign_keys
                                .push(format!("{}.{}.{} → {}.{}", t.0, t.1, name, r.0, r.1));
                            false
                        }
                        // Unknown reference: let pg_restore judge.
                        None => true,
                    }
                }
                _ => false,
            },
            "ACL" | "COMMENT" => {
                let (kind, object) = e.tag.split_once(' ').unwrap_or((e.tag.as_str(), ""));
                match kind {
                    "TABLE" => in_sel(&(e.schema.clone(), object.to_string())),
                    "SEQUENCE" => seq_in(s, object),
                    "INDEX" => index_in(s, object),
                    "FUNCTION" => function_in(s, object),
                    "COLUMN" => all_tables
                        .iter()
                        .filter(|(ts, t)| ts == s && object.starts_with(&format!("{t}.")))
                        .max_by_key(|(_, t)| t.len())
                        .is_some_and(in_sel),
                    "CONSTRAINT" | "TRIGGER" | "POLICY" | "RULE" => object
                        .rsplit_once(" ON ")
                        .is_some_and(|(_, t)| in_sel(&(e.schema.clone(), t.to_string()))),
                    _ => false,
                }
            }
            _ => false,
        };
        if keep {
            list.push_str(&e.line);
            list.push('\n');
            kept += 1;
        }
    }
    Ok(TocSelection {
        list,
        tables: selected.into_iter().collect(),
        kept,
        skipped_foreign_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOC: &str = "\
;
; Archive created at 2026-11-26 09:47:45 UTC
225; 1255 16447 FUNCTION public touch() postgres
224; 1259 16451 TABLE public Odd Name postgres
223; 1259 16450 SEQUENCE public Odd Name_id_seq postgres
217; 1259 16395 TABLE public users postgres
3408; 0 0 COMMENT public TABLE users postgres
3409; 0 0 ACL public TABLE users postgres
222; 1259 16443 VIEW public active_users postgres
219; 1259 16407 TABLE public beneficiaries postgres
218; 1259 16406 SEQUENCE public beneficiaries_id_seq postgres
3410; 0 0 SEQUENCE OWNED BY public beneficiaries_id_seq postgres
215; 1259 16386 TABLE public programs postgres
216; 1259 16394 SEQUENCE public users_id_seq postgres
3413; 0 0 SEQUENCE OWNED BY public users_id_seq postgres
3414; 0 0 ACL public SEQUENCE users_id_seq postgres
3225; 2604 16410 DEFAULT public beneficiaries id postgres
3223; 2604 16398 DEFAULT public users id postgres
3401; 0 16451 TABLE DATA public Odd Name postgres
3397; 0 16407 TABLE DATA public beneficiaries postgres
3395; 0 16395 TABLE DATA public users postgres
3415; 0 0 SEQUENCE SET public Odd Name_id_seq postgres
3416; 0 0 SEQUENCE SET public beneficiaries_id_seq postgres
3419; 0 0 SEQUENCE SET public users_id_seq postgres
3242; 2606 16457 CONSTRAINT public Odd Name Odd Name_pkey postgres
3237; 2606 16415 CONSTRAINT public beneficiaries beneficiaries_pkey postgres
3232; 2606 16405 CONSTRAINT public users users_email_key postgres
3234; 2606 16403 CONSTRAINT public users users_pkey postgres
3238; 1259 16426 INDEX public beneficiaries_program postgres
3235; 1259 16449 INDEX public users_role_idx postgres
3246; 2620 16448 TRIGGER public users users_touch postgres
3243; 2606 16421 FK CONSTRAINT public beneficiaries beneficiaries_case_worker_fkey postgres
3244; 2606 16416 FK CONSTRAINT public beneficiaries beneficiaries_program_id_fkey postgres
3390; 0 16395 ROW SECURITY public users postgres
3391; 3256 16458 POLICY public users users_self postgres
";

    const SCHEMA: &str = "\
ALTER TABLE public.\"Odd Name\" ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.\"Odd Name_id_seq\"
    START WITH 1
);
ALTER SEQUENCE public.beneficiaries_id_seq OWNED BY public.beneficiaries.id;
ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;
CREATE INDEX beneficiaries_program ON public.beneficiaries USING btree (program_id);
CREATE UNIQUE INDEX users_role_idx ON ONLY public.users USING btree (role);
CREATE TRIGGER users_touch BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.touch();
ALTER TABLE ONLY public.beneficiaries
    ADD CONSTRAINT beneficiaries_case_worker_fkey FOREIGN KEY (case_worker) REFERENCES public.users(id);
ALTER TABLE ONLY public.beneficiaries
    ADD CONSTRAINT beneficiaries_program_id_fkey FOREIGN KEY (program_id) REFERENCES public.programs(id);
";

    fn ids(sel: &TocSelection) -> Vec<&str> {
        sel.list
            .lines()
            .map(|l| l.split(';').next().unwrap())
            .collect()
    }

    #[test]
    fn parses_lines() {
        let e = parse_toc_line("3410; 0 0 SEQUENCE OWNED BY public beneficiaries_id_seq postgres")
            .unwrap();
        assert_eq!(
            (e.desc.as_str(), e.schema.as_str(), e.tag.as_str()),
            ("SEQUENCE OWNED BY", "public", "beneficiaries_id_seq")
        );
        let e = parse_toc_line("224; 1259 16451 TABLE public Odd Name postgres").unwrap();
        assert_eq!(e.tag, "Odd Name");
        assert!(parse_toc_line("222; 1259 16443 VIEW public active_users postgres").is_none());
        assert!(parse_toc_line("; Archive created").is_none());
    }

    #[test]
    fn facts_from_schema_script() {
        let f = parse_schema_facts(SCHEMA);
        let q = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            f.index_table[&q("public", "users_role_idx")],
            q("public", "users")
        );
        assert_eq!(
            f.sequence_table[&q("public", "Odd Name_id_seq")],
            q("public", "Odd Name")
        );
        assert_eq!(
            f.sequence_table[&q("public", "users_id_seq")],
            q("public", "users")
        );
        assert_eq!(
            f.foreign_keys[&(
                "public".into(),
                "beneficiaries".into(),
                "beneficiaries_program_id_fkey".into()
            )],
            q("public", "programs")
        );
    }

    #[test]
    fn selects_a_table_with_everything_it_owns() {
        let sel = select_tables(TOC, SCHEMA, &["users".into()], &EmptyTarget).unwrap();
        assert_eq!(
            ids(&sel),
            vec![
                "225", "217", "3408", "3409", "216", "3413", "3414", "3223", "3395", "3419",
                "3232", "3234", "3235", "3246", "3390", "3391"
            ]
        );
        assert!(sel.skipped_foreign_keys.is_empty());
    }

    #[test]
    fn foreign_keys_need_their_referenced_table() {
        let sel = select_tables(
            TOC,
            SCHEMA,
            &["public.beneficiaries".into(), "users".into()],
            &EmptyTarget,
        )
        .unwrap();
        let kept = ids(&sel);
        assert!(kept.contains(&"3243"), "FK to users kept");
        assert!(!kept.contains(&"3244"), "FK to programs skipped");
        assert_eq!(sel.skipped_foreign_keys.len(), 1);
        struct HasPrograms;
        impl TargetObjects for HasPrograms {
            fn has_table(&self, _: &str, t: &str) -> bool {
                t == "programs"
            }
            fn has_function(&self, _: &str, _: &str) -> bool {
                true
            }
        }
        let sel = select_tables(TOC, SCHEMA, &["beneficiaries".into()], &HasPrograms).unwrap();
        assert!(ids(&sel).contains(&"3244"));
        assert!(!ids(&sel).contains(&"3243"));
    }

    #[test]
    fn names_with_spaces_and_unknown_tables() {
        let sel = select_tables(TOC, SCHEMA, &["\"Odd Name\"".into()], &EmptyTarget).unwrap();
        assert_eq!(ids(&sel), vec!["224", "223", "3401", "3415", "3242"]);
        let err = select_tables(TOC, SCHEMA, &["nope".into()], &EmptyTarget).unwrap_err();
        assert!(err.contains("`nope` is not in this backup"), "{err}");
    }
}
