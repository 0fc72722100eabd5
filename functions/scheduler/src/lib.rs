//! The scheduler function: on each EventBridge tick, moves due logs to the SQS queue.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use herald_shared::aws::{load_config, SqsQueue, SqsReceipts};
use herald_shared::clock::{Clock, SystemClock};
use herald_shared::config::{self, ConfigError};
use herald_shared::drain::{drain, invocation_time_left, serve, stop_before, DrainOptions, DrainSummary};
use herald_shared::metrics::{self, SchedulerMetrics};
use herald_shared::pg::{Database, PgStore};
use lambda_runtime::{Error, LambdaEvent};
use tracing::{info, warn};

/// What the function keeps between invocations.
pub struct Scheduler {
    pub db: Database,
    pub queue: SqsQueue,
    /// Write-backs the executor could not make, applied before leases are rescued.
    pub receipts: SqsReceipts,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Logs per claim (`HERALD_CLAIM_BATCH`, default 100).
    pub claim_batch: i64,
    /// SendMessageBatch calls in flight (`HERALD_SEND_CONCURRENCY`, default 4).
    pub send_concurrency: usize,
    /// Stop claiming this long before the invocation's deadline (`HERALD_DEADLINE_MARGIN_MS`, default 5000).
    pub deadline_margin: Duration,
    /// How long a queued log waits for the executor before it is re-queued
    /// (`HERALD_QUEUE_LEASE_SECS`, default 900: longer than SQS takes to redeliver).
    pub queue_lease: Duration,
    /// Keep draining until the deadline, woken by the capture functions' NOTIFY
    /// (`HERALD_LOW_LATENCY`, default false).
    pub low_latency: bool,
    /// In low-latency mode, drain at least this often even without a notice
    /// (`HERALD_POLL_MS`, default 1000).
    pub poll: Duration,
    /// The `Function` dimension of its metrics: the function's name (`AWS_LAMBDA_FUNCTION_NAME`,
    /// which Lambda sets; `scheduler` without it).
    pub function: String,
}

impl Settings {
    fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            claim_batch: config::number("HERALD_CLAIM_BATCH", 100, 1, 10_000)?,
            send_concurrency: config::number("HERALD_SEND_CONCURRENCY", 4, 1, 64)?,
            deadline_margin: Duration::from_millis(config::number("HERALD_DEADLINE_MARGIN_MS", 5_000, 0, 600_000)?),
            queue_lease: Duration::from_secs(config::number("HERALD_QUEUE_LEASE_SECS", 900, 10, 86_400)?),
            low_latency: config::flag("HERALD_LOW_LATENCY")?,
            poll: Duration::from_millis(config::number("HERALD_POLL_MS", 1_000, 50, 60_000)?),
            function: config::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "scheduler".into()),
        })
    }
}

impl Scheduler {
    /// Built once per container, from the environment.
    pub async fn from_env() -> Result<Self, Error> {
        let aws = load_config().await;
        Ok(Self {
            // No receipts wait on the scheduler: its statements (an ingest of 10,000 events
            // among them) may take longer than the executor's, and a hung one fails the run.
            db: config::database_handle(&aws)
                .await?
                .timeout(config::db_timeout(10_000, 60_000)?),
            queue: SqsQueue::new(&aws, config::required("HERALD_QUEUE_URL")?),
            receipts: SqsReceipts::new(&aws, config::required("HERALD_RECEIPTS_QUEUE_URL")?),
            clock: Arc::new(SystemClock),
            settings: Settings::from_env()?,
        })
    }
}

/// One scheduled run: drain until nothing is due or the deadline is near. The run's metrics
/// are written to standard output as an EMF line.
pub async fn handle(s: &Scheduler, event: LambdaEvent<EventBridgeEvent>) -> Result<DrainSummary, Error> {
    let (summary, lines) = invoke(s, event).await?;
    metrics::print(&lines);
    Ok(summary)
}

/// [`handle`] without writing the metrics: what the run did, and the EMF lines.
pub async fn invoke(s: &Scheduler, event: LambdaEvent<EventBridgeEvent>) -> Result<(DrainSummary, Vec<String>), Error> {
    let (tick, ctx) = event.into_parts();
    // Lambda's deadline is on the wall clock; one already past (an emulator's) is not known,
    // and the drain runs to its own end.
    let time_left = invocation_time_left(ctx.deadline, SystemTime::now());
    let deadline = time_left.map(|left| Instant::now() + left);
    let time_left_ms = time_left.map(|left| left.as_millis() as u64);
    info!(source = tick.source, time = ?tick.time, time_left_ms, "scheduled run");
    let options = DrainOptions {
        claim_batch: s.settings.claim_batch,
        max_in_flight: s.settings.send_concurrency,
        stop_at: deadline.map(|d| stop_before(d, s.settings.deadline_margin)),
        queue_lease: s.settings.queue_lease,
        recover: true,
    };
    let store = s.db.store().await?;
    let summary = match options.stop_at {
        Some(_) if s.settings.low_latency => {
            let mut wakeups = s.db.listen("herald_inbox").await?;
            let poll = s.settings.poll;
            serve(
                &store,
                &s.queue,
                &s.receipts,
                s.clock.as_ref(),
                &options,
                &mut wakeups,
                poll,
            )
            .await?
        }
        _ => drain(&store, &s.queue, &s.receipts, s.clock.as_ref(), &options).await?,
    };
    let counts = SchedulerMetrics {
        claimed: summary.claimed,
        queued: summary.sent,
        queue_rejected: summary.failed,
        ingested: summary.ingested,
        suppressed: summary.suppressed,
        rescued: summary.rescued.requeued + summary.rescued.resumed,
        missed: summary.dates.missed + summary.schedules.missed,
        oldest_due_age: oldest_due_age(&store, s.clock.now()).await,
    };
    let lines = counts.lines(&s.settings.function, metrics::epoch_ms(s.clock.now()));
    Ok((summary, lines))
}

/// How long the oldest log due at `now` has been due: what the run left behind. Zero when
/// none is; `None` (and a warning) when it cannot be read, which does not fail the run.
async fn oldest_due_age(store: &PgStore, now: SystemTime) -> Option<Duration> {
    match store.oldest_due(now).await {
        Ok(oldest) => Some(oldest.map_or(Duration::ZERO, |at| now.duration_since(at).unwrap_or_default())),
        Err(e) => {
            warn!(error = %e, "the oldest due log could not be read");
            None
        }
    }
}
