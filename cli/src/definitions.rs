//! Definitions as files: `validate`, `diff`, `apply` (compare-and-set, all or none), `get`,
//! and `migrate-instances`.

use std::collections::HashMap;
use std::io::Write;

use herald_shared::pg::Conn;
use herald_shared::workflow::{variables, Problem};
use serde_json::{json, Value};

use crate::db::{describe, state};
use crate::files::{self, DefinitionFile};
use crate::{Failure, Out};

const CURRENT: &str = include_str!("../sql/current.sql");
const COLUMNS: &str = include_str!("../sql/columns.sql");
const MISTAKES: &str = include_str!("../sql/mistakes.sql");
const APPLY: &str = include_str!("../sql/apply.sql");
const STANDING: &str = include_str!("../sql/standing.sql");

/// SQLSTATE of a save refused as stale (db/schema/definitions.sql).
const STALE: &str = "ZS409";
/// SQLSTATE of a refused definition or operation.
const REFUSED: &str = "22023";
/// SQLSTATE of a name that names nothing.
const UNDEFINED: &str = "42704";

/// Every problem of one file: what the database's checks find, what Herald's own reader
/// finds that they do not (a template that does not compile), and the templates' variables.
async fn problems(client: &Conn, file: &DefinitionFile) -> Result<Vec<Problem>, Failure> {
    let doc = match &file.document {
        Ok(doc) => doc,
        Err(e) => {
            let (path, message) = e.split_once(": ").unwrap_or(("(document)", e));
            return Ok(vec![problem(path, message)]);
        }
    };
    let mut found: Vec<Problem> = client
        .query(MISTAKES, &[doc])
        .await?
        .iter()
        .map(|r| problem(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    if let Err(own) = herald_shared::workflow::definition::parse(doc) {
        for p in own {
            if !found.iter().any(|f| f.path == p.path) {
                found.push(p);
            }
        }
    }
    let columns: Option<Vec<String>> = client.query_one(COLUMNS, &[doc]).await?.get(0);
    found.extend(match columns {
        Some(columns) => variables::variable_problems(doc, &columns),
        None => variables::variable_problems_without_columns(doc),
    });
    Ok(found)
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        message: message.into(),
    }
}

/// Each file's problems.
async fn check_all(client: &Conn, files: &[DefinitionFile]) -> Result<Vec<Vec<Problem>>, Failure> {
    let mut all = Vec::new();
    for f in files {
        all.push(problems(client, f).await?);
    }
    Ok(all)
}

/// Prints each file's problems (or that it is valid) and returns how many there were.
fn report(files: &[DefinitionFile], found: &[Vec<Problem>], out: &mut Out<impl Write>) -> Result<usize, Failure> {
    let mut doc = Vec::new();
    for (f, found) in files.iter().zip(found) {
        if found.is_empty() {
            out.line(format!("{}: automation `{}` is valid", f.path.display(), f.name))?;
        }
        for p in found {
            out.line(format!("{}: {p}", f.path.display()))?;
        }
        doc.push(json!({
            "file": f.path.display().to_string(),
            "name": f.name,
            "valid": found.is_empty(),
            "problems": found,
        }));
    }
    out.document(&Value::Array(doc))?;
    Ok(found.iter().map(Vec::len).sum())
}

/// `herald validate`: every file's problems, all at once; saves nothing.
pub async fn validate(client: &Conn, files: &[DefinitionFile], out: &mut Out<impl Write>) -> Result<(), Failure> {
    let found = check_all(client, files).await?;
    match report(files, &found, out)? {
        0 => Ok(()),
        n => Err(Failure::Refused(format!("{n} mistake(s) in the definitions"))),
    }
}

/// The version of an automation that runs: its number, document and checksum.
struct Current {
    version: Option<i32>,
    document: Option<Value>,
    checksum: Option<String>,
}

async fn current(client: &Conn, name: &str) -> Result<Option<Current>, Failure> {
    Ok(client.query_opt(CURRENT, &[&name]).await?.map(|r| Current {
        version: r.get(0),
        document: r.get(1),
        checksum: r.get(2),
    }))
}

/// `herald diff`: for each file, whether saving it would create, change or leave its
/// automation, the change to the document, and how many instances stand at each step.
pub async fn diff(client: &Conn, files: &[DefinitionFile], out: &mut Out<impl Write>) -> Result<(), Failure> {
    let mut report = Vec::new();
    for f in files {
        let doc = f
            .document
            .as_ref()
            .map_err(|e| Failure::Refused(format!("{}: {e}", f.path.display())))?;
        let now = current(client, &f.name).await?;
        let new_sum: String = client
            .query_one("SELECT herald_checksum($1::jsonb)", &[doc])
            .await?
            .get(0);
        let saved = now.as_ref().and_then(|c| c.document.as_ref());
        let base = now.as_ref().and_then(|c| c.checksum.clone());
        let change = match (&now, &base) {
            (None, _) => "new",
            (Some(_), Some(b)) if *b == new_sum => "unchanged",
            _ => "changed",
        };
        let before = match saved {
            Some(d) => files::to_yaml(&f.name, d).map_err(Failure::Error)?,
            None => String::new(),
        };
        let after = files::to_yaml(&f.name, doc).map_err(Failure::Error)?;
        let text = similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .context_radius(3)
            .header(
                &match now.as_ref().and_then(|c| c.version) {
                    Some(v) => format!("{} (saved, version {v})", f.name),
                    None => format!("{} (not saved)", f.name),
                },
                &f.path.display().to_string(),
            )
            .to_string();
        let standing = client.query(STANDING, &[&f.name]).await?;
        let rows: Vec<Vec<String>> = standing
            .iter()
            .map(|r| {
                vec![
                    r.get::<_, Option<i32>>(0).map_or("-".into(), |v| v.to_string()),
                    r.get(1),
                    r.get(2),
                    r.get::<_, i64>(3).to_string(),
                ]
            })
            .collect();
        let version = now.as_ref().and_then(|c| c.version);
        out.line(match change {
            "new" => format!("automation `{}`: new", f.name),
            "unchanged" => format!("automation `{}`: unchanged (version {})", f.name, version.unwrap_or(0)),
            _ => format!(
                "automation `{}`: changes version {} ({})",
                f.name,
                version.map_or("none".into(), |v| v.to_string()),
                base.as_deref().unwrap_or("no definition")
            ),
        })?;
        if change == "changed" {
            out.line(text.trim_end())?;
        }
        if !rows.is_empty() {
            out.line("instances standing:")?;
            out.table(&["version", "step", "status", "instances"], rows)?;
        }
        report.push(json!({
            "file": f.path.display().to_string(),
            "name": f.name,
            "change": change,
            "version": version,
            "base": base,
            "checksum": new_sum,
            "diff": if change == "changed" { Value::String(text) } else { Value::Null },
            "standing": standing.iter().map(|r| json!({
                "version": r.get::<_, Option<i32>>(0),
                "step": r.get::<_, String>(1),
                "status": r.get::<_, String>(2),
                "instances": r.get::<_, i64>(3),
            })).collect::<Vec<_>>(),
        }));
    }
    out.document(&Value::Array(report))
}

/// Reads `--base NAME=CHECKSUM` (CHECKSUM `new`: the automation must not exist yet).
fn parse_bases(bases: &[String]) -> Result<HashMap<String, Option<String>>, Failure> {
    bases
        .iter()
        .map(|b| match b.split_once('=') {
            Some((n, c)) if !n.is_empty() && !c.is_empty() => Ok((n.to_string(), (c != "new").then(|| c.to_string()))),
            _ => Err(Failure::Usage(format!("--base {b}: write NAME=CHECKSUM (or NAME=new)"))),
        })
        .collect()
}

/// `herald apply`: checks every file, then saves them all in one transaction, each only if
/// the version it was based on still runs (the one running when the command started, or
/// the one `--base` names). One refused or stale file saves none.
pub async fn apply(
    client: &Conn,
    files: &[DefinitionFile],
    bases: &[String],
    out: &mut Out<impl Write>,
) -> Result<(), Failure> {
    let mut bases = parse_bases(bases)?;
    if let Some(unknown) = bases.keys().find(|n| !files.iter().any(|f| &f.name == *n)) {
        return Err(Failure::Usage(format!(
            "--base names `{unknown}`, which no file defines"
        )));
    }
    // What each save is based on: read before the files are checked, so a save made by
    // someone else meanwhile makes this one stale.
    let mut based_on = Vec::new();
    for f in files {
        let base = match bases.remove(&f.name) {
            Some(b) => b,
            None => current(client, &f.name).await?.and_then(|c| c.checksum),
        };
        based_on.push(base);
    }
    let found = check_all(client, files).await?;
    if found.iter().any(|p| !p.is_empty()) {
        let problems = report(files, &found, out)?;
        return Err(Failure::Refused(format!(
            "{problems} mistake(s) in the definitions; nothing was saved"
        )));
    }
    client.batch_execute("BEGIN").await?;
    let mut saved = Vec::new();
    for (f, base) in files.iter().zip(&based_on) {
        let doc = f.document.as_ref().map_err(|e| Failure::Refused(e.clone()))?;
        match client.query_one(APPLY, &[&f.name, doc, base]).await {
            Ok(r) => saved.push((f, r.get::<_, String>(0), r.get::<_, i32>(1), r.get::<_, String>(2))),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                let why = format!("{}: {}\nnothing was saved", f.path.display(), describe(&e));
                return Err(match state(&e) {
                    Some(STALE) => Failure::Stale(why),
                    Some(REFUSED) => Failure::Refused(why),
                    _ => Failure::Error(why),
                });
            }
        }
    }
    client.batch_execute("COMMIT").await?;
    for (f, outcome, version, checksum) in &saved {
        out.line(format!(
            "automation `{}`: {outcome}, version {version} ({checksum})",
            f.name
        ))?;
    }
    out.document(&Value::Array(
        saved
            .iter()
            .map(|(f, outcome, version, checksum)| {
                json!({"file": f.path.display().to_string(), "name": f.name, "outcome": outcome,
                       "version": version, "checksum": checksum})
            })
            .collect(),
    ))
}

