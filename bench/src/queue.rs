//! The queue side: the scheduler's ingest and claim path, and the executor's round trips;
//! also the full cycle's Herald half (see `cycle`), with in-process null senders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_shared::clock::SystemClock;
use herald_shared::drain::{drain, DrainOptions};
use herald_shared::flow::{FlowOutcome, FlowRunner, Performers};
use herald_shared::ledger::{DueLogs, Stop};
use herald_shared::model::{Email, EmailSender, Failure, LogId, Queue, QueueMessage, Sms, SmsSender};
use herald_shared::pg::{Database, PgStore};
use herald_shared::receipt::{Receipt, ReceiptSink, ReceiptSource};
use herald_shared::webhook::{WebhookSender, WebhookStep};
use herald_shared::workflow::machine::Park;
use tokio::sync::{mpsc, Mutex};

use crate::db::{Db, Server};
use crate::proxy::CountingProxy;
use crate::report::Row;
use crate::Settings;

/// Logs per scheduler claim, for Herald and the bare claim alike.
pub const CLAIM_BATCH: i64 = 500;

/// Answers every send at once with a made-up provider id.
#[derive(Default)]
pub struct NullSenders(AtomicU64);

impl EmailSender for NullSenders {
    async fn send_email(&self, _email: &Email) -> Result<String, Failure> {
        Ok(format!("null-email-{}", self.0.fetch_add(1, Ordering::Relaxed)))
    }
}

impl SmsSender for NullSenders {
    async fn send_sms(&self, _sms: &Sms) -> Result<String, Failure> {
        Ok(format!("null-sms-{}", self.0.fetch_add(1, Ordering::Relaxed)))
    }
}

/// No receipts queue: the benchmark's database does not go away.
pub struct NoReceipts;

impl ReceiptSink for NoReceipts {
    async fn put(&self, _receipts: &[Receipt]) -> Result<(), Failure> {
        Err(Failure::permanent("the benchmark keeps no receipts"))
    }
}

impl ReceiptSource for NoReceipts {
    async fn take(&self) -> Result<Vec<(String, String)>, Failure> {
        Ok(Vec::new())
    }
    async fn delete(&self, _handles: &[String]) -> Result<(), Failure> {
        Ok(())
    }
}

/// A queue that hands every message to in-process executors, or drops it.
pub struct ChannelQueue(pub Option<mpsc::UnboundedSender<QueueMessage>>);

impl Queue for ChannelQueue {
    async fn send_batch(&self, messages: &[QueueMessage]) -> Result<Vec<LogId>, Failure> {
        if let Some(tx) = &self.0 {
            for m in messages {
                tx.send(*m).map_err(|_| Failure::transient("executors are gone"))?;
            }
        }
        Ok(Vec::new())
    }
}

/// A members table, an automation that emails and texts them, and `n` pending logs.
pub async fn prepare(server: &Server, name: &str, n: i64) -> Result<Db, String> {
    let db = server.database(name, true).await?;
    add_members(&db, n).await?;
    refill(&db, n).await?;
    Ok(db)
}

/// `n` members, attached, and the `welcome` automation that emails and texts them.
pub async fn add_members(db: &Db, n: i64) -> Result<(), String> {
    db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, name text, email text, phone text);
         INSERT INTO members SELECT g, 'active', 'Member ' || g, 'm' || g || '@example.com', '+1' || (4152000000 + g)
         FROM generate_series(1, {n}) g;
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_from, email_to, email_subject, email_text, sms_to, sms_body)
         VALUES ('welcome', 'members', 'active', 'club@example.com', '{{{{ email }}}}', 'Welcome, {{{{ name }}}}',
                 'Hi {{{{ name }}}}, welcome to the club.', '{{{{ phone }}}}', 'Hi {{{{ name }}}}, welcome!');"
    ))
    .await
}

/// Empties the ledger and makes `n` due pending logs.
pub async fn refill(db: &Db, n: i64) -> Result<(), String> {
    db.exec(
        "TRUNCATE ONLY automation_execution_logs, automation_receipts, automation_step_runs, automation_suppression_windows CASCADE",
    )
    .await?;
    add_pending(db, n).await?;
    db.settle().await
}

