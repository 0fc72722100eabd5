//! Workflow instances through the executor's loop against the real ledger and moto.

use std::time::{Duration, SystemTime};

use herald_shared::aws::{SesEmail, SnsSms, SqsReceipts};
use herald_shared::clock::{Clock, ManualClock};
use herald_shared::flow::{FlowOutcome, FlowRunner, Performers};
use herald_shared::ledger::Stop;
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
         INSERT INTO bookings VALUES (1, 'confirmed', '2030-01-02T09:00:00Z', 'b1-{tag}@example.com', '+14152{tag:06}', 'Ana');
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
    let hooks = h.webhooks();
    let performers = Performers {
        email: &h.executor.email,
        sms: &h.executor.sms,
        webhooks: &hooks,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        receipts: &h.executor.receipts,
        clock: &clock,
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let message = json!({"log_id": log_id, "lease": 7}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;
    let until: jiff::Timestamp = "2030-01-01T09:00:00Z".parse().unwrap();
    // A wait until a time in the data sleeps at itself, to read the time again when woken.
    assert_eq!(
        out,
        vec![FlowOutcome::Stopped(Stop::Park(Park::Sleeping {
            next: Some("night-before".into()),
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
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("night-before"));
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
            "confirm:exit:decided",
            "confirm:send_email:done",
            "night-before:exit:decided",
            "night-before:wait:decided",
            "night-before:exit:decided",
            "night-before:wait:decided",
            "remind:exit:decided",
            "remind:send_sms:done"
        ]
    );
    let sms = h.moto.all_sms().await;
    assert!(sms.iter().any(|m| m.message == "Tomorrow, Ana"), "{sms:?}");
    let status: String = h.db.scalar("SELECT status FROM automation_execution_logs").await;
    assert_eq!(status, "completed");
}

#[tokio::test]
async fn messages_show_dates_in_the_definitions_zone_relative_to_each_send_and_money_as_money() {
    let h = Herald::new().await;
    h.db.exec(&format!(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, starts_at timestamptz NOT NULL,
                                deposit numeric NOT NULL, host_tz text NOT NULL, email text, phone text, name text);
         INSERT INTO bookings VALUES (1, 'confirmed', '2026-12-14T18:00:00Z', 1234.505, 'America/New_York',
                                      'b1-{tag}@example.com', '+14152{tag:06}', 'Ana');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
         VALUES ('dinner', 'bookings', 'confirmed', 'x', 'x', 'x');",
        tag = h.tag
    ))
    .await;
    // London: 18:00 UTC is 18:00 GMT. The host is in New York.
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "timezone": "Europe/London",
        "steps": [
            {"id": "confirm", "type": "send_email", "to": "{{ email }}",
             "subject": "Table for {{ starts_at | date }}",
             "text": "Hi {{ name }}, see you {{ starts_at | relative }} ({{ starts_at | time(tz=host_tz) }} for your host). Deposit: {{ deposit | money(\"EUR\") }}."},
            {"id": "soon", "type": "wait", "until": {"field": "starts_at", "offset": "-2 hours"}},
            {"id": "remind", "type": "send_sms", "to": "{{ phone }}",
             "body": "{{ name }}, your table is {{ starts_at | relative }}, at {{ starts_at | datetime(\"%-I:%M %p on %A %-d %B\") }}."}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('dinner', $1)", &[&doc])
        .await
        .unwrap();
    h.db.exec(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
            run_at, created_at, updated_at, version, next_step, lease_token, lease_expires_at)
         SELECT id, 'public', 'bookings', 'id', '1', 'status_change', '{}', 'queued', now(), now(), now(), version,
                'confirm', 7, now() + interval '1 hour'
         FROM automations WHERE name = 'dinner'",
    )
    .await;
    let log_id: i64 = h.db.scalar("SELECT id FROM automation_execution_logs").await;
    let store = Database::new(h.db.config()).store().await.unwrap();
    // The confirmation goes out at 10:00 UTC the day before.
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_797_156_000)); // 2026-12-13T10:00:00Z
    let hooks = h.webhooks();
    let performers = Performers {
        email: &h.executor.email,
        sms: &h.executor.sms,
        webhooks: &hooks,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        receipts: &h.executor.receipts,
        clock: &clock,
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let message = json!({"log_id": log_id, "lease": 7}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;
    assert_eq!(
        out,
        vec![FlowOutcome::Stopped(Stop::Park(Park::Sleeping {
            next: Some("soon".into()),
            until: "2026-12-14T16:00:00Z".parse().unwrap()
        }))]
    );
    let emails = h.moto.emails_from(&h.from).await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].subject, "Table for Mon 14 Dec 2026");
    assert_eq!(
        emails[0].body,
        "Hi Ana, see you tomorrow at 18:00 (13:00 for your host). Deposit: €1,234.51."
    );

    // Woken two hours before, the reminder counts from its own send.
    clock.advance(Duration::from_secs(30 * 3600));
    h.db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 8")
        .await;
    let message = json!({"log_id": log_id, "lease": 8}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
    let sms = h.moto.sms_to(&format!("+14152{:06}", h.tag)).await;
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(
        sms[0].message,
        "Ana, your table is in 2 hours, at 6:00 PM on Monday 14 December."
    );
}

#[tokio::test]
async fn through_the_functions_a_status_change_starts_an_instance_that_waits_and_wakes() {
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock();
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "steps": [
            {"id": "thanks", "type": "send_email", "to": "{{ client_email }}", "subject": "Done: {{ job_title }}", "text": "Thanks, {{ client_name }}"},
            {"id": "later", "type": "wait", "for": "1 hour"},
            {"id": "review", "type": "send_sms", "to": "{{ client_phone }}", "body": "Job {{ herald.new_status }}: how did we do, {{ client_name }}?"}
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
    assert_eq!(sms[0].message, "Job completed: how did we do, Ann Lee?");
    let history: Vec<String> =
        h.db.column("SELECT step_id || ':' || status FROM automation_step_runs ORDER BY id")
            .await;
    assert_eq!(history, ["thanks:done", "later:decided", "review:done"]);
}

#[tokio::test]
async fn a_wait_follows_the_time_it_reads_when_its_row_changes_and_nothing_else_moves_it() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    // Ten confirmed bookings three days ahead; each instance waits until 18:00 the day before,
    // in the booking's own zone.
    h.db.exec(&format!(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, starts_at timestamptz NOT NULL,
                                tz text NOT NULL, phone text NOT NULL, note text);
         INSERT INTO bookings
         SELECT g, 'pending', date_trunc('hour', now()) + interval '3 days', 'UTC', '+1' || (4152000000 + ({tag} * 100 + g) % 8000000)
         FROM generate_series(1, 10) g;
         SELECT herald_attach('public.bookings', 'status');
         INSERT INTO automations (name, source_table) VALUES ('booking-reminder', 'bookings');",
        tag = h.tag % 100_000
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "steps": [
            {"id": "night-before", "type": "wait",
             "until": {"field": "starts_at", "offset": "-1 day", "at": "18:00", "timezone": {"field": "tz"}}},
            {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "See you tomorrow (booking {{ id }})"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('booking-reminder', $1)", &[&doc])
        .await
        .unwrap();
    // 18:00 the day before each booking, in its zone, as SQL computes it.
    let due =
        "SELECT b.id, (((b.starts_at AT TIME ZONE b.tz) - interval '1 day')::date + time '18:00') AT TIME ZONE b.tz
                        = l.run_at
               FROM bookings b JOIN automation_execution_logs l ON l.subject_id = b.id::text
               WHERE l.status = 'waiting' AND l.next_step = 'night-before' ORDER BY b.id";
    let all_due = |rows: Vec<tokio_postgres::Row>| rows.iter().all(|r| r.get::<_, bool>(1)) && rows.len() == 10;

    h.db.exec("UPDATE bookings SET status = 'confirmed'").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 10);
    assert!(h.deliver_all().await.is_empty());
    assert!(all_due(h.db.client.query(due, &[]).await.unwrap()));
    let first: Vec<String> =
        h.db.column("SELECT run_at::text FROM automation_execution_logs ORDER BY id")
            .await;

    // A column no wait reads changes: nothing moves, nothing is woken.
    h.db.exec("UPDATE bookings SET note = 'gate code 1234'").await;
    let after: Vec<String> =
        h.db.column("SELECT run_at::text FROM automation_execution_logs ORDER BY id")
            .await;
    assert_eq!(after, first);
    clock.advance(Duration::from_secs(60));
    assert_eq!(h.tick().await.claimed, 0);

    // Every booking is moved a week later: each instance wakes, reads the new time, and
    // sleeps on to it, with nothing sent.
    h.db.exec("UPDATE bookings SET starts_at = starts_at + interval '7 days'")
        .await;
    clock.advance(Duration::from_secs(60));
    assert_eq!(h.tick().await.claimed, 10);
    assert!(h.deliver_all().await.is_empty());
    assert!(all_due(h.db.client.query(due, &[]).await.unwrap()));
    assert!(reminders(&h).await.is_empty());
    let steps_run: Vec<i32> =
        h.db.column("SELECT DISTINCT steps_run FROM automation_execution_logs")
            .await;
    assert_eq!(steps_run, [1], "reading the time again is not another step");

    // Booking 2's zone changes: its wake-up follows the zone (UTC+14 is 14 hours earlier).
    h.db.exec("UPDATE bookings SET tz = 'Pacific/Kiritimati' WHERE id = 2")
        .await;
    clock.advance(Duration::from_secs(60));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert!(all_due(h.db.client.query(due, &[]).await.unwrap()));

    // Booking 1 is moved to an hour from now: its night before has passed, so it goes on at once.
    h.db.exec("UPDATE bookings SET starts_at = now() + interval '1 hour' WHERE id = 1")
        .await;
    clock.advance(Duration::from_secs(60));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(reminders(&h).await, ["See you tomorrow (booking 1)"]);

    // At the old wake-up time nothing is due; at the new one the nine others are reminded once.
    clock.advance(Duration::from_secs(3 * 86_400));
    assert_eq!(h.tick().await.claimed, 0);
    clock.advance(Duration::from_secs(8 * 86_400));
    assert_eq!(h.tick().await.claimed, 9);
    assert!(h.deliver_all().await.is_empty());
    let mut want: Vec<String> = (1..=10).map(|n| format!("See you tomorrow (booking {n})")).collect();
    want.sort();
    assert_eq!(reminders(&h).await, want);
    assert!(h.db.statuses().await.iter().all(|s| s == "completed"));
    // Each decision is in the history: booking 3 read its time twice, then went on.
    let waits: Vec<String> =
        h.db.column(
            "SELECT r.output ->> 'until' FROM automation_step_runs r JOIN automation_execution_logs l ON l.id = r.log_id
             WHERE l.subject_id = '3' AND r.step_type = 'wait' ORDER BY r.id",
        )
        .await;
    assert_eq!(waits.len(), 3, "{waits:?}");
    assert_ne!(waits[0], waits[1]);
}

/// The real ledger, except that its writes fail from the `fail_at`-th on (counted from 1; 0:
/// never), as if the database went away before it.
struct FailingWrite<'a> {
    inner: &'a herald_shared::pg::PgStore,
    fail_at: usize,
    writes: std::sync::atomic::AtomicUsize,
}

impl herald_shared::ledger::FlowLedger for FailingWrite<'_> {
    async fn start(
        &self,
        messages: &[herald_shared::model::QueueMessage],
        now: SystemTime,
        until: SystemTime,
    ) -> Result<Vec<herald_shared::ledger::FlowStarted>, herald_shared::model::StoreError> {
        self.inner.start(messages, now, until).await
    }

    async fn write(
        &self,
        write: &herald_shared::ledger::FlowWrite,
        fresh_for: &[herald_shared::model::Lease],
        now: SystemTime,
    ) -> Result<herald_shared::ledger::FlowWritten, herald_shared::model::StoreError> {
        let n = self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if self.fail_at > 0 && n >= self.fail_at {
            return Err(herald_shared::model::StoreError::new(
                "writing",
                std::io::Error::other("connection lost"),
            ));
        }
        self.inner.write(write, fresh_for, now).await
    }
}

#[tokio::test]
async fn an_invocation_that_stops_mid_flow_is_resumed_without_sending_twice() {
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
    // With an exit condition, the step after an effect is decided with data read after the
    // effect's end is written: two writes, so an invocation can stop between them.
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "exit": [{"if": {"field": "status", "op": "=", "value": "left"}, "reason": "left the club"}],
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome", "text": "Hi {{ name }}"},
            {"id": "soon", "type": "wait", "for": "1 day"}
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
    // The receipts queue is gone too (see `invoke`): the ends of effects that could not be
    // written are lost.
    let run = |fail_at: usize, id: i64, lease: i64| invoke(&h, &store, id, lease, fail_at);
    // Member 1: the email is sent, and the writes of its end fail until the executor gives up.
    // Member 2: the email's end is written, and the write that follows fails.
    for (id, fail_at) in [(ids[0], 2), (ids[1], 3)] {
        let out = run(fail_at, id, 7).await;
        assert!(matches!(&out[0], FlowOutcome::StoreFailed(_)), "{out:?}");
    }
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2);
    // The leases expire: the rescue puts both back to pending, and the scheduler queues them.
    assert_eq!(h.db.statuses().await, ["running", "running"]);
    h.db.exec("UPDATE automation_execution_logs SET lease_expires_at = now() - interval '1 second'")
        .await;
    let retried: i32 = h.db.scalar("SELECT resumed FROM herald_rescue(now())").await;
    assert_eq!(retried, 2);
    assert_eq!(h.db.statuses().await, ["pending", "pending"]);
    h.db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 8")
        .await;
    let first = run(0, ids[0], 8).await;
    let second = run(0, ids[1], 8).await;
    assert!(
        matches!(&first[0], FlowOutcome::Stopped(Stop::Unknown(why)) if why.contains("step `hello`")),
        "{first:?}"
    );
    assert!(
        matches!(&second[0], FlowOutcome::Stopped(Stop::Park(Park::Sleeping { .. }))),
        "{second:?}"
    );
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2, "no email was sent twice");
    assert_eq!(h.db.statuses().await, ["unknown", "waiting"]);

    // An operator decides: the unknown email is sent again; the waiting one is cancelled.
    let (retried, cancelled): (bool, bool) = {
        let r =
            h.db.client
                .query_one("SELECT herald_retry($1), herald_cancel($2)", &[&ids[0], &ids[1]])
                .await
                .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(retried && cancelled);
    h.db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 9 WHERE status = 'pending'")
        .await;
    let again = run(0, ids[0], 9).await;
    assert!(
        matches!(&again[0], FlowOutcome::Stopped(Stop::Park(Park::Sleeping { .. }))),
        "{again:?}"
    );
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 3);
    assert_eq!(h.db.statuses().await, ["waiting", "cancelled"]);
    let runs: Vec<String> =
        h.db.column(&format!(
            "SELECT step_id || ' ' || attempt || ' ' || status FROM automation_step_runs
             WHERE log_id = {} AND status <> 'decided' ORDER BY id",
            ids[0]
        ))
        .await;
    assert_eq!(runs, ["hello 1 unknown", "hello 2 done"]);
}

