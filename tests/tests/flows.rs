//! Workflow instances through the executor's loop against the real ledger and moto.

use std::time::{Duration, SystemTime};

use herald_shared::clock::ManualClock;
use herald_shared::flow::{FlowOutcome, FlowRunner, Performers, Stop};
use herald_shared::pg::Database;
use herald_shared::workflow::machine::Park;
use herald_tests::Herald;
use serde_json::json;

#[tokio::test]
async fn a_three_step_flow_sends_sleeps_and_finishes_with_its_history_in_the_ledger() {
    let h = Herald::new().await;
    h.db.exec(&format!(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, starts_at timestamptz,
                                email text, phone text, name text);
         INSERT INTO bookings VALUES (1, 'confirmed', '2030-01-02T09:00:00Z', 'b1-{tag}@example.com', '+1555{tag:07}', 'Ana');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
         VALUES ('reminders', 'bookings', 'confirmed', 'x', 'x', 'x');",
        tag = h.tag
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "exit": [{"if": {"field": "status", "op": "=", "value": "cancelled"}, "reason": "booking cancelled"}],
        "steps": [
            {"id": "confirm", "type": "send_email", "to": "{{ email }}", "subject": "Booked", "text": "See you, {{ name }}"},
            {"id": "night-before", "type": "wait", "until": {"field": "starts_at", "offset": "-1 day"}},
            {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "Tomorrow, {{ name }}"}
        ]
    });
    let version: i32 =
        h.db.client
            .query_one("SELECT herald_save_automation('reminders', $1)", &[&doc])
            .await
            .unwrap()
            .get(0);
    // An instance, queued under lease 7 as the scheduler leaves it.
    h.db.exec(&format!(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
            run_at, created_at, updated_at, version, next_step, lease_token, lease_expires_at)
         SELECT id, 'public', 'bookings', 'id', '1', 'status_change', '{{}}', 'queued', now(), now(), now(), {version},
                'confirm', 7, now() + interval '1 hour'
         FROM automations WHERE name = 'reminders'"
    ))
    .await;
    let log_id: i64 = h.db.scalar("SELECT id FROM automation_execution_logs").await;
    let store = Database::new(h.db.config()).store().await.unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000); // 2030-01-01T00:00:00Z
    let clock = ManualClock::new(start);
    let performers = Performers {
        email: &h.executor.email,
        sms: &h.executor.sms,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        clock: &clock,
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let message = json!({"log_id": log_id, "lease": 7}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;
    let until: jiff::Timestamp = "2030-01-01T09:00:00Z".parse().unwrap();
    assert_eq!(
        out,
        vec![FlowOutcome::Stopped(Stop::Park(Park::Sleeping {
            next: Some("remind".into()),
            until
        }))]
    );
    let row =
        h.db.client
            .query_one(
                "SELECT status, next_step, run_at::text, lease_token FROM automation_execution_logs",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "waiting");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("remind"));
    assert_eq!(row.get::<_, Option<i64>>(3), None);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);

    // Woken (the scheduler claims it as it claims pending logs), it sends the SMS and ends.
    clock.advance(Duration::from_secs(9 * 3600));
    h.db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 8")
        .await;
    let message = json!({"log_id": log_id, "lease": 8}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
    let history: Vec<String> =
        h.db.column("SELECT step_id || ':' || step_type || ':' || status FROM automation_step_runs ORDER BY id")
            .await;
    assert_eq!(
        history,
        [
            "confirm:send_email:done",
            "night-before:wait:decided",
            "remind:send_sms:done"
        ]
    );
    let sms = h.moto.all_sms().await;
    assert!(sms.iter().any(|m| m.message == "Tomorrow, Ana"), "{sms:?}");
    let status: String = h.db.scalar("SELECT status FROM automation_execution_logs").await;
    assert_eq!(status, "completed");
}

#[tokio::test]
async fn through_the_functions_a_status_change_starts_an_instance_that_waits_and_wakes() {
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock();
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "steps": [
            {"id": "thanks", "type": "send_email", "to": "{{ client_email }}", "subject": "Done: {{ job_title }}", "text": "Thanks, {{ client_name }}"},
            {"id": "later", "type": "wait", "for": "1 hour"},
            {"id": "review", "type": "send_sms", "to": "{{ client_phone }}", "body": "How did we do, {{ client_name }}?"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&doc])
        .await
        .unwrap();

    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    // The functions' clock started before the change was captured.
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    let (status, next): (String, Option<String>) = {
        let r =
            h.db.client
                .query_one("SELECT status, next_step FROM automation_execution_logs", &[])
                .await
                .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), next.as_deref()), ("waiting", Some("review")));
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert!(h.moto.sms_to(&h.phone_of(1)).await.is_empty());

    // Not due yet: the scheduler claims nothing.
    assert_eq!(h.tick().await.claimed, 0);
    clock.advance(Duration::from_secs(3601));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed"]);
    let sms = h.moto.sms_to(&h.phone_of(1)).await;
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0].message, "How did we do, Ann Lee?");
    let history: Vec<String> =
        h.db.column("SELECT step_id || ':' || status FROM automation_step_runs ORDER BY id")
            .await;
    assert_eq!(history, ["thanks:done", "later:decided", "review:done"]);
}
