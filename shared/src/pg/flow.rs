//! The workflow ledger over Postgres: claims and loads with `herald_flow_start`, writes a
//! round with `herald_flow_write` and reads the instances' fresh data in the same round trip.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value as Json;
use tokio_postgres::types::Json as PgJson;

use super::{context_of, PgStore, Sql};
use crate::ledger::{FlowLedger, FlowStarted, FlowWrite, FlowWritten, LoadedFlow, Resumed, Stop, Taken};
use crate::model::{EventInfo, Failure, Lease, LogId, QueueMessage, StoreError};
use crate::steps::Effect;
use crate::workflow::definition::{self, Document, LabelKind};
use crate::workflow::machine::{Instance, Park, Performed};
use crate::workflow::plan::TransientRetry;

/// An automation and one of its versions, as `herald_flow_start` names an instance's.
type VersionKey = (Option<i64>, Option<i32>);

impl FlowLedger for PgStore {
    async fn start(
        &self,
        messages: &[QueueMessage],
        now: SystemTime,
        lease_until: SystemTime,
    ) -> Result<Vec<FlowStarted>, StoreError> {
        let context = "claiming a batch of instances";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::FlowStart, context).await?;
        let ids: Vec<LogId> = messages.iter().map(|m| m.log_id).collect();
        let leases: Vec<i64> = messages.iter().map(|m| m.lease).collect();
        let rows = conn
            .round_trip(context, conn.client.query(stmt, &[&ids, &leases, &now, &lease_until]))
            .await?;
        // A version's definition comes once per batch, on its first instance: read once, shared.
        let mut definitions: HashMap<VersionKey, Result<Arc<Document>, String>> = HashMap::new();
        Ok(messages
            .iter()
            .zip(&rows)
            .map(|(m, r)| {
                // Failed at its claim: no version to run.
                if let Some(why) = r.get::<_, Option<String>>("refused") {
                    return FlowStarted::Failed(why);
                }
                let token: Option<i64> = r.get("lease");
                let status: Option<String> = r.get("status");
                let Some(token) = token else {
                    return match status {
                        None => FlowStarted::Unknown,
                        Some(status) => FlowStarted::NotClaimable { status },
                    };
                };
                let lease = Lease {
                    log_id: m.log_id,
                    token,
                    attempt: r.get("attempt"),
                };
                let version: VersionKey = (r.get("automation_id"), r.get("version"));
                if let Some(doc) = r.get::<_, Option<Json>>("definition") {
                    let parsed = definition::parse(&doc)
                        .map(Arc::new)
                        .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
                    definitions.insert(version, parsed);
                }
                let definition = definitions
                    .get(&version)
                    .cloned()
                    .unwrap_or_else(|| Err("the instance's version has no definition".to_owned()));
                let instance = Instance {
                    next: r.get("next_step"),
                    steps_run: r.get::<_, i32>("steps_run").max(0) as u32,
                    attempt: r.get::<_, i32>("step_attempt").max(0) as u32,
                    outputs: match r.get::<_, Json>("outputs") {
                        Json::Object(o) => o,
                        _ => Default::default(),
                    },
                };
                FlowStarted::Claimed {
                    lease,
                    flow: Box::new(LoadedFlow {
                        definition,
                        instance,
                        data: context_of(r.get("context")),
                        event: serde_json::to_value(EventInfo {
                            log_id: m.log_id,
                            event: r.get::<_, Option<String>>("event").unwrap_or_default(),
                            old_status: r.get("old_status"),
                            new_status: r.get("new_status"),
                            subject_table: r.get::<_, Option<String>>("subject_table").unwrap_or_default(),
                            subject_id: r.get::<_, Option<String>>("subject_id").unwrap_or_default(),
                        })
                        .unwrap_or(Json::Null),
                        payload: r.get("payload"),
                        resumed: match r.get::<_, Option<String>>("run_status").as_deref() {
                            None => Resumed::Fresh,
                            Some("done") => Resumed::Ended(Performed::Done(
                                r.get::<_, Option<Json>>("run_output").unwrap_or(Json::Null),
                            )),
                            Some("failed") => Resumed::Ended(Performed::Failed {
                                error: r.get::<_, Option<String>>("run_error").unwrap_or_default(),
                                transient: r.get::<_, Option<String>>("run_error_kind").as_deref() == Some("transient"),
                            }),
                            Some(_) => Resumed::InDoubt,
                        },
                        retry: TransientRetry {
                            max_attempts: r.get::<_, i32>("max_attempts").max(1) as u32,
                            base: Duration::from_secs_f64(r.get::<_, f64>("retry_base_secs").max(0.0)),
                            cap: Duration::from_secs_f64(r.get::<_, f64>("retry_cap_secs").max(0.0)),
                            jitter: 0.0,
                        },
                        automation_id: version.0,
                        version: version.1,
                    }),
                }
            })
            .collect())
    }

    async fn write(&self, write: &FlowWrite, fresh_for: &[Lease], now: SystemTime) -> Result<FlowWritten, StoreError> {
        let context = "writing a round of instances";
        let conn = self.db.client().await?;
        let write_stmt = conn.statement(Sql::FlowWrite, context).await?;
        let read_stmt = conn.statement(Sql::FlowContexts, context).await?;
        let body = PgJson(write_body(write));
        let ids: Vec<LogId> = fresh_for.iter().map(|l| l.log_id).collect();
        // Both go out together: one round trip. No read when no data is asked for.
        let read = async {
            match ids.is_empty() {
                true => Ok(Vec::new()),
                false => conn.client.query(read_stmt, &[&ids]).await,
            }
        };
        let write = async { conn.client.query_one(write_stmt, &[&body, &now]).await };
        let (written, fresh) = conn.within(context, futures::future::join(write, read)).await?;
        let written: Json = written.map_err(conn.fail(context))?.get(0);
        let fresh = fresh.map_err(conn.fail(context))?;
        let entries = |part: &str| -> Vec<Taken> {
            written[part]
                .as_array()
                .map(|a| a.iter().map(taken).collect())
                .unwrap_or_default()
        };
        let data: HashMap<LogId, _> = fresh
            .iter()
            .map(|r| (r.get::<_, i64>(0), context_of(r.get(1))))
            .collect();
        Ok(FlowWritten {
            ended: entries("ended").into_iter().map(|t| t == Taken::Yes).collect(),
            started: entries("started"),
            parked: entries("parked"),
            data,
        })
    }
}

