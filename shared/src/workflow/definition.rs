//! An automation's definition: one JSON document holding its trigger, conditions, exit
//! conditions and steps, read into types the engine runs, or refused with the path of every
//! mistake in it.
//!
//! ```json
//! {
//!   "trigger": {"type": "status_change", "table": "public.bookings", "to": ["confirmed"]},
//!   "timezone": "Europe/London",
//!   "region": "GB",
//!   "exit": [{"if": {"field": "status", "op": "=", "value": "cancelled"}, "reason": "booking cancelled"}],
//!   "steps": [
//!     {"id": "confirm", "type": "send_email", "to": "{{ email }}", "subject": "See you soon", "text": "..."},
//!     {"id": "night-before", "type": "wait", "until": {"field": "starts_at", "offset": "-1 day", "at": "18:00"}},
//!     {"id": "vip", "type": "branch", "if": {"field": "vip", "op": "=", "value": true},
//!      "then": [{"id": "tell-owner", "type": "notify_admin", "subject": "VIP tomorrow", "text": "..."}]},
//!     {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "See you tomorrow", "on_error": "continue"}
//!   ]
//! }
//! ```

use std::collections::{BTreeMap, HashSet};

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Span, SpanFieldwise, ToSpan};
use serde_json::{Map, Value as Json};

use super::condition::{self, Condition};
use super::schedule;
use super::shape::shape;
use super::time::{parse_span, zone};
use super::wait::{self, Wait, ZoneOf};
use super::{Field, Problem};
use crate::model::{EmailTemplates, SmsTemplates};
use crate::recipient::Region;
use crate::render::check_template;

/// Most steps in one definition, branches included.
pub(crate) const MAX_STEPS: usize = 200;
/// Deepest nesting of branches.
pub(crate) const MAX_BRANCH_DEPTH: usize = 8;
/// Most retries a step's `on_error` may ask for.
pub(crate) const MAX_RETRIES: u32 = 10;
/// What a step's `region` may be.
const REGION_OF: &str = "a region is a code (\"US\") or {\"field\": ...} naming a column that holds one";

/// Longest a webhook may take to answer: with the time kept for the writes around it, it
/// fits in the executor's 30 s invocation.
pub(crate) const MAX_WEBHOOK_TIMEOUT_SECS: i64 = 15;

#[derive(Debug, Clone)]
pub struct Document {
    pub trigger: Trigger,
    /// An event that fails these starts nothing.
    pub conditions: Option<Condition>,
    /// Checked against fresh data before every step: the first that holds ends the instance.
    pub exit: Vec<Exit>,
    /// The zone of calendar arithmetic and local times, unless a step names its own.
    pub timezone: TimeZone,
    /// The region phone numbers written without `+` and a country code are read in, unless a
    /// step names its own; admins' numbers are read in it too.
    pub region: Option<Region>,
    pub admins: Admins,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    StatusChange {
        table: Relation,
        /// The status column; the one the table is attached with when `None`.
        column: Option<String>,
        to: Vec<String>,
        from: Vec<String>,
    },
    Insert {
        table: Relation,
        /// Statuses the new row must have (any when empty).
        to: Vec<String>,
    },
    Update {
        table: Relation,
        columns: Vec<String>,
    },
    Delete {
        table: Relation,
    },
    Label {
        kind: LabelKind,
        added: bool,
        name: String,
    },
    /// A row's date: fires `offset` from the date in `column` (at the local time `at`, in
    /// `zone` or the definition's), once per row and date value. The ledger keeps when each
    /// row fires (db/schema/time.sql); this is the document's reading of it.
    Date {
        table: Relation,
        column: String,
        offset: Option<SpanFieldwise>,
        at: Option<Time>,
        zone: Option<ZoneOf>,
        /// How late a firing may still start; older ones are recorded as missed.
        lateness: SpanFieldwise,
    },
    /// A cron schedule: each occurrence starts one instance, or one per row of `audience`.
    Schedule {
        cron: String,
        /// The zone the expression is read in; the definition's when `None`.
        zone: Option<TimeZone>,
        lateness: SpanFieldwise,
        audience: Option<Audience>,
    },
    Manual,
}

/// The rows a schedule starts an instance for at each occurrence: a table or view, and the
/// column its rows are found by (its attached key or one-column primary key when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Audience {
    pub relation: Relation,
    pub key: Option<String>,
}

/// The row a label step labels when it is not the instance's subject.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTarget {
    pub table: Relation,
    /// A template of the row's key.
    pub key: String,
}

/// A table named `schema.table` (`public` when the schema is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub table: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    Tag,
    Segment,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub when: Condition,
    pub reason: String,
}

/// Who `notify_admin` steps reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admins {
    pub emails: Vec<String>,
    pub phones: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    pub on_error: OnError,
    /// What a later invocation does when this step's effect started and how it ended was
    /// never recorded (the executor vanished mid-call).
    pub on_unknown: OnUnknown,
    pub action: Action,
}

/// The region an SMS step reads its number in: one named, or the one a field of the data
/// holds (the definition's when the field is empty or null).
#[derive(Debug, Clone, PartialEq)]
pub enum RegionOf {
    Named(Region),
    Field(Field),
}

