//! The ledger from a terminal (`status`, `logs`, `show`) and the operator's controls
//! (`retry`, `cancel`, `pause`, `resume`, `start`). Recipients and secrets are never printed
//! whole: text passes through Herald's redaction, and a step's `secret` is left out.

use std::io::Write;
use std::time::Duration;

use herald_shared::pg::Conn;
use herald_shared::recipient::redact;
use serde_json::{json, Map, Value};
use tokio_postgres::Row;

use crate::db::{describe, state};
use crate::{Failure, LogsArgs, Out, Target};

pub(crate) const STATUS: &str = include_str!("../sql/status.sql");
pub(crate) const LOGS: &str = include_str!("../sql/logs.sql");
pub(crate) const INSTANCE: &str = include_str!("../sql/instance.sql");
pub(crate) const STEPS: &str = include_str!("../sql/steps.sql");

/// `herald status`.
pub async fn status(client: &Conn, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let rows = client.query(STATUS, &[]).await?;
    const COUNTS: [&str; 8] = [
        "pending", "due", "waiting", "running", "failed", "dead", "unknown", "paused",
    ];
    let mut table = Vec::new();
    let mut doc = Vec::new();
    for r in &rows {
        let name: String = r.get("automation");
        let version: Option<i32> = r.get("version");
        let state: String = r.get("state");
        let oldest: Option<f64> = r.get("oldest_due_secs");
        let counts: Vec<i64> = COUNTS.iter().map(|c| r.get::<_, i64>(*c)).collect();
        let mut cells = vec![
            name.clone(),
            version.map_or("-".into(), |v| v.to_string()),
            state.clone(),
        ];
        cells.extend(counts.iter().map(i64::to_string));
        cells.push(oldest.map_or("-".into(), age));
        table.push(cells);
        let mut o = Map::new();
        o.insert("automation".into(), json!(name));
        o.insert("version".into(), json!(version));
        o.insert("state".into(), json!(state));
        for (c, n) in COUNTS.iter().zip(&counts) {
            o.insert((*c).into(), json!(n));
        }
        o.insert("oldest_due_seconds".into(), json!(oldest));
        doc.push(Value::Object(o));
    }
    let mut header = vec!["automation", "version", "state"];
    header.extend(COUNTS);
    header.push("oldest due");
    out.table(&header, table)?;
    out.document(&Value::Array(doc))
}

