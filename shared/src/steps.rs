//! A step with an effect, made ready: its templates rendered against the instance's
//! variables and checked, so that what reaches a provider, a receiver or a table is exactly
//! what the ledger records. A template that cannot render fails the step, permanently.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::Value as Json;

use crate::model::{Email, Failure, Sms};
use crate::recipient::{check_email, check_phone, Region};
use crate::render::{render_email, render_sms, render_text, Moment, SMS_MAX_CHARS};
use crate::workflow::definition::{Action, Admins, LabelKind, RegionOf, Relation, Step};
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
/// filters read (`| relative` counts from `now`); `region` is the definition's, the one phone
/// numbers without a country code are read in.
pub(crate) fn prepare(
    step: &Step,
    vars: &Json,
    admins: &Admins,
    default_from: &str,
    now: Timestamp,
    tz: &TimeZone,
    region: Option<Region>,
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
                let mut email = render_email(t, vars, default_from, moment).map_err(|e| fail(e.to_string()))?;
                email.to = check_email(&email.to).map_err(fail)?;
                email.from = check_email(&email.from).map_err(|e| fail(format!("sender: {e}")))?;
                Effect::Email(email)
            }
            Action::SendSms { sms: t, region: own } => {
                let mut sms = render_sms(t, vars, moment).map_err(|e| fail(e.to_string()))?;
                // A number with its country code needs no region, so a field is read only
                // for one without.
                let region = match own {
                    _ if sms.to.trim_start().starts_with('+') => None,
                    None => region,
                    Some(RegionOf::Named(r)) => Some(*r),
                    Some(RegionOf::Field(f)) => region_of(f, vars)?.or(region),
                };
                sms.to = check_phone(&sms.to, region).map_err(fail)?;
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
                        let to = check_email(to).map_err(|e| fail(format!("admin: {e}")))?;
                        Ok(Email {
                            from: default_from.to_owned(),
                            to,
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
                        let to = check_phone(to, region).map_err(|e| fail(format!("admin: {e}")))?;
                        let body: String = format!("{subject}: {body}").chars().take(SMS_MAX_CHARS).collect();
                        Ok(Sms { to, body })
                    })
                    .collect::<Result<_, Failure>>()?;
                Effect::NotifyAdmin { emails, sms }
            }
        }))
    };
    effect().transpose()
}