/// A step whose outcome is unknown: held for an operator, or performed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnknown {
    /// The instance waits in status `unknown` (the default for messages to people).
    Hold,
    /// The effect is performed again (the default for webhooks, which carry the same id).
    Resend,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnError {
    /// The instance fails.
    Stop,
    /// The step is recorded as failed and the flow goes on.
    Continue,
    /// The step runs again, up to `times` more, `backoff` apart (doubling), then stops.
    Retry { times: u32, backoff: SpanFieldwise },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SendEmail(EmailTemplates),
    SendSms {
        sms: SmsTemplates,
        /// The region its number is read in, when it is not the definition's.
        region: Option<RegionOf>,
    },
    Wait(Wait),
    Branch {
        when: Condition,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    UpdateField {
        /// The subject's own table when `None`.
        table: Option<Relation>,
        /// The column of `table` that holds the subject's key; its key column when `None`.
        key: Option<String>,
        /// Column → template of its new value.
        set: BTreeMap<String, String>,
    },
    Label {
        kind: LabelKind,
        add: bool,
        name: String,
        /// Another row than the subject's: its table, and a template of its key.
        target: Option<LabelTarget>,
    },
    Webhook {
        url: String,
        body: String,
        secret: String,
        timeout_secs: i64,
    },
    CreateTask {
        title: String,
        assignee: Option<String>,
        due: Option<SpanFieldwise>,
        notes: Option<String>,
    },
    NotifyAdmin {
        subject: String,
        text: String,
    },
}

impl Action {
    /// The step type as written in a definition.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Action::SendEmail(_) => "send_email",
            Action::SendSms { .. } => "send_sms",
            Action::Wait(_) => "wait",
            Action::Branch { .. } => "branch",
            Action::UpdateField { .. } => "update_field",
            Action::Label {
                kind: LabelKind::Tag,
                add: true,
                ..
            } => "add_tag",
            Action::Label {
                kind: LabelKind::Tag,
                add: false,
                ..
            } => "remove_tag",
            Action::Label {
                kind: LabelKind::Segment,
                add: true,
                ..
            } => "add_to_segment",
            Action::Label {
                kind: LabelKind::Segment,
                add: false,
                ..
            } => "remove_from_segment",
            Action::Webhook { .. } => "webhook",
            Action::CreateTask { .. } => "create_task",
            Action::NotifyAdmin { .. } => "notify_admin",
        }
    }
}

/// Reads a definition, or every mistake in it, each with its path (`steps[2].then[0].to`).
pub fn parse(document: &Json) -> Result<Document, Vec<Problem>> {
    let mut r = Reader::default();
    let doc = r.document(document);
    match doc {
        Some(d) if r.problems.is_empty() => Ok(d),
        _ => Err(r.problems),
    }
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    ids: HashSet<String>,
    steps: usize,
}

impl Reader {
    fn problem<T>(&mut self, path: &str, message: impl Into<String>) -> Option<T> {
        self.problems.push(Problem::new(path, message));
        None
    }