/// A duration in seconds as people read it: 42s, 5m 3s, 2h 10m, 3d 4h.
pub(crate) fn age(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `herald logs`: the newest logs that match, oldest first; with `--follow`, then every
/// log as it changes, until interrupted.
pub async fn logs(client: &Conn, args: &LogsArgs, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let since: Option<String> = match &args.since {
        None => None,
        Some(s) => Some(
            client
                .query_one(
                    "SELECT CASE WHEN $1 ~ '^\\d{4}-' THEN $1::timestamptz
                                 ELSE herald_now() - herald_span_interval($1) END::text",
                    &[s],
                )
                .await
                .map_err(|e| Failure::Usage(format!("--since {s}: {}", describe(&e))))?
                .get(0),
        ),
    };
    let mut cursor: Option<(String, i64)> = None;
    loop {
        let after_at = cursor.as_ref().map(|c| c.0.as_str());
        let after_id = cursor.as_ref().map(|c| c.1);
        let rows = client
            .query(
                LOGS,
                &[
                    &args.automation,
                    &args.status,
                    &args.subject,
                    &since,
                    &after_at,
                    &if cursor.is_some() { 10_000 } else { args.limit },
                    &after_id,
                ],
            )
            .await?;
        let logs: Vec<Value> = rows.iter().map(log_json).collect();
        if let Some(last) = rows.last() {
            cursor = Some((last.get("updated_at"), last.get("id")));
        }
        if args.follow {
            for l in &logs {
                if out.json {
                    out.json_line(l)?;
                } else {
                    out.line(log_line(l))?;
                    out.flush()?;
                }
            }
        } else {
            out.table(
                &[
                    "id",
                    "automation",
                    "status",
                    "subject",
                    "event",
                    "step",
                    "attempts",
                    "run at",
                    "error",
                ],
                logs.iter().map(log_cells).collect(),
            )?;
            out.document(&Value::Array(logs))?;
            return Ok(());
        }
        if cursor.is_none() {
            // Nothing yet: follow from now on.
            cursor = Some((
                client
                    .query_one("SELECT (herald_now() - interval '1 microsecond')::text", &[])
                    .await?
                    .get(0),
                0,
            ));
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
}

pub(crate) fn log_json(r: &Row) -> Value {
    json!({
        "id": r.get::<_, i64>("id"),
        "automation": r.get::<_, String>("automation"),
        "version": r.get::<_, Option<i32>>("version"),
        "status": r.get::<_, String>("status"),
        "subject_table": r.get::<_, String>("subject_table"),
        "subject_id": r.get::<_, String>("subject_id"),
        "event": r.get::<_, String>("event"),
        "next_step": r.get::<_, Option<String>>("next_step"),
        "attempts": r.get::<_, i32>("attempts"),
        "run_at": r.get::<_, String>("run_at"),
        "updated_at": r.get::<_, String>("updated_at"),
        "error": r.get::<_, Option<String>>("error").map(|e| redact(&e)),
    })
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn log_cells(l: &Value) -> Vec<String> {
    vec![
        text(&l["id"]),
        text(&l["automation"]),
        text(&l["status"]),
        format!("{} {}", text(&l["subject_table"]), text(&l["subject_id"])),
        text(&l["event"]),
        text(&l["next_step"]),
        text(&l["attempts"]),
        text(&l["run_at"]),
        text(&l["error"]),
    ]
}

fn log_line(l: &Value) -> String {
    let mut s = format!(
        "{} #{} {} {} {} {}",
        text(&l["updated_at"]),
        text(&l["id"]),
        text(&l["automation"]),
        text(&l["status"]),
        text(&l["subject_table"]),
        text(&l["subject_id"])
    );
    if !l["next_step"].is_null() {
        s.push_str(&format!(" step={}", text(&l["next_step"])));
    }
    if !l["error"].is_null() {
        s.push_str(&format!(" error={}", text(&l["error"])));
    }
    s
}

/// A value from the ledger as it may be shown: secrets left out, recipients masked.
pub(crate) fn shown(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(shown).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| !k.contains("secret"))
                .map(|(k, v)| (k, shown(v)))
                .collect(),
        ),
        other => other,
    }
}

/// An instance's log (a row of `instance.sql`) as it may be shown.
pub(crate) fn instance_json(l: &Row) -> Value {
    let s = |c: &str| l.get::<_, Option<String>>(c);
    shown(json!({
        "id": l.get::<_, i64>("id"),
        "automation": s("automation"),
        "version": l.get::<_, Option<i32>>("version"),
        "status": s("status"),
        "subject": format!("{}.{} {}", s("subject_schema").unwrap_or_default(), s("subject_table").unwrap_or_default(),
                           s("subject_id").unwrap_or_default()),
        "event": s("event"),
        "old_status": s("old_status"),
        "new_status": s("new_status"),
        "next_step": s("next_step"),
        "attempts": l.get::<_, i32>("attempts"),
        "steps_run": l.get::<_, i32>("steps_run"),
        "exit_reason": s("exit_reason"),
        "error": s("error"),
        "error_kind": s("error_kind"),
        "hold": s("hold"),
        "payload": l.get::<_, Option<Value>>("payload"),
        "created_at": s("created_at"),
        "run_at": s("run_at"),
        "completed_at": s("completed_at"),
    }))
}

/// One step run (a row of `steps.sql`) as it may be shown.
pub(crate) fn step_json(r: &Row) -> Value {
    shown(json!({
        "step": r.get::<_, String>("step_id"),
        "type": r.get::<_, String>("step_type"),
        "attempt": r.get::<_, i32>("attempt"),
        "status": r.get::<_, String>("status"),
        "started_at": r.get::<_, Option<String>>("started_at"),
        "finished_at": r.get::<_, Option<String>>("finished_at"),
        "duration_ms": r.get::<_, Option<f64>>("duration_ms"),
        "effect": r.get::<_, Option<Value>>("effect"),
        "output": r.get::<_, Option<Value>>("output"),
        "error": r.get::<_, Option<String>>("error"),
        "error_kind": r.get::<_, Option<String>>("error_kind"),
    }))
}

/// `herald show ID`: the instance, and each step it ran or decided, in order.
pub async fn show(client: &Conn, id: i64, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let Some(l) = client.query_opt(INSTANCE, &[&id]).await? else {
        return Err(Failure::NotFound(format!("no instance has log id {id}")));
    };
    let instance = instance_json(&l);
    let steps: Vec<Value> = client.query(STEPS, &[&id]).await?.iter().map(step_json).collect();
    if out.json {
        return out.document(&json!({"instance": instance, "steps": steps}));
    }
    out.line(format!(
        "instance {} of `{}` (version {}): {}",
        id,
        text(&instance["automation"]),
        text(&instance["version"]),
        text(&instance["status"])
    ))?;
    for k in [
        "subject",
        "event",
        "new_status",
        "next_step",
        "attempts",
        "created_at",
        "run_at",
        "completed_at",
        "exit_reason",
        "error",
        "hold",
        "payload",
    ] {
        if !instance[k].is_null() {
            out.line(format!("  {k:<13}{}", text(&instance[k])))?;
        }
    }
    out.line("steps:")?;
    out.table(
        &[
            "step",
            "type",
            "attempt",
            "status",
            "started",
            "took",
            "output or error",
        ],
        steps
            .iter()
            .map(|st| {
                vec![
                    text(&st["step"]),
                    text(&st["type"]),
                    text(&st["attempt"]),
                    text(&st["status"]),
                    text(&st["started_at"]),
                    st["duration_ms"]
                        .as_f64()
                        .map_or("-".into(), |ms| format!("{ms:.0} ms")),
                    if st["error"].is_null() {
                        text(&st["output"])
                    } else {
                        text(&st["error"])
                    },
                ]
            })
            .collect(),
    )
}

/// The instance's status, to explain why a control did nothing.
async fn why_not(client: &Conn, id: i64, verb: &str) -> Result<Failure, Failure> {
    let status: Option<String> = client
        .query_opt("SELECT status FROM automation_execution_logs WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0));
    Ok(Failure::NotFound(match status {
        None => format!("no instance has log id {id}"),
        Some(s) => format!("instance {id} is {s}: there is nothing to {verb}"),
    }))
}

/// `herald retry ID`.
pub async fn retry(client: &Conn, id: i64, out: &mut Out<impl Write>) -> Result<(), Failure> {
    control(
        client,
        id,
        "SELECT herald_retry($1)",
        "retry",
        "will run again from the step it stopped at",
        out,
    )
    .await
}

/// `herald cancel ID`.
pub async fn cancel(client: &Conn, id: i64, out: &mut Out<impl Write>) -> Result<(), Failure> {
    control(
        client,
        id,
        "SELECT herald_cancel($1)",
        "cancel",
        "is cancelled (a running one at its next step)",
        out,
    )
    .await
}

async fn control(
    client: &Conn,
    id: i64,
    sql: &str,
    verb: &str,
    done: &str,
    out: &mut Out<impl Write>,
) -> Result<(), Failure> {
    let did: bool = client.query_one(sql, &[&id]).await?.get(0);
    if !did {
        return Err(why_not(client, id, verb).await?);
    }
    out.line(format!("instance {id} {done}"))?;
    out.document(&json!({"instance": id, "done": verb}))
}

/// `herald pause` / `herald resume`: an automation (how many logs it held or released) or
/// one instance.
pub async fn hold(client: &Conn, target: &Target, pause: bool, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let verb = if pause { "pause" } else { "resume" };
    if let Some(id) = target.instance {
        let sql = if pause {
            "SELECT herald_pause_instance($1)"
        } else {
            "SELECT herald_resume_instance($1)"
        };
        let did: bool = client.query_one(sql, &[&id]).await?.get(0);
        if !did {
            return Err(why_not(client, id, verb).await?);
        }
        out.line(format!("instance {id}: {verb}d"))?;
        return out.document(&json!({"instance": id, "done": verb}));
    }
    let name = target.name.as_deref().unwrap_or_default();
    let exists = client
        .query_opt("SELECT 1 FROM automations WHERE name = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        return Err(Failure::NotFound(format!("no automation is named `{name}`")));
    }
    let sql = if pause {
        "SELECT herald_pause($1)"
    } else {
        "SELECT herald_resume($1)"
    };
    let n: i32 = client.query_one(sql, &[&name]).await?.get(0);
    out.line(format!(
        "automation `{name}`: {verb}d; {n} log(s) {}",
        if pause { "held" } else { "released" }
    ))?;
    out.document(&json!({"automation": name, "done": verb, "logs": n}))
}

/// `herald start NAME TABLE KEY [--payload JSON]`.
pub async fn start(
    client: &Conn,
    name: &str,
    table: &str,
    key: &str,
    payload: &str,
    out: &mut Out<impl Write>,
) -> Result<(), Failure> {
    let payload: Value =
        serde_json::from_str(payload).map_err(|e| Failure::Usage(format!("--payload is not JSON: {e}")))?;
    let found: Option<String> = client
        .query_one("SELECT herald_relation($1)::text", &[&table])
        .await?
        .get(0);
    if found.is_none() {
        return Err(Failure::NotFound(format!("no table or view `{table}`")));
    }
    let id: i64 = client
        .query_one(
            "SELECT herald_start($1, herald_relation($2), $3, $4::jsonb)",
            &[&name, &table, &key, &payload],
        )
        .await
        .map_err(|e| match state(&e) {
            Some("42704") => Failure::NotFound(describe(&e)),
            Some("22023") | Some("22004") => Failure::Refused(describe(&e)),
            _ => Failure::Error(describe(&e)),
        })?
        .get(0);
    out.line(format!("started instance {id} of `{name}` for {table} {key}"))?;
    out.document(&json!({"automation": name, "instance": id}))
}