/// The region a field of the data holds; `None` when it is empty or null.
fn region_of(field: &crate::workflow::Field, vars: &Json) -> Result<Option<Region>, Failure> {
    match field.read(vars) {
        None => Err(Failure::permanent(format!(
            "the data has no field `{field}` to read the number's region from"
        ))),
        Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.trim().is_empty() => Ok(None),
        Some(value) => match value.as_str().and_then(Region::of_data) {
            Some(r) => Ok(Some(r)),
            None => Err(Failure::permanent(format!(
                "`{field}` is {value}, not a region code such as \"US\" or \"DE\""
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorKind;
    use crate::workflow::definition::parse;
    use serde_json::json;

    fn vars() -> Json {
        json!({"id": 7, "name": "Zoë", "email": "zoe@example.com", "phone": "+14155550100", "note": null,
               "starts_at": "2026-11-24T18:00:00+00:00", "fee": 42.5,
               "steps": {"hook": {"ticket": 42}}})
    }

    /// `step` made ready against `vars` in a definition of `region` (none when null) whose admins
    /// are `admins`.
    fn ready_in(step: Json, vars: &Json, region: Json, admins: Json) -> Option<Result<Effect, Failure>> {
        let mut doc = json!({"trigger": {"type": "manual"}, "admins": admins, "steps": [step]});
        if !region.is_null() {
            doc["region"] = region;
        }
        let doc = parse(&doc).unwrap();
        prepare(
            &doc.steps[0],
            vars,
            &doc.admins,
            "club@example.com",
            "2026-11-23T12:00:00Z".parse().unwrap(),
            &TimeZone::UTC,
            doc.region,
        )
    }

    fn ready(step: Json) -> Option<Result<Effect, Failure>> {
        let admins = json!({"emails": ["owner@example.com"], "phones": ["+14155550199"]});
        ready_in(step, &vars(), Json::Null, admins)
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
                    to: "+14155550100".into(),
                    body: "See you, Zoë".into(),
                }),
            ),
            (
                // The filters read the send's time and zone.
                json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ starts_at | relative }}: {{ fee | money('GBP') }}"}),
                Effect::Sms(Sms {
                    to: "+14155550100".into(),
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
                        to: "+14155550199".into(),
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

    /// What an SMS step is sent to, or why it is not.
    fn sms_to(step: Json, data: Json, region: Json) -> Result<String, String> {
        let admins = json!({"emails": ["owner@example.com"]});
        match ready_in(step, &data, region, admins).unwrap() {
            Ok(Effect::Sms(sms)) => Ok(sms.to),
            Ok(other) => panic!("not an SMS: {other:?}"),
            Err(f) => {
                assert_eq!(f.kind, ErrorKind::Permanent, "{}", f.message);
                Err(f.message)
            }
        }
    }

    #[test]
    fn an_sms_is_sent_to_its_number_in_e164_read_in_the_step_or_definition_region() {
        let sms = json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"});
        let with_region = |region: Json| {
            let mut s = sms.clone();
            s["region"] = region;
            s
        };
        let from_country = with_region(json!({"field": "country"}));
        let data = |phone: &str, country: Json| json!({"phone": phone, "country": country});
        let cases: Vec<(Json, Json, Json, Result<&str, &str>)> = vec![
            // The definition's region.
            (
                sms.clone(),
                data("(415) 555-0101", Json::Null),
                json!("US"),
                Ok("+14155550101"),
            ),
            (
                sms.clone(),
                data("0151 23456789", Json::Null),
                json!("DE"),
                Ok("+4915123456789"),
            ),
            // A number with its country code needs none, and is read as it is in any.
            (
                sms.clone(),
                data("+44 7400 123456", Json::Null),
                Json::Null,
                Ok("+447400123456"),
            ),
            (
                sms.clone(),
                data("+44 7400 123456", Json::Null),
                json!("US"),
                Ok("+447400123456"),
            ),
            // The step's own region.
            (
                with_region(json!("GB")),
                data("07400 123456", Json::Null),
                json!("US"),
                Ok("+447400123456"),
            ),
            // A column of the data, else the definition's.
            (
                from_country.clone(),
                data("0151 23456789", json!("DE")),
                json!("US"),
                Ok("+4915123456789"),
            ),
            (
                from_country.clone(),
                data("07400 123456", json!(" gb ")),
                Json::Null,
                Ok("+447400123456"),
            ),
            (
                from_country.clone(),
                data("(415) 555-0101", Json::Null),
                json!("US"),
                Ok("+14155550101"),
            ),
            (
                from_country.clone(),
                data("(415) 555-0101", json!("")),
                json!("US"),
                Ok("+14155550101"),
            ),
            // A number with its country code does not read the column at all.
            (
                from_country.clone(),
                data("+4915123456789", json!("Deutschland")),
                Json::Null,
                Ok("+4915123456789"),
            ),
            // Refusals, permanent.
            (
                sms.clone(),
                data("(415) 555-0101", Json::Null),
                Json::Null,
                Err("no region is known"),
            ),
            (
                from_country.clone(),
                data("(415) 555-0101", Json::Null),
                Json::Null,
                Err("no region is known"),
            ),
            (
                from_country.clone(),
                data("0151 23456789", json!("Deutschland")),
                json!("DE"),
                Err("`country` is \"Deutschland\", not a region code"),
            ),
            (
                from_country.clone(),
                json!({"phone": "0151 23456789"}),
                json!("DE"),
                Err("the data has no field `country`"),
            ),
            (
                sms.clone(),
                data("030 1234567", Json::Null),
                json!("DE"),
                Err("is a fixed line: it cannot receive SMS"),
            ),
            (
                sms.clone(),
                data("020 7946 0018", Json::Null),
                json!("GB"),
                Err("is a fixed line: it cannot receive SMS"),
            ),
            (
                sms.clone(),
                data("(415) 123-4567", Json::Null),
                json!("US"),
                Err("invalid phone number"),
            ),
        ];
        for (step, data, region, want) in cases {
            let got = sms_to(step.clone(), data.clone(), region.clone());
            match (&got, want) {
                (Ok(to), Ok(want)) => assert_eq!(to, want, "{step} {data} {region}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{step} {data} {region}: {e}"),
                _ => panic!("{step} {data} {region}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn admins_numbers_are_read_in_the_definition_region_and_emails_sent_with_ascii_domains() {
        let notify = json!({"id": "n", "type": "notify_admin", "subject": "VIP", "text": "x"});
        let admins = json!({"emails": ["owner@bücher.example"], "phones": ["07400 123456"]});
        let Some(Ok(Effect::NotifyAdmin { emails, sms })) =
            ready_in(notify.clone(), &vars(), json!("GB"), admins.clone())
        else {
            panic!("not made ready")
        };
        assert_eq!(emails[0].to, "owner@xn--bcher-kva.example");
        assert_eq!(sms[0].to, "+447400123456");
        let err = ready_in(notify, &vars(), Json::Null, admins).unwrap().unwrap_err();
        assert!(
            err.message.starts_with("admin: invalid phone number"),
            "{}",
            err.message
        );

        let email = json!({"id": "e", "type": "send_email", "to": "{{ email }}", "from": "Info@Café.example", "subject": "s", "text": "t"});
        let data = json!({"email": "anna@bücher.example"});
        let admins = json!({"emails": ["owner@example.com"]});
        let Some(Ok(Effect::Email(sent))) = ready_in(email.clone(), &data, Json::Null, admins.clone()) else {
            panic!("not made ready")
        };
        assert_eq!(
            (sent.to.as_str(), sent.from.as_str()),
            ("anna@xn--bcher-kva.example", "Info@xn--caf-dma.example")
        );
        let err = ready_in(email, &json!({"email": "zoë@example.com"}), Json::Null, admins)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.contains("other than ASCII"), "{}", err.message);
    }
}