#[tokio::test]
async fn notify_admin_reaches_every_admin_by_email_and_sms_and_a_branch_chooses_it() {
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock();
    let owner_email = format!("owner+{}@example.com", h.tag);
    let owner_phone = format!("+14156{:06}", h.tag % 1_000_000);
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "admins": {"emails": [owner_email], "phones": [owner_phone]},
        "steps": [
            {"id": "big", "type": "branch", "if": {"field": "job_title", "op": "contains", "value": "boiler"},
             "then": [{"id": "tell", "type": "notify_admin", "subject": "Boiler done", "text": "{{ client_name }}: {{ job_title }}"}],
             "else": [{"id": "thanks", "type": "send_email", "to": "{{ client_email }}", "subject": "Done", "text": "Thanks"}]}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&doc])
        .await
        .unwrap();
    h.db.exec("UPDATE jobs SET status = 'completed'").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 2);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed", "completed"]);
    let emails = h.moto.emails_from(&h.from).await;
    let mut to: Vec<String> = emails.iter().flat_map(|e| e.destinations.to.clone()).collect();
    to.sort();
    let mut want = vec![owner_email.clone(), h.email_of(1)];
    want.sort();
    assert_eq!(to, want, "job 1 thanks its client; job 2 (the boiler) tells the owner");
    let sms = h.moto.sms_to(&owner_phone).await;
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0].message, "Boiler done: Bo Chen: Service the boiler");
    // herald_sends lists every email and SMS: the admins' too, each with its provider's id.
    let sends: Vec<String> = h
        .db
        .column("SELECT concat_ws(' ', step_id, channel, recipient, status, provider_message_id IS NOT NULL) FROM herald_sends ORDER BY step_id, channel")
        .await;
    assert_eq!(
        sends,
        [
            format!("tell email {owner_email} sent t"),
            format!("tell sms {owner_phone} sent t"),
            format!("thanks email {} sent t", h.email_of(1)),
        ]
    );
    let decided: Vec<String> =
        h.db.column("SELECT output::text FROM automation_step_runs WHERE status = 'decided' ORDER BY log_id")
            .await;
    assert_eq!(decided.len(), 2);
    assert!(
        decided[1].contains("\"holds\": true") && decided[1].contains("Service the boiler"),
        "{decided:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_instances_started_at_once_each_run_exactly_once() {
    // GIVEN a thousand members and a three-step flow on activation
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, email text, phone text);
         INSERT INTO members SELECT g, 'new', 'm' || g || '-{tag}@example.com', '+1' || (4154000000 + g)
         FROM generate_series(1, 1000) g;
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
         VALUES ('welcome', 'members', 'active', 'x', 'x', 'x');",
        tag = h.tag
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome", "text": "Hi {{ id }}"},
            {"id": "pause", "type": "wait", "for": "0 seconds"},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ id }}"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('welcome', $1)", &[&doc])
        .await
        .unwrap();

    // WHEN twenty connections activate them all at once
    let mut writers = Vec::new();
    for conn in 0..20i64 {
        let c = h.db.connect().await;
        writers.push(tokio::spawn(async move {
            c.execute("UPDATE members SET status = 'active' WHERE id % 20 = $1", &[&conn])
                .await
                .unwrap();
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // and the scheduler and two executors drain them together
    clock.advance(Duration::from_secs(1));
    // Executors wait for the scheduler's next tick rather than polling the queue in a loop
    // (a busy emulator answers late, and a receive the SDK retries strands its messages).
    let scheduled = std::sync::atomic::AtomicBool::new(false);
    let ticked = tokio::sync::Notify::new();
    let scheduling = async {
        let mut claimed = 0;
        loop {
            let n = h.tick().await.claimed;
            claimed += n;
            if n == 0 {
                scheduled.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            ticked.notify_waiters();
            if n == 0 {
                return claimed;
            }
        }
    };
    let executing = || async {
        let mut failed = Vec::new();
        loop {
            let next_tick = ticked.notified();
            let done = scheduled.load(std::sync::atomic::Ordering::SeqCst);
            let event = h.moto.receive(&h.queue_url, 10).await;
            if event.records.is_empty() {
                if done {
                    return failed;
                }
                next_tick.await;
                continue;
            }
            let response = h.execute(event.clone()).await;
            let f = herald_tests::failed_ids(&response);
            h.moto.delete_done(&h.queue_url, &event, &f).await;
            failed.extend(f);
        }
    };
    let (claimed, a, b) = futures::join!(scheduling, executing(), executing());
    // What either executor stopped looking for (a receive can come back empty while another
    // holds the last messages in flight), as Lambda's poller would keep receiving.
    let c = h.deliver_all().await;
    assert!(a.is_empty() && b.is_empty() && c.is_empty(), "{a:?} {b:?} {c:?}");
    assert_eq!(claimed, 1000);

    // THEN each instance completed, each of its steps ran once, and each member got one of each
    let by_status: Vec<String> = h
        .db
        .column("SELECT concat_ws(' ', status, error, count(*)) FROM automation_execution_logs GROUP BY status, error")
        .await;
    assert_eq!(
        by_status,
        ["completed 1000"],
        "{} messages on the queue",
        h.moto.queue_depth(&h.queue_url).await
    );
    let runs: Vec<String> =
        h.db.column(
            "SELECT step_id || ' ' || status || ' ' || count(*) FROM automation_step_runs
             GROUP BY step_id, status ORDER BY 1",
        )
        .await;
    assert_eq!(runs, ["hello done 1000", "pause decided 1000", "text done 1000"]);
    let once: bool =
        h.db.scalar("SELECT count(DISTINCT (log_id, step_id)) = 3000 FROM automation_step_runs")
            .await;
    assert!(once);
    let emails = h.moto.emails_from(&h.from).await;
    assert_eq!(emails.len(), 1000);
    let recipients: std::collections::HashSet<_> = emails.iter().map(|e| e.destinations.to.clone()).collect();
    assert_eq!(recipients.len(), 1000);
}

#[tokio::test]
async fn a_manual_start_runs_a_flow_for_one_row_with_its_payload_and_the_triggers_conditions_decide() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, email text, name text);
         INSERT INTO members VALUES (1, 'm1-{tag}@example.com', 'Ana'), (2, 'm2-{tag}@example.com', 'Bo');
         CREATE TABLE notes (body text);
         INSERT INTO automations (name, source_table, email_to, email_subject, email_text, suppression_window)
         VALUES ('welcome-series', 'members', 'x', 'x', 'x', '0'), ('on-status', 'members', 'x', 'x', 'x', '0');",
        tag = h.tag
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "manual"},
        "conditions": {"field": "payload.source", "op": "in", "value": ["signup form", "import"]},
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome",
             "text": "Hi {{ name }}, from the {{ payload.source }} ({{ herald.event }})"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('welcome-series', $1)", &[&doc])
        .await
        .unwrap();

    let started: i64 =
        h.db.scalar("SELECT herald_start('welcome-series', 'public.members', '1', '{\"source\": \"signup form\"}')")
            .await;
    let other: i64 =
        h.db.scalar("SELECT herald_start('welcome-series', 'members', '2', '{\"source\": \"web\"}')")
            .await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 2);
    assert!(h.deliver_all().await.is_empty());

    let emails = h.moto.emails_from(&h.from).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].body, "Hi Ana, from the signup form (manual)");
    let outcome = |id: i64| {
        let db = &h.db;
        async move {
            db.scalar::<String>(&format!(
                "SELECT concat_ws(' ', status, exit_reason) FROM automation_execution_logs WHERE id = {id}"
            ))
            .await
        }
    };
    assert_eq!(outcome(started).await, "completed");
    assert_eq!(outcome(other).await, "exited the trigger's conditions do not hold");
    let seen: serde_json::Value =
        h.db.scalar(&format!(
            "SELECT output FROM automation_step_runs WHERE log_id = {other} AND step_type = 'conditions'"
        ))
        .await;
    assert_eq!(seen, json!({"holds": false, "seen": {"payload.source": "web"}}));

    // Each mistake is its own clear error.
    let status_doc = json!({"trigger": {"type": "insert", "table": "public.members"},
                            "steps": [{"id": "a", "type": "send_email", "to": "{{ email }}", "subject": "s", "text": "t"}]});
    h.db.client
        .query_one("SELECT herald_save_automation('on-status', $1)", &[&status_doc])
        .await
        .unwrap();
    for (sql, want) in [
        (
            "SELECT herald_start('nope', 'members', '1')",
            "no automation is named 'nope'",
        ),
        (
            "SELECT herald_start('on-status', 'members', '1')",
            "is not started by hand: its trigger is insert",
        ),
        (
            "SELECT herald_start('welcome-series', 'members', '9')",
            "has no row whose id is '9'",
        ),
        (
            "SELECT herald_start('welcome-series', 'members', '1', '[1]')",
            "a payload is a JSON object, not array",
        ),
        (
            "SELECT herald_start('welcome-series', 'notes', '1')",
            "has no one-column primary key",
        ),
    ] {
        let err = h.db.client.query_one(sql, &[]).await.unwrap_err();
        let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(message.contains(want), "{sql}: {message}");
    }
}

