//! `/instances`: the newest instances that match a filter; `/instances/{id}`: one instance's
//! timeline, each step run in order, decisions with the values they read.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use herald_shared::pg::Conn;
use maud::{html, Markup};
use serde_json::Value;

use super::automation::{condition, find_step};
use super::{encode, key_values, layout, status, Answer, Page};
use crate::ledger::{age, instance_json, log_json, step_json, text, INSTANCE, LOGS, STEPS};

const VERSION: &str = include_str!("../../sql/version.sql");

/// How many instances the list shows.
const LIMIT: i64 = 100;

const STATUSES: [&str; 12] = [
    "pending",
    "queued",
    "running",
    "waiting",
    "paused",
    "completed",
    "failed",
    "exited",
    "dead",
    "unknown",
    "cancelled",
    "suppressed",
];

/// The list's filters from the query string: `automation`, `status` and `subject`; one left
/// empty in the form is no filter.
fn filters(query: Option<&str>) -> [Option<String>; 3] {
    let mut found: [Option<String>; 3] = Default::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match k.as_ref() {
            "automation" => 0,
            "status" => 1,
            "subject" => 2,
            _ => continue,
        };
        let v = v.trim();
        if !v.is_empty() {
            found[slot] = Some(v.to_owned());
        }
    }
    found
}

