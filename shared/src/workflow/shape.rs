//! The shape of a definition: its keys, each trigger and step type with the keys it takes, and
//! which of a step's keys are templates. There is one text of it, `herald_definition_shape()`
//! in `db/schema/definitions.sql`: the database's checks read it through that function, and
//! this reader takes the JSON it selects, compiled in, so the two cannot
//! disagree on which types and keys exist.

use serde::Deserialize;
use std::sync::OnceLock;

const SOURCE: &str = include_str!("../../../db/schema/definitions.sql");

#[derive(Debug, Deserialize)]
pub struct Shape {
    pub document: Vec<String>,
    pub admins: Vec<String>,
    pub exit: Vec<String>,
    pub retry: Vec<String>,
    /// The keys every step takes.
    pub step: Vec<String>,
    pub triggers: Vec<TypeShape>,
    pub steps: Vec<TypeShape>,
    /// The region codes the database's checks accept; here, its tests hold them to the
    /// phone metadata Herald reads numbers with.
    #[cfg(test)]
    pub regions: Vec<String>,
}

/// A trigger or step type: its keys (a step's besides the ones every step takes), and the
/// keys whose values are templates.
#[derive(Debug, Deserialize)]
pub struct TypeShape {
    #[serde(rename = "type")]
    pub kind: String,
    pub keys: Vec<String>,
    /// Read by the database's checks and by the check of templates' variables
    /// (`variables.rs`); its tests hold the parser to it.
    #[serde(default)]
    pub templates: Vec<String>,
}

impl Shape {
    pub fn trigger(&self, kind: &str) -> Option<&TypeShape> {
        self.triggers.iter().find(|t| t.kind == kind)
    }

    pub fn step_type(&self, kind: &str) -> Option<&TypeShape> {
        self.steps.iter().find(|t| t.kind == kind)
    }

    /// "status_change, insert, …", for messages.
    pub fn trigger_types(&self) -> String {
        join(self.triggers.iter().map(|t| t.kind.as_str()))
    }

    pub fn step_types(&self) -> String {
        join(self.steps.iter().map(|t| t.kind.as_str()))
    }
}