/// `n` due pending logs of the `welcome` automation (about 100 bytes of snapshot each).
pub async fn add_pending(db: &Db, n: i64) -> Result<(), String> {
    db.exec(&format!(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, old_status, new_status,
            snapshot, status, run_at, created_at, updated_at)
         SELECT a.id, 'public', 'members', 'id', g::text, 'status_change', 'new', 'active',
                jsonb_build_object('id', g, 'status', 'active', 'name', 'Member ' || g, 'email', 'm' || g || '@example.com'),
                'pending', now() - interval '1 second', now(), now()
         FROM generate_series(1, {n}) g, automations a WHERE a.name = 'welcome'"
    ))
    .await
}

fn store_of(url: &str) -> Result<Database, String> {
    Ok(Database::new(url.parse().map_err(|e| format!("{e}"))?))
}

/// The scheduler's drain with a queue that drops everything: logs claimed per second.
pub async fn herald_drain(db: &Db, n: i64) -> Result<f64, String> {
    let database = store_of(&db.url)?;
    let store = database.store().await.map_err(|e| e.to_string())?;
    let opts = DrainOptions {
        claim_batch: CLAIM_BATCH,
        ..Default::default()
    };
    let start = Instant::now();
    let summary = drain(&store, &ChannelQueue(None), &NoReceipts, &SystemClock, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if summary.claimed != n as u64 {
        return Err(format!("the drain claimed {} logs, not {n}", summary.claimed));
    }
    Ok(n as f64 / secs)
}

/// A minimal table of `n` due rows, for the bare claim.
pub async fn prepare_bare(server: &Server, name: &str) -> Result<Db, String> {
    let db = server.database(name, false).await?;
    db.exec(
        "CREATE TABLE logs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, status text NOT NULL,
                            run_at timestamptz NOT NULL, payload jsonb NOT NULL);
         CREATE INDEX logs_due ON logs (run_at) WHERE status = 'pending';",
    )
    .await?;
    Ok(db)
}

