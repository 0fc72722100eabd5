//! The domain's types and the narrow traits the core works through.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Primary key of a row of `automation_execution_logs`.
pub type LogId = i64;

/// The body of an SQS message from the scheduler to the executor: a log, and the lease
/// token the scheduler gave it. A message whose token is no longer the log's is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMessage {
    pub log_id: LogId,
    pub lease: i64,
}

impl QueueMessage {
    /// Parses a message body: a JSON object with positive integers `log_id` and `lease`
    /// (other keys are ignored). The error says what is wrong with it.
    pub fn parse(body: &str) -> Result<Self, String> {
        let bad = |why: String| format!("malformed message body: {why}");
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(body).map_err(|e| bad(format!("not a JSON object ({e})")))?;
        let field = |name: &str| -> Result<i64, String> {
            let v = obj.get(name).ok_or_else(|| bad(format!("no {name}")))?;
            match v.as_i64() {
                Some(n) if n > 0 => Ok(n),
                _ => Err(bad(format!("{name} {v} is not a positive integer"))),
            }
        };
        Ok(Self {
            log_id: field("log_id")?,
            lease: field("lease")?,
        })
    }

    pub fn to_body(self) -> String {
        format!("{{\"log_id\":{},\"lease\":{}}}", self.log_id, self.lease)
    }
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying will not help: invalid address, rejected message, missing variable.
    Permanent,
    /// Retrying may help: throttling, a 5xx, a network failure.
    Transient,
}

impl ErrorKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Permanent => "permanent",
            ErrorKind::Transient => "transient",
        }
    }
}

/// Why a delivery or a log failed, as it is written to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The provider's error code, when there is one (`MessageRejected`, `Throttling`).
    pub code: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            code: None,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            code: None,
            message: message.into(),
        }
    }

    pub(crate) fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A failure of the store itself (connection lost, query failed). Always retried.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct StoreError {
    pub context: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    pub fn new(context: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            context,
            source: Box::new(source),
        }
    }
}

/// Why a log's template variables could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The definition is wrong or the row is gone: retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// The database could not answer just now (a lock timeout, a shutdown): retried.
    #[error("{0}")]
    Transient(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailTemplates {
    /// Sender address; `None` means the function's configured default.
    pub from: Option<String>,
    pub to: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsTemplates {
    pub to: String,
    pub body: String,
}

/// The event that created a log; templates see it as `herald.*` (its fields, and no others:
/// the check of templates' variables reads them from a default one).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct EventInfo {
    pub log_id: LogId,
    pub event: String,
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    pub subject_table: String,
    pub subject_id: String,
}

/// A claimed log, and the fencing token every write must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub log_id: LogId,
    pub token: i64,
    pub attempt: i32,
}

/// What one move of captured events into the ledger did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Events moved from the inbox to the ledger.
    pub moved: u64,
    /// Of those, the ones recorded as suppressed (inside their row's window, or past the
    /// cascade limit).
    pub suppressed: u64,
}

/// What the scheduler did with date triggers whose time had come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Fired {
    /// Instances started (as captured events, moved to the ledger by the same drain).
    pub fired: u64,
    /// Occurrences whose time passed more than their trigger's lateness ago: recorded, not run.
    pub missed: u64,
}

/// A schedule as the scheduler reads it: its cron expression and zone (as saved), how late
/// an occurrence may still fire, and the time up to which its occurrences were handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleDue {
    pub automation_id: i64,
    pub cron: String,
    pub zone: String,
    pub lateness: Duration,
    pub scanned_to: SystemTime,
}

/// What the scheduler does with a schedule's occurrences in `(from, to]`: fire these, record
/// those as missed; `next` are the following few, for herald_next_fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleFiring {
    pub automation_id: i64,
    pub from: SystemTime,
    pub to: SystemTime,
    pub fire: Vec<SystemTime>,
    pub missed: Vec<SystemTime>,
    pub next: Vec<SystemTime>,
}

/// What the scheduler's rescue did with expired leases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rescued {
    /// Queued logs whose message never came: pending again.
    pub requeued: u64,
    /// Running instances whose executor vanished: pending again, to resume where they were
    /// (an effect whose end was never recorded is held or resent, as its step says).
    pub resumed: u64,
}

/// What wakes the scheduler between drains in low-latency mode: a notice that events were
/// captured, or the end of a wait.
pub trait Wakeups: Send {
    /// Returns when woken, or after `max` at the latest.
    fn wait(&mut self, max: Duration) -> impl Future<Output = ()> + Send;
}

/// A queue that takes up to 10 messages at once.
pub trait Queue: Sync {
    /// Sends the messages; returns the log ids whose messages the queue rejected.
    fn send_batch(&self, messages: &[QueueMessage]) -> impl Future<Output = Result<Vec<LogId>, Failure>> + Send;
}

/// An email ready to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

/// A text message ready to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub to: String,
    pub body: String,
}

/// Sends email; returns the provider's message id.
pub trait EmailSender: Sync {
    fn send_email(&self, email: &Email) -> impl Future<Output = Result<String, Failure>> + Send;
}

/// Sends SMS; returns the provider's message id.
pub trait SmsSender: Sync {
    fn send_sms(&self, sms: &Sms) -> impl Future<Output = Result<String, Failure>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_and_rejects_junk() {
        let m = QueueMessage { log_id: 42, lease: 9 };
        assert_eq!(m.to_body(), r#"{"log_id":42,"lease":9}"#);
        assert_eq!(QueueMessage::parse(&m.to_body()), Ok(m));
        assert_eq!(
            QueueMessage::parse(r#"{"lease":3,"log_id":7,"extra":1}"#),
            Ok(QueueMessage { log_id: 7, lease: 3 })
        );
        for bad in [
            "",
            "not json",
            "{}",
            "null",
            "\"7\"",
            "[1, 2]",
            r#"{"log_id":"7","lease":1}"#,
            r#"{"log_id":-1,"lease":1}"#,
            r#"{"log_id":0,"lease":1}"#,
            r#"{"log_id":7}"#,
            r#"{"log_id":7,"lease":1.5}"#,
            r#"{"log_id":7,"lease":null}"#,
        ] {
            let err = QueueMessage::parse(bad).unwrap_err();
            assert!(err.starts_with("malformed message body"), "{bad}: {err}");
        }
    }
}
