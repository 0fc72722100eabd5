//! The executor's core: one queue batch in, one attempt per log out, with the ledger written
//! in a few round trips for the whole batch: claim and load; record each channel's sends
//! before calling the provider (together with the previous channel's answers); record the
//! last answers with the attempts' results. A write-back that fails (the database went
//! away) is retried on a fresh connection while the lease and the invocation allow, and then
//! goes to the receipts queue, so that no provider's answer is lost.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::model::{
    Channel, ContextError, DeliveryEnd, DeliveryStart, Email, EmailSender, ErrorKind, Failure, Lease, Ledger,
    LoadedLog, LogId, LogResult, QueueMessage, ReceiptSink, Sms, SmsSender, Started, StoreError, WriteBack,
    WrittenBack,
};
use crate::receipt::{give_up_at, keep, receipts_of, write_retrying};
use crate::recipient::{check_email, check_phone, mask_email, mask_phone, redact};
use crate::render::{render, variables};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every channel was delivered.
    Sent,
    /// The log failed for good; the reason is in the ledger.
    Failed(String),
    /// A transient failure: the ledger scheduled another attempt (or, with none left,
    /// marked the log dead). The message is done either way.
    Retrying { status: String, why: String },
    /// Nothing to do: the log was already taken, finished, cancelled or re-leased (a
    /// redelivery or a stale message), or the lease was lost midway.
    Skipped(String),
    /// The ledger could not be written: the message goes back to the queue.
    StoreFailed(String),
    /// The ledger could not be written in time, but what the providers answered is safe on
    /// the receipts queue; the scheduler applies it, and rescues the log if it has more
    /// to send. The message is done.
    Deferred(String),
    /// The message itself is unusable (malformed, or names no log): it goes back to the
    /// queue, and after the redrive count to the dead-letter queue.
    Rejected(String),
}

impl Outcome {
    /// Whether the message must be reported as a batch item failure.
    pub fn is_batch_failure(&self) -> bool {
        matches!(self, Outcome::StoreFailed(_) | Outcome::Rejected(_))
    }
}

/// One send a log still has to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    Email(Email),
    Sms(Sms),
}

impl Send {
    pub fn channel(&self) -> Channel {
        match self {
            Send::Email(_) => Channel::Email,
            Send::Sms(_) => Channel::Sms,
        }
    }

    pub fn recipient(&self) -> &str {
        match self {
            Send::Email(e) => &e.to,
            Send::Sms(s) => &s.to,
        }
    }

    fn masked(&self) -> String {
        match self {
            Send::Email(e) => mask_email(&e.to),
            Send::Sms(s) => mask_phone(&s.to),
        }
    }
}

/// What a claimed log must send, in order (email, then SMS), leaving out channels an
/// earlier attempt delivered; or the permanent failure that stops it before anything is
/// sent. Every recipient is checked before anything is sent.
pub fn plan_sends(log: &LoadedLog, context: &serde_json::Value, default_from: &str) -> Result<Vec<Send>, Failure> {
    let Some(def) = &log.definition else {
        return Err(Failure::permanent(format!("unknown automation {}", log.automation_id)));
    };
    if !def.is_active {
        return Err(Failure::permanent(format!("automation {:?} is inactive", def.name)));
    }
    if def.email.is_none() && def.sms.is_none() {
        // A log started as a one-shot, whose automation was saved as a document since.
        return Err(Failure::permanent(format!(
            "automation {:?} has no email or SMS columns now: it was saved as a workflow definition",
            def.name
        )));
    }
    let vars = variables(context.clone(), &log.event);
    let rendered = render(def, &vars, default_from).map_err(|e| Failure::permanent(e.to_string()))?;
    if let Some(email) = &rendered.email {
        check_email(&email.to).map_err(Failure::permanent)?;
        check_email(&email.from).map_err(|e| Failure::permanent(format!("sender: {e}")))?;
    }
    if let Some(sms) = &rendered.sms {
        check_phone(&sms.to).map_err(Failure::permanent)?;
    }
    let mut sends = Vec::new();
    if let Some(email) = rendered.email.filter(|_| !log.delivered.contains(&Channel::Email)) {
        sends.push(Send::Email(email));
    }
    if let Some(sms) = rendered.sms.filter(|_| !log.delivered.contains(&Channel::Sms)) {
        sends.push(Send::Sms(sms));
    }
    Ok(sends)
}