/// One answer of `herald_flow_write`: true, false, the status a held instance parked in, or
/// how an effect the write performed itself went.
fn taken(answer: &Json) -> Taken {
    match answer {
        Json::Bool(true) => Taken::Yes,
        Json::String(status) => Taken::Held(status.clone()),
        Json::Object(o) if o.contains_key("output") => Taken::Performed(Ok(o["output"].clone())),
        Json::Object(o) => {
            let text = |k: &str| o.get(k).and_then(Json::as_str).unwrap_or_default().to_owned();
            let failure = match text("error_kind").as_str() {
                "transient" => Failure::transient(text("error")),
                _ => Failure::permanent(text("error")),
            };
            Taken::Performed(Err(failure.with_code(text("error_code"))))
        }
        _ => Taken::Lost,
    }
}

/// A round's write as `herald_flow_write` reads it, serialized straight from the round's
/// entries (no intermediate JSON tree: the outputs and data it holds are not copied).
#[derive(Debug, Serialize)]
struct WriteBody<'a> {
    ended: Vec<EndedEntry<'a>>,
    decided: Vec<DecidedEntry<'a>>,
    started: Vec<StartedEntry<'a>>,
    parked: Vec<ParkedEntry<'a>>,
}

/// A step that ended: its output, or its error (`error_code` null when there is none).
#[derive(Debug, Serialize)]
struct EndedEntry<'a> {
    log_id: LogId,
    token: i64,
    step: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<Option<&'a str>>,
}

#[derive(Debug, Serialize)]
struct DecidedEntry<'a> {
    log_id: LogId,
    token: i64,
    step: Option<&'a str>,
    kind: &'a str,
    detail: &'a Json,
}

/// An effect about to start, with the place its instance resumes from.
#[derive(Debug, Serialize)]
struct StartedEntry<'a> {
    log_id: LogId,
    token: i64,
    step: &'a str,
    attempt: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    effect: EffectEntry<'a>,
    local: bool,
    next_step: Option<&'a str>,
    step_attempt: u32,
    steps_run: u32,
    outputs: &'a serde_json::Map<String, Json>,
}

#[derive(Debug, Serialize)]
struct ParkedEntry<'a> {
    log_id: LogId,
    token: i64,
    status: &'static str,
    next_step: Option<&'a str>,
    run_at: Option<String>,
    error: Option<&'a str>,
    /// `permanent` for a failed instance, `transient` for a dead one.
    error_kind: Option<&'static str>,
    exit_reason: Option<&'a str>,
    step_attempt: u32,
    steps_run: u32,
    outputs: &'a serde_json::Map<String, Json>,
}

