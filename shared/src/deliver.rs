//! The executor's core: one queue message in, one log delivered (or failed) out.

use tracing::{info, warn};

use crate::clock::Clock;
use crate::model::{
    Channel, Claim, ContextError, EmailSender, ErrorKind, Failure, Ledger, LogId, LogResult, QueueMessage, SmsSender,
};
use crate::recipient::{check_email, check_phone, mask_email, mask_phone};
use crate::render::{render, variables};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every channel was delivered.
    Sent,
    /// The log failed for good; the reason is in the ledger.
    Failed(String),
    /// The log was already taken or finished (a redelivery): nothing was done.
    Skipped(String),
    /// Try again later: the message goes back to the queue.
    Retry(String),
    /// The message itself is unusable (malformed, or names no log): it goes back to the
    /// queue, and after the redrive count to the dead-letter queue.
    Rejected(String),
}

impl Outcome {
    /// Whether the message must be reported as a batch item failure.
    pub fn is_batch_failure(&self) -> bool {
        matches!(self, Outcome::Retry(_) | Outcome::Rejected(_))
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
}

impl<L: Ledger, E: EmailSender, S: SmsSender> Deliverer<'_, L, E, S> {
    /// Handles one message body.
    pub async fn handle(&self, body: &str) -> Outcome {
        let msg = match QueueMessage::parse(body) {
            Ok(m) => m,
            Err(e) => return Outcome::Rejected(e),
        };
        let id = msg.log_id;
        match self.ledger.claim(id, self.clock.now()).await {
            Err(e) => return Outcome::Retry(e.to_string()),
            Ok(Claim::Unknown) => return Outcome::Rejected(format!("no execution log {id}")),
            Ok(Claim::NotClaimable { status }) => return Outcome::Skipped(format!("log {id} is {status}")),
            Ok(Claim::Claimed { attempt }) => info!(log_id = id, attempt, "claimed"),
        }
        let result = self.execute(id).await;
        let outcome = match &result {
            LogResult::Sent => Outcome::Sent,
            LogResult::Failed(f) => Outcome::Failed(f.to_string()),
            LogResult::Retry(f) => Outcome::Retry(f.to_string()),
        };
        if let Err(e) = self.ledger.finish(id, &result, self.clock.now()).await {
            warn!(log_id = id, error = %e, "could not write the result back");
            return Outcome::Retry(e.to_string());
        }
        outcome
    }

    /// Loads, renders, checks and sends; returns what to write back.
    async fn execute(&self, id: LogId) -> LogResult {
        let log = match self.ledger.load(id).await {
            Ok(Some(log)) => log,
            Ok(None) => return LogResult::Retry(Failure::transient(format!("log {id} vanished after it was claimed"))),
            Err(e) => return LogResult::Retry(Failure::transient(e.to_string())),
        };
        let Some(def) = log.definition else {
            return LogResult::Failed(Failure::permanent(format!("unknown automation {}", log.automation_id)));
        };
        if !def.is_active {
            return LogResult::Failed(Failure::permanent(format!("automation {:?} is inactive", def.name)));
        }
        let context = match self.ledger.context(id).await {
            Ok(c) => c,
            Err(ContextError::Permanent(msg)) => {
                return LogResult::Failed(Failure::permanent(format!("context: {msg}")))
            }
            Err(ContextError::Store(e)) => return LogResult::Retry(Failure::transient(e.to_string())),
        };
        let vars = variables(context, &log.event);
        let rendered = match render(&def, &vars, self.default_from) {
            Ok(r) => r,
            Err(e) => return LogResult::Failed(Failure::permanent(e.to_string())),
        };
        // Every recipient is checked before anything is sent.
        if let Some(email) = &rendered.email {
            for addr in [&email.to, &email.from] {
                if let Err(e) = check_email(addr) {
                    return LogResult::Failed(Failure::permanent(e));
                }
            }
        }
        if let Some(sms) = &rendered.sms {
            if let Err(e) = check_phone(&sms.to) {
                return LogResult::Failed(Failure::permanent(e));
            }
        }

        if let Some(email) = rendered.email.filter(|_| !log.delivered.contains(&Channel::Email)) {
            if let Err(r) = self
                .deliver(
                    id,
                    Channel::Email,
                    &email.to,
                    &mask_email(&email.to),
                    self.email.send_email(&email),
                )
                .await
            {
                return r;
            }
        }
        if let Some(sms) = rendered.sms.filter(|_| !log.delivered.contains(&Channel::Sms)) {
            if let Err(r) = self
                .deliver(id, Channel::Sms, &sms.to, &mask_phone(&sms.to), self.sms.send_sms(&sms))
                .await
            {
                return r;
            }
        }
        LogResult::Sent
    }

    /// Records the delivery, sends it, records how it went.
    async fn deliver(
        &self,
        id: LogId,
        channel: Channel,
        recipient: &str,
        masked: &str,
        send: impl std::future::Future<Output = Result<String, Failure>>,
    ) -> Result<(), LogResult> {
        let store_failed = |e: crate::model::StoreError| LogResult::Retry(Failure::transient(e.to_string()));
        self.ledger
            .delivery_started(id, channel, recipient, self.clock.now())
            .await
            .map_err(store_failed)?;
        let sent = send.await;
        self.ledger
            .delivery_finished(id, channel, sent.as_deref(), self.clock.now())
            .await
            .map_err(store_failed)?;
        match sent {
            Ok(message_id) => {
                info!(log_id = id, %channel, to = masked, message_id, "delivered");
                Ok(())
            }
            Err(f) => {
                warn!(log_id = id, %channel, to = masked, error = %f, kind = f.kind.as_str(), "delivery failed");
                Err(match f.kind {
                    ErrorKind::Permanent => LogResult::Failed(Failure {
                        message: format!("{channel}: {}", f.message),
                        ..f
                    }),
                    ErrorKind::Transient => LogResult::Retry(Failure {
                        message: format!("{channel}: {}", f.message),
                        ..f
                    }),
                })
            }
        }
    }
}
