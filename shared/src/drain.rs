//! The scheduler's core: move due logs from the ledger to the queue until none are due
//! or time runs out.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::ledger::DueLogs;
use crate::model::{Fired, LogId, Queue, QueueMessage, Rescued, StoreError, Wakeups};
use crate::receipt::{Receipt, ReceiptSource};

/// SQS takes at most this many messages per SendMessageBatch.
pub(crate) const QUEUE_BATCH: usize = 10;

/// Events moved from the inbox to the ledger per transaction.
pub const INGEST_BATCH: i32 = 10_000;

/// Receipts applied per run at most (10 per receive); the rest wait for the next run, and
/// the rescue with them.
pub(crate) const MAX_RECEIPT_RECEIVES: usize = 100;

/// In low-latency mode, how often receipts are applied and leases rescued (the drains in
/// between only claim).
pub(crate) const RECOVER_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// How many logs one claim takes (one transaction).
    pub claim_batch: i64,
    /// How many SendMessageBatch calls may be in flight at once.
    pub max_in_flight: usize,
    /// Claim nothing new after this instant.
    pub stop_at: Option<Instant>,
    /// How long a queued log waits for its message before it is re-queued.
    pub queue_lease: Duration,
    /// Apply receipts and rescue expired leases before claiming.
    pub recover: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            claim_batch: 100,
            max_in_flight: 4,
            stop_at: None,
            queue_lease: Duration::from_secs(900),
            recover: true,
        }
    }
}

/// What one drain did; the scheduler function returns it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainSummary {
    /// Date triggers whose time had come: instances started, and occurrences missed.
    pub dates: Fired,
    /// Schedules' occurrences: instances started (one per audience row), and occurrences
    /// missed.
    pub schedules: Fired,
    /// Captured events moved from the inbox to the ledger before claiming.
    pub ingested: u64,
    /// Of those, the ones recorded as suppressed.
    pub suppressed: u64,
    /// Receipts taken from the receipts queue, and how many of them were applied (the rest
    /// came too late: their lease was no longer the log's). Malformed ones are left for the
    /// dead-letter queue.
    pub receipts: u64,
    pub receipts_applied: u64,
    pub receipts_malformed: u64,
    /// Expired leases rescued before claiming.
    pub rescued: Rescued,
    /// Logs moved from pending to queued.
    pub claimed: u64,
    /// Messages the queue accepted.
    pub sent: u64,
    /// Messages the queue rejected; their logs are pending again.
    pub failed: u64,
    pub elapsed_ms: u64,
    /// `drained` (nothing more was due) or `deadline` (time ran out first).
    pub stopped_by: &'static str,
}

