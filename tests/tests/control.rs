//! Pause, resume and cancel: automations and single instances, through the real scheduler,
//! executor, ledger and moto, with time controlled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use herald_shared::clock::ManualClock;
use herald_shared::flow::{FlowOutcome, FlowRunner, Performers};
use herald_shared::ledger::{FlowLedger, FlowStarted, FlowWrite, FlowWritten, Stop};
use herald_shared::model::{Lease, QueueMessage, StoreError};
use herald_shared::pg::{Database, PgStore};
use herald_shared::workflow::machine::Park;
use herald_tests::{Herald, TestDb};
use serde_json::json;

/// Email now, an SMS an hour later.
fn job_flow() -> serde_json::Value {
    json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "steps": [
            {"id": "thanks", "type": "send_email", "to": "{{ client_email }}", "subject": "Done", "text": "Thanks, {{ client_name }}"},
            {"id": "later", "type": "wait", "for": "1 hour"},
            {"id": "review", "type": "send_sms", "to": "{{ client_phone }}", "body": "How did we do, {{ client_name }}?"}
        ]
    })
}

async fn rows(db: &TestDb, sql: &str) -> Vec<String> {
    db.column(sql).await
}

#[tokio::test]
async fn a_paused_automation_holds_its_events_and_instances_and_resume_releases_them_all() {
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock();
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&job_flow()])
        .await
        .unwrap();

    // Job 1's instance is queued when the automation is paused: its message is skipped.
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    let held: i32 = h.db.scalar("SELECT herald_pause('job-completed')").await;
    assert_eq!(held, 1);
    assert!(h.deliver_all().await.is_empty());
    assert!(h.moto.emails_from(&h.from).await.is_empty());

    // Job 2 completes while paused: recorded, held, never claimed.
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 2").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 0);
    assert_eq!(
        rows(
            &h.db,
            "SELECT status || ' ' || held_from FROM automation_execution_logs ORDER BY id"
        )
        .await,
        ["paused pending", "paused pending"]
    );

    // Resumed: both run, and wait.
    let released: i32 = h.db.scalar("SELECT herald_resume('job-completed')").await;
    assert_eq!(released, 2);
    assert_eq!(h.tick().await.claimed, 2);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["waiting", "waiting"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2);

    // Paused while they wait, past their wake-up time: nothing is sent.
    let held: i32 = h.db.scalar("SELECT herald_pause('job-completed')").await;
    assert_eq!(held, 2);
    clock.advance(Duration::from_secs(3601));
    assert_eq!(h.tick().await.claimed, 0);
    assert!(h.moto.sms_to(&h.phone_of(1)).await.is_empty());

    // One is also paused on its own: resuming the automation leaves it held.
    let first: i64 = h.db.scalar("SELECT min(id) FROM automation_execution_logs").await;
    let paused: bool = h.db.scalar(&format!("SELECT herald_pause_instance({first})")).await;
    assert!(paused);
    let released: i32 = h.db.scalar("SELECT herald_resume('job-completed')").await;
    assert_eq!(released, 1);
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["paused", "completed"]);
    assert_eq!(h.moto.sms_to(&h.phone_of(2)).await.len(), 1);
    assert!(h.moto.sms_to(&h.phone_of(1)).await.is_empty());

    let resumed: bool = h.db.scalar(&format!("SELECT herald_resume_instance({first})")).await;
    assert!(resumed);
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed", "completed"]);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
    assert_eq!(
        h.moto.emails_from(&h.from).await.len(),
        2,
        "each email once, pauses and all"
    );

    // Naming an automation that does not exist is an error, not a silent no-op.
    let err =
        h.db.client
            .query_one("SELECT herald_pause('no-such')", &[])
            .await
            .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("no-such"), "{err}");
}

/// The real ledger, with an operator's statement run just before one of its writes
/// (counted from 1): a pause or cancel that lands while an instance runs.
struct Interrupted<'a> {
    inner: &'a PgStore,
    db: &'a TestDb,
    before_write: usize,
    sql: String,
    writes: AtomicUsize,
}

impl FlowLedger for Interrupted<'_> {
    async fn start(
        &self,
        messages: &[QueueMessage],
        now: SystemTime,
        until: SystemTime,
    ) -> Result<Vec<FlowStarted>, StoreError> {
        self.inner.start(messages, now, until).await
    }

    async fn write(&self, write: &FlowWrite, fresh_for: &[Lease], now: SystemTime) -> Result<FlowWritten, StoreError> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.before_write {
            self.db.exec(&self.sql).await;
        }
        self.inner.write(write, fresh_for, now).await
    }
}