#[tokio::test]
async fn a_step_whose_provider_fails_transiently_is_tried_again_after_the_automations_backoff() {
    // GIVEN an instance of email → SMS whose automation tries 2 times, 1 minute doubling,
    // and an AWS endpoint that is down (a proxy, without SDK retries)
    let h = Herald::new().await;
    h.db.exec(&format!(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, email text, phone text, name text);
         INSERT INTO bookings VALUES (1, 'confirmed', 'b1-{tag}@example.com', '+14152{tag:06}', 'Ana');
         INSERT INTO automations (name, source_table, to_status) VALUES ('confirm', 'bookings', 'confirmed');",
        tag = h.tag
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "settings": {"max_attempts": 2, "retry_base": "1 minute", "retry_cap": "10 minutes"},
        "steps": [
            {"id": "mail", "type": "send_email", "to": "{{ email }}", "subject": "Booked", "text": "Hi {{ name }}"},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Booked, {{ name }}", "on_error": "continue"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('confirm', $1)", &[&doc])
        .await
        .unwrap();
    let log_id = queue_instance(&h, "confirm", "bookings", "mail", 7).await;
    let proxy = herald_tests::Proxy::start(&h.moto.url).await;
    let via_proxy = h
        .moto
        .sdk
        .to_builder()
        .endpoint_url(&proxy.url)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let (email, sms) = (SesEmail::new(&via_proxy, None), SnsSms::new(&via_proxy, None));
    proxy.set_up(false);
    let store = Database::new(h.db.config()).store().await.unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000); // 2030-01-01T00:00:00Z
    let clock = ManualClock::new(start);
    let hooks = h.webhooks();
    let performers = Performers {
        email: &email,
        sms: &sms,
        webhooks: &hooks,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        receipts: &h.executor.receipts,
        clock: &clock,
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let at_of = |out: &[FlowOutcome]| match out {
        [FlowOutcome::Stopped(Stop::Park(Park::Retrying { step, at }))] => (step.clone(), *at),
        other => panic!("not retrying: {other:?}"),
    };
    let place = || async {
        let r = h
            .db
            .client
            .query_one(
                "SELECT status, next_step, step_attempt, extract(epoch FROM run_at)::float8 FROM automation_execution_logs",
                &[],
            )
            .await
            .unwrap();
        (
            r.get::<_, String>(0),
            r.get::<_, Option<String>>(1),
            r.get::<_, i32>(2),
            r.get::<_, f64>(3),
        )
    };
    let secs = |t: jiff::Timestamp| t.as_microsecond() as f64 / 1e6;
    let start_secs = 1_893_456_000.0;

    // WHEN it runs while the endpoint is down
    let message = json!({"log_id": log_id, "lease": 7}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;

    // THEN the email failed transiently and waits for its second try, within the first
    // backoff window (0 to 1 minute), although the step's on_error is stop
    let (step, at) = at_of(&out);
    assert_eq!(step, "mail");
    assert!((start_secs..=start_secs + 60.0).contains(&secs(at)), "{at}");
    let (status, next, attempt, run_at) = place().await;
    assert_eq!(
        (status.as_str(), next.as_deref(), attempt),
        ("waiting", Some("mail"), 1)
    );
    assert!((run_at - secs(at)).abs() < 1e-3, "run_at {run_at}, retry at {at}");

    // WHEN the endpoint comes back and the scheduler wakes the instance
    proxy.set_up(true);
    clock.advance(Duration::from_secs(60));
    h.db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 8")
        .await;
    let message = json!({"log_id": log_id, "lease": 8}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;

    // THEN both steps went out, once each, the email on its second try
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
    let runs: Vec<String> =
        h.db.column(
            "SELECT step_id || ' ' || attempt || ' ' || status || ' ' || coalesce(error_kind, '-')
             FROM automation_step_runs WHERE status <> 'decided' ORDER BY id",
        )
        .await;
    assert_eq!(runs, ["mail 1 failed transient", "mail 2 done -", "text 1 done -"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);

    // WHEN another instance, at its SMS, finds the endpoint down on both of its 2 tries
    let log_id = queue_instance(&h, "confirm", "bookings", "text", 9).await;
    proxy.set_up(false);
    let message = json!({"log_id": log_id, "lease": 9}).to_string();
    let (step, at) = at_of(&runner.run(std::slice::from_ref(&message), 4).await);
    assert_eq!(step, "text");
    let now = secs(jiff::Timestamp::try_from(clock.now()).unwrap());
    assert!((now..=now + 60.0).contains(&secs(at)), "{at}");
    clock.advance(Duration::from_secs(60));
    h.db.exec(&format!(
        "UPDATE automation_execution_logs SET status = 'queued', lease_token = 10 WHERE id = {log_id}"
    ))
    .await;
    let message = json!({"log_id": log_id, "lease": 10}).to_string();
    let out = runner.run(std::slice::from_ref(&message), 4).await;

    // THEN after the second its on_error (continue) applies: the instance completes
    assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
    let failed: i64 =
        h.db.scalar(&format!(
            "SELECT count(*) FROM automation_step_runs
             WHERE log_id = {log_id} AND step_id = 'text' AND status = 'failed' AND error_kind = 'transient'"
        ))
        .await;
    assert_eq!(failed, 2);
}

#[tokio::test]
async fn an_email_step_that_says_resend_is_sent_again_when_its_outcome_is_unknown() {
    // GIVEN an instance whose email step says "on_unknown": "resend"
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome", "text": "Hi {{ name }}",
             "on_unknown": "resend"},
            {"id": "soon", "type": "wait", "for": "1 day"}
        ]
    });
    let h = one_member_with(&doc).await;
    let id = queue_instance(&h, "welcome", "members", "hello", 7).await;
    let store = Database::new(h.db.config()).store().await.unwrap();

    // WHEN the email is sent and no write of its end ever lands (nor its receipt), and the
    // lease expires
    let out = invoke(&h, &store, id, 7, 2).await;
    assert!(matches!(&out[0], FlowOutcome::StoreFailed(_)), "{out:?}");
    expire_and_queue(&h, 8, 1).await;
    let out = invoke(&h, &store, id, 8, 0).await;

    // THEN, as the step says, the email is sent again instead of being held as unknown
    assert!(
        matches!(&out[0], FlowOutcome::Stopped(Stop::Park(Park::Sleeping { .. }))),
        "{out:?}"
    );
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2);
    assert_eq!(h.db.statuses().await, ["waiting"]);
    let runs: Vec<String> =
        h.db.column("SELECT step_id || ' ' || attempt || ' ' || status FROM automation_step_runs WHERE status <> 'decided' ORDER BY id")
            .await;
    assert_eq!(runs, ["hello 1 started", "hello 2 done"]);
}