fn write_body(w: &FlowWrite) -> WriteBody<'_> {
    WriteBody {
        ended: w
            .ended
            .iter()
            .map(|e| {
                let failure = e.result.as_ref().err();
                EndedEntry {
                    log_id: e.lease.log_id,
                    token: e.lease.token,
                    step: &e.step,
                    kind: e.kind,
                    attempt: e.attempt,
                    output: e.result.as_ref().ok(),
                    error: failure.map(|f| f.message.as_str()),
                    error_kind: failure.map(|f| f.kind.as_str()),
                    error_code: failure.map(|f| f.code.as_deref()),
                }
            })
            .collect(),
        decided: w
            .decided
            .iter()
            .map(|(l, d)| DecidedEntry {
                log_id: l.log_id,
                token: l.token,
                step: d.step.as_deref(),
                kind: d.kind,
                detail: &d.detail,
            })
            .collect(),
        started: w
            .started
            .iter()
            .map(|s| StartedEntry {
                log_id: s.lease.log_id,
                token: s.lease.token,
                step: &s.step,
                attempt: s.attempt,
                kind: s.kind,
                effect: effect_entry(&s.effect),
                local: s.effect.is_local(),
                next_step: s.place.next.as_deref(),
                step_attempt: s.place.attempt,
                steps_run: s.place.steps_run,
                outputs: &s.place.outputs,
            })
            .collect(),
        parked: w
            .parked
            .iter()
            .map(|p| parked_entry(&p.lease, &p.instance, &p.stop))
            .collect(),
    }
}

fn parked_entry<'a>(lease: &Lease, i: &'a Instance, stop: &'a Stop) -> ParkedEntry<'a> {
    let next = i.next.as_deref();
    let (status, next_step, run_at, error, exit_reason) = match stop {
        // The write's own time: due at once.
        // Held: only the ledger parks an instance so. Asked as pending, it decides again.
        Stop::Later | Stop::Held(_) => ("pending", next, None, None, None),
        Stop::Park(Park::Completed) => ("completed", None, None, None, None),
        Stop::Unknown(why) => ("unknown", next, None, Some(why.as_str()), None),
        Stop::Park(Park::Failed(why)) => ("failed", next, None, Some(why.as_str()), None),
        Stop::Park(Park::Dead(why)) => ("dead", next, None, Some(why.as_str()), None),
        Stop::Park(Park::Exited(reason)) => ("exited", next, None, None, Some(reason.as_str())),
        Stop::Park(Park::Sleeping { next, until }) => ("waiting", next.as_deref(), Some(until.to_string()), None, None),
        Stop::Park(Park::Retrying { step, at }) => ("waiting", Some(step.as_str()), Some(at.to_string()), None, None),
    };
    ParkedEntry {
        log_id: lease.log_id,
        token: lease.token,
        status,
        next_step,
        run_at,
        error,
        error_kind: match status {
            "failed" => Some("permanent"),
            "dead" => Some("transient"),
            _ => None,
        },
        exit_reason,
        step_attempt: i.attempt,
        steps_run: i.steps_run,
        outputs: &i.outputs,
    }
}

/// What an effect is about to do, for the ledger (the run's `effect`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EffectEntry<'a> {
    Email {
        from: &'a str,
        to: &'a str,
        subject: &'a str,
    },
    Sms {
        to: &'a str,
    },
    Webhook {
        url: &'a str,
    },
    UpdateField {
        table: Option<String>,
        key: Option<&'a str>,
        set: &'a BTreeMap<String, String>,
    },
    Label {
        kind: &'static str,
        add: bool,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    },
    Task {
        title: &'a str,
        assignee: Option<&'a str>,
        due: Option<String>,
        notes: Option<&'a str>,
    },
    NotifyAdmin {
        emails: Vec<&'a str>,
        phones: Vec<&'a str>,
    },
}