/// The bare `FOR UPDATE SKIP LOCKED` claim of the same batches, looped until empty.
pub async fn bare_drain(db: &Db, n: i64) -> Result<f64, String> {
    db.exec(&format!(
        "TRUNCATE logs; INSERT INTO logs (status, run_at, payload)
         SELECT 'pending', now() - interval '1 second',
                jsonb_build_object('id', g, 'status', 'active', 'name', 'Member ' || g, 'email', 'm' || g || '@example.com')
         FROM generate_series(1, {n}) g"
    ))
    .await?;
    db.settle().await?;
    let claim = db
        .client
        .prepare(
            "WITH c AS (SELECT id FROM logs WHERE status = 'pending' AND run_at <= now()
                        ORDER BY run_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             UPDATE logs l SET status = 'queued' FROM c WHERE l.id = c.id RETURNING l.id, l.payload",
        )
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut claimed = 0i64;
    loop {
        let rows = db
            .client
            .query(&claim, &[&CLAIM_BATCH])
            .await
            .map_err(|e| e.to_string())?;
        claimed += rows.len() as i64;
        if (rows.len() as i64) < CLAIM_BATCH {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if claimed != n {
        return Err(format!("the bare claim took {claimed} rows, not {n}"));
    }
    Ok(n as f64 / secs)
}

/// Moving `n` captured events from the inbox to the ledger: events per second.
pub async fn ingest(db: &Db, n: i64) -> Result<f64, String> {
    db.exec(
        "TRUNCATE ONLY automation_execution_logs, automation_receipts, automation_step_runs, automation_suppression_windows CASCADE",
    )
    .await?;
    db.exec(&format!(
        "UPDATE members SET status = 'new' WHERE id <= {n}; UPDATE members SET status = 'active' WHERE id <= {n}"
    ))
    .await?;
    db.settle().await?;
    let database = store_of(&db.url)?;
    let store = database.store().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut moved = 0;
    loop {
        let m = store
            .ingest(herald_shared::drain::INGEST_BATCH)
            .await
            .map_err(|e| e.to_string())?
            .moved;
        moved += m;
        if m < herald_shared::drain::INGEST_BATCH as u64 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if moved != n as u64 {
        return Err(format!("ingest moved {moved} events, not {n}"));
    }
    Ok(n as f64 / secs)
}

/// No webhooks: the benchmark's flows send none.
struct NoWebhooks;

impl WebhookSender for NoWebhooks {
    async fn send(&self, _step: &WebhookStep<'_>) -> Result<serde_json::Value, Failure> {
        Err(Failure::permanent("the benchmark sends no webhooks"))
    }
}

/// One batch through the executor's core, the flow runner: how many of its messages ran
/// to their end.
async fn execute(ledger: &PgStore, senders: &NullSenders, bodies: Vec<String>) -> Result<u64, String> {
    let performers = Performers {
        email: senders,
        sms: senders,
        webhooks: &NoWebhooks,
    };
    let runner = FlowRunner {
        ledger,
        effects: &performers,
        receipts: &NoReceipts,
        clock: &SystemClock,
        default_from: "club@example.com",
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let mut done = 0;
    for outcome in runner.run(&bodies, 4).await {
        if outcome != FlowOutcome::Stopped(Stop::Park(Park::Completed)) {
            return Err(format!("an instance did not complete: {outcome:?}"));
        }
        done += 1;
    }
    Ok(done)
}

/// Pending → queued → running → completed for every due log, through the real drain and
/// the real executor core, `workers` executors taking `batch` messages at a time. Returns
/// logs per second and rows written per log.
pub async fn full_cycle(db: &Db, n: i64, batch: usize, workers: usize) -> Result<(f64, f64), String> {
    let written_before = db.rows_written().await?;
    let (tx, rx) = mpsc::unbounded_channel::<QueueMessage>();
    let rx = Arc::new(Mutex::new(rx));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut executors = Vec::new();
    for _ in 0..workers {
        let (rx, done, url) = (rx.clone(), done.clone(), db.url.clone());
        executors.push(tokio::spawn(async move {
            let database = store_of(&url)?.index_scans_only();
            let ledger = database.store().await.map_err(|e| e.to_string())?;
            let senders = NullSenders::default();
            let mut buf = Vec::with_capacity(batch);
            loop {
                buf.clear();
                if rx.lock().await.recv_many(&mut buf, batch).await == 0 {
                    return Ok::<_, String>(());
                }
                let bodies = buf.iter().map(|m| m.to_body()).collect();
                done.fetch_add(execute(&ledger, &senders, bodies).await?, Ordering::Relaxed);
            }
        }));
    }
    let scheduler = store_of(&db.url)?;
    let store = scheduler.store().await.map_err(|e| e.to_string())?;
    let opts = DrainOptions {
        claim_batch: CLAIM_BATCH,
        ..Default::default()
    };
    let summary = drain(&store, &ChannelQueue(Some(tx)), &NoReceipts, &SystemClock, &opts)
        .await
        .map_err(|e| e.to_string())?;
    drop(store);
    drop(scheduler);
    for e in executors {
        e.await.map_err(|e| e.to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    let finished = db
        .count("SELECT count(*) FROM ONLY automation_execution_logs WHERE status = 'completed'")
        .await?;
    if summary.claimed != n as u64 || finished != n || done.load(Ordering::Relaxed) != n as u64 {
        return Err(format!(
            "full cycle: claimed {}, completed {finished}, not {n}",
            summary.claimed
        ));
    }
    let written = db.rows_written().await? - written_before;
    Ok((n as f64 / secs, written as f64 / n as f64))
}

/// Postgres round trips of the executor for one batch of 10 single-channel logs (instances
/// of the column form's one-step definition), on a warm
/// connection (the batch before it prepared the statements), and on a cold one.
pub async fn round_trips(server: &Server) -> Result<(f64, f64), String> {
    let db = server.database("bench_round_trips", true).await?;
    db.exec(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, name text, email text);
         INSERT INTO members SELECT g, 'new', 'Member ' || g, 'm' || g || '@example.com' FROM generate_series(1, 20) g;
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_from, email_to, email_subject, email_text)
         VALUES ('welcome', 'members', 'active', 'club@example.com', '{{ email }}', 'Welcome', 'Hi {{ name }}');
         UPDATE members SET status = 'active';",
    )
    .await?;
    let scheduler = store_of(&db.url)?;
    let store = scheduler.store().await.map_err(|e| e.to_string())?;
    store.ingest(100).await.map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now();
    let messages = store
        .claim_due(20, now, now + Duration::from_secs(900))
        .await
        .map_err(|e| e.to_string())?;
    if messages.len() != 20 {
        return Err(format!("claimed {} logs, not 20", messages.len()));
    }
    let (head, tail) = db.url.rsplit_once(':').ok_or("no port in the database URL")?;
    let (port, path) = tail.split_once('/').ok_or("no database in the URL")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port in {}", db.url))?;
    let proxy = CountingProxy::start(port).await?;
    let config: tokio_postgres::Config = format!("{head}:{}/{path}", proxy.port)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let database = Database::new(config).index_scans_only();
    let ledger = database.store().await.map_err(|e| e.to_string())?;
    let senders = NullSenders::default();
    let mut trips = Vec::new();
    // The column form runs as its definition's one step: an instance of the flow runner.
    for batch in messages.chunks(10) {
        proxy.reset();
        let bodies = batch.iter().map(|m| m.to_body()).collect();
        execute(&ledger, &senders, bodies)
            .await
            .map_err(|e| format!("round trips: {e}"))?;
        trips.push(proxy.round_trips() as f64);
    }
    Ok((trips[1], trips[0]))
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();

    // The claim path: Herald's drain against a bare SKIP LOCKED claim, interleaved.
    let n = settings.size(200_000, 5_000);
    let herald = prepare(server, "bench_drain", n).await?;
    let bare = prepare_bare(server, "bench_drain_bare").await?;
    let (mut h, mut b) = (Vec::new(), Vec::new());
    for run in 0..settings.runs {
        if run > 0 {
            refill(&herald, n).await?;
        }
        h.push(herald_drain(&herald, n).await?);
        b.push(bare_drain(&bare, n).await?);
        crate::progress(&format!(
            "drain, run {}: Herald {:.0} logs/s, bare {:.0} rows/s",
            run + 1,
            h[run],
            b[run]
        ));
    }
    let case = "drain";
    let bare_row = Row::new(case, "bare SKIP LOCKED claim", b, "rows/s");
    rows.push(
        Row::new(case, "Herald scheduler, null queue", h, "logs/s")
            .against(&bare_row)
            .bar("≥ 0.5× bare")
            .note(format!("{n} due logs, claims of {CLAIM_BATCH}")),
    );
    rows.push(bare_row);

    // Moving captured events from the inbox to the ledger.
    let n_ingest = settings.size(100_000, 5_000);
    let mut r = Vec::new();
    for run in 0..settings.runs {
        r.push(ingest(&herald, n_ingest).await?);
        crate::progress(&format!("ingest, run {}: {:.0} events/s", run + 1, r[run]));
    }
    rows.push(Row::new("ingest", "inbox → ledger", r, "events/s").note(format!(
        "{n_ingest} captured events moved by herald_ingest in transactions of 10,000"
    )));

    let (warm, cold) = round_trips(server).await?;
    crate::progress(&format!(
        "executor round trips for a batch of 10: {warm} (warm), {cold} (cold)"
    ));
    rows.push(
        Row::new(
            "executor round trips",
            "one SQS batch of 10 email logs",
            vec![warm],
            "round trips",
        )
        .bar("≤ 3 per batch")
        .note(format!(
            "{cold} on a new connection, which sets up its session and prepares its statements first"
        )),
    );
    Ok(rows)
}
