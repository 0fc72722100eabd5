//! Keeping a write-back through a database outage: the executor retries it on a fresh
//! connection with backoff while its time and lease allow, and then leaves it as receipts
//! (one per log, outside Postgres) for the scheduler to apply before it rescues leases.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::clock::Clock;
use crate::model::{Channel, DeliveryEnd, Failure, Lease, LogId, LogResult, ReceiptSink, StoreError, WriteBack};

/// The first wait before retrying a write-back; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long before the end of the lease or of the invocation a failing write stops being
/// retried, to leave time for sending its receipts.
pub const RECEIPT_MARGIN: Duration = Duration::from_secs(6);

/// How long to wait before the next try of a write-back that failed `failures` times in a
/// row, or `None` when that try could not start before `give_up_at` (then the outcome goes
/// out as receipts).
pub fn next_try(failures: u32, now: SystemTime, give_up_at: SystemTime) -> Option<Duration> {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let wait = doubled.min(MAX_BACKOFF);
    (now + wait < give_up_at).then_some(wait)
}

/// When retrying a write stops: [`RECEIPT_MARGIN`] before the earlier of the lease's end
/// and the invocation's end (when known), leaving time to keep its receipts.
pub fn give_up_at(now: SystemTime, lease_until: SystemTime, ends_at: Option<SystemTime>) -> SystemTime {
    ends_at
        .map_or(lease_until, |end| end.min(lease_until))
        .checked_sub(RECEIPT_MARGIN)
        .unwrap_or(now)
}

/// Runs `write` until it succeeds, on a fresh connection each time (the store's), with
/// backoff while a try can still start before `give_up_at`. Every try gets the same time,
/// the first try's, so that a try whose commit landed but whose answer was lost is
/// recognized by the next. On failure, the last error and that time.
pub async fn write_retrying<T, F, Fut>(
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
pub async fn keep<R: ReceiptSink>(sink: &R, receipts: &[Receipt], e: &StoreError) -> Result<String, String> {
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

/// One log's part of a write-back that could not be made: the providers' answers and the
/// attempt's result, under the lease that got them. This is the body of a message on the
/// receipts queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub log_id: LogId,
    pub lease: i64,
    pub attempt: i32,
    /// When the write-back was first tried, in microseconds since the Unix epoch: the time
    /// the ledger records for it (and how a repeat of it is recognized).
    pub at_us: i64,
    #[serde(default)]
    pub deliveries: Vec<ReceiptDelivery>,
    /// The attempt's result, when the log was done.
    #[serde(default)]
    pub result: Option<ReceiptResult>,
    /// For a workflow instance: the steps whose effects ended (a receipt has steps, or
    /// deliveries and a result, never both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptDelivery {
    pub channel: Channel,
    /// `sent` or `failed`.
    pub status: String,
    pub message_id: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptResult {
    /// `sent`, `failed` or `retry`.
    pub outcome: String,
    pub error: Option<String>,
    pub kind: Option<String>,
    pub code: Option<String>,
}

/// Microseconds since the Unix epoch, as Postgres keeps time.
pub fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The receipts for a write-back that could not be made at `at`: one per log with answers
/// or a result, in the order the logs first appear. Deliveries about to start are left out:
/// they were never sent.
pub fn receipts_of(wb: &WriteBack, at: SystemTime) -> Vec<Receipt> {
    let mut out: Vec<Receipt> = Vec::new();
    for d in &wb.finished {
        entry(&mut out, &d.lease, at).deliveries.push(delivery(d));
    }
    for (lease, result) in &wb.results {
        entry(&mut out, lease, at).result = Some(result_of(result));
    }
    out
}

/// The receipt of this lease, added at the end if it is not there yet.
fn entry<'a>(out: &'a mut Vec<Receipt>, lease: &Lease, at: SystemTime) -> &'a mut Receipt {
    let i = match out
        .iter()
        .position(|r| r.log_id == lease.log_id && r.lease == lease.token)
    {
        Some(i) => i,
        None => {
            out.push(Receipt {
                log_id: lease.log_id,
                lease: lease.token,
                attempt: lease.attempt,
                at_us: micros(at),
                deliveries: Vec::new(),
                result: None,
                steps: Vec::new(),
            });
            out.len() - 1
        }
    };
    &mut out[i]
}

fn delivery(d: &DeliveryEnd) -> ReceiptDelivery {
    ReceiptDelivery {
        channel: d.channel,
        status: if d.result.is_ok() { "sent" } else { "failed" }.into(),
        message_id: d.result.as_ref().ok().cloned(),
        error: d.result.as_ref().err().map(Failure::to_string),
    }
}

fn result_of(result: &LogResult) -> ReceiptResult {
    let (outcome, failure) = match result {
        LogResult::Sent => ("sent", None),
        LogResult::Failed(f) => ("failed", Some(f)),
        LogResult::Retry(f) => ("retry", Some(f)),
    };
    ReceiptResult {
        outcome: outcome.into(),
        error: failure.map(|f| f.message.clone()),
        kind: failure.map(|f| f.kind.as_str().to_owned()),
        code: failure.and_then(|f| f.code.clone()),
    }
}

