//! Keeping a write through a database outage: the executor retries the write of its steps'
//! ends on a fresh connection with backoff while its time and lease allow, and then leaves
//! them as receipts (one per instance, outside Postgres) for the scheduler to apply before
//! it rescues leases.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::clock::Clock;
use crate::model::{Failure, LogId, StoreError};

/// The first wait before retrying a write; it doubles up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long before the end of the lease or of the invocation a failing write stops being
/// retried, to leave time for sending its receipts.
pub const RECEIPT_MARGIN: Duration = Duration::from_secs(6);

/// How long to wait before the next try of a write that failed `failures` times in a
/// row, or `None` when that try could not start before `give_up_at` (then the outcome goes
/// out as receipts).
pub(crate) fn next_try(failures: u32, now: SystemTime, give_up_at: SystemTime) -> Option<Duration> {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let wait = doubled.min(MAX_BACKOFF);
    (now + wait < give_up_at).then_some(wait)
}

/// When retrying a write stops: [`RECEIPT_MARGIN`] before the earlier of the lease's end
/// and the invocation's end (when known), leaving time to keep its receipts.
pub(crate) fn give_up_at(now: SystemTime, lease_until: SystemTime, ends_at: Option<SystemTime>) -> SystemTime {
    ends_at
        .map_or(lease_until, |end| end.min(lease_until))
        .checked_sub(RECEIPT_MARGIN)
        .unwrap_or(now)
}