pub(crate) async fn list(State(client): State<Arc<Conn>>, RawQuery(query): RawQuery) -> Answer {
    let [automation, state, subject] = filters(query.as_deref());
    let none: Option<String> = None;
    let no_id: Option<i64> = None;
    let rows = client
        .query(LOGS, &[&automation, &state, &subject, &none, &none, &LIMIT, &no_id])
        .await?;
    // The query gives the newest, oldest first: newest first here.
    let logs: Vec<Value> = rows.iter().rev().map(log_json).collect();
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(layout(
        "Instances",
        html! {
            h1 { "Instances" }
            form.filters method="get" action="/instances" {
                label { "automation" input type="text" name="automation" value=(field(&automation)); }
                label {
                    "status"
                    select name="status" {
                        option value="" { "any" }
                        @for s in STATUSES {
                            option value=(s) selected[state.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                label { "subject key" input type="text" name="subject" value=(field(&subject)); }
                button type="submit" { "Filter" }
            }
            @if logs.is_empty() {
                p.muted.empty { "No instances match." }
            } @else {
                table.instances {
                    thead { tr {
                        th { "id" } th { "automation" } th { "status" } th { "subject" } th { "event" }
                        th { "step" } th { "attempts" } th { "run at" } th { "changed" } th { "error" }
                    } }
                    tbody {
                        @for l in &logs {
                            @let id = text(&l["id"]);
                            @let name = text(&l["automation"]);
                            tr data-instance=(id) {
                                td { a href={ "/instances/" (id) } { (id) } }
                                td.nowrap { a href={ "/automations/" (encode(&name)) } { (name) } }
                                td { (status(&text(&l["status"]))) }
                                td.nowrap { (text(&l["subject_table"])) " " code { (text(&l["subject_id"])) } }
                                td { (text(&l["event"])) }
                                td { (text(&l["next_step"])) }
                                td.n { (text(&l["attempts"])) }
                                td.nowrap { (text(&l["run_at"])) }
                                td.nowrap { (seconds(&text(&l["updated_at"]))) }
                                td.error { (l["error"].as_str().unwrap_or_default()) }
                            }
                        }
                    }
                }
                p.muted {
                    "The newest " (logs.len()) " that match, newest first"
                    @if logs.len() as i64 == LIMIT { " (at most " (LIMIT) ")" }
                    "."
                }
            }
        },
    ))
}

pub(crate) async fn timeline(State(client): State<Arc<Conn>>, Path(id): Path<String>) -> Answer {
    let nothing = || Page::NotFound(format!("No instance has log id {id}."));
    let Ok(log_id) = id.parse::<i64>() else {
        return Err(nothing());
    };
    let Some(row) = client.query_opt(INSTANCE, &[&log_id]).await? else {
        return Err(nothing());
    };
    let name: String = row.get("automation");
    let version: Option<i32> = row.get("version");
    let instance = instance_json(&row);
    let runs: Vec<Value> = client.query(STEPS, &[&log_id]).await?.iter().map(step_json).collect();
    // The version it runs, to show each branch's condition beside what it saw.
    let doc: Option<Value> = match version {
        Some(v) => client.query_opt(VERSION, &[&name, &v]).await?.map(|r| r.get(0)),
        None => None,
    };
    let steps = doc.as_ref().map(|d| &d["steps"]).unwrap_or(&Value::Null);
    let field = |k: &str| text(&instance[k]);
    Ok(layout(
        &format!("Instance {log_id}"),
        html! {
            h1 { "Instance " (log_id) " " (status(&field("status"))) }
            dl.kv.instance {
                dt { "automation" }
                dd { a href={ "/automations/" (encode(&name)) } { (name) } " (version " (field("version")) ")" }
                @for k in ["subject", "event", "old_status", "new_status", "next_step", "attempts", "steps_run",
                           "created_at", "run_at", "completed_at", "exit_reason", "error", "error_kind", "hold"] {
                    @if !instance[k].is_null() {
                        dt { (k.replace('_', " ")) }
                        dd class=(k) { (field(k)) }
                    }
                }
                @if instance["payload"].as_object().is_some_and(|p| !p.is_empty()) {
                    dt { "payload" }
                    dd { (key_values(&instance["payload"])) }
                }
            }
            h2 { "Timeline" }
            @if runs.is_empty() {
                p.muted { "No step has run yet." }
            } @else {
                ol.timeline {
                    @for r in &runs { (run(r, steps)) }
                }
            }
        },
    ))
}

/// One step run: an effect with what it sent and got, or a decision with what it read.
fn run(r: &Value, steps: &Value) -> Markup {
    let state = text(&r["status"]);
    let kind = text(&r["type"]);
    let attempt = r["attempt"].as_i64().unwrap_or(0);
    html! {
        li class={ "run " (state) } {
            div.run-head {
                code.step-id { (text(&r["step"])) }
                span.type { (kind) }
                (status(&state))
                @if attempt > 1 { span.muted { "attempt " (attempt) } }
                span.muted.when {
                    (text(&r["started_at"]))
                    @if state != "decided" {
                        @if let Some(ms) = r["duration_ms"].as_f64() { " · took " (took(ms)) }
                    }
                }
            }
            @if state == "decided" {
                (decision(&kind, &text(&r["step"]), &r["output"], steps))
            } @else {
                @if !r["effect"].is_null() {
                    div.effect { (key_values(&r["effect"])) }
                }
                @if !r["output"].is_null() {
                    div.output { div.label { "output" } (key_values(&r["output"])) }
                }
            }
            @if let Some(e) = r["error"].as_str() {
                pre.error { (e) @if let Some(k) = r["error_kind"].as_str() { " (" (k) ")" } }
            }
        }
    }
}

/// A decision: whether its condition held (and the branch it took), or when a wait ends,
/// and the values it read.
fn decision(kind: &str, step: &str, output: &Value, steps: &Value) -> Markup {
    let holds = output["holds"].as_bool();
    let said = |held: &str, not: &str| match holds {
        Some(true) => held.to_string(),
        Some(false) => not.to_string(),
        None => String::new(),
    };
    let verdict = match kind {
        "branch" => said("held: took then", "did not hold: took else"),
        "conditions" => said(
            "the trigger's conditions held",
            "the trigger's conditions did not hold: exited",
        ),
        "exit" => format!(
            "exit {} ({}) {}",
            text(&output["exit"]),
            text(&output["reason"]),
            said("held: exited", "did not hold")
        ),
        "wait" => format!("waits until {}", text(&output["until"])),
        _ => String::new(),
    };
    let tested = match kind {
        "branch" => find_step(steps, step).map(|s| condition(&s["if"])),
        _ => None,
    };
    html! {
        div.decision {
            @if let Some(c) = tested { p { "if " code.condition { (c) } } }
            @if !verdict.is_empty() { p.verdict { (verdict) } }
            @if let Some(e) = output["error"].as_str() { p.error { "could not be decided: " (e) } }
            @if let Some(seen) = output["seen"].as_object() {
                @if !seen.is_empty() {
                    table.seen {
                        thead { tr { th { "read" } th { "value" } } }
                        tbody {
                            @for (k, v) in seen {
                                tr { td { code { (k) } } td { code { (v.to_string()) } } }
                            }
                        }
                    }
                }
            }
            @if verdict.is_empty() && output["seen"].is_null() && output["error"].is_null() {
                (key_values(output))
            }
        }
    }
}

/// A time the session writes in UTC (`2026-12-06 13:42:35.250679+00`) to the second, as
/// the other times are shown: `2026-12-06T13:42:35Z`.
fn seconds(t: &str) -> String {
    match t.get(..19) {
        Some(s) if t.ends_with("+00") => format!("{}Z", s.replacen(' ', "T", 1)),
        _ => t.to_string(),
    }
}

/// A step's duration as people read it.
fn took(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        age(ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filters_are_no_filters() {
        assert_eq!(
            filters(Some("automation=job+done&status=&subject=a%26b&other=1")),
            [Some("job done".into()), None, Some("a&b".into())]
        );
        assert_eq!(filters(None), [None, None, None]);
    }

    #[test]
    fn change_times_are_shown_to_the_second() {
        assert_eq!(seconds("2026-12-06 13:42:35.250679+00"), "2026-12-06T13:42:35Z");
        assert_eq!(seconds("2026-12-06 13:42:35+00"), "2026-12-06T13:42:35Z");
        assert_eq!(seconds("2026-12-06 14:42:35+01"), "2026-12-06 14:42:35+01");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(took(12.4), "12 ms");
        assert_eq!(took(1500.0), "1.5 s");
        assert_eq!(took(125_000.0), "2m 5s");
    }
}