pub async fn drain<D: DueLogs, Q: Queue, R: ReceiptSource>(
    store: &D,
    queue: &Q,
    receipts: &R,
    clock: &dyn Clock,
    opts: &DrainOptions,
) -> Result<DrainSummary, StoreError> {
    let started = Instant::now();
    let mut summary = DrainSummary {
        stopped_by: "drained",
        ..Default::default()
    };
    // Date triggers first, into the inbox; then the inbox: an event captured before this
    // run is claimable in it.
    summary.dates = store.fire_dates(clock.now()).await?;
    summary.schedules = fire_schedules(store, clock.now()).await?;
    loop {
        let taken = store.ingest(INGEST_BATCH).await?;
        summary.ingested += taken.moved;
        summary.suppressed += taken.suppressed;
        if taken.moved < INGEST_BATCH as u64 || opts.stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
    }
    if opts.recover {
        // Receipts first: a lease whose executor kept its outcome as a receipt is settled
        // by the receipt, not rescued as if the executor had vanished.
        if apply_receipts(store, receipts, clock, &mut summary).await? {
            summary.rescued = store.rescue(clock.now()).await?;
        }
    }
    for round in 0.. {
        // The first round always runs: a deadline that seems past (clock skew, an
        // emulator's idea of time) must not starve the queue.
        if round > 0 && opts.stop_at.is_some_and(|t| Instant::now() >= t) {
            summary.stopped_by = "deadline";
            break;
        }
        let now = clock.now();
        let messages = store.claim_due(opts.claim_batch, now, now + opts.queue_lease).await?;
        if messages.is_empty() {
            break;
        }
        summary.claimed += messages.len() as u64;
        let rejected = send_all(queue, &messages, opts.max_in_flight.max(1)).await;
        if !rejected.is_empty() {
            store.release(&rejected, clock.now()).await?;
        }
        summary.failed += rejected.len() as u64;
        summary.sent += (messages.len() - rejected.len()) as u64;
        if (messages.len() as i64) < opts.claim_batch {
            break;
        }
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    info!(
        claimed = summary.claimed,
        sent = summary.sent,
        failed = summary.failed,
        ingested = summary.ingested,
        suppressed = summary.suppressed,
        receipts = summary.receipts,
        receipts_applied = summary.receipts_applied,
        receipts_malformed = summary.receipts_malformed,
        requeued = summary.rescued.requeued,
        resumed = summary.rescued.resumed,
        fired = summary.dates.fired + summary.schedules.fired,
        missed = summary.dates.missed + summary.schedules.missed,
        elapsed_ms = summary.elapsed_ms,
        stopped_by = summary.stopped_by,
        "drain finished"
    );
    Ok(summary)
}

/// Fires every schedule's occurrences up to `now` (see [`crate::workflow::schedule::plan`]).
/// A schedule that cannot be read or fired (its audience relation was dropped, say) is
/// skipped with an error in the log, and tried again next time; the others still fire, and
/// the drain goes on.
async fn fire_schedules<D: DueLogs>(store: &D, now: std::time::SystemTime) -> Result<Fired, StoreError> {
    let mut total = Fired::default();
    for due in store.due_schedules().await? {
        let firing = match crate::workflow::schedule::plan(&due, now) {
            Ok(firing) => firing,
            Err(e) => {
                tracing::error!(automation = due.automation_id, error = %e, "a schedule could not be read");
                continue;
            }
        };
        match store.fire_schedule(&firing, now).await {
            Ok(f) => {
                total.fired += f.fired;
                total.missed += f.missed;
            }
            Err(e) => tracing::error!(automation = due.automation_id, error = %e, "a schedule could not fire"),
        }
    }
    Ok(total)
}

/// Applies every waiting receipt; returns whether the queue was read to its end (only then
/// may leases be rescued).
async fn apply_receipts<D: DueLogs, R: ReceiptSource>(
    store: &D,
    receipts: &R,
    clock: &dyn Clock,
    summary: &mut DrainSummary,
) -> Result<bool, StoreError> {
    for _ in 0..MAX_RECEIPT_RECEIVES {
        let taken = match receipts.take().await {
            Ok(t) if t.is_empty() => return Ok(true),
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "receipts queue unreadable; no lease is rescued this run");
                return Ok(false);
            }
        };
        let mut parsed = Vec::new();
        let mut handles = Vec::new();
        for (handle, body) in taken {
            match Receipt::parse(&body) {
                Ok(r) => {
                    parsed.push(r);
                    handles.push(handle);
                }
                Err(e) => {
                    warn!(error = %e, "receipt left for the dead-letter queue");
                    summary.receipts_malformed += 1;
                }
            }
        }
        if !parsed.is_empty() {
            summary.receipts_applied += store.apply_receipts(&parsed, clock.now()).await?;
            summary.receipts += parsed.len() as u64;
        }
        // Applying a receipt again changes nothing, so a failed delete only costs a repeat.
        if let Err(e) = receipts.delete(&handles).await {
            warn!(error = %e, "receipts applied but not deleted; they will be applied again");
        }
    }
    Ok(false)
}