    fn object<'a>(&mut self, value: &'a Json, path: &str, what: &str) -> Option<&'a Map<String, Json>> {
        match value.as_object() {
            Some(o) => Some(o),
            None => self.problem(path, format!("{what} is an object")),
        }
    }

    /// A problem for each key the shape does not list for this object.
    fn only_keys(&mut self, object: &Map<String, Json>, allowed: &[String], path: &str) {
        for key in object.keys().filter(|k| !allowed.contains(k)) {
            let message = format!("unknown key; expected {}", allowed.join(", "));
            self.problems.push(Problem::new(format!("{path}.{key}"), message));
        }
    }

    fn text(&mut self, object: &Map<String, Json>, key: &str, path: &str) -> Option<String> {
        match object.get(key) {
            Some(Json::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Json::String(_)) => self.problem(&format!("{path}.{key}"), "is empty"),
            Some(_) => self.problem(&format!("{path}.{key}"), "is text"),
            None => self.problem(&format!("{path}.{key}"), "is required"),
        }
    }

    fn optional_text(&mut self, object: &Map<String, Json>, key: &str, path: &str) -> Option<Option<String>> {
        if object.contains_key(key) {
            self.text(object, key, path).map(Some)
        } else {
            Some(None)
        }
    }

    fn template(&mut self, object: &Map<String, Json>, key: &str, path: &str) -> Option<String> {
        let source = self.text(object, key, path)?;
        self.compiles(&source, &format!("{path}.{key}"))
    }

    fn optional_template(&mut self, object: &Map<String, Json>, key: &str, path: &str) -> Option<Option<String>> {
        if object.contains_key(key) {
            self.template(object, key, path).map(Some)
        } else {
            Some(None)
        }
    }

    fn compiles(&mut self, source: &str, path: &str) -> Option<String> {
        match check_template(source) {
            Ok(()) => Some(source.to_owned()),
            Err(e) => self.problem(path, e),
        }
    }

    fn texts(&mut self, object: &Map<String, Json>, key: &str, path: &str) -> Option<Vec<String>> {
        let p = format!("{path}.{key}");
        match object.get(key) {
            None => Some(Vec::new()),
            Some(Json::String(s)) => Some(vec![s.clone()]),
            Some(Json::Array(items)) => match items.iter().map(|i| i.as_str().map(str::to_owned)).collect() {
                Some(v) => Some(v),
                None => self.problem(&p, "is a list of text"),
            },
            Some(_) => self.problem(&p, "is text or a list of text"),
        }
    }

    fn relation(&mut self, object: &Map<String, Json>, key: &str, path: &str) -> Option<Relation> {
        let name = self.text(object, key, path)?;
        let (schema, table) = name.split_once('.').unwrap_or(("public", &name));
        if schema.is_empty() || table.is_empty() {
            return self.problem(&format!("{path}.{key}"), format!("`{name}` is not schema.table"));
        }
        Some(Relation {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    fn condition(&mut self, value: &Json, path: &str) -> Option<Condition> {
        match condition::parse(value, path) {
            Ok(c) => Some(c),
            Err(problems) => {
                self.problems.extend(problems);
                None
            }
        }
    }

    fn document(&mut self, value: &Json) -> Option<Document> {
        let doc = self.object(value, "(document)", "a definition")?;
        self.only_keys(doc, &shape().document, "");
        // Paths of top-level keys read "trigger", not ".trigger".
        for p in &mut self.problems {
            p.path = p.path.trim_start_matches('.').to_owned();
        }
        let trigger = match doc.get("trigger") {
            Some(t) => self.trigger(t),
            None => self.problem("trigger", "is required"),
        };
        let conditions = match doc.get("conditions") {
            Some(c) => self.condition(c, "conditions").map(Some),
            None => Some(None),
        };
        let exit = self.exits(doc.get("exit"));
        let timezone = match doc.get("timezone") {
            None => Some(TimeZone::UTC),
            Some(Json::String(name)) => zone(name).map_or_else(|e| self.problem("timezone", e), Some),
            Some(_) => self.problem("timezone", "is a time zone name such as \"Europe/London\""),
        };
        let region = match doc.get("region") {
            None => Some(None),
            Some(value) => self.region(value, "region").map(Some),
        };
        let admins = self.admins(doc.get("admins"));
        let steps = match doc.get("steps") {
            Some(s) => self.steps(s, "steps", 0),
            None => self.problem("steps", "is required: a list of steps"),
        };
        if let (Some(steps), Some(admins)) = (&steps, &admins) {
            if admins.emails.is_empty() && admins.phones.is_empty() && uses_admins(steps) {
                self.problems.push(Problem::new(
                    "admins",
                    "notify_admin steps need admins.emails or admins.phones",
                ));
            }
        }
        Some(Document {
            trigger: trigger?,
            conditions: conditions?,
            exit: exit?,
            timezone: timezone?,
            region: region?,
            admins: admins?,
            steps: steps?,
        })
    }

    fn trigger(&mut self, value: &Json) -> Option<Trigger> {
        let path = "trigger";
        let t = self.object(value, path, "a trigger")?;
        let kind = self.text(t, "type", path)?;
        let Some(of_kind) = shape().trigger(&kind) else {
            return self.unknown_trigger(&kind);
        };
        self.only_keys(t, &of_kind.keys, path);
        Some(match kind.as_str() {
            "status_change" => {
                let column = match t.get("column") {
                    Some(_) => Some(self.text(t, "column", path)?),
                    None => None,
                };
                Trigger::StatusChange {
                    table: self.relation(t, "table", path)?,
                    column,
                    to: self.texts(t, "to", path)?,
                    from: self.texts(t, "from", path)?,
                }
            }
            "insert" => Trigger::Insert {
                table: self.relation(t, "table", path)?,
                to: self.texts(t, "to", path)?,
            },
            "delete" => Trigger::Delete {
                table: self.relation(t, "table", path)?,
            },
            "update" => {
                let columns = self.texts(t, "columns", path)?;
                if columns.is_empty() {
                    return self.problem(
                        &format!("{path}.columns"),
                        "names the columns whose change starts a flow",
                    );
                }
                Trigger::Update {
                    table: self.relation(t, "table", path)?,
                    columns,
                }
            }
            "tag_added" | "tag_removed" | "segment_joined" | "segment_left" => {
                let (label, key) = if kind.starts_with("tag") {
                    (LabelKind::Tag, "tag")
                } else {
                    (LabelKind::Segment, "segment")
                };
                Trigger::Label {
                    kind: label,
                    added: matches!(kind.as_str(), "tag_added" | "segment_joined"),
                    name: self.text(t, key, path)?,
                }
            }
            "date" => self.date_trigger(t, path)?,
            "schedule" => self.schedule_trigger(t, path)?,
            "manual" => Trigger::Manual,
            other => return self.unknown_trigger(other),
        })
    }

    fn date_trigger(&mut self, t: &Map<String, Json>, path: &str) -> Option<Trigger> {
        let table = self.relation(t, "table", path);
        let column = self.text(t, "column", path);
        let offset = self.optional(t, "offset", path, wait::offset_of);
        let at = self.optional(t, "at", path, wait::time_of_day);
        let zone = self.optional(t, "timezone", path, wait::zone_of);
        let lateness = self.lateness(t, path);
        Some(Trigger::Date {
            table: table?,
            column: column?,
            offset: offset?.map(Span::fieldwise),
            at: at?,
            zone: zone?,
            lateness: lateness?,
        })
    }

    fn schedule_trigger(&mut self, t: &Map<String, Json>, path: &str) -> Option<Trigger> {
        let cron = self.text(t, "cron", path);
        if let Some(Err(m)) = cron.as_deref().map(schedule::parse_cron) {
            self.problems.push(Problem::new(format!("{path}.cron"), m));
        }
        let zone = self.optional(t, "timezone", path, |v| {
            v.as_str()
                .ok_or_else(|| "a timezone is a name such as \"Europe/London\"".to_owned())
                .and_then(zone)
        });
        let lateness = self.lateness(t, path);
        let audience = match t.get("audience") {
            None => Some(None),
            Some(v) => {
                let p = format!("{path}.audience");
                self.object(v, &p, "an audience").and_then(|a| {
                    self.only_keys(a, &["relation".to_owned(), "key".to_owned()], &p);
                    let relation = self.relation(a, "relation", &p);
                    let key = self.optional_text(a, "key", &p);
                    Some(Some(Audience {
                        relation: relation?,
                        key: key?,
                    }))
                })
            }
        };
        Some(Trigger::Schedule {
            cron: cron?,
            zone: zone?,
            lateness: lateness?,
            audience: audience?,
        })
    }

    /// A trigger's `lateness`: a span, not negative; an hour when omitted.
    fn lateness(&mut self, t: &Map<String, Json>, path: &str) -> Option<SpanFieldwise> {
        let lateness = self.optional(t, "lateness", path, |v| {
            let span = wait::offset_of(v).map_err(|_| "a lateness is a span such as \"1 hour\"".to_owned())?;
            match span.is_negative() {
                true => Err("a lateness cannot be negative".to_owned()),
                false => Ok(span),
            }
        });
        Some(lateness?.unwrap_or(1.hour()).fieldwise())
    }

    /// `object[key]` read by `read` when present (`Some(None)` when absent); `None`, with a
    /// problem at its path, when it is wrong.
    fn optional<T>(
        &mut self,
        object: &Map<String, Json>,
        key: &str,
        path: &str,
        read: impl Fn(&Json) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match object.get(key).map(read) {
            None => Some(None),
            Some(Ok(v)) => Some(Some(v)),
            Some(Err(m)) => self.problem(&format!("{path}.{key}"), m),
        }
    }

    fn unknown_trigger<T>(&mut self, kind: &str) -> Option<T> {
        let message = format!(
            "unknown trigger type `{kind}`; expected one of {}",
            shape().trigger_types()
        );
        self.problem("trigger.type", message)
    }

    fn unknown_step<T>(&mut self, path: &str, kind: &str) -> Option<T> {
        let message = format!("unknown step type `{kind}`; expected one of {}", shape().step_types());
        self.problem(&format!("{path}.type"), message)
    }

    fn exits(&mut self, value: Option<&Json>) -> Option<Vec<Exit>> {
        let Some(value) = value else { return Some(Vec::new()) };
        let Some(items) = value.as_array() else {
            return self.problem("exit", "is a list of {if, reason}");
        };
        let exits: Vec<Option<Exit>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("exit[{i}]");
                let o = self.object(item, &path, "an exit condition")?;
                self.only_keys(o, &shape().exit, &path);
                let reason = self.text(o, "reason", &path);
                let when = match o.get("if") {
                    Some(c) => self.condition(c, &format!("{path}.if")),
                    None => self.problem(&format!("{path}.if"), "is required: the condition that ends the flow"),
                };
                Some(Exit {
                    when: when?,
                    reason: reason?,
                })
            })
            .collect();
        exits.into_iter().collect()
    }

    fn admins(&mut self, value: Option<&Json>) -> Option<Admins> {
        let Some(value) = value else {
            return Some(Admins::default());
        };
        let o = self.object(value, "admins", "admins")?;
        self.only_keys(o, &shape().admins, "admins");
        Some(Admins {
            emails: self.texts(o, "emails", "admins")?,
            phones: self.texts(o, "phones", "admins")?,
        })
    }

    fn steps(&mut self, value: &Json, path: &str, depth: usize) -> Option<Vec<Step>> {
        let Some(items) = value.as_array() else {
            return self.problem(path, "is a list of steps");
        };
        let steps: Vec<Option<Step>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.step(item, &format!("{path}[{i}]"), depth))
            .collect();
        steps.into_iter().collect()
    }

    fn step(&mut self, value: &Json, path: &str, depth: usize) -> Option<Step> {
        self.steps += 1;
        if self.steps == MAX_STEPS + 1 {
            return self.problem(path, format!("a definition may have at most {MAX_STEPS} steps"));
        }
        let s = self.object(value, path, "a step")?;
        let id = self.step_id(s, path);
        let on_error = self.on_error(s.get("on_error"), &format!("{path}.on_error"));
        let kind = self.text(s, "type", path)?;
        let Some(of_kind) = shape().step_type(&kind) else {
            return self.unknown_step(path, &kind);
        };
        self.only_keys(s, &[&shape().step[..], &of_kind.keys[..]].concat(), path);
        // Steps whose effect leaves this database may say what to do when its outcome is
        // unknown.
        let sends = of_kind.sends();
        let on_unknown = match (s.get("on_unknown"), kind.as_str()) {
            (None, "webhook") => Some(OnUnknown::Resend),
            (None, _) => Some(OnUnknown::Hold),
            (Some(_), _) if !sends => None,
            (Some(Json::String(v)), _) if v == "hold" => Some(OnUnknown::Hold),
            (Some(Json::String(v)), _) if v == "resend" => Some(OnUnknown::Resend),
            (Some(_), _) => self.problem(&format!("{path}.on_unknown"), "is \"hold\" or \"resend\""),
        };
        let action = self.action(s, &kind, path, depth)?;
        Some(Step {
            id: id?,
            on_error: on_error?,
            // Refused above for a step that does not take it.
            on_unknown: on_unknown.unwrap_or(OnUnknown::Hold),
            action,
        })
    }

    /// What a step of type `kind` does (its keys were checked against the shape).
    fn action(&mut self, s: &Map<String, Json>, kind: &str, path: &str, depth: usize) -> Option<Action> {
        Some(match kind {
            "send_email" => self.send_email(s, path)?,
            "send_sms" => {
                let region = match s.get("region") {
                    None => Some(None),
                    Some(Json::Object(o)) => match (o.len(), o.get("field").map(Field::parse)) {
                        (1, Some(Ok(field))) => Some(Some(RegionOf::Field(field))),
                        (1, Some(Err(e))) => self.problem(&format!("{path}.region.field"), e),
                        _ => self.problem(&format!("{path}.region"), REGION_OF),
                    },
                    Some(value) => self
                        .region(value, &format!("{path}.region"))
                        .map(|r| Some(RegionOf::Named(r))),
                };
                let sms = SmsTemplates {
                    to: self.template(s, "to", path)?,
                    body: self.template(s, "body", path)?,
                };
                Action::SendSms { sms, region: region? }
            }
            "wait" => match wait::parse(s, path) {
                Ok(w) => Action::Wait(w),
                Err(problems) => {
                    self.problems.extend(problems);
                    return None;
                }
            },
            "branch" => self.branch(s, path, depth)?,
            "update_field" => self.update_field(s, path)?,
            "add_tag" | "remove_tag" | "add_to_segment" | "remove_from_segment" => self.label(s, kind, path)?,
            "webhook" => self.webhook(s, path)?,
            "create_task" => self.create_task(s, path)?,
            "notify_admin" => Action::NotifyAdmin {
                subject: self.template(s, "subject", path)?,
                text: self.template(s, "text", path)?,
            },
            other => return self.unknown_step(path, other),
        })
    }

    fn send_email(&mut self, s: &Map<String, Json>, path: &str) -> Option<Action> {
        let (text, html) = (
            self.optional_template(s, "text", path),
            self.optional_template(s, "html", path),
        );
        if let (Some(None), Some(None)) = (&text, &html) {
            self.problems
                .push(Problem::new(path, "an email has `text`, `html` or both"));
        }
        Some(Action::SendEmail(EmailTemplates {
            from: self.optional_template(s, "from", path)?,
            to: self.template(s, "to", path)?,
            subject: self.template(s, "subject", path)?,
            text: text?,
            html: html?,
        }))
    }

    fn branch(&mut self, s: &Map<String, Json>, path: &str, depth: usize) -> Option<Action> {
        if depth + 1 > MAX_BRANCH_DEPTH {
            return self.problem(path, format!("branches may nest at most {MAX_BRANCH_DEPTH} deep"));
        }
        let when = match s.get("if") {
            Some(c) => self.condition(c, &format!("{path}.if")),
            None => self.problem(&format!("{path}.if"), "is required: the condition that chooses `then`"),
        };
        let then = match s.get("then") {
            Some(t) => self.steps(t, &format!("{path}.then"), depth + 1),
            None => Some(Vec::new()),
        };
        let otherwise = match s.get("else") {
            Some(e) => self.steps(e, &format!("{path}.else"), depth + 1),
            None => Some(Vec::new()),
        };
        Some(Action::Branch {
            when: when?,
            then: then?,
            otherwise: otherwise?,
        })
    }

    fn update_field(&mut self, s: &Map<String, Json>, path: &str) -> Option<Action> {
        let table = match s.get("table") {
            Some(_) => Some(self.relation(s, "table", path)?),
            None => None,
        };
        let key = self.optional_text(s, "key", path)?;
        let set_path = format!("{path}.set");
        let set = match s.get("set").and_then(Json::as_object) {
            Some(set) if !set.is_empty() => set,
            _ => return self.problem(&set_path, "is an object of column → template, with at least one column"),
        };
        let mut columns = BTreeMap::new();
        for (column, template) in set {
            let p = format!("{set_path}.{column}");
            match template.as_str() {
                Some(source) => {
                    if let Some(t) = self.compiles(source, &p) {
                        columns.insert(column.clone(), t);
                    }
                }
                None => self.problems.push(Problem::new(p, "is a template (text)")),
            }
        }
        Some(Action::UpdateField {
            table,
            key,
            set: columns,
        })
    }

    /// `add_tag`, `remove_tag`, `add_to_segment` or `remove_from_segment`.
    fn label(&mut self, s: &Map<String, Json>, kind: &str, path: &str) -> Option<Action> {
        let (label, key) = if kind.ends_with("tag") {
            (LabelKind::Tag, "tag")
        } else {
            (LabelKind::Segment, "segment")
        };
        let target = match s.contains_key("table") || s.contains_key("key") {
            true => {
                let table = self.relation(s, "table", path);
                let key = self.template(s, "key", path);
                Some(LabelTarget {
                    table: table?,
                    key: key?,
                })
            }
            false => None,
        };
        Some(Action::Label {
            kind: label,
            add: kind.starts_with("add"),
            name: self.text(s, key, path)?,
            target,
        })
    }

    fn webhook(&mut self, s: &Map<String, Json>, path: &str) -> Option<Action> {
        let url = self.text(s, "url", path)?;
        if !url.starts_with("https://") {
            self.problems
                .push(Problem::new(format!("{path}.url"), "a webhook is sent over https://"));
        }
        let url = self.compiles(&url, &format!("{path}.url"))?;
        let timeout_secs = match s.get("timeout") {
            None => 10,
            Some(t) => self.seconds(t, &format!("{path}.timeout"), MAX_WEBHOOK_TIMEOUT_SECS)?,
        };
        Some(Action::Webhook {
            url,
            body: self.template(s, "body", path)?,
            secret: self.text(s, "secret", path)?,
            timeout_secs,
        })
    }

    fn create_task(&mut self, s: &Map<String, Json>, path: &str) -> Option<Action> {
        let due = match s.get("due") {
            None => None,
            Some(d) => match d.as_str().map(parse_span) {
                Some(Ok(span)) if !span.is_negative() => Some(span.fieldwise()),
                Some(Err(e)) => return self.problem(&format!("{path}.due"), e),
                _ => {
                    return self.problem(
                        &format!("{path}.due"),
                        "is a span after the step runs, such as \"2 days\"",
                    )
                }
            },
        };
        Some(Action::CreateTask {
            title: self.template(s, "title", path)?,
            assignee: self.optional_template(s, "assignee", path)?,
            due,
            notes: self.optional_template(s, "notes", path)?,
        })
    }

    /// A region code: `"US"`, `"DE"`.
    fn region(&mut self, value: &Json, path: &str) -> Option<Region> {
        match value {
            Json::String(code) => match Region::of_code(code) {
                Some(r) => Some(r),
                None => self.problem(
                    path,
                    format!("`{code}` is not a region: an ISO 3166 code in capitals, such as \"US\" or \"DE\""),
                ),
            },
            _ if path == "region" => self.problem(path, "is a region code such as \"US\" or \"DE\""),
            _ => self.problem(path, REGION_OF),
        }
    }

    fn step_id(&mut self, s: &Map<String, Json>, path: &str) -> Option<String> {
        let id = self.text(s, "id", path)?;
        let p = format!("{path}.id");
        if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return self.problem(&p, format!("`{id}`: a step id is 1 to 64 letters, digits, - and _"));
        }
        if !self.ids.insert(id.clone()) {
            return self.problem(&p, format!("`{id}` is the id of an earlier step; step ids are unique"));
        }
        Some(id)
    }

    fn on_error(&mut self, value: Option<&Json>, path: &str) -> Option<OnError> {
        match value {
            None => Some(OnError::Stop),
            Some(Json::String(s)) if s == "stop" => Some(OnError::Stop),
            Some(Json::String(s)) if s == "continue" => Some(OnError::Continue),
            Some(Json::Object(o)) if o.contains_key("retry") => {
                let p = format!("{path}.retry");
                let Some(retry) = o["retry"].as_object() else {
                    return self.problem(&p, "is {times, backoff}");
                };
                self.only_keys(retry, &shape().retry, &p);
                let times = match retry.get("times").and_then(Json::as_u64) {
                    Some(n) if (1..=u64::from(MAX_RETRIES)).contains(&n) => n as u32,
                    _ => return self.problem(&format!("{p}.times"), format!("is a count from 1 to {MAX_RETRIES}")),
                };
                let backoff = match retry.get("backoff") {
                    None => Span::new().minutes(1),
                    Some(b) => match b.as_str().map(parse_span) {
                        Some(Ok(span)) if span.is_positive() => span,
                        Some(Err(e)) => return self.problem(&format!("{p}.backoff"), e),
                        _ => return self.problem(&format!("{p}.backoff"), "is a positive span such as \"5 minutes\""),
                    },
                };
                Some(OnError::Retry {
                    times,
                    backoff: backoff.fieldwise(),
                })
            }
            Some(_) => self.problem(
                path,
                "is \"stop\", \"continue\" or {\"retry\": {\"times\": 3, \"backoff\": \"1 minute\"}}",
            ),
        }
    }

    fn seconds(&mut self, value: &Json, path: &str, max: i64) -> Option<i64> {
        let span = match value.as_str().map(parse_span) {
            Some(Ok(span)) => span,
            Some(Err(e)) => return self.problem(path, e),
            None => return self.problem(path, "is a span such as \"10 seconds\""),
        };
        match span.total(jiff::Unit::Second) {
            Ok(secs) if secs >= 1.0 && secs <= max as f64 => Some(secs as i64),
            _ => self.problem(path, format!("is from 1 to {max} seconds")),
        }
    }
}