#[tokio::test]
async fn a_running_instance_stops_at_its_next_step_when_paused_or_cancelled() {
    let h = Herald::new().await;
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, email text, phone text, name text);
         INSERT INTO members VALUES (1, 'active', 'm1-{tag}@example.com', '+14152{tag:06}', 'Ana'),
                                    (2, 'active', 'm2-{tag}@example.com', '+14153{tag:06}', 'Bo');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
         VALUES ('welcome', 'members', 'active', 'x', 'x', 'x');",
        tag = h.tag
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome", "text": "Hi {{ name }}"},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ name }}"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('welcome', $1)", &[&doc])
        .await
        .unwrap();
    h.db.exec(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
            run_at, created_at, updated_at, lease_token, lease_expires_at)
         SELECT a.id, 'public', 'members', 'id', g::text, 'status_change', '{}', 'queued', now(), now(), now(), 7,
                now() + interval '1 hour'
         FROM automations a, generate_series(1, 2) g",
    )
    .await;
    let ids: Vec<i64> =
        h.db.column("SELECT id FROM automation_execution_logs ORDER BY id")
            .await;
    let store = Database::new(h.db.config()).store().await.unwrap();
    let clock = ManualClock::new(SystemTime::now());
    let hooks = h.webhooks();
    let performers = Performers {
        email: &h.executor.email,
        sms: &h.executor.sms,
        webhooks: &hooks,
    };
    let run = |id: i64, lease: i64, sql: String| {
        let (store, clock, performers, db, from) = (&store, &clock, &performers, &h.db, h.from.clone());
        let receipts = &h.executor.receipts;
        async move {
            // Write 1 starts the email, write 2 ends it; write 3 would start the SMS.
            let ledger = Interrupted {
                inner: store,
                db,
                before_write: 2,
                sql,
                writes: AtomicUsize::new(0),
            };
            let runner = FlowRunner {
                ledger: &ledger,
                effects: performers,
                receipts,
                clock,
                default_from: &from,
                lease: Duration::from_secs(120),
                ends_at: None,
                step_limit: 100,
            };
            runner
                .run(&[json!({"log_id": id, "lease": lease}).to_string()], 4)
                .await
        }
    };

    // Member 1 is paused while its email is sent; member 2 is cancelled.
    let out = run(ids[0], 7, format!("SELECT herald_pause_instance({})", ids[0])).await;
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Held("paused".into()))]);
    let out = run(ids[1], 7, format!("SELECT herald_cancel({})", ids[1])).await;
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Held("cancelled".into()))]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2);
    assert!(h.moto.sms_to(&format!("+14152{:06}", h.tag)).await.is_empty());
    assert_eq!(
        rows(
            &h.db,
            "SELECT concat_ws(' ', status, next_step, step_attempt, steps_run, held_from, hold, lease_token)
             FROM automation_execution_logs ORDER BY id"
        )
        .await,
        ["paused text 0 1 pending instance", "cancelled text 0 1"]
    );
    // No step run of the SMS was recorded: it never started.
    assert_eq!(
        rows(&h.db, "SELECT DISTINCT step_id FROM automation_step_runs").await,
        ["hello"]
    );
    // A cancelled instance cannot be paused or resumed back to life.
    let again: bool = h.db.scalar(&format!("SELECT herald_pause_instance({})", ids[1])).await;
    assert!(!again);

    // Resumed, member 1 goes on from the SMS.
    let resumed: bool = h.db.scalar(&format!("SELECT herald_resume_instance({})", ids[0])).await;
    assert!(resumed);
    h.db.exec(&format!(
        "UPDATE automation_execution_logs SET status = 'queued', lease_token = 8 WHERE id = {}",
        ids[0]
    ))
    .await;
    let out = run(ids[0], 8, "SELECT 1".into()).await;
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
    assert_eq!(h.moto.sms_to(&format!("+14152{:06}", h.tag)).await.len(), 1);
    assert_eq!(
        h.moto.emails_from(&h.from).await.len(),
        2,
        "the email was not sent again"
    );
}

#[tokio::test]
async fn cancel_for_a_subject_ends_its_open_instances_and_no_other() {
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock();
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&job_flow()])
        .await
        .unwrap();
    // Both jobs' instances wait for their SMS.
    h.db.exec("UPDATE jobs SET status = 'completed'").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 2);
    assert!(h.deliver_all().await.is_empty());
    // Job 1 is reopened and completed again after the suppression window: a second instance,
    // still in the inbox when it is cancelled.
    h.db.exec(
        "SET herald.now = '2030-01-01T00:00:00Z';
         UPDATE jobs SET status = 'scheduled' WHERE id = 1; UPDATE jobs SET status = 'completed' WHERE id = 1;
         RESET herald.now",
    )
    .await;
    let inbox: i64 = h.db.scalar("SELECT count(*) FROM herald_inbox").await;
    assert_eq!(inbox, 1);

    let cancelled: i32 = h.db.scalar("SELECT herald_cancel_for('public.jobs', '1')").await;
    assert_eq!(cancelled, 2);
    assert_eq!(
        rows(
            &h.db,
            "SELECT subject_id || ' ' || status FROM automation_execution_logs ORDER BY id"
        )
        .await,
        ["1 cancelled", "2 waiting", "1 cancelled"]
    );
    let none: i32 = h.db.scalar("SELECT herald_cancel_for('public.jobs', '1')").await;
    assert_eq!(none, 0, "nothing left open");

    clock.advance(Duration::from_secs(3601));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert!(h.moto.sms_to(&h.phone_of(1)).await.is_empty());
    assert_eq!(h.moto.sms_to(&h.phone_of(2)).await.len(), 1);
}