#[tokio::test]
async fn an_instance_whose_invocations_die_twice_resumes_at_the_last_effect_it_started() {
    // GIVEN a flow whose exit condition makes every step's end and the next start two writes
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "exit": [{"if": {"field": "status", "op": "=", "value": "left"}, "reason": "left the club"}],
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome", "text": "Hi {{ name }}"},
            {"id": "text", "type": "send_sms", "to": "+14155550100", "body": "Hi {{ email }}"},
            {"id": "soon", "type": "wait", "for": "1 day"}
        ]
    });
    let h = one_member_with(&doc).await;
    let id = queue_instance(&h, "welcome", "members", "hello", 7).await;
    let store = Database::new(h.db.config()).store().await.unwrap();
    let texts = || async {
        let mine = format!("m1-{}@", h.tag);
        h.moto
            .all_sms()
            .await
            .into_iter()
            .filter(|s| s.message.contains(&mine))
            .count()
    };

    // WHEN the first invocation sends the email (its end is written) and the SMS (its end is
    // never written); after its lease the second claims the instance and dies before any of
    // its writes lands; and after that lease a third claims it
    let out = invoke(&h, &store, id, 7, 4).await;
    assert!(matches!(&out[0], FlowOutcome::StoreFailed(_)), "{out:?}");
    assert_eq!((h.moto.emails_from(&h.from).await.len(), texts().await), (1, 1));
    expire_and_queue(&h, 8, 1).await;
    let out = invoke(&h, &store, id, 8, 1).await;
    assert!(matches!(&out[0], FlowOutcome::StoreFailed(_)), "{out:?}");
    expire_and_queue(&h, 9, 1).await;
    let out = invoke(&h, &store, id, 9, 0).await;

    // THEN the third resumes at the SMS, whose outcome is unknown: held, and nothing is sent
    // again (the email is not resent from the instance's place at its claim)
    assert!(
        matches!(&out[0], FlowOutcome::Stopped(Stop::Unknown(why)) if why.contains("step `text`")),
        "{out:?}"
    );
    assert_eq!((h.moto.emails_from(&h.from).await.len(), texts().await), (1, 1));
    assert_eq!(h.db.statuses().await, ["unknown"]);
    let runs: Vec<String> =
        h.db.column("SELECT step_id || ' ' || attempt || ' ' || status FROM automation_step_runs WHERE status <> 'decided' ORDER BY id")
            .await;
    assert_eq!(runs, ["hello 1 done", "text 1 started"]);

    // AND an operator's retry sends the SMS as a new attempt, and the instance goes on
    assert!(h.db.scalar::<bool>(&format!("SELECT herald_retry({id})")).await);
    h.db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 10")
        .await;
    let out = invoke(&h, &store, id, 10, 0).await;
    assert!(
        matches!(&out[0], FlowOutcome::Stopped(Stop::Park(Park::Sleeping { .. }))),
        "{out:?}"
    );
    assert_eq!((h.moto.emails_from(&h.from).await.len(), texts().await), (1, 2));
    let runs: Vec<String> =
        h.db.column("SELECT step_id || ' ' || attempt || ' ' || status FROM automation_step_runs WHERE status <> 'decided' ORDER BY id")
            .await;
    assert_eq!(runs, ["hello 1 done", "text 1 unknown", "text 2 done"]);
}

