//! The condition language: a small tree read from JSON, checked when a definition is saved,
//! and evaluated against the data with a record of every value it read.
//!
//! ```json
//! {"all": [
//!   {"field": "status", "op": "=", "value": "confirmed"},
//!   {"any": [{"field": "tags", "op": "contains", "value": "vip"},
//!            {"field": "total", "op": ">=", "value": 500}]},
//!   {"not": {"field": "cancelled_at", "op": "is not null"}},
//!   {"field": "starts_at", "op": "<=", "value": {"now": "7 days"}},
//!   {"field": "ends_at", "op": ">", "value": {"field": "starts_at", "plus": "1 hour"}}
//! ]}
//! ```
//!
//! A comparison whose field is null holds for `is null` only (as in SQL). A field the data
//! lacks, or values of kinds that cannot be compared, are errors, not `false`: a flow should
//! not quietly take the wrong branch. Evaluation stops as soon as the answer is known, and the
//! record holds the values read until then. The tree's size is bounded when it is read, so
//! evaluation is linear in a small number.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Span, SpanFieldwise, Timestamp, Zoned};
use serde_json::Value as Json;

use super::time::{instant_of, parse_span, shift};
use super::{Field, Problem};

/// Deepest nesting of `all` / `any` / `not` accepted.
pub(crate) const MAX_DEPTH: usize = 16;
/// Most nodes (groups and comparisons) in one condition.
pub(crate) const MAX_NODES: usize = 200;
/// Most values in one `in` list.
pub(crate) const MAX_IN_LIST: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Compare { field: Field, op: Op, value: Operand },
    IsNull { field: Field, negated: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
}

const OPERATORS: &str = "=, <>, <, <=, >, >=, in, contains, is null, is not null";

impl Op {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "=" => Op::Eq,
            "<>" | "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "in" => Op::In,
            "contains" => Op::Contains,
            _ => return None,
        })
    }

    fn is_ordering(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::In | Op::Contains => false,
        }
    }
}

/// What a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A value written in the definition (a list for `in`).
    Literal(Json),
    /// Another field, optionally moved by a span (then both must be times).
    Field { field: Field, plus: Option<SpanFieldwise> },
    /// Now, moved by a span: `{"now": "-30 days"}` is thirty calendar days ago.
    Now(SpanFieldwise),
    /// A fixed instant: `{"at": "2026-01-01T00:00:00Z"}`.
    At(Timestamp),
}

impl Operand {
    fn is_time(&self) -> bool {
        matches!(
            self,
            Operand::Now(_) | Operand::At(_) | Operand::Field { plus: Some(_), .. }
        )
    }
}

/// Reads a condition, or every mistake in it with its path under `path`.
pub fn parse(value: &Json, path: &str) -> Result<Condition, Vec<Problem>> {
    let mut reader = Reader {
        problems: Vec::new(),
        nodes: 0,
    };
    let condition = reader.node(value, path, 1);
    match condition {
        Some(c) if reader.problems.is_empty() => Ok(c),
        _ => Err(reader.problems),
    }
}

struct Reader {
    problems: Vec<Problem>,
    nodes: usize,
}

impl Reader {
    fn problem(&mut self, path: &str, message: impl Into<String>) -> Option<Condition> {
        self.problems.push(Problem::new(path, message));
        None
    }

