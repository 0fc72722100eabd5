//! The workflow ledger over Postgres: claims and loads with `herald_flow_start`, writes a
//! round with `herald_flow_write` and reads the instances' fresh data in the same round trip.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value as Json};

use super::{context_of, PgStore, Sql};
use crate::flow::{FlowLedger, FlowStarted, FlowWrite, FlowWritten, LoadedFlow, Resumed, Stop, Taken};
use crate::model::{EventInfo, Failure, Lease, LogId, QueueMessage, StoreError};
use crate::steps::Effect;
use crate::workflow::definition;
use crate::workflow::machine::{Instance, Park, Performed};
use crate::workflow::plan::TransientRetry;

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
            .client
            .query(stmt, &[&ids, &leases, &now, &lease_until])
            .await
            .map_err(conn.fail(context))?;
        Ok(messages
            .iter()
            .zip(&rows)
            .map(|(m, r)| {
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
                let definition = match r.get::<_, Option<Json>>("definition") {
                    Some(doc) => definition::parse(&doc)
                        .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
                    None => Err("the instance's version has no definition".to_owned()),
                };
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
        let body = write_json(write);
        let ids: Vec<LogId> = fresh_for.iter().map(|l| l.log_id).collect();
        // Both go out together: one round trip. No read when no data is asked for.
        let read = async {
            match ids.is_empty() {
                true => Ok(Vec::new()),
                false => conn.client.query(read_stmt, &[&ids]).await,
            }
        };
        let (written, fresh) = futures::future::join(conn.client.query_one(write_stmt, &[&body, &now]), read).await;
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

/// A round's write as `herald_flow_write` reads it.
fn write_json(w: &FlowWrite) -> Json {
    let lease = |l: &Lease| json!({"log_id": l.log_id, "token": l.token});
    let with = |mut base: Json, more: Json| {
        if let (Json::Object(b), Json::Object(m)) = (&mut base, more) {
            b.extend(m);
        }
        base
    };
    json!({
        "ended": w.ended.iter().map(|e| with(lease(&e.lease), match &e.result {
            Ok(output) => json!({"step": e.step, "type": e.kind, "attempt": e.attempt, "output": output}),
            Err(f) => json!({"step": e.step, "type": e.kind, "attempt": e.attempt, "error": f.message,
                             "error_kind": f.kind.as_str(), "error_code": f.code}),
        })).collect::<Vec<_>>(),
        "decided": w.decided.iter().map(|(l, d)| with(lease(l), json!({
            "step": d.step, "kind": d.kind, "detail": d.detail,
        }))).collect::<Vec<_>>(),
        "started": w.started.iter().map(|s| with(lease(&s.lease), json!({
            "step": s.step, "attempt": s.attempt, "type": s.kind, "effect": effect_json(&s.effect),
            "local": s.effect.is_local(),
            "next_step": s.place.next, "step_attempt": s.place.attempt, "steps_run": s.place.steps_run,
            "outputs": s.place.outputs,
        }))).collect::<Vec<_>>(),
        "parked": w.parked.iter().map(|p| with(lease(&p.lease), parked_json(&p.instance, &p.stop))).collect::<Vec<_>>(),
    })
}

fn parked_json(i: &Instance, stop: &Stop) -> Json {
    let (status, next, run_at, error, exit) = match stop {
        // The write's own time: due at once.
        // Held: only the ledger parks an instance so. Asked as pending, it decides again.
        Stop::Later | Stop::Held(_) => ("pending", i.next.clone(), None, None, None),
        Stop::Park(Park::Completed) => ("completed", None, None, None, None),
        Stop::Unknown(why) => ("unknown", i.next.clone(), None, Some(why.clone()), None),
        Stop::Park(Park::Failed(why)) => ("failed", i.next.clone(), None, Some(why.clone()), None),
        Stop::Park(Park::Exited(reason)) => ("exited", i.next.clone(), None, None, Some(reason.clone())),
        Stop::Park(Park::Sleeping { next, until }) => ("waiting", next.clone(), Some(until.to_string()), None, None),
        Stop::Park(Park::Retrying { step, at }) => ("waiting", Some(step.clone()), Some(at.to_string()), None, None),
    };
    json!({
        "status": status, "next_step": next, "run_at": run_at, "error": error, "exit_reason": exit,
        "step_attempt": i.attempt, "steps_run": i.steps_run, "outputs": i.outputs,
    })
}

/// What an effect is about to do, for the ledger.
fn effect_json(e: &Effect) -> Json {
    match e {
        Effect::Email(m) => json!({"from": m.from, "to": m.to, "subject": m.subject}),
        Effect::Sms(m) => json!({"to": m.to}),
        Effect::Webhook { url, .. } => json!({"url": url}),
        Effect::UpdateField { table, key, set } => json!({
            "table": table.as_ref().map(|t| format!("{}.{}", t.schema, t.table)), "key": key, "set": set,
        }),
        Effect::Label { kind, add, name } => {
            json!({"kind": format!("{kind:?}").to_lowercase(), "add": add, "name": name})
        }
        Effect::Task {
            title,
            assignee,
            due,
            notes,
        } => json!({"title": title, "assignee": assignee, "due": due.map(|d| d.to_string()), "notes": notes}),
        Effect::NotifyAdmin { emails, sms } => json!({
            "emails": emails.iter().map(|m| &m.to).collect::<Vec<_>>(),
            "phones": sms.iter().map(|m| &m.to).collect::<Vec<_>>(),
        }),
    }
}