#[tokio::test]
async fn one_batch_runs_each_instance_by_the_version_it_started_with() {
    // GIVEN an instance of the first version of a flow, and two of the version saved after it
    let version = |subject: &str| {
        json!({
            "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
            "steps": [{"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": subject, "text": "Hi"}]
        })
    };
    let h = one_member_with(&version("first {{ name }}")).await;
    let old = queue_instance(&h, "welcome", "members", "hello", 7).await;
    h.db.client
        .query_one(
            "SELECT herald_save_automation('welcome', $1)",
            &[&version("second {{ name }}")],
        )
        .await
        .unwrap();
    let new = [
        queue_instance(&h, "welcome", "members", "hello", 7).await,
        queue_instance(&h, "welcome", "members", "hello", 7).await,
    ];
    let store = Database::new(h.db.config()).store().await.unwrap();

    // WHEN one invocation runs all three, in one queue batch, newest first
    let out = invoke_batch(&h, &store, &[(new[0], 7), (old, 7), (new[1], 7)], 0).await;

    // THEN each sent what its own version says
    assert!(
        out.iter()
            .all(|o| matches!(o, FlowOutcome::Stopped(Stop::Park(Park::Completed)))),
        "{out:?}"
    );
    let sent: Vec<String> =
        h.db.column(&format!(
            "SELECT effect ->> 'subject' FROM automation_step_runs WHERE status = 'done'
             ORDER BY array_position(ARRAY[{old}, {}, {}]::bigint[], log_id)",
            new[0], new[1]
        ))
        .await;
    assert_eq!(sent, ["first Ana", "second Ana", "second Ana"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 3);
}

#[tokio::test]
async fn a_write_made_again_after_its_commit_landed_answers_as_it_did_and_changes_nothing() {
    // GIVEN a running instance whose email step started under lease 7
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Hi", "text": "Hi"},
            {"id": "pause", "type": "wait", "for": "0 seconds"},
            {"id": "vip", "type": "add_tag", "tag": "vip"},
            {"id": "text", "type": "send_sms", "to": "+14155550100", "body": "Hi"}
        ]
    });
    let h = one_member_with(&doc).await;
    h.db.exec(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
            run_at, created_at, updated_at, version, next_step, step_attempt, steps_run, lease_token, lease_expires_at)
         SELECT a.id, 'public', 'members', 'id', '1', 'status_change', '{}', 'running', now(), now(), now(), a.version,
                'hello', 1, 1, 7, now() + interval '1 hour'
         FROM automations a;
         INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at)
         SELECT id, 'hello', 'send_email', 1, 7, 'started', now() FROM automation_execution_logs;",
    )
    .await;
    let id: i64 = h.db.scalar("SELECT id FROM automation_execution_logs").await;
    // WHEN one write records the email's end, the wait's decision, the tag (performed by the
    // write) and the SMS's start, and is made twice at the same time
    let entry = |more: serde_json::Value| {
        let mut e = json!({"log_id": id, "token": 7});
        e.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        e
    };
    let write = json!({
        "ended": [entry(json!({"step": "hello", "type": "send_email", "attempt": 1, "output": {"message_id": "m-1"}}))],
        "decided": [entry(json!({"step": "pause", "kind": "wait", "detail": {"until": "now"}}))],
        "started": [
            entry(json!({"step": "vip", "type": "add_tag", "attempt": 1, "local": true,
                         "effect": {"kind": "tag", "add": true, "name": "vip"},
                         "next_step": "vip", "step_attempt": 1, "steps_run": 3, "outputs": {}})),
            entry(json!({"step": "text", "type": "send_sms", "attempt": 1, "local": false, "effect": {"to": "+14155550100"},
                         "next_step": "text", "step_attempt": 1, "steps_run": 4, "outputs": {}}))
        ],
        "parked": []
    });
    let at = SystemTime::now();
    let first: serde_json::Value =
        h.db.client
            .query_one("SELECT herald_flow_write($1, $2)", &[&write, &at])
            .await
            .unwrap()
            .get(0);
    let rows = |sql: &'static str| h.db.column::<String>(sql);
    let runs_sql = "SELECT step_id || ' ' || status FROM automation_step_runs ORDER BY id";
    let runs = rows(runs_sql).await;
    let again: serde_json::Value =
        h.db.client
            .query_one("SELECT herald_flow_write($1, $2)", &[&write, &at])
            .await
            .unwrap()
            .get(0);

    // THEN the second answers as the first did, and records nothing more
    assert_eq!(first["ended"], json!([true]), "{first}");
    assert_eq!(first["started"][1], json!(true), "{first}");
    assert!(first["started"][0].get("output").is_some(), "{first}");
    assert_eq!(again, first);
    assert_eq!(rows(runs_sql).await, runs);
    // (Effects that leave the database are recorded before this database's own are made.)
    assert_eq!(runs, ["hello done", "pause decided", "text started", "vip done"]);
    let tags: i64 = h.db.scalar("SELECT count(*) FROM herald_labels").await;
    assert_eq!(tags, 1);
}

