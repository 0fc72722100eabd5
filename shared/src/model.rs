//! The domain's types and the narrow traits the core works through.

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Primary key of a row of `automation_execution_logs`.
pub type LogId = i64;

/// The body of an SQS message from the scheduler to the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMessage {
    pub log_id: LogId,
}

impl QueueMessage {
    /// Parses a message body: a JSON object with a positive integer `log_id` (other keys
    /// are ignored). The error says what is wrong with it.
    pub fn parse(body: &str) -> Result<Self, String> {
        let bad = |why: String| format!("malformed message body: {why}");
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(body).map_err(|e| bad(format!("not a JSON object ({e})")))?;
        let log_id = match obj.get("log_id") {
            None => return Err(bad("no log_id".into())),
            Some(v) => v.as_i64().ok_or_else(|| bad(format!("log_id {v} is not an integer")))?,
        };
        if log_id <= 0 {
            return Err(bad(format!("log_id {log_id} is not a log id")));
        }
        Ok(Self { log_id })
    }

    pub fn to_body(self) -> String {
        format!("{{\"log_id\":{}}}", self.log_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    pub fn as_str(self) -> &'static str {
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

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
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
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The definition is wrong or the row is gone: retrying will not help.
    #[error("{0}")]
    Permanent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An automation's templates, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub is_active: bool,
    pub email: Option<EmailTemplates>,
    pub sms: Option<SmsTemplates>,
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

/// What the executor needs to know of a claimed log.
#[derive(Debug, Clone)]
pub struct LoadedLog {
    pub automation_id: i64,
    pub event: EventInfo,
    /// `None` when the automation no longer exists.
    pub definition: Option<Definition>,
    /// Channels already delivered by an earlier attempt; they are not sent again.
    pub delivered: Vec<Channel>,
}

/// The event that created a log; templates see it as `herald.*`.
#[derive(Debug, Clone, Serialize)]
pub struct EventInfo {
    pub log_id: LogId,
    pub event: String,
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    pub subject_table: String,
    pub subject_id: String,
}

/// The result of trying to claim a log for execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This executor owns the log now; `attempt` counts from 1.
    Claimed { attempt: i32 },
    /// Another execution has it or had it (running, sent, failed, ...): leave it alone.
    NotClaimable { status: String },
    /// No such log.
    Unknown,
}

/// How a log's execution ended, as written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogResult {
    Sent,
    Failed(Failure),
    /// A transient failure: the log goes back to `queued` for the redelivered message.
    Retry(Failure),
}

/// The executor's view of the ledger.
pub trait Ledger: Sync {
    fn claim(&self, id: LogId, now: SystemTime) -> impl Future<Output = Result<Claim, StoreError>> + Send;
    fn load(&self, id: LogId) -> impl Future<Output = Result<Option<LoadedLog>, StoreError>> + Send;
    fn context(&self, id: LogId) -> impl Future<Output = Result<serde_json::Value, ContextError>> + Send;
    fn delivery_started(
        &self,
        id: LogId,
        channel: Channel,
        recipient: &str,
        now: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delivery_finished(
        &self,
        id: LogId,
        channel: Channel,
        result: Result<&str, &Failure>,
        now: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn finish(
        &self,
        id: LogId,
        result: &LogResult,
        now: SystemTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The scheduler's view of the ledger.
pub trait DueLogs: Sync {
    /// Marks up to `limit` due pending logs as queued and returns their ids.
    fn claim_due(&self, limit: i64, now: SystemTime) -> impl Future<Output = Result<Vec<LogId>, StoreError>> + Send;
    /// Puts queued logs back to pending (their messages never reached the queue).
    fn release(&self, ids: &[LogId], now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send;
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
        let m = QueueMessage { log_id: 42 };
        assert_eq!(QueueMessage::parse(&m.to_body()), Ok(m));
        assert_eq!(
            QueueMessage::parse(r#"{"log_id":7,"extra":1}"#),
            Ok(QueueMessage { log_id: 7 })
        );
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"log_id":"7"}"#,
            r#"{"log_id":-1}"#,
            r#"{"log_id":0}"#,
            "[1]",
        ] {
            let err = QueueMessage::parse(bad).unwrap_err();
            assert!(err.starts_with("malformed message body"), "{bad}: {err}");
        }
    }
}