/// Low-latency mode: drains, then waits to be woken (or for `poll` at most) and drains
/// again, until `opts.stop_at` (without one, it drains once). Receipts and rescues run on
/// the first drain and every [`RECOVER_EVERY`] after. Returns the sum of the drains.
pub async fn serve<D: DueLogs, Q: Queue, R: ReceiptSource, W: Wakeups>(
    store: &D,
    queue: &Q,
    receipts: &R,
    clock: &dyn Clock,
    opts: &DrainOptions,
    wakeups: &mut W,
    poll: Duration,
) -> Result<DrainSummary, StoreError> {
    let Some(until) = opts.stop_at else {
        return drain(store, queue, receipts, clock, opts).await;
    };
    let started = Instant::now();
    let mut opts = opts.clone();
    let mut total = DrainSummary {
        stopped_by: "deadline",
        ..Default::default()
    };
    let mut recovered_at: Option<Instant> = None;
    loop {
        opts.recover = recovered_at.is_none_or(|t| t.elapsed() >= RECOVER_EVERY);
        if opts.recover {
            recovered_at = Some(Instant::now());
        }
        let s = drain(store, queue, receipts, clock, &opts).await?;
        total.dates.fired += s.dates.fired;
        total.dates.missed += s.dates.missed;
        total.schedules.fired += s.schedules.fired;
        total.schedules.missed += s.schedules.missed;
        total.ingested += s.ingested;
        total.suppressed += s.suppressed;
        total.receipts += s.receipts;
        total.receipts_applied += s.receipts_applied;
        total.receipts_malformed += s.receipts_malformed;
        total.rescued.requeued += s.rescued.requeued;
        total.rescued.resumed += s.rescued.resumed;
        total.claimed += s.claimed;
        total.sent += s.sent;
        total.failed += s.failed;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        wakeups.wait(poll.min(left)).await;
    }
    total.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(total)
}

/// Sends the messages in batches of 10 with bounded concurrency; returns the ids of the
/// logs whose message was not sent.
async fn send_all<Q: Queue>(queue: &Q, messages: &[QueueMessage], max_in_flight: usize) -> Vec<LogId> {
    stream::iter(messages.chunks(QUEUE_BATCH))
        .map(|batch| async move {
            match queue.send_batch(batch).await {
                Ok(rejected) => rejected,
                Err(e) => {
                    warn!(error = %e, count = batch.len(), "SendMessageBatch failed");
                    batch.iter().map(|m| m.log_id).collect()
                }
            }
        })
        .buffer_unordered(max_in_flight)
        .flat_map(stream::iter)
        .collect()
        .await
}

/// The instant to stop claiming: `margin` before the deadline, but never more than half
/// of the time left, so that a short invocation still gets work done.
pub fn stop_before(deadline: Instant, margin: Duration) -> Instant {
    let left = deadline.saturating_duration_since(Instant::now());
    deadline.checked_sub(margin.min(left / 2)).unwrap_or(deadline)
}

/// An invocation that starts with less time than this left has an emulator's idea of time
/// (`cargo lambda watch` sends a deadline already past), not Lambda's.
pub(crate) const LEAST_TIME_LEFT: Duration = Duration::from_secs(1);