/// One invocation of the flow runner for instance `id` under `lease`, against the real
/// ledger whose writes fail from the `fail_at`-th on (0: never), with the receipts queue
/// gone, so that the ends of effects that could not be written are lost.
async fn invoke(
    h: &Herald,
    store: &herald_shared::pg::PgStore,
    id: i64,
    lease: i64,
    fail_at: usize,
) -> Vec<FlowOutcome> {
    invoke_batch(h, store, &[(id, lease)], fail_at).await
}

/// [`invoke`] with one queue batch of several messages: (instance, lease) each.
async fn invoke_batch(
    h: &Herald,
    store: &herald_shared::pg::PgStore,
    messages: &[(i64, i64)],
    fail_at: usize,
) -> Vec<FlowOutcome> {
    let hooks = h.webhooks();
    let performers = Performers {
        email: &h.executor.email,
        sms: &h.executor.sms,
        webhooks: &hooks,
    };
    let no_receipts = SqsReceipts::new(&h.moto.sdk, format!("{}-deleted", h.receipts_url));
    let ledger = FailingWrite {
        inner: store,
        fail_at,
        writes: Default::default(),
    };
    let runner = FlowRunner {
        ledger: &ledger,
        effects: &performers,
        receipts: &no_receipts,
        clock: &ManualClock::new(SystemTime::now()),
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let bodies: Vec<String> = messages
        .iter()
        .map(|(id, lease)| json!({"log_id": id, "lease": lease}).to_string())
        .collect();
    runner.run(&bodies, 4).await
}

/// Every lease runs out; the rescue puts the `retried` running instances back to pending,
/// and the scheduler queues them under `lease`.
async fn expire_and_queue(h: &Herald, lease: i64, retried: i32) {
    h.db.exec("UPDATE automation_execution_logs SET lease_expires_at = now() - interval '1 second'")
        .await;
    let n: i32 = h.db.scalar("SELECT resumed FROM herald_rescue(now())").await;
    assert_eq!(n, retried);
    h.db.exec(&format!(
        "UPDATE automation_execution_logs SET status = 'queued', lease_token = {lease}, lease_expires_at = now() + interval '1 hour'"
    ))
    .await;
}

/// Queues an instance of `automation` for row 1 of `table`, at step `at`, under `lease`, as
/// the scheduler leaves it. Returns its log id.
async fn queue_instance(h: &Herald, automation: &str, table: &str, at: &str, lease: i64) -> i64 {
    h.db.client
        .query_one(
            "INSERT INTO automation_execution_logs
               (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
                run_at, created_at, updated_at, version, next_step, lease_token, lease_expires_at)
             SELECT id, 'public', $2, 'id', '1', 'status_change', '{}', 'queued', now(), now(), now(), version,
                    $3, $4, now() + interval '1 hour'
             FROM automations WHERE name = $1
             RETURNING id",
            &[&automation, &table, &at, &lease],
        )
        .await
        .unwrap()
        .get(0)
}

/// The reminders of the bookings test that moto received, sorted.
async fn reminders(h: &Herald) -> Vec<String> {
    let mut bodies: Vec<String> = h.moto.all_sms().await.into_iter().map(|m| m.message).collect();
    bodies.retain(|b| b.starts_with("See you tomorrow"));
    bodies.sort();
    bodies
}

/// A fresh Herald with one member (id 1, Ana) and the `welcome` automation saved as `doc`.
async fn one_member_with(doc: &serde_json::Value) -> Herald {
    let h = Herald::new().await;
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, email text, name text);
         INSERT INTO members VALUES (1, 'active', 'm1-{tag}@example.com', 'Ana');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
         VALUES ('welcome', 'members', 'active', 'x', 'x', 'x');",
        tag = h.tag
    ))
    .await;
    h.db.client
        .query_one("SELECT herald_save_automation('welcome', $1)", &[doc])
        .await
        .unwrap();
    h
}

