//! `/automations/{name}`: the definition that runs, drawn as its trigger and its steps (a
//! branch with its `then` and `else` arms nested), and the document as a file holds it.

use std::sync::Arc;

use axum::extract::{Path, State};
use herald_shared::pg::Conn;
use maud::{html, Markup};
use serde_json::Value;

use super::{encode, layout, Answer, Page};
use crate::files;
use crate::ledger::text;

const CURRENT: &str = include_str!("../../sql/current.sql");

pub(crate) async fn page(State(client): State<Arc<Conn>>, Path(name): Path<String>) -> Answer {
    let Some(row) = client.query_opt(CURRENT, &[&name]).await? else {
        return Err(Page::NotFound(format!("No automation is named `{name}`.")));
    };
    let version: Option<i32> = row.get(0);
    let document: Option<Value> = row.get(1);
    let checksum: Option<String> = row.get(2);
    let (Some(version), Some(doc)) = (version, document) else {
        return Err(Page::NotFound(format!("Automation `{name}` has no saved definition.")));
    };
    let yaml = files::to_yaml(&name, &doc).map_err(Page::Error)?;
    let empty = Vec::new();
    let exits = doc.get("exit").and_then(Value::as_array).unwrap_or(&empty);
    Ok(layout(
        &name,
        html! {
            h1 { (name) }
            p.muted {
                "version " (version)
                @if let Some(c) = &checksum { " · " code { (c) } }
                " · " a href={ "/instances?automation=" (encode(&name)) } { "its instances" }
            }
            h2 { "Trigger" }
            p.trigger { (trigger(doc.get("trigger").unwrap_or(&Value::Null))) }
            @if let Some(d) = doc.get("data") {
                p { "Templates and conditions read " code { (text(&d["relation"])) } ", by " code { (text(&d["key"])) } }
            }
            @if let Some(c) = doc.get("conditions") {
                p { "Only when " code.condition { (condition(c)) } }
            }
            @if !exits.is_empty() {
                p { "Ends early (checked before every step):" }
                ul.exits {
                    @for e in exits {
                        li { "when " code.condition { (condition(&e["if"])) } ": " (text(&e["reason"])) }
                    }
                }
            }
            h2 { "Steps" }
            (steps(doc.get("steps").and_then(Value::as_array).unwrap_or(&empty)))
            h2 { "Document" }
            pre.yaml { (yaml) }
        },
    ))
}

/// A list of steps, a branch's arms nested in it.
fn steps(list: &[Value]) -> Markup {
    html! {
        ol.steps {
            @for s in list {
                @let id = text(&s["id"]);
                @let kind = text(&s["type"]);
                li class={ "step " (kind) } data-step=(id) {
                    div.run-head {
                        code.step-id { (id) }
                        span.type { (kind) }
                        span.summary { (summary(s)) }
                        @if let Some(e) = on_error(s) { span.muted { "on error: " (e) } }
                    }
                    @if kind == "branch" {
                        div.arms {
                            div class="arm then" { h4 { "then" } (arm(&s["then"])) }
                            div class="arm else" { h4 { "else" } (arm(&s["else"])) }
                        }
                    }
                }
            }
        }
    }
}

fn arm(list: &Value) -> Markup {
    match list.as_array() {
        Some(l) if !l.is_empty() => steps(l),
        _ => html! { p.muted { "nothing: on to the next step" } },
    }
}

/// The step with this id, in a branch's arms too.
pub(super) fn find_step<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find_map(|s| {
        if s["id"].as_str() == Some(id) {
            Some(s)
        } else {
            find_step(&s["then"], id).or_else(|| find_step(&s["else"], id))
        }
    })
}

