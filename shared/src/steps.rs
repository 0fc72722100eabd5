//! A step with an effect, made ready: its templates rendered against the instance's
//! variables and checked, so that what reaches a provider, a receiver or a table is exactly
//! what the ledger records. A template that cannot render fails the step, permanently.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value as Json;

use crate::model::{Email, Failure, Sms};
use crate::recipient::{check_email, check_phone};
use crate::render::{render_email, render_sms, render_text, Moment, SMS_MAX_CHARS};
use crate::workflow::definition::{Action, Admins, LabelKind, Relation, Step};
use crate::workflow::time::shift;

/// What a step does to the world, ready to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Email(Email),
    Sms(Sms),
    Webhook {
        url: String,
        /// Valid JSON.
        body: String,
        /// The Secrets Manager secret that holds the signing secret.
        secret: String,
        timeout: Duration,
    },
    UpdateField {
        table: Option<Relation>,
        key: Option<String>,
        /// Column → its new value as text; Postgres reads it as the column's type.
        set: BTreeMap<String, String>,
    },
    Label {
        kind: LabelKind,
        add: bool,
        name: String,
        /// Another row than the subject's: its table and its rendered key.
        target: Option<(Relation, String)>,
    },
    Task {
        title: String,
        assignee: Option<String>,
        due: Option<Timestamp>,
        notes: Option<String>,
    },
    NotifyAdmin {
        emails: Vec<Email>,
        sms: Vec<Sms>,
    },
}

impl Effect {
    /// Performed by the ledger itself, in the transaction that records it (changes to this
    /// database: fields, labels, tasks), rather than by a provider.
    pub(crate) fn is_local(&self) -> bool {
        matches!(
            self,
            Effect::UpdateField { .. } | Effect::Label { .. } | Effect::Task { .. }
        )
    }

    /// The longest it may take: a webhook's timeout; providers' calls and the ledger's own
    /// changes are short.
    pub(crate) fn budget(&self) -> Duration {
        match self {
            Effect::Webhook { timeout, .. } => *timeout,
            _ => Duration::ZERO,
        }
    }
}