/// The time left at `now` before a Lambda deadline (milliseconds since the epoch; 0 when
/// unknown); zero once it has passed.
pub(crate) fn time_left(deadline_ms: u64, now: std::time::SystemTime) -> Option<Duration> {
    let deadline = std::time::UNIX_EPOCH + Duration::from_millis(deadline_ms);
    (deadline_ms > 0).then(|| deadline.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The time an invocation has, from its deadline as it starts: `None` when the deadline is
/// not known (0), or when under [`LEAST_TIME_LEFT`] is left, so that the work's own bounds
/// (a drain's end, a lease) hold instead. Both functions read their deadline through this.
pub fn invocation_time_left(deadline_ms: u64, started: std::time::SystemTime) -> Option<Duration> {
    time_left(deadline_ms, started).filter(|left| *left >= LEAST_TIME_LEFT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::model::Failure;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::SystemTime;

    /// Pending ids; claim takes from the front, release puts back.
    struct FakeStore {
        pending: Mutex<Vec<LogId>>,
        released: Mutex<Vec<LogId>>,
        /// `receipts <log ids>` and `rescue`, in the order they were called.
        calls: Mutex<Vec<String>>,
    }

    impl FakeStore {
        fn with(n: i64) -> Self {
            Self {
                pending: Mutex::new((1..=n).collect()),
                released: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
            }
        }
    }

    impl DueLogs for FakeStore {
        async fn ingest(&self, _limit: i32) -> Result<crate::model::Ingested, StoreError> {
            Ok(Default::default())
        }
        async fn fire_dates(&self, _now: SystemTime) -> Result<Fired, StoreError> {
            Ok(Fired::default())
        }
        async fn due_schedules(&self) -> Result<Vec<crate::model::ScheduleDue>, StoreError> {
            Ok(Vec::new())
        }
        async fn fire_schedule(
            &self,
            _f: &crate::model::ScheduleFiring,
            _now: SystemTime,
        ) -> Result<Fired, StoreError> {
            Ok(Fired::default())
        }
        async fn rescue(&self, _now: SystemTime) -> Result<Rescued, StoreError> {
            self.calls.lock().unwrap().push("rescue".into());
            Ok(Rescued::default())
        }
        async fn apply_receipts(&self, receipts: &[Receipt], _now: SystemTime) -> Result<u64, StoreError> {
            let ids: Vec<String> = receipts.iter().map(|r| r.log_id.to_string()).collect();
            self.calls.lock().unwrap().push(format!("receipts {}", ids.join(",")));
            // Odd log ids still hold their lease; even ones were taken over.
            Ok(receipts.iter().filter(|r| r.log_id % 2 == 1).count() as u64)
        }
        async fn claim_due(
            &self,
            limit: i64,
            _now: SystemTime,
            _until: SystemTime,
        ) -> Result<Vec<QueueMessage>, StoreError> {
            let mut p = self.pending.lock().unwrap();
            let n = (limit as usize).min(p.len());
            Ok(p.drain(..n)
                .map(|log_id| QueueMessage {
                    log_id,
                    lease: log_id * 10,
                })
                .collect())
        }
        async fn release(&self, ids: &[LogId], _now: SystemTime) -> Result<u64, StoreError> {
            self.released.lock().unwrap().extend_from_slice(ids);
            Ok(ids.len() as u64)
        }
    }

    /// A receipts queue holding these bodies, handed out `per_take` at a time; or, when
    /// `unreadable`, failing every receive.
    struct FakeReceipts {
        waiting: Mutex<Vec<String>>,
        per_take: usize,
        unreadable: bool,
        deleted: Mutex<Vec<String>>,
    }

    impl FakeReceipts {
        fn none() -> Self {
            Self::with(vec![], 10)
        }

        fn with(bodies: Vec<String>, per_take: usize) -> Self {
            Self {
                waiting: Mutex::new(bodies),
                per_take,
                unreadable: false,
                deleted: Mutex::new(Vec::new()),
            }
        }
    }

    impl ReceiptSource for FakeReceipts {
        async fn take(&self) -> Result<Vec<(String, String)>, Failure> {
            if self.unreadable {
                return Err(Failure::transient("AccessDenied"));
            }
            let mut w = self.waiting.lock().unwrap();
            let n = self.per_take.min(w.len());
            Ok(w.drain(..n).map(|b| (format!("handle-{b}"), b)).collect())
        }
        async fn delete(&self, handles: &[String]) -> Result<(), Failure> {
            self.deleted.lock().unwrap().extend_from_slice(handles);
            Ok(())
        }
    }

    fn receipt_body(log_id: LogId) -> String {
        format!(
            r#"{{"log_id":{log_id},"lease":7,"attempt":1,"at_us":1,"steps":[{{"step":"sms","type":"send_sms","attempt":1,"output":{{"message_id":"m"}}}}]}}"#
        )
    }

    #[tokio::test]
    async fn receipts_are_applied_before_leases_are_rescued_and_malformed_ones_stay_queued() {
        // GIVEN five receipts waiting, one of them malformed, handed out two at a time
        let store = FakeStore::with(0);
        let bodies = vec![
            receipt_body(1),
            receipt_body(2),
            "{nonsense".into(),
            receipt_body(3),
            receipt_body(4),
        ];
        let receipts = FakeReceipts::with(bodies, 2);
        // WHEN drained
        let s = drain(
            &store,
            &FakeQueue::new(i64::MAX, None),
            &receipts,
            &SystemClock,
            &DrainOptions::default(),
        )
        .await
        .unwrap();
        // THEN every good receipt was applied (or found stale) before the rescue, and deleted
        assert_eq!(
            store.calls.lock().unwrap().clone(),
            vec!["receipts 1,2", "receipts 3", "receipts 4", "rescue"]
        );
        assert_eq!((s.receipts, s.receipts_applied, s.receipts_malformed), (4, 2, 1));
        let deleted = receipts.deleted.lock().unwrap().clone();
        assert_eq!(deleted.len(), 4);
        assert!(!deleted.iter().any(|h| h.contains("nonsense")));
    }

    #[tokio::test]
    async fn no_lease_is_rescued_while_receipts_cannot_be_read_but_claims_go_on() {
        let store = FakeStore::with(3);
        let receipts = FakeReceipts {
            unreadable: true,
            ..FakeReceipts::none()
        };
        let s = drain(
            &store,
            &FakeQueue::new(i64::MAX, None),
            &receipts,
            &SystemClock,
            &DrainOptions::default(),
        )
        .await
        .unwrap();
        assert!(store.calls.lock().unwrap().is_empty());
        assert_eq!(s.claimed, 3);
    }

    /// Rejects the entries whose id is divisible by `reject_every`, fails whole calls that
    /// contain `fail_on`, and records batch sizes and the most calls in flight.
    struct FakeQueue {
        reject_every: i64,
        fail_on: Option<LogId>,
        sizes: Mutex<Vec<usize>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl FakeQueue {
        fn new(reject_every: i64, fail_on: Option<LogId>) -> Self {
            Self {
                reject_every,
                fail_on,
                sizes: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
            }
        }
    }

    impl Queue for FakeQueue {
        async fn send_batch(&self, messages: &[QueueMessage]) -> Result<Vec<LogId>, Failure> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.sizes.lock().unwrap().push(messages.len());
            if self.fail_on.is_some_and(|f| messages.iter().any(|m| m.log_id == f)) {
                return Err(Failure::transient("throttled"));
            }
            Ok(messages
                .iter()
                .map(|m| m.log_id)
                .filter(|id| id % self.reject_every == 0)
                .collect())
        }
    }

    #[tokio::test]
    async fn drains_in_batches_of_ten_with_bounded_concurrency() {
        // GIVEN 253 due logs and a queue that accepts everything
        let store = FakeStore::with(253);
        let queue = FakeQueue::new(i64::MAX, None);
        let opts = DrainOptions {
            claim_batch: 100,
            max_in_flight: 3,
            stop_at: None,
            ..Default::default()
        };
        // WHEN drained
        let s = drain(&store, &queue, &FakeReceipts::none(), &SystemClock, &opts)
            .await
            .unwrap();
        // THEN all were claimed and sent, 10 at most per call, 3 calls at most at once
        assert_eq!((s.claimed, s.sent, s.failed, s.stopped_by), (253, 253, 0, "drained"));
        let sizes = queue.sizes.lock().unwrap().clone();
        assert_eq!(sizes.len(), 26, "10 + 10 + 6 calls for claims of 100, 100 and 53");
        assert!(sizes.iter().all(|&n| (1..=QUEUE_BATCH).contains(&n)));
        assert_eq!(sizes.iter().sum::<usize>(), 253);
        let most = queue.most_in_flight.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most}");
    }

    #[tokio::test]
    async fn rejected_entries_and_failed_calls_go_back_to_pending() {
        // GIVEN 40 logs; the queue rejects every 7th entry and fails the call holding log 25
        let store = FakeStore::with(40);
        let queue = FakeQueue::new(7, Some(25));
        // WHEN drained
        let s = drain(
            &store,
            &queue,
            &FakeReceipts::none(),
            &SystemClock,
            &DrainOptions::default(),
        )
        .await
        .unwrap();
        // THEN those were released, the rest counted as sent
        let mut released = store.released.lock().unwrap().clone();
        released.sort();
        let expected: Vec<LogId> = vec![7, 14, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 35];
        assert_eq!(released, expected);
        assert_eq!((s.claimed, s.sent, s.failed), (40, 27, 13));
    }

    #[tokio::test]
    async fn a_past_deadline_still_allows_one_round_and_no_more() {
        let store = FakeStore::with(250);
        let queue = FakeQueue::new(i64::MAX, None);
        let opts = DrainOptions {
            claim_batch: 100,
            max_in_flight: 4,
            stop_at: Some(Instant::now()),
            ..Default::default()
        };
        let s = drain(&store, &queue, &FakeReceipts::none(), &SystemClock, &opts)
            .await
            .unwrap();
        assert_eq!((s.claimed, s.stopped_by), (100, "deadline"));
        assert_eq!(store.pending.lock().unwrap().len(), 150);
    }

    /// Wakes at once; the first two times, events "arrive" (pending logs appear).
    struct Arrivals<'a> {
        store: &'a FakeStore,
        waits: usize,
        next_id: LogId,
    }

    impl Wakeups for Arrivals<'_> {
        async fn wait(&mut self, _max: Duration) {
            self.waits += 1;
            if self.waits <= 2 {
                let mut p = self.store.pending.lock().unwrap();
                for _ in 0..5 {
                    self.next_id += 1;
                    p.push(self.next_id);
                }
            }
        }
    }

    #[tokio::test]
    async fn low_latency_mode_drains_again_after_each_wake_until_the_deadline() {
        // GIVEN 30 due logs, and 5 more arriving at each of the first two wakes
        let store = FakeStore::with(30);
        let queue = FakeQueue::new(i64::MAX, None);
        let mut wakeups = Arrivals {
            store: &store,
            waits: 0,
            next_id: 30,
        };
        // WHEN served for a moment
        let until = Instant::now() + Duration::from_millis(50);
        let opts = DrainOptions {
            stop_at: Some(until),
            ..Default::default()
        };
        let s = serve(
            &store,
            &queue,
            &FakeReceipts::none(),
            &SystemClock,
            &opts,
            &mut wakeups,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        // THEN every log, early or late, was claimed and sent, and it stopped at the deadline
        assert_eq!((s.claimed, s.sent, s.stopped_by), (40, 40, "deadline"));
        assert!(wakeups.waits > 2);
        assert!(Instant::now() >= until);
    }

    #[test]
    fn the_margin_never_takes_more_than_half_the_time_left() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        assert!(stop_before(far, Duration::from_secs(5)) <= far - Duration::from_secs(5));
        let near = now + Duration::from_secs(4);
        let stop = stop_before(near, Duration::from_secs(5));
        assert!(
            stop > now + Duration::from_millis(1900) && stop <= near - Duration::from_millis(1900),
            "{stop:?}"
        );
    }

    #[test]
    fn an_invocation_knows_its_time_left_unless_it_starts_with_under_a_second() {
        let start = std::time::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let ms = |offset: i64| (1_800_000_000_000 + offset) as u64;
        let cases = [
            (0, None, "no deadline"),
            (ms(-60_000), None, "past by a minute (the emulator's)"),
            (ms(-1), None, "just past"),
            (ms(0), None, "ends as it starts"),
            (ms(999), None, "under a second"),
            (ms(1_000), Some(Duration::from_secs(1)), "a second"),
            (
                ms(3_000),
                Some(Duration::from_secs(3)),
                "close, but known: the drain stops",
            ),
            (ms(50_000), Some(Duration::from_secs(50)), "the scheduler's timeout"),
        ];
        for (deadline, expected, case) in cases {
            assert_eq!(invocation_time_left(deadline, start), expected, "{case}");
        }
        // Read later, a deadline that passes while the work runs is zero, not unknown.
        assert_eq!(
            time_left(ms(3_000), start + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
    }
}