/// What a step does, in a line.
fn summary(s: &Value) -> String {
    let f = |k: &str| s.get(k).map(text).unwrap_or_default();
    let quoted = |k: &str| format!("“{}”", short(&f(k)));
    match s["type"].as_str().unwrap_or_default() {
        "send_email" => format!("{} to {}", quoted("subject"), f("to")),
        "send_sms" => format!("{} to {}", quoted("body"), f("to")),
        "notify_admin" => format!("{} to the admins", quoted("subject")),
        "wait" => wait(s),
        "branch" => format!("if {}", condition(&s["if"])),
        "update_field" => {
            let columns: Vec<&str> = s["set"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!("set {}{}", columns.join(", "), of_table(s))
        }
        "add_tag" => format!("tag “{}”{}", f("tag"), of_table(s)),
        "remove_tag" => format!("untag “{}”{}", f("tag"), of_table(s)),
        "add_to_segment" => format!("into segment “{}”{}", f("segment"), of_table(s)),
        "remove_from_segment" => format!("out of segment “{}”{}", f("segment"), of_table(s)),
        "create_task" => {
            let mut t = format!("task {}", quoted("title"));
            if s.get("assignee").is_some() {
                t.push_str(&format!(" for {}", f("assignee")));
            }
            if s.get("due").is_some() {
                t.push_str(&format!(", due in {}", f("due")));
            }
            t
        }
        "webhook" => format!("POST {}", f("url")),
        _ => String::new(),
    }
}

fn of_table(s: &Value) -> String {
    match (s.get("table"), s.get("key")) {
        (Some(t), Some(k)) => format!(" on {} {}", text(t), text(k)),
        (Some(t), None) => format!(" in {}", text(t)),
        _ => String::new(),
    }
}

/// Long templates cut to a line.
fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

fn wait(s: &Value) -> String {
    if let Some(d) = s.get("for") {
        return format!("for {}", text(d));
    }
    let u = &s["until"];
    let mut t = format!("until {}", field(&u["field"]));
    if let Some(o) = u.get("offset").and_then(Value::as_str) {
        t.push_str(&signed(o));
    }
    if let Some(at) = u.get("at") {
        t.push_str(&format!(" at {}", text(at)));
    }
    t.push_str(&zone(u.get("timezone")));
    t
}

/// A span added to something: `+ 2 hours`, `- 1 day`.
fn signed(span: &str) -> String {
    match span.trim().strip_prefix('-') {
        Some(rest) => format!(" - {}", rest.trim()),
        None => format!(" + {}", span.trim().trim_start_matches('+')),
    }
}

fn zone(tz: Option<&Value>) -> String {
    match tz {
        None => String::new(),
        Some(Value::Object(o)) => format!(" (zone from {})", o.get("field").map(field).unwrap_or_default()),
        Some(z) => format!(" ({})", text(z)),
    }
}

fn on_error(s: &Value) -> Option<String> {
    let e = s.get("on_error")?;
    match e {
        Value::String(x) if x == "stop" => None,
        Value::String(x) => Some(x.clone()),
        _ => {
            let r = &e["retry"];
            Some(format!(
                "retry {} times, {} apart, doubling",
                text(&r["times"]),
                text(&r["backoff"])
            ))
        }
    }
}

/// A condition as a line: `job_title contains "boiler"`, `(a and (b or c))`.
pub(super) fn condition(c: &Value) -> String {
    let join = |parts: &Value, sep: &str| -> String {
        let parts: Vec<String> = parts
            .as_array()
            .map(|p| p.iter().map(condition).collect())
            .unwrap_or_default();
        match parts.len() {
            1 => parts[0].clone(),
            _ => format!("({})", parts.join(sep)),
        }
    };
    if let Some(all) = c.get("all") {
        return join(all, " and ");
    }
    if let Some(any) = c.get("any") {
        return join(any, " or ");
    }
    if let Some(not) = c.get("not") {
        return format!("not {}", condition(not));
    }
    let Some(f) = c.get("field") else {
        return c.to_string();
    };
    let op = c["op"].as_str().unwrap_or("?");
    match c.get("value") {
        Some(v) if !op.starts_with("is ") => format!("{} {op} {}", field(f), operand(v)),
        _ => format!("{} {op}", field(f)),
    }
}

/// A field's name: `status`, or, written as a list for a name with a dot, `["odd.name"]`.
fn field(f: &Value) -> String {
    match f {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a field is compared with: a literal as JSON, another field, now or an instant.
fn operand(v: &Value) -> String {
    match v {
        Value::Object(o) if o.contains_key("field") => {
            let mut t = field(&o["field"]);
            if let Some(p) = o.get("plus").and_then(Value::as_str) {
                t.push_str(&signed(p));
            }
            t
        }
        Value::Object(o) if o.contains_key("now") => match &o["now"] {
            Value::String(span) => format!("now{}", signed(span)),
            _ => "now".into(),
        },
        Value::Object(o) if o.contains_key("at") => text(&o["at"]),
        other => other.to_string(),
    }
}

/// What starts the automation, in a line.
fn trigger(t: &Value) -> String {
    let f = |k: &str| t.get(k).map(statuses).unwrap_or_default();
    let table = f("table");
    match t["type"].as_str().unwrap_or_default() {
        "status_change" => {
            let mut s = format!(
                "a row of {table} changes its {}",
                t.get("column").map_or("status".into(), text)
            );
            if t.get("from").is_some() {
                s.push_str(&format!(" from {}", f("from")));
            }
            if t.get("to").is_some() {
                s.push_str(&format!(" to {}", f("to")));
            }
            s
        }
        "insert" => match t.get("to") {
            Some(_) => format!("a row is inserted into {table} with status {}", f("to")),
            None => format!("a row is inserted into {table}"),
        },
        "update" => format!("{} of a row of {table} change", f("columns")),
        "delete" => format!("a row of {table} is deleted"),
        "manual" => "started by hand (herald start, or herald_start in SQL)".into(),
        "date" => {
            let mut s = format!("the date in {} of each row of {table}", f("column"));
            if let Some(o) = t.get("offset").and_then(Value::as_str) {
                s.push_str(&signed(o));
            }
            if t.get("at").is_some() {
                s.push_str(&format!(" at {}", f("at")));
            }
            s.push_str(&zone(t.get("timezone")));
            s
        }
        "schedule" => {
            let mut s = format!("on the schedule {}", f("cron"));
            s.push_str(&zone(t.get("timezone")));
            if let Some(a) = t.get("audience") {
                s.push_str(&format!(", once for each row of {}", text(&a["relation"])));
            }
            s
        }
        "tag_added" => format!("the tag {} is added to a row", f("tag")),
        "tag_removed" => format!("the tag {} is removed from a row", f("tag")),
        "segment_joined" => format!("a row joins the segment {}", f("segment")),
        "segment_left" => format!("a row leaves the segment {}", f("segment")),
        other => other.to_string(),
    }
}

/// A status or a list of them: `confirmed`, `confirmed or paid`.
fn statuses(v: &Value) -> String {
    match v {
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" or "),
        other => text(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_read_as_a_line() {
        let c = json!({"all": [
            {"field": "renews_at", "op": ">=", "value": {"now": true}},
            {"any": [{"field": "renews_at", "op": "<=", "value": {"now": "7 days"}},
                     {"not": {"field": "plan", "op": "is null"}},
                     {"field": ["odd.name"], "op": "=", "value": {"field": "starts_at", "plus": "-2 hours"}}]},
            {"field": "title", "op": "contains", "value": "boiler"}
        ]});
        assert_eq!(
            condition(&c),
            r#"(renews_at >= now and (renews_at <= now + 7 days or not plan is null or ["odd.name"] = starts_at - 2 hours) and title contains "boiler")"#
        );
    }

    #[test]
    fn steps_and_triggers_read_as_a_line() {
        for (step, want) in [
            (json!({"type": "wait", "for": "1 hour"}), "for 1 hour"),
            (
                json!({"type": "wait", "until": {"field": "starts_at", "offset": "-1 day", "at": "18:00", "timezone": "Europe/London"}}),
                "until starts_at - 1 day at 18:00 (Europe/London)",
            ),
            (
                json!({"type": "send_email", "to": "{{ email }}", "subject": "Booked"}),
                "“Booked” to {{ email }}",
            ),
            (json!({"type": "update_field", "set": {"a": "1", "b": "2"}}), "set a, b"),
            (json!({"type": "add_tag", "tag": "vip"}), "tag “vip”"),
        ] {
            assert_eq!(summary(&step), want);
        }
        assert_eq!(
            trigger(&json!({"type": "status_change", "table": "public.bookings", "from": ["a", "b"], "to": "c"})),
            "a row of public.bookings changes its status from a or b to c"
        );
        let doc = json!([{"id": "b", "type": "branch", "then": [], "else": [{"id": "deep", "type": "wait"}]}]);
        assert_eq!(find_step(&doc, "deep").unwrap()["type"], "wait");
        assert!(find_step(&doc, "nope").is_none());
    }
}