impl TypeShape {
    /// Whether the step's effect leaves this database, so that it may say what to do when its
    /// outcome is unknown.
    pub fn sends(&self) -> bool {
        self.keys.iter().any(|k| k == "on_unknown")
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// The shape, read once. The text is compiled in and checked by this module's tests, so it
/// always reads.
pub fn shape() -> &'static Shape {
    static SHAPE: OnceLock<Shape> = OnceLock::new();
    SHAPE.get_or_init(|| {
        let json = SOURCE
            .split_once("SELECT $json$")
            .and_then(|(_, rest)| rest.split_once("$json$"))
            .map_or("", |(json, _)| json);
        serde_json::from_str(json).unwrap_or_else(|e| panic!("db/schema/definitions.sql: the definition shape: {e}"))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::workflow::definition::parse;
    use serde_json::json;

    #[test]
    fn the_shape_reads_and_names_each_type_once() {
        let s = shape();
        for list in [&s.triggers, &s.steps] {
            let mut kinds: Vec<&str> = list.iter().map(|t| t.kind.as_str()).collect();
            kinds.sort();
            kinds.dedup();
            assert_eq!(kinds.len(), list.len());
        }
        for t in &s.steps {
            for k in &t.templates {
                assert!(t.keys.contains(k), "{}: template `{k}` is not one of its keys", t.kind);
            }
        }
    }

    #[test]
    fn the_regions_of_the_shape_are_the_regions_of_the_phone_metadata() {
        let mut known: Vec<String> = phonenumber::metadata::DATABASE
            .iter()
            .map(|m| m.id().to_owned())
            .filter(|id| id != "001")
            .collect();
        known.sort();
        known.dedup();
        assert_eq!(shape().regions, known);
        for code in &known {
            assert!(crate::recipient::Region::of_code(code).is_some(), "{code}");
        }
    }

    fn with_trigger(trigger: serde_json::Value) -> serde_json::Value {
        json!({"trigger": trigger, "steps": [{"id": "a", "type": "wait", "for": "1 hour"}]})
    }

    #[test]
    fn every_trigger_type_of_the_shape_is_read_and_refuses_a_key_it_does_not_list() {
        for t in &shape().triggers {
            let problems = parse(&with_trigger(json!({"type": t.kind, "colour": "red"}))).unwrap_err();
            let unknown = problems.iter().find(|p| p.path == "trigger.colour");
            assert_eq!(
                unknown.map(|p| p.message.clone()),
                Some(format!("unknown key; expected {}", t.keys.join(", "))),
                "{}: {problems:?}",
                t.kind
            );
            assert!(
                !problems.iter().any(|p| p.message.starts_with("unknown trigger type")),
                "{}: {problems:?}",
                t.kind
            );
        }
        let problems = parse(&with_trigger(json!({"type": "cron"}))).unwrap_err();
        assert_eq!(
            problems[0].message,
            format!(
                "unknown trigger type `cron`; expected one of {}",
                shape().trigger_types()
            )
        );
    }

    #[test]
    fn every_step_type_of_the_shape_is_read_and_refuses_a_key_it_does_not_list() {
        for t in &shape().steps {
            let doc = json!({"trigger": {"type": "manual"}, "steps": [{"id": "a", "type": t.kind, "colour": "red"}]});
            let problems = parse(&doc).unwrap_err();
            let keys = [&shape().step[..], &t.keys[..]].concat();
            let unknown = problems.iter().find(|p| p.path == "steps[0].colour");
            assert_eq!(
                unknown.map(|p| p.message.clone()),
                Some(format!("unknown key; expected {}", keys.join(", "))),
                "{}: {problems:?}",
                t.kind
            );
            assert!(
                !problems.iter().any(|p| p.message.starts_with("unknown step type")),
                "{}: {problems:?}",
                t.kind
            );
        }
    }

    /// A sound step of each type, for the template checks below and in `variables`.
    pub(crate) fn sound_step(kind: &str) -> serde_json::Value {
        let mut s = match kind {
            "send_email" => {
                json!({"to": "a@example.com", "subject": "S", "text": "T", "html": "<p>T</p>", "from": "b@example.com"})
            }
            "send_sms" => json!({"to": "+14155550100", "body": "B", "region": "US"}),
            "wait" => json!({"for": "1 hour"}),
            "branch" => json!({"if": {"field": "vip", "op": "is null"}, "then": [], "else": []}),
            "update_field" => json!({"set": {"status": "x"}}),
            "add_tag" | "remove_tag" => json!({"tag": "t", "table": "public.members", "key": "1"}),
            "add_to_segment" | "remove_from_segment" => json!({"segment": "s", "table": "public.members", "key": "1"}),
            "webhook" => json!({"url": "https://x.example.com", "body": "{}", "secret": "s"}),
            "create_task" => json!({"title": "T", "assignee": "sam", "notes": "n"}),
            "notify_admin" => json!({"subject": "S", "text": "T"}),
            other => panic!("no sound step of type {other}: add one"),
        };
        s["id"] = json!("a");
        s["type"] = json!(kind);
        s
    }

    #[test]
    fn every_template_key_of_the_shape_is_compiled_by_the_parser() {
        for t in &shape().steps {
            let doc =
                |step| json!({"trigger": {"type": "manual"}, "admins": {"emails": ["o@example.com"]}, "steps": [step]});
            assert!(parse(&doc(sound_step(&t.kind))).is_ok(), "{}", t.kind);
            for key in &t.templates {
                let mut step = sound_step(&t.kind);
                step[key.as_str()] = json!("{{ oops");
                let problems = parse(&doc(step)).unwrap_err();
                let path = format!("steps[0].{key}");
                assert!(
                    problems.iter().any(|p| p.path == path),
                    "{}.{key}: {problems:?}",
                    t.kind
                );
            }
        }
    }

    #[test]
    fn admins_exits_and_retries_refuse_keys_the_shape_does_not_list() {
        let doc = json!({
            "trigger": {"type": "manual"},
            "admins": {"emails": ["owner@example.com"], "sms": ["+15550000000"]},
            "exit": [{"if": {"field": "status", "op": "=", "value": "x"}, "reason": "r", "colour": 1}],
            "steps": [{"id": "a", "type": "wait", "for": "1 hour", "on_error": {"retry": {"times": 2, "jitter": true}}}]
        });
        let problems = parse(&doc).unwrap_err();
        let mut paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            ["admins.sms", "exit[0].colour", "steps[0].on_error.retry.jitter"]
        );
    }
}
