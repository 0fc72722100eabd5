//! From the commit of a status change to its message reaching the queue (SendMessageBatch):
//! low-latency mode (the scheduler keeps draining, woken by NOTIFY) against the default
//! every-minute tick.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_shared::clock::SystemClock;
use herald_shared::drain::{drain, serve, DrainOptions};
use herald_shared::model::{Failure, LogId, Queue, QueueMessage};
use herald_shared::pg::Database;

use crate::db::{Db, Server};
use crate::queue::NoReceipts;
use crate::report::Row;
use crate::Settings;

/// Notes when each log's message was sent.
#[derive(Default)]
struct TimedQueue(Mutex<HashMap<LogId, Instant>>);

impl Queue for TimedQueue {
    async fn send_batch(&self, messages: &[QueueMessage]) -> Result<Vec<LogId>, Failure> {
        let now = Instant::now();
        let mut sent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for m in messages {
            sent.insert(m.log_id, now);
        }
        Ok(Vec::new())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    LowLatency,
    /// One drain at the end of the tick period, as the every-minute schedule does.
    Tick(Duration),
}

/// `n` changes spread evenly over `spread`, each its own transaction; the scheduler in
/// `mode`. Returns each change's latency in milliseconds.
async fn measure(db: &Db, n: i64, spread: Duration, mode: Mode) -> Result<Vec<f64>, String> {
    db.exec(
        "UPDATE members SET status = 'new';
         TRUNCATE herald_inbox;
         TRUNCATE ONLY automation_execution_logs, automation_receipts, automation_step_runs, automation_suppression_windows CASCADE;",
    )
    .await?;
    db.settle().await?;
    let database = Database::new(db.url.parse().map_err(|e| format!("{e}"))?);
    let store = database.store().await.map_err(|e| e.to_string())?;
    let queue = TimedQueue::default();
    let opts = DrainOptions {
        claim_batch: crate::queue::CLAIM_BATCH,
        ..Default::default()
    };
    let start = Instant::now();
    let writer = crate::db::connect(&db.url).await?;
    let update = writer
        .prepare("UPDATE members SET status = 'active' WHERE id = $1")
        .await
        .map_err(|e| e.to_string())?;
    let changes = async {
        let mut committed = HashMap::new();
        for i in 1..=n {
            tokio::time::sleep_until((start + spread.mul_f64((i - 1) as f64 / n as f64)).into()).await;
            writer.execute(&update, &[&i]).await.map_err(|e| e.to_string())?;
            committed.insert(i.to_string(), Instant::now());
        }
        Ok::<_, String>(committed)
    };
    let scheduler = async {
        match mode {
            Mode::LowLatency => {
                let mut wakeups = database.listen("herald_inbox").await.map_err(|e| e.to_string())?;
                let opts = DrainOptions {
                    stop_at: Some(start + spread + Duration::from_secs(2)),
                    ..opts.clone()
                };
                serve(
                    &store,
                    &queue,
                    &NoReceipts,
                    &SystemClock,
                    &opts,
                    &mut wakeups,
                    Duration::from_secs(1),
                )
                .await
                .map_err(|e| e.to_string())
            }
            Mode::Tick(period) => {
                tokio::time::sleep_until((start + period).into()).await;
                drain(&store, &queue, &NoReceipts, &SystemClock, &opts)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    };
    let (committed, summary) = tokio::join!(changes, scheduler);
    let (committed, summary) = (committed?, summary?);
    if summary.claimed != n as u64 {
        return Err(format!("latency: {} of {n} changes reached the queue", summary.claimed));
    }
    let sent = queue.0.into_inner().unwrap_or_else(|p| p.into_inner());
    let rows = db
        .client
        .query("SELECT id, subject_id FROM ONLY automation_execution_logs", &[])
        .await
        .map_err(|e| e.to_string())?;
    let mut latencies = Vec::new();
    for r in rows {
        let (id, subject): (i64, String) = (r.get(0), r.get(1));
        let at = sent.get(&id).ok_or(format!("log {id} was never sent"))?;
        let from = committed
            .get(&subject)
            .ok_or(format!("no change of member {subject}"))?;
        latencies.push(at.saturating_duration_since(*from).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let n = settings.size(1_000, 100);
    let spread = Duration::from_secs(if settings.quick { 2 } else { 20 });
    let period = Duration::from_secs(if settings.quick { 6 } else { 60 });
    let db = server.database("bench_latency", true).await?;
    db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, email text);
         INSERT INTO members SELECT g, 'new', 'm' || g || '@example.com' FROM generate_series(1, {n}) g;
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_from, email_to, email_subject, email_text)
         VALUES ('welcome', 'members', 'active', 'club@example.com', '{{{{ email }}}}', 'Welcome', 'Hi');
         SELECT herald_low_latency(true);"
    ))
    .await?;
    let (mut p50, mut p99, mut t50, mut t99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..settings.runs {
        let low = measure(&db, n, spread, Mode::LowLatency).await?;
        let tick = measure(&db, n, spread, Mode::Tick(period)).await?;
        crate::progress(&format!(
            "latency, run {}: low-latency p50 {:.0} ms p99 {:.0} ms; every-{}-s tick p50 {:.0} ms p99 {:.0} ms",
            run + 1,
            percentile(&low, 0.5),
            percentile(&low, 0.99),
            period.as_secs(),
            percentile(&tick, 0.5),
            percentile(&tick, 0.99)
        ));
        p50.push(percentile(&low, 0.5));
        p99.push(percentile(&low, 0.99));
        t50.push(percentile(&tick, 0.5));
        t99.push(percentile(&tick, 0.99));
    }
    let case = "latency";
    let tick50 = Row::new(case, format!("p50, tick every {} s", period.as_secs()), t50, "ms");
    let tick99 = Row::new(case, format!("p99, tick every {} s", period.as_secs()), t99, "ms").note(format!(
        "{n} changes spread over {} s, starting just after a tick",
        spread.as_secs()
    ));
    let low50 = Row::new(case, "p50, low-latency mode", p50, "ms").against(&tick50);
    let low99 = Row::new(case, "p99, low-latency mode", p99, "ms")
        .against(&tick99)
        .bar("p99 ≤ 1,000 ms")
        .note("commit of the change → its SendMessageBatch; NOTIFY wakes the scheduler, 1 s poll as the fallback");
    Ok(vec![low50, low99, tick50, tick99])
}