    fn node(&mut self, value: &Json, path: &str, depth: usize) -> Option<Condition> {
        self.nodes += 1;
        if self.nodes == MAX_NODES + 1 {
            return self.problem(path, format!("a condition may have at most {MAX_NODES} parts"));
        }
        if self.nodes > MAX_NODES {
            return None;
        }
        if depth > MAX_DEPTH {
            return self.problem(path, format!("conditions may nest at most {MAX_DEPTH} deep"));
        }
        let Some(object) = value.as_object() else {
            return self.problem(path, "a condition is an object: all, any, not, or {field, op, value}");
        };
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        match keys.as_slice() {
            ["all"] | ["any"] => {
                let key = keys[0];
                let list_path = format!("{path}.{key}");
                let Some(items) = object[key].as_array().filter(|a| !a.is_empty()) else {
                    return self.problem(&list_path, format!("`{key}` takes a non-empty list of conditions"));
                };
                let parts: Vec<Option<Condition>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, &format!("{list_path}[{i}]"), depth + 1))
                    .collect();
                let parts: Option<Vec<Condition>> = parts.into_iter().collect();
                let parts = parts?;
                Some(if key == "all" {
                    Condition::All(parts)
                } else {
                    Condition::Any(parts)
                })
            }
            ["not"] => {
                let inner = self.node(&object["not"], &format!("{path}.not"), depth + 1)?;
                Some(Condition::Not(Box::new(inner)))
            }
            _ if object.contains_key("field") || object.contains_key("op") => self.comparison(object, path),
            _ => self.problem(
                path,
                format!(
                    "unknown condition with keys {}; expected all, any, not, or {{field, op, value}}",
                    keys.join(", ")
                ),
            ),
        }
    }

    fn comparison(&mut self, object: &serde_json::Map<String, Json>, path: &str) -> Option<Condition> {
        if let Some(extra) = object.keys().find(|k| !matches!(k.as_str(), "field" | "op" | "value")) {
            return self.problem(
                &format!("{path}.{extra}"),
                "unknown key in a comparison; it takes field, op and value",
            );
        }
        let field = match object.get("field").map(Field::parse) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => self.problem(&format!("{path}.field"), e).and(None),
            None => self
                .problem(&format!("{path}.field"), "a comparison names its field")
                .and(None),
        };
        let op_path = format!("{path}.op");
        let Some(op_text) = object.get("op").and_then(Json::as_str) else {
            return self.problem(&op_path, format!("a comparison has an operator, one of {OPERATORS}"));
        };
        let value_path = format!("{path}.value");
        if let Some(negated) = match op_text {
            "is null" => Some(false),
            "is not null" => Some(true),
            _ => None,
        } {
            if object.contains_key("value") {
                return self.problem(&value_path, format!("`{op_text}` takes no value"));
            }
            return Some(Condition::IsNull { field: field?, negated });
        }
        let Some(op) = Op::parse(op_text) else {
            return self.problem(
                &op_path,
                format!("unknown operator `{op_text}`; expected one of {OPERATORS}"),
            );
        };
        let Some(value) = object.get("value") else {
            return self.problem(&value_path, format!("`{op_text}` compares with a value"));
        };
        let value = match operand(op, value) {
            Ok(v) => v,
            Err(e) => return self.problem(&value_path, e),
        };
        Some(Condition::Compare {
            field: field?,
            op,
            value,
        })
    }
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "true/false",
        Json::Number(_) => "a number",
        Json::String(_) => "text",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// Reads what `op` compares with, refusing values that can never compare that way.