impl Receipt {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a receipts-queue message body; the error says what is wrong.
    pub fn parse(body: &str) -> Result<Self, String> {
        let bad = |why: String| format!("malformed receipt: {why}");
        let r: Receipt = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        if r.log_id <= 0 || r.lease <= 0 || r.attempt <= 0 || r.at_us <= 0 {
            return Err(bad("log_id, lease, attempt and at_us must be positive".into()));
        }
        let one_shot = !r.deliveries.is_empty() || r.result.is_some();
        match (one_shot, r.steps.is_empty()) {
            (false, true) => return Err(bad("no deliveries, no result and no steps".into())),
            (true, false) => return Err(bad("steps together with deliveries or a result".into())),
            _ => {}
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
        for d in &r.deliveries {
            match (d.status.as_str(), &d.message_id) {
                ("sent", Some(_)) | ("failed", None) => {}
                (s, m) => return Err(bad(format!("delivery status {s:?} with message id {m:?}"))),
            }
        }
        if let Some(res) = &r.result {
            if !matches!(res.outcome.as_str(), "sent" | "failed" | "retry") {
                return Err(bad(format!("unknown outcome {:?}", res.outcome)));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorKind;

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

    fn lease(log_id: LogId) -> Lease {
        Lease {
            log_id,
            token: log_id * 10,
            attempt: 2,
        }
    }

    #[test]
    fn a_write_back_becomes_one_receipt_per_log_without_its_starts() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let wb = WriteBack {
            finished: vec![
                DeliveryEnd {
                    lease: lease(1),
                    channel: Channel::Email,
                    result: Ok("ses-1".into()),
                },
                DeliveryEnd {
                    lease: lease(2),
                    channel: Channel::Sms,
                    result: Err(Failure {
                        kind: ErrorKind::Permanent,
                        code: Some("OptedOut".into()),
                        message: "opted out".into(),
                    }),
                },
            ],
            started: vec![crate::model::DeliveryStart {
                lease: lease(1),
                channel: Channel::Sms,
                recipient: "+14155550101".into(),
            }],
            results: vec![
                (
                    lease(2),
                    LogResult::Failed(Failure::permanent("sms: OptedOut: opted out")),
                ),
                (lease(3), LogResult::Sent),
            ],
        };
        let got = receipts_of(&wb, at);
        let want = vec![
            Receipt {
                log_id: 1,
                lease: 10,
                attempt: 2,
                at_us: 1_700_000_000_123_456,
                deliveries: vec![ReceiptDelivery {
                    channel: Channel::Email,
                    status: "sent".into(),
                    message_id: Some("ses-1".into()),
                    error: None,
                }],
                result: None,
                steps: vec![],
            },
            Receipt {
                log_id: 2,
                lease: 20,
                attempt: 2,
                at_us: 1_700_000_000_123_456,
                deliveries: vec![ReceiptDelivery {
                    channel: Channel::Sms,
                    status: "failed".into(),
                    message_id: None,
                    error: Some("OptedOut: opted out".into()),
                }],
                result: Some(ReceiptResult {
                    outcome: "failed".into(),
                    error: Some("sms: OptedOut: opted out".into()),
                    kind: Some("permanent".into()),
                    code: None,
                }),
                steps: vec![],
            },
            Receipt {
                log_id: 3,
                lease: 30,
                attempt: 2,
                at_us: 1_700_000_000_123_456,
                deliveries: vec![],
                result: Some(ReceiptResult {
                    outcome: "sent".into(),
                    error: None,
                    kind: None,
                    code: None,
                }),
                steps: vec![],
            },
        ];
        assert_eq!(got, want);
        for r in &got {
            assert_eq!(Receipt::parse(&r.to_body()).as_ref(), Ok(r));
        }
    }

    #[test]
    fn a_malformed_receipt_is_refused_with_the_reason() {
        let ok = r#"{"log_id":1,"lease":2,"attempt":1,"at_us":5,"deliveries":[{"channel":"sms","status":"sent","message_id":"m","error":null}],"result":null}"#;
        assert!(Receipt::parse(ok).is_ok());
        // A workflow instance's receipt: steps, and neither deliveries nor a result.
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
            (&ok.replace("\"lease\":2", "\"lease\":0"), "must be positive"),
            (&ok.replace("\"sms\"", "\"fax\""), "unknown variant"),
            (
                &ok.replace("\"sent\",\"message_id\":\"m\"", "\"sent\",\"message_id\":null"),
                "status \"sent\"",
            ),
            (
                &ok.replace(
                    "[{\"channel\":\"sms\",\"status\":\"sent\",\"message_id\":\"m\",\"error\":null}]",
                    "[]",
                ),
                "no deliveries, no result and no steps",
            ),
            (
                &ok.replace(
                    "\"result\":null",
                    r#""result":null,"steps":[{"step":"a","type":"send_sms","attempt":1}]"#,
                ),
                "steps together with deliveries",
            ),
            (&format!("{step}{}", r#""attempt":0}]}"#), "an attempt from 1"),
            (
                &format!("{step}{}", r#""attempt":1,"error":"503"}]}"#),
                "error Some(\"503\") with kind None",
            ),
            (
                &ok.replace(
                    "\"result\":null",
                    r#""result":{"outcome":"maybe","error":null,"kind":null,"code":null}"#,
                ),
                "unknown outcome",
            ),
        ];
        for (body, want) in table {
            let err = Receipt::parse(body).expect_err(body);
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