/// Where the executor leaves the writes it could not make (the receipts queue).
pub trait ReceiptSink: Sync {
    fn put(&self, receipts: &[Receipt]) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Where the scheduler finds them.
pub trait ReceiptSource: Sync {
    /// Up to 10 waiting messages, as (handle, body); none when the queue is empty.
    fn take(&self) -> impl Future<Output = Result<Vec<(String, String)>, Failure>> + Send;
    /// Removes messages that were dealt with.
    fn delete(&self, handles: &[String]) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Runs `write` until it succeeds, on a fresh connection each time (the store's), with
/// backoff while a try can still start before `give_up_at`. Every try gets the same time,
/// the first try's, so that a try whose commit landed but whose answer was lost is
/// recognized by the next. On failure, the last error and that time.
pub(crate) async fn write_retrying<T, F, Fut>(
    clock: &dyn Clock,
    give_up_at: SystemTime,
    what: &str,
    mut write: F,
) -> Result<T, (StoreError, SystemTime)>
where
    F: FnMut(SystemTime) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let at = clock.now();
    let mut failures = 0;
    loop {
        let e = match write(at).await {
            Ok(w) => return Ok(w),
            Err(e) => e,
        };
        failures += 1;
        let Some(wait) = next_try(failures, clock.now(), give_up_at) else {
            return Err((e, at));
        };
        tracing::warn!(error = %e, failures, wait_ms = wait.as_millis() as u64, "{what} failed; retrying");
        clock.sleep(wait).await;
    }
}

/// Puts the receipts of a write that failed with `e` on the receipts queue. Ok: why the
/// messages concerned are done; Err: why they are not (no receipts, or the queue refused).
pub(crate) async fn keep<R: ReceiptSink>(sink: &R, receipts: &[Receipt], e: &StoreError) -> Result<String, String> {
    if receipts.is_empty() {
        return Err(e.to_string());
    }
    match sink.put(receipts).await {
        Ok(()) => {
            tracing::warn!(error = %e, receipts = receipts.len(), "ledger unreachable; outcomes kept as receipts");
            Ok(format!("{e}; outcome kept on the receipts queue"))
        }
        Err(f) => {
            tracing::error!(error = %e, receipts_error = %f, "ledger unreachable and receipts not kept");
            Err(format!("{e}; receipts not kept either: {f}"))
        }
    }
}

/// One instance's part of a write that could not be made: how its steps' effects ended,
/// under the lease that performed them. This is the body of a message on the receipts queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub log_id: LogId,
    pub lease: i64,
    pub attempt: i32,
    /// When the write was first tried, in microseconds since the Unix epoch: the time the
    /// ledger records for it (and how a repeat of it is recognized).
    pub at_us: i64,
    /// The steps whose effects ended, in the order they ended.
    pub steps: Vec<ReceiptStep>,
}

/// How one step's effect ended, as the ledger's write of an ended step reads it: its
/// output, or its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptStep {
    pub step: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// Microseconds since the Unix epoch, as Postgres keeps time.
pub(crate) fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl Receipt {
    pub(crate) fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a receipts-queue message body; the error says what is wrong.
    pub(crate) fn parse(body: &str) -> Result<Self, String> {
        let bad = |why: String| format!("malformed receipt: {why}");
        let r: Receipt = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        if r.log_id <= 0 || r.lease <= 0 || r.attempt <= 0 || r.at_us <= 0 {
            return Err(bad("log_id, lease, attempt and at_us must be positive".into()));
        }
        if r.steps.is_empty() {
            return Err(bad("no steps".into()));
        }
        for s in &r.steps {
            if s.step.is_empty() || s.attempt == 0 {
                return Err(bad("a step needs an id and an attempt from 1".into()));
            }
            match (&s.error, s.error_kind.as_deref()) {
                (None, None) | (Some(_), Some("transient" | "permanent")) => {}
                (e, k) => return Err(bad(format!("step `{}`: error {e:?} with kind {k:?}", s.step))),
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_stops_before_the_limit() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let ms = Duration::from_millis;
        let table = [
            // failures, seconds already spent, give up after (s), wait
            (1, 0, 30, Some(ms(200))),
            (2, 0, 30, Some(ms(400))),
            (3, 0, 30, Some(ms(800))),
            (4, 0, 30, Some(ms(1_600))),
            (5, 0, 30, Some(ms(2_000))),
            (40, 0, 30, Some(ms(2_000))),
            (1, 29, 30, Some(ms(200))),
            (5, 28, 30, None),
            (1, 30, 30, None),
            (1, 31, 30, None),
        ];
        for (failures, spent, limit, want) in table {
            let got = next_try(
                failures,
                t0 + Duration::from_secs(spent),
                t0 + Duration::from_secs(limit),
            );
            assert_eq!(got, want, "failures {failures}, spent {spent}s, limit {limit}s");
        }
    }

    #[test]
    fn a_malformed_receipt_is_refused_with_the_reason() {
        let step = r#"{"log_id":1,"lease":2,"attempt":1,"at_us":5,"steps":[{"step":"hook","type":"webhook","#;
        let done = format!("{step}{}", r#""attempt":1,"output":{"status":200}}]}"#);
        let failed = format!("{step}{}", r#""attempt":2,"error":"503","error_kind":"transient"}]}"#);
        for body in [&done, &failed] {
            let r = Receipt::parse(body).unwrap();
            assert_eq!(Receipt::parse(&r.to_body()), Ok(r));
        }
        let table = [
            ("not json", "malformed receipt"),
            (r#"{"log_id":1}"#, "missing field"),
            (&done.replace("\"lease\":2", "\"lease\":0"), "must be positive"),
            (
                r#"{"log_id":1,"lease":2,"attempt":1,"at_us":5}"#,
                "missing field `steps`",
            ),
            (r#"{"log_id":1,"lease":2,"attempt":1,"at_us":5,"steps":[]}"#, "no steps"),
            (&format!("{step}{}", r#""attempt":0}]}"#), "an attempt from 1"),
            (
                &format!("{step}{}", r#""attempt":1,"error":"503"}]}"#),
                "error Some(\"503\") with kind None",
            ),
            (
                &format!("{step}{}", r#""attempt":1,"error":"503","error_kind":"maybe"}]}"#),
                "with kind Some(\"maybe\")",
            ),
        ];
        for (body, want) in table {
            let err = Receipt::parse(body).expect_err(body);
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