/// One daylight-saving policy: a wait's end (computed by the executor) and a date trigger's
/// time (computed in SQL by herald_date_fire_at) agree for the same date, offset, local time
/// and zone, at real clock changes in both directions: New York and London (an hour), and
/// Lord Howe (half an hour). A skipped local time moves on by the gap's length; a repeated
/// one is the first.
#[tokio::test]
async fn waits_and_date_triggers_place_times_around_clock_changes_alike() {
    let h = Herald::new().await;
    // Each row the day after a clock change (and a month's end), at noon local time.
    h.db.exec(
        "CREATE TABLE moments (id bigint PRIMARY KEY, status text NOT NULL, tz text NOT NULL, local timestamp NOT NULL,
                               utc timestamptz, d date);
         INSERT INTO moments (id, status, tz, local)
         SELECT row_number() OVER (), 'new', z, day + time '12:00'
         FROM (VALUES ('America/New_York', date '2030-03-11'), ('America/New_York', date '2030-11-04'),
                      ('Europe/London', date '2030-04-01'), ('Europe/London', date '2030-10-28'),
                      ('Australia/Lord_Howe', date '2030-10-07'), ('Australia/Lord_Howe', date '2030-04-08'),
                      ('America/New_York', date '2030-03-31'), ('Europe/London', date '2030-03-31'),
                      ('Australia/Lord_Howe', date '2030-03-31')) AS v (z, day);
         UPDATE moments SET utc = local AT TIME ZONE tz, d = local::date;",
    )
    .await;
    // (field, offset, local time): each on every row.
    let specs = [
        ("local", "-1 day", Some("02:30")), // New York's gap
        ("local", "-1 day", Some("01:30")), // London's gap; New York's and London's repeat
        ("local", "-1 day", Some("02:15")), // Lord Howe's gap
        ("local", "-1 day", Some("01:45")), // Lord Howe's repeat
        ("utc", "-7 days", None),           // the same local time, a week before
        ("utc", "-24 hours", None),         // on the clock: an hour off across a change
        ("d", "-1 month", Some("09:00")),   // 31 March, a month before: 28 February
        ("d", "1 day", None),
    ];
    let mut messages = Vec::new();
    for (n, (field, offset, at)) in specs.iter().enumerate() {
        let name = format!("spec-{n}");
        let mut until = json!({"field": field, "offset": offset, "timezone": {"field": "tz"}});
        if let Some(at) = at {
            until["at"] = json!(at);
        }
        let doc = json!({
            "trigger": {"type": "manual"},
            "steps": [{"id": "w", "type": "wait", "until": until},
                      {"id": "s", "type": "send_sms", "to": "+14155550100", "body": "x"}]
        });
        h.db.client
            .execute(
                "INSERT INTO automations (name, source_table) VALUES ($1, 'moments')",
                &[&name],
            )
            .await
            .unwrap();
        h.db.client
            .query_one("SELECT herald_save_automation($1, $2)", &[&name, &doc])
            .await
            .unwrap();
        let ids: Vec<i64> =
            h.db.client
                .query(
                    "INSERT INTO automation_execution_logs
                       (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot,
                        status, run_at, created_at, updated_at, version, next_step, lease_token, lease_expires_at)
                     SELECT a.id, 'public', 'moments', 'id', m.id::text, 'manual', '{}', 'queued', now(), now(), now(),
                            a.version, 'w', 9, now() + interval '1 hour'
                     FROM automations a, moments m WHERE a.name = $1
                     RETURNING id",
                    &[&name],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        messages.extend(ids.into_iter().map(|id| json!({"log_id": id, "lease": 9}).to_string()));
    }
    let store = Database::new(h.db.config()).store().await.unwrap();
    let start: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
    let clock = ManualClock::new(start.into());
    let hooks = h.webhooks();
    let performers = Performers {
        email: &h.executor.email,
        sms: &h.executor.sms,
        webhooks: &hooks,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        receipts: &h.executor.receipts,
        clock: &clock,
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: None,
        step_limit: 100,
    };
    let out = runner.run(&messages, 4).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, FlowOutcome::Stopped(Stop::Park(Park::Sleeping { .. })))),
        "{out:?}"
    );
    // Every wait's end, next to the date trigger's time for the same spec and row.
    let rows =
        h.db.client
            .query(
                "SELECT a.name, m.tz, m.local::text, l.run_at::text,
                        herald_date_fire_at(to_jsonb(CASE w.field WHEN 'local' THEN to_jsonb(m.local)
                                                                 WHEN 'utc' THEN to_jsonb(m.utc) ELSE to_jsonb(m.d) END) #>> '{}',
                                            herald_span_interval(w.offset_), w.at::time, m.tz)::text
                 FROM automation_execution_logs l
                 JOIN automations a ON a.id = l.automation_id
                 JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
                 JOIN moments m ON m.id::text = l.subject_id
                 CROSS JOIN LATERAL (SELECT v.definition #>> '{steps,0,until,field}' AS field,
                                            v.definition #>> '{steps,0,until,offset}' AS offset_,
                                            v.definition #>> '{steps,0,until,at}' AS at) w
                 ORDER BY l.id",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(rows.len(), specs.len() * 9);
    let differ: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(3) != r.get::<_, String>(4))
        .map(|r| {
            let s = |i| r.get::<_, String>(i);
            format!("{} {} {}: wait {} trigger {}", s(0), s(1), s(2), s(3), s(4))
        })
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
    // The policy itself, at the changes: New York's 02:30 on 10 March is 03:30 EDT; its 01:30
    // on 3 November is the first, EDT; Lord Howe's 02:15 on 6 October is 02:45 (+11).
    let at = |name: &str, day: &str| {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == name && r.get::<_, String>(2).starts_with(day))
            .map(|r| r.get::<_, String>(3))
            .unwrap()
    };
    assert_eq!(at("spec-0", "2030-03-11"), "2030-03-10 07:30:00+00");
    assert_eq!(at("spec-1", "2030-11-04"), "2030-11-03 05:30:00+00");
    assert_eq!(at("spec-1", "2030-10-28"), "2030-10-27 00:30:00+00");
    assert_eq!(at("spec-2", "2030-10-07"), "2030-10-05 15:45:00+00");
    assert_eq!(at("spec-3", "2030-04-08"), "2030-04-06 14:45:00+00");
}