fn effect_entry(e: &Effect) -> EffectEntry<'_> {
    match e {
        Effect::Email(m) => EffectEntry::Email {
            from: &m.from,
            to: &m.to,
            subject: &m.subject,
        },
        Effect::Sms(m) => EffectEntry::Sms { to: &m.to },
        Effect::Webhook { url, .. } => EffectEntry::Webhook { url },
        Effect::UpdateField { table, key, set } => EffectEntry::UpdateField {
            table: table.as_ref().map(|t| format!("{}.{}", t.schema, t.table)),
            key: key.as_deref(),
            set,
        },
        Effect::Label {
            kind,
            add,
            name,
            target,
        } => EffectEntry::Label {
            kind: match kind {
                LabelKind::Tag => "tag",
                LabelKind::Segment => "segment",
            },
            add: *add,
            name,
            table: target.as_ref().map(|(t, _)| format!("{}.{}", t.schema, t.table)),
            key: target.as_ref().map(|(_, k)| k.as_str()),
        },
        Effect::Task {
            title,
            assignee,
            due,
            notes,
        } => EffectEntry::Task {
            title,
            assignee: assignee.as_deref(),
            due: due.map(|d| d.to_string()),
            notes: notes.as_deref(),
        },
        Effect::NotifyAdmin { emails, sms } => EffectEntry::NotifyAdmin {
            emails: emails.iter().map(|m| m.to.as_str()).collect(),
            phones: sms.iter().map(|m| m.to.as_str()).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ledger::{Parked, StepEnd, StepStart};
    use crate::model::Email;
    use crate::workflow::machine::Decided;

    /// The keys `herald_flow_write` reads, entry by entry.
    #[test]
    fn a_write_is_serialized_as_the_ledger_reads_it() {
        let lease = Lease {
            log_id: 7,
            token: 3,
            attempt: 1,
        };
        let place = Instance {
            next: Some("text".into()),
            steps_run: 2,
            attempt: 1,
            outputs: json!({"hello": {"message_id": "m-1"}}).as_object().cloned().unwrap(),
        };
        let write = FlowWrite {
            ended: vec![
                StepEnd {
                    lease,
                    step: "hello".into(),
                    kind: "send_email",
                    attempt: 1,
                    result: Ok(json!({"message_id": "m-1"})),
                },
                StepEnd {
                    lease,
                    step: "text".into(),
                    kind: "send_sms",
                    attempt: 2,
                    result: Err(Failure::transient("throttled")),
                },
            ],
            decided: vec![(
                lease,
                Decided {
                    step: None,
                    kind: "exit",
                    detail: json!({"held": false}),
                },
            )],
            started: vec![StepStart {
                lease,
                step: "hello".into(),
                kind: "send_email",
                attempt: 1,
                effect: Effect::Email(Email {
                    from: "club@example.com".into(),
                    to: "ada@example.com".into(),
                    subject: "Hi".into(),
                    text: Some("body text stays out of the ledger".into()),
                    html: None,
                }),
                place: place.clone(),
            }],
            parked: vec![
                Parked {
                    lease,
                    instance: place.clone(),
                    stop: Stop::Park(Park::Sleeping {
                        next: Some("text".into()),
                        until: "2026-12-02T18:00:00Z".parse().unwrap(),
                    }),
                },
                Parked {
                    lease,
                    instance: place,
                    stop: Stop::Park(Park::Completed),
                },
            ],
        };
        let outputs = json!({"hello": {"message_id": "m-1"}});
        assert_eq!(
            serde_json::to_value(write_body(&write)).unwrap(),
            json!({
                "ended": [
                    {"log_id": 7, "token": 3, "step": "hello", "type": "send_email", "attempt": 1,
                     "output": {"message_id": "m-1"}},
                    {"log_id": 7, "token": 3, "step": "text", "type": "send_sms", "attempt": 2,
                     "error": "throttled", "error_kind": "transient", "error_code": null},
                ],
                "decided": [{"log_id": 7, "token": 3, "step": null, "kind": "exit", "detail": {"held": false}}],
                "started": [{"log_id": 7, "token": 3, "step": "hello", "attempt": 1, "type": "send_email",
                             "effect": {"from": "club@example.com", "to": "ada@example.com", "subject": "Hi"},
                             "local": false, "next_step": "text", "step_attempt": 1, "steps_run": 2,
                             "outputs": outputs}],
                "parked": [
                    {"log_id": 7, "token": 3, "status": "waiting", "next_step": "text",
                     "run_at": "2026-12-02T18:00:00Z", "error": null, "error_kind": null, "exit_reason": null,
                     "step_attempt": 1, "steps_run": 2, "outputs": outputs},
                    {"log_id": 7, "token": 3, "status": "completed", "next_step": null, "run_at": null,
                     "error": null, "error_kind": null, "exit_reason": null, "step_attempt": 1, "steps_run": 2,
                     "outputs": outputs},
                ],
            })
        );
    }
}
