//! The executor's core: one queue message in, one attempt of one log out.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use tracing::{info, info_span, warn, Instrument};

use crate::clock::Clock;
use crate::model::{
    Channel, Claim, ContextError, EmailSender, ErrorKind, Failure, Lease, Ledger, LogResult, QueueMessage, SmsSender,
    StoreError,
};
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

/// Why an attempt stopped early.
enum Stop {
    Result(LogResult),
    LeaseLost(&'static str),
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// Everything one delivery needs, borrowed from the function's state.
pub struct Deliverer<'a, L, E, S> {
    pub ledger: &'a L,
    pub email: &'a E,
    pub sms: &'a S,
    pub clock: &'a dyn Clock,
    /// Sender address for automations that set none.
    pub default_from: &'a str,
    /// How long a claimed log is ours before the scheduler may rescue it.
    pub lease: Duration,
}

impl<L: Ledger, E: EmailSender, S: SmsSender> Deliverer<'_, L, E, S> {
    /// Handles one queue batch, `concurrency` messages at once: each `(message id, body)`
    /// stands alone and gets its own outcome, in no particular order.
    pub async fn handle_batch(&self, messages: Vec<(String, String)>, concurrency: usize) -> Vec<(String, Outcome)> {
        stream::iter(messages)
            .map(|(id, body)| async move {
                let span = info_span!("message", message_id = %id);
                let outcome = self.handle(&body).instrument(span).await;
                (id, outcome)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await
    }

    /// Handles one message body.
    pub async fn handle(&self, body: &str) -> Outcome {
        let msg = match QueueMessage::parse(body) {
            Ok(m) => m,
            Err(e) => return Outcome::Rejected(e),
        };
        let now = self.clock.now();
        let lease = match self.ledger.claim(msg, now, now + self.lease).await {
            Err(e) => return Outcome::StoreFailed(e.to_string()),
            Ok(Claim::Unknown) => return Outcome::Rejected(format!("no execution log {}", msg.log_id)),
            Ok(Claim::NotClaimable { status }) => {
                return Outcome::Skipped(format!(
                    "log {} is {status} (not queued under lease {})",
                    msg.log_id, msg.lease
                ))
            }
            Ok(Claim::Claimed(lease)) => lease,
        };
        info!(
            log_id = lease.log_id,
            attempt = lease.attempt,
            lease = lease.token,
            "claimed"
        );
        let result = match self.attempt(&lease).await {
            Ok(()) => LogResult::Sent,
            Err(Stop::Result(r)) => r,
            Err(Stop::LeaseLost(when)) => return lease_lost(&lease, when),
            // The ledger is unreachable: the log stays running until its lease expires
            // and the scheduler rescues it; the message goes back to the queue meanwhile.
            Err(Stop::Store(e)) => return Outcome::StoreFailed(e.to_string()),
        };
        match self.ledger.finish(&lease, &result, self.clock.now()).await {
            Err(e) => Outcome::StoreFailed(e.to_string()),
            Ok(None) => lease_lost(&lease, "writing the result"),
            Ok(Some(status)) => match result {
                LogResult::Sent => Outcome::Sent,
                LogResult::Failed(f) => Outcome::Failed(f.to_string()),
                LogResult::Retry(f) => Outcome::Retrying {
                    status,
                    why: f.to_string(),
                },
            },
        }
    }

    /// Loads, renders, checks and sends.
    async fn attempt(&self, lease: &Lease) -> Result<(), Stop> {
        let fail = |f: Failure| Stop::Result(LogResult::Failed(f));
        let id = lease.log_id;
        let Some(log) = self.ledger.load(id).await? else {
            return Err(Stop::LeaseLost("loading the log"));
        };
        let Some(def) = log.definition else {
            return Err(fail(Failure::permanent(format!(
                "unknown automation {}",
                log.automation_id
            ))));
        };
        if !def.is_active {
            return Err(fail(Failure::permanent(format!(
                "automation {:?} is inactive",
                def.name
            ))));
        }
        let context = match self.ledger.context(id).await {
            Ok(c) => c,
            Err(ContextError::Permanent(msg)) => return Err(fail(Failure::permanent(format!("context: {msg}")))),
            Err(ContextError::Store(e)) => return Err(Stop::Store(e)),
        };
        let vars = variables(context, &log.event);
        let rendered = render(&def, &vars, self.default_from).map_err(|e| fail(Failure::permanent(e.to_string())))?;
        // Every recipient is checked before anything is sent.
        if let Some(email) = &rendered.email {
            check_email(&email.to).map_err(|e| fail(Failure::permanent(e)))?;
            check_email(&email.from).map_err(|e| fail(Failure::permanent(format!("sender: {e}"))))?;
        }
        if let Some(sms) = &rendered.sms {
            check_phone(&sms.to).map_err(|e| fail(Failure::permanent(e)))?;
        }

        if let Some(email) = rendered.email.filter(|_| !log.delivered.contains(&Channel::Email)) {
            let masked = mask_email(&email.to);
            self.deliver(lease, Channel::Email, &email.to, &masked, self.email.send_email(&email))
                .await?;
        }
        if let Some(sms) = rendered.sms.filter(|_| !log.delivered.contains(&Channel::Sms)) {
            let masked = mask_phone(&sms.to);
            self.deliver(lease, Channel::Sms, &sms.to, &masked, self.sms.send_sms(&sms))
                .await?;
        }
        Ok(())
    }

    /// Records the delivery, sends it, records how it went.
    async fn deliver(
        &self,
        lease: &Lease,
        channel: Channel,
        recipient: &str,
        masked: &str,
        send: impl std::future::Future<Output = Result<String, Failure>>,
    ) -> Result<(), Stop> {
        let id = lease.log_id;
        if !self
            .ledger
            .delivery_started(lease, channel, recipient, self.clock.now())
            .await?
        {
            return Err(Stop::LeaseLost("starting a delivery"));
        }
        let sent = send.await;
        if !self
            .ledger
            .delivery_finished(lease, channel, sent.as_deref(), self.clock.now())
            .await?
        {
            if let Ok(message_id) = &sent {
                warn!(log_id = id, %channel, to = masked, message_id, "sent, but the lease was lost before it was recorded");
            }
            return Err(Stop::LeaseLost("recording a delivery"));
        }
        match sent {
            Ok(message_id) => {
                info!(log_id = id, %channel, to = masked, message_id, "delivered");
                Ok(())
            }
            Err(f) => {
                warn!(log_id = id, %channel, to = masked, error = %redact(&f.to_string()), kind = f.kind.as_str(), "delivery failed");
                let f = Failure {
                    message: format!("{channel}: {}", f.message),
                    ..f
                };
                Err(Stop::Result(match f.kind {
                    ErrorKind::Permanent => LogResult::Failed(f),
                    ErrorKind::Transient => LogResult::Retry(f),
                }))
            }
        }
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