fn uses_admins(steps: &[Step]) -> bool {
    steps.iter().any(|s| match &s.action {
        Action::NotifyAdmin { .. } => true,
        Action::Branch { then, otherwise, .. } => uses_admins(then) || uses_admins(otherwise),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Field;
    use serde_json::json;

    fn booking_flow() -> Json {
        json!({
            "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
            "timezone": "Europe/London",
            "region": "GB",
            "admins": {"emails": ["owner@example.com"]},
            "exit": [{"if": {"field": "status", "op": "=", "value": "cancelled"}, "reason": "booking cancelled"}],
            "steps": [
                {"id": "confirm", "type": "send_email", "to": "{{ email }}", "subject": "Booked", "text": "See you, {{ name }}"},
                {"id": "night-before", "type": "wait", "until": {"field": "starts_at", "offset": "-1 day", "at": "18:00"}},
                {"id": "vip", "type": "branch", "if": {"field": "vip", "op": "=", "value": true},
                 "then": [{"id": "tell-owner", "type": "notify_admin", "subject": "VIP", "text": "{{ name }} comes tomorrow"}],
                 "else": [{"id": "tag", "type": "add_tag", "tag": "regular"}]},
                {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "Tomorrow!", "on_error": "continue",
                 "region": {"field": "country"}},
                {"id": "review", "type": "webhook", "url": "https://hooks.example.com/review", "body": "{\"id\": {{ id }}}",
                 "secret": "herald/webhooks/review", "timeout": "5 seconds",
                 "on_error": {"retry": {"times": 3, "backoff": "30 seconds"}}},
                {"id": "mark", "type": "update_field", "set": {"reminded": "true"}},
                {"id": "follow-up", "type": "create_task", "title": "Call {{ name }}", "due": "2 days"}
            ]
        })
    }

    #[test]
    fn a_step_says_what_follows_an_unknown_outcome_and_webhooks_are_resent_by_default() {
        let doc = parse(&json!({
            "trigger": {"type": "manual"},
            "steps": [
                {"id": "a", "type": "send_email", "to": "x", "subject": "s", "text": "t"},
                {"id": "b", "type": "send_email", "to": "x", "subject": "s", "text": "t", "on_unknown": "resend"},
                {"id": "c", "type": "send_sms", "to": "x", "body": "b"},
                {"id": "d", "type": "webhook", "url": "https://h.example.com", "body": "{}", "secret": "s"},
                {"id": "e", "type": "webhook", "url": "https://h.example.com", "body": "{}", "secret": "s",
                 "on_unknown": "hold"},
                {"id": "f", "type": "add_tag", "tag": "t"}
            ]
        }))
        .unwrap();
        let got: Vec<OnUnknown> = doc.steps.iter().map(|s| s.on_unknown).collect();
        use OnUnknown::{Hold, Resend};
        assert_eq!(got, [Hold, Resend, Hold, Resend, Hold, Hold]);
    }

    #[test]
    fn a_whole_flow_is_read_into_steps() {
        let doc = parse(&booking_flow()).unwrap();
        assert_eq!(
            doc.trigger,
            Trigger::StatusChange {
                table: Relation {
                    schema: "public".into(),
                    table: "bookings".into()
                },
                column: None,
                to: vec!["confirmed".into()],
                from: vec![],
            }
        );
        let types: Vec<&str> = doc.steps.iter().map(|s| s.action.type_name()).collect();
        assert_eq!(
            types,
            [
                "send_email",
                "wait",
                "branch",
                "send_sms",
                "webhook",
                "update_field",
                "create_task"
            ]
        );
        assert_eq!(doc.steps[3].on_error, OnError::Continue);
        assert_eq!(doc.region, Region::of_code("GB"));
        assert!(matches!(&doc.steps[3].action,
            Action::SendSms { region: Some(RegionOf::Field(f)), .. } if f.to_string() == "country"));
        assert_eq!(
            doc.steps[4].on_error,
            OnError::Retry {
                times: 3,
                backoff: Span::new().seconds(30).fieldwise()
            }
        );
        assert!(matches!(doc.steps[4].action, Action::Webhook { timeout_secs: 5, .. }));
        let Action::Branch { then, otherwise, .. } = &doc.steps[2].action else {
            panic!("not a branch")
        };
        assert_eq!(then[0].id, "tell-owner");
        assert_eq!(otherwise[0].action.type_name(), "add_tag");
        assert_eq!(doc.exit[0].reason, "booking cancelled");
    }

    fn problems_of(doc: Json) -> Vec<(String, String)> {
        parse(&doc)
            .map(|_| Vec::new())
            .unwrap_or_else(|ps| ps.into_iter().map(|p| (p.path, p.message)).collect())
    }

    #[test]
    fn a_date_trigger_is_read_with_its_offset_time_zone_and_lateness() {
        let doc = |trigger: Json| json!({"trigger": trigger, "steps": [{"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"}]});
        let read = parse(&doc(
            json!({"type": "date", "table": "members", "column": "renews_at", "offset": "-7 days",
                                     "at": "09:00", "timezone": {"field": "tz"}, "lateness": "2 hours"}),
        ))
        .unwrap();
        assert_eq!(
            read.trigger,
            Trigger::Date {
                table: Relation {
                    schema: "public".into(),
                    table: "members".into()
                },
                column: "renews_at".into(),
                offset: Some((-7).days().fieldwise()),
                at: Some(Time::constant(9, 0, 0, 0)),
                zone: Some(ZoneOf::Field(Field::parse(&json!("tz")).unwrap())),
                lateness: 2.hours().fieldwise(),
            }
        );
        // Only the table and column are needed: no offset, the date's own time, an hour late at most.
        let read = parse(&doc(json!({"type": "date", "table": "members", "column": "joined_on"}))).unwrap();
        assert!(
            matches!(read.trigger, Trigger::Date { offset: None, at: None, zone: None, ref lateness, .. }
                         if *lateness == 1.hour().fieldwise())
        );
        // (trigger, path, message)
        let cases = [
            (
                json!({"type": "date", "table": "members"}),
                "trigger.column",
                "is required",
            ),
            (
                json!({"type": "date", "table": "members", "column": "renews_at", "offset": "a week"}),
                "trigger.offset",
                "is not a duration",
            ),
            (
                json!({"type": "date", "table": "members", "column": "renews_at", "at": "9am"}),
                "trigger.at",
                "local time of day",
            ),
            (
                json!({"type": "date", "table": "members", "column": "renews_at", "timezone": "Mars/Base"}),
                "trigger.timezone",
                "not a time zone name",
            ),
            (
                json!({"type": "date", "table": "members", "column": "renews_at", "lateness": "-1 hour"}),
                "trigger.lateness",
                "cannot be negative",
            ),
            (
                json!({"type": "date", "table": "members", "column": "renews_at", "every": "day"}),
                "trigger.every",
                "unknown key",
            ),
        ];
        for (trigger, path, message) in cases {
            let problems = problems_of(doc(trigger.clone()));
            assert!(
                problems.iter().any(|(p, m)| p == path && m.contains(message)),
                "{trigger}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_schedule_is_read_with_its_zone_lateness_and_audience() {
        let doc = |trigger: Json| json!({"trigger": trigger, "steps": [{"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"}]});
        let read = parse(&doc(json!({"type": "schedule", "cron": "0 9 * * MON", "timezone": "Europe/London",
                                     "lateness": "10 minutes", "audience": {"relation": "paying_members", "key": "id"}})))
        .unwrap();
        assert_eq!(
            read.trigger,
            Trigger::Schedule {
                cron: "0 9 * * MON".into(),
                zone: Some(zone("Europe/London").unwrap()),
                lateness: 10.minutes().fieldwise(),
                audience: Some(Audience {
                    relation: Relation {
                        schema: "public".into(),
                        table: "paying_members".into()
                    },
                    key: Some("id".into()),
                }),
            }
        );
        // (trigger, path, message)
        let cases = [
            (json!({"type": "schedule"}), "trigger.cron", "is required"),
            (json!({"type": "schedule", "cron": "61 * * * *"}), "trigger.cron", "61"),
            (
                json!({"type": "schedule", "cron": "* * *"}),
                "trigger.cron",
                "has 3 fields",
            ),
            (
                json!({"type": "schedule", "cron": "0 9 * * MON", "timezone": "Mars/Base"}),
                "trigger.timezone",
                "not a time zone name",
            ),
            (
                json!({"type": "schedule", "cron": "0 9 * * MON", "lateness": "-5 minutes"}),
                "trigger.lateness",
                "cannot be negative",
            ),
            (
                json!({"type": "schedule", "cron": "0 9 * * MON", "audience": {"key": "id"}}),
                "trigger.audience.relation",
                "is required",
            ),
            (
                json!({"type": "schedule", "cron": "0 9 * * MON", "audience": {"relation": "m", "where": 1}}),
                "trigger.audience.where",
                "unknown key",
            ),
        ];
        for (trigger, path, message) in cases {
            let problems = problems_of(doc(trigger.clone()));
            assert!(
                problems.iter().any(|(p, m)| p == path && m.contains(message)),
                "{trigger}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_mistake_is_refused_with_its_path() {
        let with = |pointer: &str, value: Json| {
            let mut doc = booking_flow();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            match doc.pointer_mut(parent).unwrap() {
                Json::Object(o) => drop(o.insert(key.to_owned(), value)),
                other => *other.get_mut(key.parse::<usize>().unwrap()).unwrap() = value,
            }
            doc
        };
        let cases: Vec<(Json, &str, &str)> = vec![
            (
                with("/steps/1/id", json!("confirm")),
                "steps[1].id",
                "`confirm` is the id of an earlier step",
            ),
            (
                with("/steps/2/then/0/id", json!("remind")),
                "steps[3].id",
                "`remind` is the id of an earlier step",
            ),
            (with("/steps/0/id", json!("a b")), "steps[0].id", "letters, digits"),
            (
                with("/steps/0/type", json!("send_fax")),
                "steps[0].type",
                "unknown step type `send_fax`",
            ),
            (
                with("/steps/0/subject", json!("{{ name")),
                "steps[0].subject",
                "does not compile",
            ),
            (with("/steps/0/to", json!(5)), "steps[0].to", "is text"),
            (
                with("/steps/0/text", json!("Total {{ total | money(\"EURO\") }}")),
                "steps[0].text",
                "`| money`: `EURO` is not a currency code such as \"EUR\" (three capital letters)",
            ),
            (
                with(
                    "/steps/3/body",
                    json!("{{ starts_at | datetime(\"%a %K\", tz=\"Europe/London\") }}"),
                ),
                "steps[3].body",
                "`| datetime`: `%a %K` is not a strftime format",
            ),
            (
                with(
                    "/steps/2/then/0/text",
                    json!("{{ starts_at | relative(tz=\"Mars/Base\") }}"),
                ),
                "steps[2].then[0].text",
                "`| relative`: `Mars/Base` is not a time zone name",
            ),
            (
                with("/steps/1/until/offset", json!("a day")),
                "steps[1].until.offset",
                "not a duration",
            ),
            (
                with("/steps/2/if/op", json!("~")),
                "steps[2].if.op",
                "unknown operator `~`",
            ),
            (
                with("/steps/2/then/0/type", json!("nope")),
                "steps[2].then[0].type",
                "unknown step type",
            ),
            (
                with("/steps/3/on_error", json!("ignore")),
                "steps[3].on_error",
                "\"stop\", \"continue\"",
            ),
            (
                with("/steps/4/on_error/retry/times", json!(50)),
                "steps[4].on_error.retry.times",
                "from 1 to 10",
            ),
            (
                with("/steps/4/url", json!("http://hooks.example.com")),
                "steps[4].url",
                "https://",
            ),
            (
                with("/steps/4/timeout", json!("2 minutes")),
                "steps[4].timeout",
                "from 1 to 15 seconds",
            ),
            (with("/steps/5/set", json!({})), "steps[5].set", "at least one column"),
            (
                with("/steps/5/set", json!({"reminded": true})),
                "steps[5].set.reminded",
                "is a template",
            ),
            (
                with("/steps/6/due", json!("-1 day")),
                "steps[6].due",
                "span after the step runs",
            ),
            (
                with("/trigger/type", json!("cron")),
                "trigger.type",
                "unknown trigger type `cron`",
            ),
            (
                with("/trigger/table", json!(".bookings")),
                "trigger.table",
                "not schema.table",
            ),
            (with("/timezone", json!("Mars/Base")), "timezone", "not a time zone"),
            (with("/region", json!("gb")), "region", "`gb` is not a region"),
            (with("/region", json!("UK")), "region", "`UK` is not a region"),
            (with("/region", json!(44)), "region", "is a region code"),
            (
                with("/steps/3/region", json!("XX")),
                "steps[3].region",
                "`XX` is not a region",
            ),
            (
                with("/steps/3/region", json!({"column": "country"})),
                "steps[3].region",
                "a region is a code",
            ),
            (
                with("/steps/3/region", json!({"field": ""})),
                "steps[3].region.field",
                "empty part",
            ),
            (
                with("/exit/0/if", json!({"field": "status"})),
                "exit[0].if.op",
                "has an operator",
            ),
            (with("/admins", json!({})), "admins", "notify_admin steps need"),
            (with("/steps/0/colour", json!("red")), "steps[0].colour", "unknown key"),
            (with("/steps", json!("all of them")), "steps", "a list of steps"),
        ];
        for (doc, path, part) in cases {
            let problems = problems_of(doc);
            assert!(
                problems.iter().any(|(p, m)| p == path && m.contains(part)),
                "want {path}: …{part}…, got {problems:?}"
            );
            assert_eq!(problems.len(), 1, "one mistake, one problem: {problems:?}");
        }
    }

    #[test]
    fn several_mistakes_are_all_reported() {
        let problems = problems_of(json!({
            "trigger": {"type": "insert"},
            "steps": [
                {"id": "x", "type": "send_sms", "to": "{{ phone }}"},
                {"id": "x", "type": "wait", "for": "forever"}
            ],
            "colour": "red"
        }));
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "colour",
                "trigger.table",
                "steps[0].body",
                "steps[1].id",
                "steps[1].for"
            ]
        );
    }

    #[test]
    fn size_is_bounded() {
        let many: Vec<Json> = (0..=MAX_STEPS)
            .map(|i| json!({"id": format!("s{i}"), "type": "wait", "for": "1 hour"}))
            .collect();
        let problems = problems_of(json!({"trigger": {"type": "manual"}, "steps": many}));
        assert_eq!(
            problems,
            vec![(
                format!("steps[{MAX_STEPS}]"),
                "a definition may have at most 200 steps".into()
            )]
        );

        let mut nested = json!([{"id": "leaf", "type": "wait", "for": "1 hour"}]);
        for i in 0..=MAX_BRANCH_DEPTH {
            nested = json!([{"id": format!("b{i}"), "type": "branch", "if": {"field": "a", "op": "is null"}, "then": nested}]);
        }
        let problems = problems_of(json!({"trigger": {"type": "manual"}, "steps": nested}));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("nest at most 8"), "{problems:?}");
    }
}