fn operand(op: Op, value: &Json) -> Result<Operand, String> {
    let operand = match value {
        Json::Null => return Err("compare with null by `is null` or `is not null`".into()),
        Json::Object(object) => {
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            match keys.as_slice() {
                ["field"] | ["field", "plus"] | ["plus", "field"] => Operand::Field {
                    field: Field::parse(&object["field"])?,
                    plus: object.get("plus").map(span_of).transpose()?.map(Span::fieldwise),
                },
                ["now"] => Operand::Now(
                    match &object["now"] {
                        Json::Bool(true) => Span::new(),
                        other => span_of(other)?,
                    }
                    .fieldwise(),
                ),
                ["at"] => Operand::At(
                    object["at"]
                        .as_str()
                        .and_then(|s| s.parse::<Timestamp>().ok())
                        .ok_or("`at` is a time with its offset, such as \"2026-01-01T09:00:00Z\"")?,
                ),
                _ => {
                    return Err(format!(
                        "a value object is {{field}}, {{field, plus}}, {{now}} or {{at}}, not keys {}",
                        keys.join(", ")
                    ))
                }
            }
        }
        Json::Array(items) => {
            if op != Op::In {
                return Err("a list is the value of `in` only".into());
            }
            if items.is_empty() || items.len() > MAX_IN_LIST {
                return Err(format!("`in` takes a list of 1 to {MAX_IN_LIST} values"));
            }
            if let Some((i, bad)) = items
                .iter()
                .enumerate()
                .find(|(_, v)| matches!(v, Json::Null | Json::Array(_) | Json::Object(_)))
            {
                return Err(format!(
                    "`in` lists text, numbers or true/false; item {i} is {}",
                    kind(bad)
                ));
            }
            Operand::Literal(value.clone())
        }
        scalar => {
            if op == Op::In {
                return Err("`in` takes a list of values".into());
            }
            if op.is_ordering() && scalar.is_boolean() {
                return Err("true/false can only be compared with = or <>".into());
            }
            Operand::Literal(scalar.clone())
        }
    };
    if operand.is_time() && matches!(op, Op::In | Op::Contains) {
        return Err(format!(
            "a time is compared with =, <>, <, <=, > or >=, not `{}`",
            op_name(op)
        ));
    }
    Ok(operand)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::In => "in",
        Op::Contains => "contains",
    }
}

fn span_of(value: &Json) -> Result<Span, String> {
    value
        .as_str()
        .ok_or_else(|| "a span is text such as \"7 days\" or \"-2 hours\"".to_owned())
        .and_then(parse_span)
}

/// Whether a condition held, and every value it read to decide (field name → value; `now`
/// when the time was read).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub holds: bool,
    pub seen: BTreeMap<String, Json>,
}

/// A condition that could not be decided, with the path of the part that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition {path}: {message}")]
pub struct EvalError {
    pub path: String,
    pub message: String,
}

/// Decides `condition` against `data` at `now`; calendar spans move in `tz`, and times
/// without an offset are read in `tz`.
pub fn evaluate(condition: &Condition, data: &Json, now: Timestamp, tz: &TimeZone) -> Result<Evaluation, EvalError> {
    let mut run = Run {
        data,
        now: now.to_zoned(tz.clone()),
        tz,
        seen: BTreeMap::new(),
    };
    let holds = run.decide(condition, "")?;
    Ok(Evaluation { holds, seen: run.seen })
}

struct Run<'a> {
    data: &'a Json,
    now: Zoned,
    tz: &'a TimeZone,
    seen: BTreeMap<String, Json>,
}