/// Makes `step` ready against `vars`; `None` for steps without an effect (waits, branches).
/// `now` and `tz` place a task's due time, and are the time and zone the templates' date
/// filters read (`| relative` counts from `now`).
pub(crate) fn prepare(
    step: &Step,
    vars: &Json,
    admins: &Admins,
    default_from: &str,
    now: Timestamp,
    tz: &TimeZone,
) -> Option<Result<Effect, Failure>> {
    // The run's row names the step; the instance's error says "step `id` failed: …".
    let fail = Failure::permanent;
    let moment = Moment {
        at: now,
        zone: tz.clone(),
    };
    let moment = &moment;
    let text =
        |name, source: &str, line| render_text(name, source, vars, line, moment).map_err(|e| fail(e.to_string()));
    let optional = |name, source: &Option<String>, line| source.as_deref().map(|s| text(name, s, line)).transpose();
    let effect = || -> Result<Option<Effect>, Failure> {
        Ok(Some(match &step.action {
            // Decided by the step machine, without an effect.
            Action::Wait(_) | Action::Branch { .. } => return Ok(None),
            Action::SendEmail(t) => {
                let email = render_email(t, vars, default_from, moment).map_err(|e| fail(e.to_string()))?;
                check_email(&email.to).map_err(fail)?;
                check_email(&email.from).map_err(|e| fail(format!("sender: {e}")))?;
                Effect::Email(email)
            }
            Action::SendSms(t) => {
                let sms = render_sms(t, vars, moment).map_err(|e| fail(e.to_string()))?;
                check_phone(&sms.to).map_err(fail)?;
                Effect::Sms(sms)
            }
            Action::Webhook {
                url,
                body,
                secret,
                timeout_secs,
            } => {
                let body = text("webhook_body", body, false)?;
                if let Err(e) = serde_json::from_str::<Json>(&body) {
                    return Err(fail(format!("the webhook body is not JSON once rendered: {e}")));
                }
                Effect::Webhook {
                    url: text("webhook_url", url, true)?,
                    body,
                    secret: secret.clone(),
                    timeout: Duration::from_secs(*timeout_secs as u64),
                }
            }
            Action::UpdateField { table, key, set } => Effect::UpdateField {
                table: table.clone(),
                key: key.clone(),
                set: set
                    .iter()
                    .map(|(column, source)| {
                        // A value may render empty (clearing a text column) but not fail.
                        let value = render_text("update_field", source, vars, false, moment)
                            .or_else(|e| match e {
                                crate::render::RenderError::Empty { .. } => Ok(String::new()),
                                other => Err(other),
                            })
                            .map_err(|e| fail(format!("set.{column}: {e}")))?;
                        Ok((column.clone(), value))
                    })
                    .collect::<Result<_, Failure>>()?,
            },
            Action::Label {
                kind,
                add,
                name,
                target,
            } => Effect::Label {
                kind: *kind,
                add: *add,
                name: name.clone(),
                target: match target {
                    Some(t) => Some((t.table.clone(), text("label_key", &t.key, true)?)),
                    None => None,
                },
            },
            Action::CreateTask {
                title,
                assignee,
                due,
                notes,
            } => Effect::Task {
                title: text("task_title", title, true)?,
                assignee: optional("task_assignee", assignee, true)?,
                due: due
                    .map(|span| shift(&now.to_zoned(tz.clone()), span.0).map(|z| z.timestamp()))
                    .transpose()
                    .map_err(fail)?,
                notes: optional("task_notes", notes, false)?,
            },
            Action::NotifyAdmin { subject, text: body } => {
                let subject = text("admin_subject", subject, true)?;
                let body = text("admin_text", body, false)?;
                let emails = admins
                    .emails
                    .iter()
                    .map(|to| {
                        check_email(to).map_err(|e| fail(format!("admin: {e}")))?;
                        Ok(Email {
                            from: default_from.to_owned(),
                            to: to.clone(),
                            subject: subject.clone(),
                            text: Some(body.clone()),
                            html: None,
                        })
                    })
                    .collect::<Result<_, Failure>>()?;
                let sms = admins
                    .phones
                    .iter()
                    .map(|to| {
                        check_phone(to).map_err(|e| fail(format!("admin: {e}")))?;
                        let body: String = format!("{subject}: {body}").chars().take(SMS_MAX_CHARS).collect();
                        Ok(Sms { to: to.clone(), body })
                    })
                    .collect::<Result<_, Failure>>()?;
                Effect::NotifyAdmin { emails, sms }
            }
        }))
    };
    effect().transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorKind;
    use crate::workflow::definition::parse;
    use serde_json::json;

    fn steps(list: Json) -> (Vec<Step>, Admins) {
        let doc = parse(&json!({"trigger": {"type": "manual"}, "admins": {"emails": ["owner@example.com"], "phones": ["+15550199"]}, "steps": list})).unwrap();
        (doc.steps, doc.admins)
    }

    fn vars() -> Json {
        json!({"id": 7, "name": "Zoë", "email": "zoe@example.com", "phone": "+15550100", "note": null,
               "starts_at": "2026-11-24T18:00:00+00:00", "fee": 42.5,
               "steps": {"hook": {"ticket": 42}}})
    }

    fn ready(step: Json) -> Option<Result<Effect, Failure>> {
        let (s, admins) = steps(json!([step]));
        prepare(
            &s[0],
            &vars(),
            &admins,
            "club@example.com",
            "2026-11-23T12:00:00Z".parse().unwrap(),
            &TimeZone::UTC,
        )
    }

    #[test]
    fn steps_are_made_ready_from_their_templates() {
        let cases: Vec<(Json, Effect)> = vec![
            (
                json!({"id": "e", "type": "send_email", "to": "{{ email }}", "subject": "Hi {{ name }}", "text": "Ticket {{ steps.hook.ticket }}"}),
                Effect::Email(Email {
                    from: "club@example.com".into(),
                    to: "zoe@example.com".into(),
                    subject: "Hi Zoë".into(),
                    text: Some("Ticket 42".into()),
                    html: None,
                }),
            ),
            (
                json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "See you, {{ name }}"}),
                Effect::Sms(Sms {
                    to: "+15550100".into(),
                    body: "See you, Zoë".into(),
                }),
            ),
            (
                // The filters read the send's time and zone.
                json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ starts_at | relative }}: {{ fee | money('GBP') }}"}),
                Effect::Sms(Sms {
                    to: "+15550100".into(),
                    body: "tomorrow at 18:00: £42.50".into(),
                }),
            ),
            (
                json!({"id": "t", "type": "create_task", "title": "Call {{ name }} {{ starts_at | date }}"}),
                Effect::Task {
                    title: "Call Zoë Tue 24 Nov 2026".into(),
                    assignee: None,
                    due: None,
                    notes: None,
                },
            ),
            (
                json!({"id": "w", "type": "webhook", "url": "https://hooks.example.com/b/{{ id }}", "body": "{\"id\": {{ id }}, \"name\": {{ name | tojson }}}", "secret": "herald/hook"}),
                Effect::Webhook {
                    url: "https://hooks.example.com/b/7".into(),
                    body: "{\"id\": 7, \"name\": \"Zoë\"}".into(),
                    secret: "herald/hook".into(),
                    timeout: Duration::from_secs(10),
                },
            ),
            (
                json!({"id": "u", "type": "update_field", "set": {"reminded": "true", "ticket": "{{ steps.hook.ticket }}"}}),
                Effect::UpdateField {
                    table: None,
                    key: None,
                    set: [
                        ("reminded".to_owned(), "true".to_owned()),
                        ("ticket".to_owned(), "42".to_owned()),
                    ]
                    .into(),
                },
            ),
            (
                json!({"id": "t", "type": "create_task", "title": "Call {{ name }}", "due": "2 days"}),
                Effect::Task {
                    title: "Call Zoë".into(),
                    assignee: None,
                    due: Some("2026-11-25T12:00:00Z".parse().unwrap()),
                    notes: None,
                },
            ),
            (
                json!({"id": "n", "type": "notify_admin", "subject": "VIP", "text": "{{ name }} comes"}),
                Effect::NotifyAdmin {
                    emails: vec![Email {
                        from: "club@example.com".into(),
                        to: "owner@example.com".into(),
                        subject: "VIP".into(),
                        text: Some("Zoë comes".into()),
                        html: None,
                    }],
                    sms: vec![Sms {
                        to: "+15550199".into(),
                        body: "VIP: Zoë comes".into(),
                    }],
                },
            ),
            (
                json!({"id": "g", "type": "add_to_segment", "segment": "regulars"}),
                Effect::Label {
                    kind: LabelKind::Segment,
                    add: true,
                    name: "regulars".into(),
                    target: None,
                },
            ),
            (
                json!({"id": "p", "type": "remove_tag", "tag": "lapsed", "table": "club.members", "key": "{{ steps.hook.ticket }}"}),
                Effect::Label {
                    kind: LabelKind::Tag,
                    add: false,
                    name: "lapsed".into(),
                    target: Some((
                        Relation {
                            schema: "club".into(),
                            table: "members".into(),
                        },
                        "42".into(),
                    )),
                },
            ),
        ];
        for (step, want) in cases {
            assert_eq!(ready(step.clone()), Some(Ok(want)), "{step}");
        }
        assert_eq!(ready(json!({"id": "x", "type": "wait", "for": "1 hour"})), None);
    }

    #[test]
    fn steps_that_cannot_be_made_ready_fail_permanently_with_the_reason() {
        let cases: Vec<(Json, &str)> = vec![
            (
                json!({"id": "e", "type": "send_email", "to": "{{ nope }}", "subject": "x", "text": "x"}),
                "missing template variable `nope` in email_to",
            ),
            (
                json!({"id": "e", "type": "send_email", "to": "{{ name }}", "subject": "x", "text": "x"}),
                "invalid email address",
            ),
            (
                json!({"id": "s", "type": "send_sms", "to": "{{ note }}", "body": "x"}),
                "`note` in sms_to is null",
            ),
            (
                json!({"id": "w", "type": "webhook", "url": "https://h.example.com", "body": "{\"name\": {{ name }}}", "secret": "s"}),
                "not JSON once rendered",
            ),
            (
                json!({"id": "u", "type": "update_field", "set": {"a": "{{ nope }}"}}),
                "set.a: missing template variable `nope`",
            ),
        ];
        for (step, want) in cases {
            let err = ready(step.clone()).unwrap().unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent);
            assert!(err.message.contains(want), "{step}: {}", err.message);
        }
    }
}