/// `herald get NAME`: the saved document, as a file (YAML) or, with `--json`, with its
/// version and checksum.
pub async fn get(client: &Conn, name: &str, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let Some(now) = current(client, name).await? else {
        return Err(Failure::NotFound(format!("no automation is named `{name}`")));
    };
    let (Some(doc), Some(version)) = (now.document, now.version) else {
        return Err(Failure::NotFound(format!(
            "automation `{name}` has no saved definition"
        )));
    };
    if out.json {
        return out.document(&json!({"name": name, "version": version, "checksum": now.checksum, "document": doc}));
    }
    out.raw(&files::to_yaml(name, &doc).map_err(Failure::Error)?)
}

/// `herald migrate-instances NAME --to N`.
pub async fn migrate_instances(client: &Conn, name: &str, to: i32, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let row = client
        .query_one(
            "SELECT moved, in_flight FROM herald_migrate_instances($1, $2)",
            &[&name, &to],
        )
        .await
        .map_err(|e| match state(&e) {
            Some(REFUSED) => Failure::Refused(describe(&e)),
            Some(UNDEFINED) => Failure::NotFound(describe(&e)),
            _ => Failure::Error(describe(&e)),
        })?;
    let (moved, in_flight): (i32, i32) = (row.get(0), row.get(1));
    out.line(format!("moved {moved} instance(s) of `{name}` to version {to}"))?;
    if in_flight > 0 {
        out.line(format!(
            "{in_flight} instance(s) are mid-run on another version: run this again once they park"
        ))?;
    }
    out.document(&json!({"name": name, "version": to, "moved": moved, "in_flight": in_flight}))
}