impl Run<'_> {
    fn decide(&mut self, condition: &Condition, path: &str) -> Result<bool, EvalError> {
        match condition {
            Condition::All(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if !self.decide(part, &format!("{path}.all[{i}]"))? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Condition::Any(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if self.decide(part, &format!("{path}.any[{i}]"))? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Condition::Not(inner) => Ok(!self.decide(inner, &format!("{path}.not"))?),
            Condition::IsNull { field, negated } => {
                let value = self.read(field, path)?;
                Ok(value.is_null() != *negated)
            }
            Condition::Compare { field, op, value } => {
                let left = self.read(field, path)?;
                if left.is_null() {
                    return Ok(false);
                }
                self.compare(&left, *op, value, path)
            }
        }
    }

    fn read(&mut self, field: &Field, path: &str) -> Result<Json, EvalError> {
        let value = field.read(self.data).cloned().ok_or_else(|| EvalError {
            path: root(path),
            message: format!("the data has no field `{field}`"),
        })?;
        self.seen.insert(field.to_string(), value.clone());
        Ok(value)
    }

    fn compare(&mut self, left: &Json, op: Op, value: &Operand, path: &str) -> Result<bool, EvalError> {
        let fail = |message: String| EvalError {
            path: root(path),
            message,
        };
        let right: Result<Zoned, Json> = match value {
            Operand::Literal(v) => Err(v.clone()),
            Operand::Field { field, plus } => {
                let other = self.read(field, path)?;
                if other.is_null() {
                    return Ok(false);
                }
                match plus {
                    None => Err(other),
                    Some(span) => {
                        let at = instant_of(&other, self.tz).ok_or_else(|| {
                            fail(format!(
                                "`{field}` is {}, not a time, so it cannot be moved by {}",
                                kind(&other),
                                span.0
                            ))
                        })?;
                        Ok(shift(&at, span.0).map_err(fail)?)
                    }
                }
            }
            Operand::Now(span) => {
                self.seen
                    .insert("now".into(), Json::from(self.now.timestamp().to_string()));
                Ok(shift(&self.now, span.0).map_err(fail)?)
            }
            Operand::At(ts) => Ok(ts.to_zoned(self.tz.clone())),
        };
        match right {
            Ok(time) => {
                let Some(at) = instant_of(left, self.tz) else {
                    return Err(fail(format!(
                        "{} is compared with a time but is {}",
                        shown(left),
                        kind(left)
                    )));
                };
                Ok(op.holds(at.timestamp().cmp(&time.timestamp())))
            }
            Err(other) => {
                // Two fields that both hold times compare as instants, whatever their offsets.
                if let (Some(a), Some(b)) = (instant_of(left, self.tz), instant_of(&other, self.tz)) {
                    if !matches!(op, Op::In | Op::Contains) {
                        return Ok(op.holds(a.timestamp().cmp(&b.timestamp())));
                    }
                }
                compare_values(left, op, &other).map_err(fail)
            }
        }
    }
}

fn root(path: &str) -> String {
    if path.is_empty() {
        "(top)".into()
    } else {
        path.trim_start_matches('.').into()
    }
}

fn shown(value: &Json) -> String {
    let text = value.to_string();
    if text.len() > 60 {
        format!("{}…", &text[..text.floor_char_boundary(60)])
    } else {
        text
    }
}

fn compare_values(left: &Json, op: Op, right: &Json) -> Result<bool, String> {
    match op {
        Op::In => {
            let items = right.as_array().map(Vec::as_slice).unwrap_or_default();
            for item in items {
                if order(left, item)? == Ordering::Equal {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Op::Contains => match (left, right) {
            (Json::Array(items), _) => Ok(items.iter().any(|i| order(i, right) == Ok(Ordering::Equal))),
            (Json::String(text), Json::String(part)) => Ok(text.contains(part.as_str())),
            _ => Err(format!(
                "`contains` looks in a list or in text; the field is {} and the value {}",
                kind(left),
                kind(right)
            )),
        },
        _ => Ok(op.holds(order(left, right)?)),
    }
}

/// The order of two values of one kind; values of different kinds do not compare.
fn order(left: &Json, right: &Json) -> Result<Ordering, String> {
    match (left, right) {
        (Json::Number(a), Json::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => Ok(a.cmp(&b)),
            _ => a
                .as_f64()
                .zip(b.as_f64())
                .and_then(|(a, b)| a.partial_cmp(&b))
                .ok_or_else(|| format!("{a} and {b} cannot be ordered")),
        },
        (Json::String(a), Json::String(b)) => Ok(a.cmp(b)),
        (Json::Bool(a), Json::Bool(b)) => Ok(a.cmp(b)),
        _ => Err(format!(
            "{} ({}) cannot be compared with {} ({})",
            shown(left),
            kind(left),
            shown(right),
            kind(right)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn data() -> Json {
        json!({
            "status": "confirmed",
            "total": 120,
            "price": 19.5,
            "vip": true,
            "tags": ["vip", "early"],
            "note": "call before noon",
            "cancelled_at": null,
            "starts_at": "2026-11-25T09:00:00+00:00",
            "ends_at": "2026-11-25T11:00:00+00:00",
            "renews_at": "2026-11-28",
            "last_visit_at": "2026-09-01T10:00:00",
            "herald": {"event": "status_change", "old_status": "pending", "new_status": "confirmed"},
            "odd.name": 7
        })
    }

    fn holds(condition: Json) -> Result<bool, String> {
        let c = parse(&condition, "if").map_err(|p| format!("{p:?}"))?;
        evaluate(&c, &data(), now(), &TimeZone::UTC)
            .map(|e| e.holds)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn comparisons_decide_as_written() {
        let cases: Vec<(Json, bool)> = vec![
            (json!({"field": "status", "op": "=", "value": "confirmed"}), true),
            (json!({"field": "status", "op": "<>", "value": "confirmed"}), false),
            (json!({"field": "total", "op": ">=", "value": 120}), true),
            (json!({"field": "total", "op": "<=", "value": 120}), true),
            (json!({"field": "total", "op": "<", "value": 120}), false),
            (json!({"field": "total", "op": ">", "value": 120}), false),
            (json!({"field": "total", "op": ">", "value": 119.5}), true),
            (json!({"field": "price", "op": "<", "value": 20}), true),
            (json!({"field": "total", "op": "=", "value": 120.0}), true),
            (json!({"field": "vip", "op": "=", "value": true}), true),
            (
                json!({"field": "status", "op": "in", "value": ["pending", "confirmed"]}),
                true,
            ),
            (json!({"field": "status", "op": "in", "value": ["cancelled"]}), false),
            (json!({"field": "tags", "op": "contains", "value": "vip"}), true),
            (json!({"field": "tags", "op": "contains", "value": "late"}), false),
            (json!({"field": "note", "op": "contains", "value": "noon"}), true),
            (json!({"field": "cancelled_at", "op": "is null"}), true),
            (json!({"field": "cancelled_at", "op": "is not null"}), false),
            (json!({"field": "status", "op": "is null"}), false),
            // A null field makes every comparison false, as in SQL, `<>` included.
            (json!({"field": "cancelled_at", "op": "=", "value": "x"}), false),
            (json!({"field": "cancelled_at", "op": "<>", "value": "x"}), false),
            (
                json!({"field": "herald.new_status", "op": "=", "value": "confirmed"}),
                true,
            ),
            (json!({"field": ["odd.name"], "op": "=", "value": 7}), true),
        ];
        for (condition, want) in cases {
            assert_eq!(holds(condition.clone()), Ok(want), "{condition}");
        }
    }

    #[test]
    fn groups_combine_and_stop_early() {
        let yes = json!({"field": "vip", "op": "=", "value": true});
        let no = json!({"field": "vip", "op": "=", "value": false});
        let broken = json!({"field": "missing", "op": "=", "value": 1});
        let cases: Vec<(Json, Result<bool, &str>)> = vec![
            (json!({"all": [yes, yes]}), Ok(true)),
            (json!({"all": [yes, no]}), Ok(false)),
            (json!({"any": [no, yes]}), Ok(true)),
            (json!({"any": [no, no]}), Ok(false)),
            (json!({"not": no}), Ok(true)),
            (json!({"all": [no, broken]}), Ok(false)),
            (json!({"any": [yes, broken]}), Ok(true)),
            (
                json!({"all": [yes, broken]}),
                Err("condition all[1]: the data has no field `missing`"),
            ),
            (
                json!({"not": {"any": [no, broken]}}),
                Err("condition not.any[1]: the data has no field `missing`"),
            ),
        ];
        for (condition, want) in cases {
            assert_eq!(holds(condition.clone()), want.map_err(str::to_owned), "{condition}");
        }
    }

    #[test]
    fn times_compare_as_instants_relative_to_now_or_another_field() {
        let cases: Vec<(Json, bool)> = vec![
            // "renews_at is within 7 days from now"
            (
                json!({"all": [{"field": "renews_at", "op": ">=", "value": {"now": true}},
                               {"field": "renews_at", "op": "<=", "value": {"now": "7 days"}}]}),
                true,
            ),
            (
                json!({"field": "renews_at", "op": "<=", "value": {"now": "4 days"}}),
                false,
            ),
            // "last_visit_at is more than 30 days ago"
            (
                json!({"field": "last_visit_at", "op": "<", "value": {"now": "-30 days"}}),
                true,
            ),
            (
                json!({"field": "last_visit_at", "op": "<", "value": {"now": "-90 days"}}),
                false,
            ),
            (
                json!({"field": "ends_at", "op": ">=", "value": {"field": "starts_at", "plus": "2 hours"}}),
                true,
            ),
            (
                json!({"field": "ends_at", "op": ">", "value": {"field": "starts_at", "plus": "2 hours"}}),
                false,
            ),
            (
                json!({"field": "ends_at", "op": ">", "value": {"field": "starts_at"}}),
                true,
            ),
            (
                json!({"field": "starts_at", "op": "<", "value": {"at": "2026-12-01T00:00:00Z"}}),
                true,
            ),
            // Different offsets, one instant.
            (
                json!({"field": "starts_at", "op": "=", "value": {"at": "2026-11-25T10:00:00+01:00"}}),
                true,
            ),
            (
                json!({"field": "cancelled_at", "op": "<", "value": {"now": true}}),
                false,
            ),
        ];
        for (condition, want) in cases {
            assert_eq!(holds(condition.clone()), Ok(want), "{condition}");
        }
    }

    #[test]
    fn calendar_days_move_in_the_automation_zone() {
        // 2026-03-29 01:00 UTC London moves to BST. "1 day after" 09:00 local is 09:00 BST.
        let data = json!({"at": "2026-03-29T08:00:00+00:00", "was": "2026-03-28T09:00:00"});
        let c = parse(
            &json!({"field": "at", "op": "=", "value": {"field": "was", "plus": "1 day"}}),
            "if",
        )
        .unwrap();
        let london = super::super::time::zone("Europe/London").unwrap();
        assert!(evaluate(&c, &data, now(), &london).unwrap().holds);
        assert!(!evaluate(&c, &data, now(), &TimeZone::UTC).unwrap().holds);
    }

    #[test]
    fn evaluation_records_the_values_it_read() {
        let c = parse(
            &json!({"all": [{"field": "status", "op": "=", "value": "confirmed"},
                            {"field": "renews_at", "op": "<=", "value": {"now": "7 days"}},
                            {"field": "total", "op": ">", "value": 1000},
                            {"field": "vip", "op": "=", "value": true}]}),
            "if",
        )
        .unwrap();
        let got = evaluate(&c, &data(), now(), &TimeZone::UTC).unwrap();
        assert!(!got.holds);
        let want: BTreeMap<String, Json> = [
            ("status", json!("confirmed")),
            ("renews_at", json!("2026-11-28")),
            ("now", json!("2026-11-23T12:00:00Z")),
            ("total", json!(120)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got.seen, want, "stops after `total`, so `vip` is not read");
    }

    #[test]
    fn values_of_kinds_that_do_not_compare_are_errors_not_false() {
        let cases: Vec<(Json, &str)> = vec![
            (
                json!({"field": "status", "op": "=", "value": 3}),
                "\"confirmed\" (text) cannot be compared with 3 (a number)",
            ),
            (
                json!({"field": "total", "op": "<", "value": {"now": true}}),
                "120 is compared with a time but is a number",
            ),
            (
                json!({"field": "total", "op": "contains", "value": 1}),
                "`contains` looks in a list or in text",
            ),
            (
                json!({"field": "status", "op": ">", "value": {"field": "total", "plus": "1 day"}}),
                "`total` is a number, not a time",
            ),
            (
                json!({"field": "nope", "op": "is null"}),
                "the data has no field `nope`",
            ),
        ];
        for (condition, want) in cases {
            let got = holds(condition.clone()).unwrap_err();
            assert!(got.contains(want), "{condition}: {got}");
        }
    }

    #[test]
    fn mistakes_are_refused_when_read_with_their_paths() {
        let cases: Vec<(Json, Vec<(&str, &str)>)> = vec![
            (
                json!({"field": "a", "op": "~", "value": 1}),
                vec![("if.op", "unknown operator `~`")],
            ),
            (
                json!({"field": "a", "op": "=", "value": null}),
                vec![("if.value", "by `is null`")],
            ),
            (
                json!({"field": "a", "op": "is null", "value": 1}),
                vec![("if.value", "takes no value")],
            ),
            (
                json!({"field": "a", "op": "<", "value": true}),
                vec![("if.value", "= or <>")],
            ),
            (
                json!({"field": "a", "op": "in", "value": "x"}),
                vec![("if.value", "a list of values")],
            ),
            (
                json!({"field": "a", "op": "in", "value": []}),
                vec![("if.value", "1 to 100")],
            ),
            (
                json!({"field": "a", "op": "in", "value": [1, null]}),
                vec![("if.value", "item 1 is null")],
            ),
            (
                json!({"field": "a", "op": "=", "value": [1]}),
                vec![("if.value", "value of `in` only")],
            ),
            (
                json!({"field": "a", "op": "<", "value": {"now": "soon"}}),
                vec![("if.value", "`soon` is not a duration")],
            ),
            (
                json!({"field": "a", "op": "<", "value": {"at": "tomorrow"}}),
                vec![("if.value", "with its offset")],
            ),
            (
                json!({"field": "a", "op": "in", "value": {"now": true}}),
                vec![("if.value", "not `in`")],
            ),
            (
                json!({"field": "a", "op": "=", "value": {"nope": 1}}),
                vec![("if.value", "not keys nope")],
            ),
            (
                json!({"field": "", "op": "=", "value": 1}),
                vec![("if.field", "empty part")],
            ),
            (
                json!({"field": "a", "op": "=", "value": 1, "extra": 1}),
                vec![("if.extra", "unknown key")],
            ),
            (json!({"op": "=", "value": 1}), vec![("if.field", "names its field")]),
            (json!({"all": []}), vec![("if.all", "non-empty list")]),
            (json!({"every": []}), vec![("if", "unknown condition with keys every")]),
            (json!("status = 1"), vec![("if", "a condition is an object")]),
            (
                json!({"any": [{"field": "a", "op": "=~", "value": 1}, {"not": {"field": "b", "op": "in", "value": 2}}]}),
                vec![
                    ("if.any[0].op", "unknown operator `=~`"),
                    ("if.any[1].not.value", "a list of values"),
                ],
            ),
        ];
        for (condition, want) in cases {
            let problems = parse(&condition, "if").unwrap_err();
            assert_eq!(problems.len(), want.len(), "{condition}: {problems:?}");
            for (problem, (path, part)) in problems.iter().zip(want) {
                assert_eq!(problem.path, path, "{condition}");
                assert!(problem.message.contains(part), "{condition}: {}", problem.message);
            }
        }
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let mut deep = json!({"field": "a", "op": "is null"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"not": deep});
        }
        let problems = parse(&deep, "if").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("nest at most 16"), "{problems:?}");
        assert_eq!(problems[0].path, format!("if{}", ".not".repeat(MAX_DEPTH)));

        let leaf = json!({"field": "a", "op": "is null"});
        let wide = json!({"any": vec![leaf; MAX_NODES]});
        let problems = parse(&wide, "if").unwrap_err();
        assert_eq!(problems.len(), 1, "one problem, not one per extra node");
        assert!(problems[0].message.contains("at most 200 parts"));
        let fits = json!({"any": vec![json!({"field": "a", "op": "is null"}); MAX_NODES - 1]});
        assert!(parse(&fits, "if").is_ok());
    }
}