/// Everything one batch needs, borrowed from the function's state.
pub struct Deliverer<'a, L, E, S, R> {
    pub ledger: &'a L,
    pub email: &'a E,
    pub sms: &'a S,
    /// Where write-backs go that could not be made in time.
    pub receipts: &'a R,
    pub clock: &'a dyn Clock,
    /// Sender address for automations that set none.
    pub default_from: &'a str,
    /// How long a claimed log is ours before the scheduler may rescue it.
    pub lease: Duration,
    /// When the invocation ends, by `clock` (none: only the lease bounds the retries).
    pub ends_at: Option<SystemTime>,
}

/// A claimed log on its way through the batch.
struct InFlight {
    index: usize,
    lease: Lease,
    sends: std::vec::IntoIter<Send>,
}

impl<L: Ledger, E: EmailSender, S: SmsSender, R: ReceiptSink> Deliverer<'_, L, E, S, R> {
    /// Handles one message body.
    pub async fn handle(&self, body: &str) -> Outcome {
        let mut out = self.handle_batch(vec![(String::new(), body.to_owned())], 1).await;
        out.pop()
            .map(|(_, o)| o)
            .unwrap_or(Outcome::Rejected("empty batch".into()))
    }

    /// Handles one queue batch: each `(message id, body)` stands alone and gets its own
    /// outcome, in the order given. Up to `concurrency` provider calls are in flight.
    pub async fn handle_batch(&self, messages: Vec<(String, String)>, concurrency: usize) -> Vec<(String, Outcome)> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; messages.len()];
        let mut valid: Vec<(usize, QueueMessage)> = Vec::new();
        for (i, (_, body)) in messages.iter().enumerate() {
            match QueueMessage::parse(body) {
                Ok(m) => valid.push((i, m)),
                Err(e) => outcomes[i] = Some(Outcome::Rejected(e)),
            }
        }
        if !valid.is_empty() {
            self.run(&valid, &mut outcomes, concurrency.max(1)).await;
        }
        messages
            .into_iter()
            .zip(outcomes)
            .map(|((id, _), o)| (id, o.unwrap_or(Outcome::StoreFailed("no outcome".into()))))
            .collect()
    }

    async fn run(&self, valid: &[(usize, QueueMessage)], outcomes: &mut [Option<Outcome>], concurrency: usize) {
        let msgs: Vec<QueueMessage> = valid.iter().map(|(_, m)| *m).collect();
        let now = self.clock.now();
        let lease_until = now + self.lease;
        let give_up_at = give_up_at(now, lease_until, self.ends_at);
        let started = match self.ledger.start(&msgs, now, lease_until).await {
            Ok(s) => s,
            Err(e) => {
                for (i, _) in valid {
                    outcomes[*i] = Some(Outcome::StoreFailed(e.to_string()));
                }
                return;
            }
        };
        // Logs still going, and the results of those that are done, for the next write-back.
        let mut going: Vec<InFlight> = Vec::new();
        let mut wb = WriteBack::default();
        // Each claimed log's message (a log is claimed for one message of a batch at most).
        let mut index_of: HashMap<LogId, usize> = HashMap::new();
        for ((index, msg), started) in valid.iter().zip(started) {
            let (index, msg) = (*index, *msg);
            match started {
                Started::Unknown => {
                    outcomes[index] = Some(Outcome::Rejected(format!("no execution log {}", msg.log_id)))
                }
                Started::NotClaimable { status } => {
                    outcomes[index] = Some(Outcome::Skipped(format!(
                        "log {} is {status} (not queued under lease {})",
                        msg.log_id, msg.lease
                    )))
                }
                Started::Claimed { lease, log, context } => {
                    index_of.insert(lease.log_id, index);
                    info!(
                        log_id = lease.log_id,
                        attempt = lease.attempt,
                        lease = lease.token,
                        "claimed"
                    );
                    let Some(log) = log else {
                        outcomes[index] = Some(lease_lost(&lease, "loading the log"));
                        continue;
                    };
                    let planned = match context {
                        Ok(c) => plan_sends(&log, &c, self.default_from),
                        Err(ContextError::Permanent(m)) => Err(Failure::permanent(format!("context: {m}"))),
                        // The log stays running until its lease expires and the scheduler
                        // rescues it; the message goes back to the queue meanwhile.
                        Err(ContextError::Transient(m)) => {
                            outcomes[index] = Some(Outcome::StoreFailed(format!("loading template variables: {m}")));
                            continue;
                        }
                    };
                    match planned {
                        Ok(sends) if sends.is_empty() => wb.results.push((lease, LogResult::Sent)),
                        Ok(sends) => going.push(InFlight {
                            index,
                            lease,
                            sends: sends.into_iter(),
                        }),
                        Err(f) => wb.results.push((lease, LogResult::Failed(f))),
                    }
                }
            }
        }

        // Each round: record the previous answers, the results, and the next sends; then send.
        loop {
            let mut next: Vec<(InFlight, Send)> = Vec::new();
            for mut f in std::mem::take(&mut going) {
                match f.sends.next() {
                    Some(send) => {
                        wb.started.push(DeliveryStart {
                            lease: f.lease,
                            channel: send.channel(),
                            recipient: send.recipient().to_owned(),
                        });
                        next.push((f, send));
                    }
                    None => wb.results.push((f.lease, LogResult::Sent)),
                }
            }
            if wb.is_empty() {
                break;
            }
            let written = match self.write_back(&wb, give_up_at).await {
                Ok(w) => w,
                Err((e, at)) => {
                    // Every log of this write-back stays running until its lease expires;
                    // the sends it was about to start are not made.
                    let outcome = self.keep(&wb, at, &e).await;
                    let ids = wb
                        .finished
                        .iter()
                        .map(|d| d.lease.log_id)
                        .chain(wb.started.iter().map(|d| d.lease.log_id))
                        .chain(wb.results.iter().map(|(l, _)| l.log_id));
                    for id in ids {
                        outcomes[index_of[&id]] = Some(outcome.clone());
                    }
                    break;
                }
            };
            for (d, ok) in wb.finished.iter().zip(&written.finished) {
                if !ok {
                    if let Ok(message_id) = &d.result {
                        warn!(log_id = d.lease.log_id, channel = %d.channel, message_id, "sent, but the lease was lost before it was recorded");
                    }
                    outcomes[index_of[&d.lease.log_id]] = Some(lease_lost(&d.lease, "recording a delivery"));
                }
            }
            for ((lease, result), status) in wb.results.iter().zip(&written.results) {
                let slot = &mut outcomes[index_of[&lease.log_id]];
                *slot = Some(match status {
                    None => lease_lost(lease, "writing the result"),
                    Some(status) => match result {
                        LogResult::Sent => Outcome::Sent,
                        LogResult::Failed(f) => Outcome::Failed(f.to_string()),
                        LogResult::Retry(f) => Outcome::Retrying {
                            status: status.clone(),
                            why: f.to_string(),
                        },
                    },
                });
            }
            let mut sending = Vec::new();
            for ((f, send), ok) in next.into_iter().zip(&written.started) {
                match outcomes[f.index] {
                    // The lease was lost recording the previous answer: stop here.
                    Some(_) => {}
                    None if !ok => outcomes[f.index] = Some(lease_lost(&f.lease, "starting a delivery")),
                    None => sending.push((f, send)),
                }
            }
            wb = WriteBack::default();
            let answers: Vec<(InFlight, Channel, Result<String, Failure>)> = stream::iter(sending)
                .map(|(f, send)| async move {
                    let result = self.send(&f.lease, &send).await;
                    (f, send.channel(), result)
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            for (f, channel, result) in answers {
                let lease = f.lease;
                match &result {
                    Ok(_) => going.push(f),
                    Err(failure) => {
                        let failure = Failure {
                            message: format!("{channel}: {}", failure.message),
                            ..failure.clone()
                        };
                        let result = match failure.kind {
                            ErrorKind::Permanent => LogResult::Failed(failure),
                            ErrorKind::Transient => LogResult::Retry(failure),
                        };
                        wb.results.push((lease, result));
                    }
                }
                wb.finished.push(DeliveryEnd { lease, channel, result });
            }
        }
    }

    /// Writes back, retrying until `give_up_at` (see [`write_retrying`]).
    async fn write_back(
        &self,
        wb: &WriteBack,
        give_up_at: SystemTime,
    ) -> Result<WrittenBack, (StoreError, SystemTime)> {
        write_retrying(self.clock, give_up_at, "write-back", |at| {
            self.ledger.write_back(wb, at)
        })
        .await
    }

    /// A write-back that could not be made: its answers and results go to the receipts
    /// queue. What became of its logs' messages.
    async fn keep(&self, wb: &WriteBack, at: SystemTime, e: &StoreError) -> Outcome {
        match keep(self.receipts, &receipts_of(wb, at), e).await {
            Ok(why) => Outcome::Deferred(why),
            Err(why) => Outcome::StoreFailed(why),
        }
    }

    /// Calls the provider, and logs how it went (recipients masked).
    async fn send(&self, lease: &Lease, send: &Send) -> Result<String, Failure> {
        let result = match send {
            Send::Email(e) => self.email.send_email(e).await,
            Send::Sms(s) => self.sms.send_sms(s).await,
        };
        let (id, channel, to) = (lease.log_id, send.channel(), send.masked());
        match &result {
            Ok(message_id) => info!(log_id = id, %channel, to, message_id, "delivered"),
            Err(f) => {
                warn!(log_id = id, %channel, to, error = %redact(&f.to_string()), kind = f.kind.as_str(), "delivery failed")
            }
        }
        result
    }
}

fn lease_lost(lease: &Lease, when: &str) -> Outcome {
    warn!(
        log_id = lease.log_id,
        lease = lease.token,
        when,
        "lease lost; leaving the log to its new holder"
    );
    Outcome::Skipped(format!("log {}: lease {} lost while {when}", lease.log_id, lease.token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Definition, EmailTemplates, EventInfo, SmsTemplates};
    use serde_json::json;

    fn log(definition: Option<Definition>, delivered: Vec<Channel>) -> LoadedLog {
        LoadedLog {
            automation_id: 7,
            event: EventInfo {
                log_id: 1,
                event: "status_change".into(),
                old_status: None,
                new_status: Some("done".into()),
                subject_table: "public.jobs".into(),
                subject_id: "1".into(),
            },
            definition,
            delivered,
        }
    }

    fn def(active: bool, email_to: &str, sms_to: &str) -> Option<Definition> {
        Some(Definition {
            name: "d".into(),
            is_active: active,
            email: Some(EmailTemplates {
                from: None,
                to: email_to.into(),
                subject: "Hi {{ name }}".into(),
                text: Some("Hello".into()),
                html: None,
            }),
            sms: Some(SmsTemplates {
                to: sms_to.into(),
                body: "Hi {{ name }}".into(),
            }),
        })
    }

    #[test]
    fn what_a_log_sends_or_why_it_sends_nothing() {
        let ctx = json!({"name": "Ann", "email": "ann@example.com", "phone": "+14155550101", "bad": "nope"});
        let channels = |r: Result<Vec<Send>, Failure>| r.map(|s| s.iter().map(Send::channel).collect::<Vec<_>>());
        type Case = (&'static str, LoadedLog, Result<Vec<Channel>, &'static str>);
        let cases: Vec<Case> = vec![
            (
                "both channels",
                log(def(true, "{{ email }}", "{{ phone }}"), vec![]),
                Ok(vec![Channel::Email, Channel::Sms]),
            ),
            (
                "email already delivered",
                log(def(true, "{{ email }}", "{{ phone }}"), vec![Channel::Email]),
                Ok(vec![Channel::Sms]),
            ),
            (
                "all delivered",
                log(
                    def(true, "{{ email }}", "{{ phone }}"),
                    vec![Channel::Email, Channel::Sms],
                ),
                Ok(vec![]),
            ),
            ("no automation", log(None, vec![]), Err("unknown automation 7")),
            (
                "inactive",
                log(def(false, "{{ email }}", "{{ phone }}"), vec![]),
                Err("inactive"),
            ),
            (
                "saved as a document since",
                log(
                    def(true, "{{ email }}", "{{ phone }}").map(|d| Definition {
                        email: None,
                        sms: None,
                        ..d
                    }),
                    vec![Channel::Email],
                ),
                Err("saved as a workflow definition"),
            ),
            (
                "bad phone stops the email too",
                log(def(true, "{{ email }}", "{{ bad }}"), vec![]),
                Err("nope"),
            ),
            (
                "missing variable",
                log(def(true, "{{ missing }}", "{{ phone }}"), vec![]),
                Err("missing"),
            ),
        ];
        for (name, log, want) in cases {
            let got = channels(plan_sends(&log, &ctx, "from@example.com"));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(f), Err(w)) => {
                    assert_eq!(f.kind, ErrorKind::Permanent, "{name}");
                    assert!(f.message.contains(w), "{name}: {}", f.message);
                }
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }
}
