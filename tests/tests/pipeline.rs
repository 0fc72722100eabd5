//! Row change → ledger → scheduler → SQS → executor → SES/SNS (moto) → write-back, through
//! the real handlers, a real Postgres and the moto server.

use herald_tests::Herald;

#[tokio::test]
async fn a_status_change_sends_one_email_and_one_sms_then_suppresses_then_sends_again() {
    // GIVEN the sample jobs schema with Herald attached and a job-completed automation
    let h = Herald::with_jobs_example().await;
    h.db.set_now("2026-03-01 09:00:00+00").await;

    // WHEN a job is completed
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    // THEN one pending log records the event
    assert_eq!(h.db.statuses().await, ["pending"]);
    let (event, old, new, subject): (String, String, String, String) = {
        let r =
            h.db.client
                .query_one(
                    "SELECT event, old_status, new_status, subject_id FROM automation_execution_logs",
                    &[],
                )
                .await
                .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        (event.as_str(), old.as_str(), new.as_str(), subject.as_str()),
        ("status_change", "scheduled", "completed", "1")
    );

    // An edit after the event but before the send: the executor must use fresh data.
    h.db.exec("UPDATE clients SET name = 'Ann Lee-Park' WHERE id = 1").await;

    // WHEN the scheduler runs, and the executor gets what SQS delivers
    let summary = h.tick().await;
    assert_eq!((summary.claimed, summary.sent, summary.failed), (1, 1, 0));
    assert_eq!(summary.stopped_by, "drained");
    assert_eq!(h.db.statuses().await, ["queued"]);
    let failures = h.deliver_all().await;
    assert!(failures.is_empty(), "{failures:?}");

    // THEN moto has exactly one email and one SMS, rendered with the fresh values
    assert_eq!(
        h.db.statuses().await,
        ["completed"],
        "{}",
        h.db.scalar::<String>("SELECT coalesce(error, '') FROM automation_execution_logs")
            .await
    );
    let emails = h.moto.emails_from(&h.from).await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].destinations.to, [h.email_of(1)]);
    assert_eq!(emails[0].subject, "Your job \"Fix the kitchen sink\" is done");
    // (moto keeps the HTML part when there are both). The visit (17:30 UTC) is shown in the
    // client's zone, Los Angeles, and the price as dollars.
    assert_eq!(
        emails[0].body,
        "<p>Hi Ann Lee-Park,</p><p><b>Fix the kitchen sink</b>, our visit of Mon 2 Mar 2026, 09:30, \
         is completed: $1,240.50. Thank you for your business.</p>"
    );
    let sms = h.moto.sms_to(&h.phone_of(1)).await;
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(
        sms[0].message,
        "Hi Ann Lee-Park, \"Fix the kitchen sink\" (Mon 2 Mar) is completed: $1,240.50."
    );

    // AND the ledger row is a completed instance of the automation's two-step definition,
    // with both provider ids
    let row =
        h.db.client
            .query_one(
                "SELECT id, status, attempts, completed_at IS NOT NULL, error FROM automation_execution_logs",
                &[],
            )
            .await
            .unwrap();
    let first_id: i64 = row.get(0);
    assert_eq!(row.get::<_, String>(1), "completed");
    assert_eq!(row.get::<_, i32>(2), 1);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Option<String>>(4), None);
    let deliveries =
        h.db.client
            .query(
                "SELECT channel, recipient, status, provider_message_id FROM herald_sends ORDER BY channel",
                &[],
            )
            .await
            .unwrap();
    let d: Vec<(String, String, String, String)> = deliveries
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].0.as_str(), d[0].1.as_str(), d[0].2.as_str()),
        ("email", h.email_of(1).as_str(), "sent")
    );
    assert_eq!(d[0].3, emails[0].id, "the email's provider id is the one SES returned");
    assert_eq!(
        (d[1].0.as_str(), d[1].1.as_str(), d[1].2.as_str()),
        ("sms", h.phone_of(1).as_str(), "sent")
    );
    assert!(!d[1].3.is_empty());
    let steps: Vec<String> =
        h.db.column("SELECT step_id || ' ' || status FROM automation_step_runs ORDER BY id")
            .await;
    assert_eq!(steps, ["email done", "sms done"]);

    // WHEN the job goes back and is completed again 10 s later, inside the 30 s window
    h.db.set_now("2026-03-01 09:00:10+00").await;
    h.db.exec("UPDATE jobs SET status = 'reopened' WHERE id = 1; UPDATE jobs SET status = 'completed' WHERE id = 1")
        .await;
    // THEN the event waits in the inbox, counted as pending, and once moved to the ledger
    // it is recorded as suppressed, pointing at the log that holds the window
    assert_eq!(h.db.statuses().await, ["completed", "pending"]);
    let run = h.tick().await;
    assert_eq!(
        (run.ingested, run.suppressed, run.claimed),
        (1, 1, 0),
        "the scheduler counts it"
    );
    assert_eq!(h.db.statuses().await, ["completed", "suppressed"]);
    let holder: i64 =
        h.db.scalar("SELECT suppressed_by FROM automation_execution_logs WHERE status = 'suppressed'")
            .await;
    assert_eq!(holder, first_id);
    assert_eq!(h.tick().await.claimed, 0);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);

    // WHEN it happens again after the window (31 s after the first)
    h.db.set_now("2026-03-01 09:00:31+00").await;
    h.db.exec("UPDATE jobs SET status = 'reopened' WHERE id = 1; UPDATE jobs SET status = 'completed' WHERE id = 1")
        .await;
    assert_eq!(h.db.statuses().await, ["completed", "suppressed", "pending"]);
    let summary = h.tick().await;
    assert_eq!((summary.claimed, summary.sent), (1, 1));
    assert!(h.deliver_all().await.is_empty());

    // THEN it sends again
    assert_eq!(h.db.statuses().await, ["completed", "suppressed", "completed"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 2);
}

#[tokio::test]
async fn other_columns_inserts_and_unmatched_statuses_create_no_logs() {
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "UPDATE jobs SET title = 'Fix the sink (again)' WHERE id = 1;
         UPDATE jobs SET status = status WHERE id = 2;
         UPDATE jobs SET status = 'in_progress' WHERE id = 2;
         INSERT INTO jobs (id, client_id, title, status) VALUES (3, 1, 'New', 'completed');",
    )
    .await;
    assert_eq!(h.db.statuses().await, Vec::<String>::new());

    // An automation that asks for inserts gets them.
    h.db.exec(
        "INSERT INTO automations (name, source_table, trigger_event, to_status, sms_to, sms_body)
         VALUES ('job-booked', 'jobs', 'insert', 'scheduled', '+14155550199', 'Booked: {{ title }}');
         INSERT INTO jobs (id, client_id, title) VALUES (4, 2, 'Paint the fence');
         INSERT INTO jobs (id, client_id, title, status) VALUES (5, 2, 'Other', 'draft');",
    )
    .await;
    let row =
        h.db.client
            .query_one(
                "SELECT event, subject_id, new_status, snapshot->>'title' FROM automation_execution_logs",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "insert");
    assert_eq!(row.get::<_, String>(1), "4");
    assert_eq!(row.get::<_, String>(2), "scheduled");
    assert_eq!(row.get::<_, String>(3), "Paint the fence");

    // An inactive automation does nothing; from_status narrows what matches.
    h.db.exec(
        "UPDATE automations SET is_active = false WHERE name = 'job-completed';
         UPDATE jobs SET status = 'completed' WHERE id = 2;
         INSERT INTO automations (name, source_table, from_status, to_status, sms_to, sms_body)
         VALUES ('started', 'jobs', 'scheduled', 'in_progress', '+14155550199', 'Started');
         UPDATE jobs SET status = 'in_progress' WHERE id = 2;
         UPDATE jobs SET status = 'in_progress' WHERE id = 1;",
    )
    .await;
    let subjects: Vec<String> =
        h.db.column("SELECT subject_id FROM automation_execution_logs ORDER BY id")
            .await;
    assert_eq!(
        subjects,
        ["4", "1"],
        "only the insert of job 4 and job 1 going scheduled → in_progress match"
    );
}

#[tokio::test]
async fn the_monitoring_queries_work_verbatim() {
    let h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed'").await;
    let pending: i64 =
        h.db.scalar("SELECT COUNT(*) FROM automation_execution_logs WHERE status = 'pending';")
            .await;
    assert_eq!(pending, 2);
    let rows =
        h.db.client
            .query(
                "SELECT id, status, created_at, completed_at FROM automation_execution_logs ORDER BY id DESC LIMIT 10;",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);

    // Every query of the monitoring section of docs/operating.md runs as written.
    let page = herald_tests::repo_file("docs/operating.md");
    let section = page
        .split("## Monitoring SQL")
        .nth(1)
        .and_then(|s| s.split("```sql").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/operating.md has a monitoring SQL block");
    let queries: Vec<&str> = section
        .split(';')
        .map(str::trim)
        .filter(|q| {
            q.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        })
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    for q in queries {
        h.db.client
            .query(q, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\nin:\n{q}"));
    }
}

#[tokio::test]
async fn two_schedulers_at_once_never_claim_the_same_log() {
    // GIVEN 500 pending logs
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "UPDATE automations SET suppression_window = '0'::interval;
         INSERT INTO jobs (id, client_id, title) SELECT g, 1, 'job ' || g FROM generate_series(10, 509) g;
         UPDATE jobs SET status = 'completed' WHERE id >= 10;",
    )
    .await;
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE status = 'pending'")
            .await,
        500
    );

    // WHEN two schedulers with small claims drain at the same time
    let mut second = Herald::new().await;
    second.scheduler.db = herald_shared::pg::Database::new(h.db.config());
    second.scheduler.settings.claim_batch = 20;
    let mut first_settings = h.scheduler.settings.clone();
    first_settings.claim_batch = 20;
    let first = herald_scheduler::Scheduler {
        db: herald_shared::pg::Database::new(h.db.config()),
        queue: herald_shared::aws::SqsQueue::new(&h.moto.sdk, h.queue_url.clone()),
        receipts: herald_shared::aws::SqsReceipts::new(&h.moto.sdk, h.receipts_url.clone()).without_waiting(),
        clock: std::sync::Arc::new(herald_shared::clock::SystemClock),
        settings: first_settings,
    };
    let event = || {
        lambda_runtime::LambdaEvent::new(
            serde_json::from_str(&herald_tests::repo_file("events/scheduled.json")).unwrap(),
            herald_tests::lambda_context(60),
        )
    };
    let (a, b) = tokio::join!(
        herald_scheduler::handle(&first, event()),
        herald_scheduler::handle(&second.scheduler, event())
    );
    let (a, b) = (a.unwrap(), b.unwrap());

    // THEN together they claimed each log once, and each queue holds what its scheduler sent
    assert_eq!(a.claimed + b.claimed, 500, "{a:?} {b:?}");
    assert_eq!(a.sent + b.sent, 500);
    assert!(a.claimed > 0 && b.claimed > 0, "both took part: {a:?} {b:?}");
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE status = 'queued'")
            .await,
        500
    );
    assert_eq!(h.moto.queue_depth(&h.queue_url).await as u64, a.sent);
    assert_eq!(second.moto.queue_depth(&second.queue_url).await as u64, b.sent);
}

#[tokio::test]
async fn a_scheduler_invoked_with_a_deadline_already_past_drains_every_batch() {
    // GIVEN 25 pending logs, and a scheduler claiming 10 at a time
    let mut h = Herald::with_jobs_example().await;
    h.db.exec(
        "UPDATE automations SET suppression_window = '0'::interval;
         INSERT INTO jobs (id, client_id, title) SELECT g, 1, 'job ' || g FROM generate_series(10, 34) g;
         UPDATE jobs SET status = 'completed' WHERE id >= 10;",
    )
    .await;
    h.scheduler.settings.claim_batch = 10;

    // WHEN it is invoked with a deadline 5 s in the past, as `cargo lambda watch` sends
    let event = lambda_runtime::LambdaEvent::new(
        serde_json::from_str(&herald_tests::repo_file("events/scheduled.json")).unwrap(),
        herald_tests::lambda_context_until(std::time::SystemTime::now() - std::time::Duration::from_secs(5)),
    );
    let summary = herald_scheduler::handle(&h.scheduler, event).await.unwrap();

    // THEN the deadline is taken as unknown: every log is claimed and sent, in three claims
    assert_eq!(
        (summary.claimed, summary.sent, summary.stopped_by),
        (25, 25, "drained"),
        "{summary:?}"
    );
    assert_eq!(h.moto.queue_depth(&h.queue_url).await, 25);
}

#[tokio::test]
async fn attach_checks_its_columns_and_can_be_undone() {
    let h = Herald::with_jobs_example().await;
    let err =
        h.db.client
            .batch_execute("SELECT herald_attach('public.jobs', 'state')")
            .await
            .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains(r#"jobs has no column "state""#),
        "{err:?}"
    );
    // attaching twice replaces the triggers rather than doubling them
    h.db.exec("SELECT herald_attach('public.jobs', 'status', 'id')").await;
    let triggers = || {
        h.db.column::<String>(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'public.jobs'::regclass AND tgname LIKE 'herald%' ORDER BY 1",
        )
    };
    assert_eq!(triggers().await, ["herald_capture_update"]);
    // a change to a status no automation listens to does not reach the inbox
    h.db.exec("UPDATE jobs SET status = 'on hold' WHERE id = 1").await;
    assert_eq!(h.db.scalar::<i64>("SELECT count(*) FROM herald_inbox").await, 0);
    // automations added, deactivated and deleted re-create the table's triggers
    h.db.exec(
        "INSERT INTO automations (name, source_table, trigger_event, from_status, to_status, sms_to, sms_body)
         VALUES ('held', 'jobs', 'status_change', 'on hold', 'scheduled', '{{ client_phone }}', 'x'),
                ('inserted', 'jobs', 'insert', NULL, NULL, '{{ client_phone }}', 'x');",
    )
    .await;
    assert_eq!(triggers().await, ["herald_capture_insert", "herald_capture_update"]);
    h.db.exec("UPDATE jobs SET status = 'scheduled' WHERE id = 1").await;
    assert_eq!(
        h.db.column::<String>("SELECT a.name FROM herald_inbox i JOIN automations a ON a.id = i.automation_id")
            .await,
        ["held"]
    );
    h.db.exec("UPDATE automations SET is_active = false WHERE name = 'held'; DELETE FROM herald_inbox")
        .await;
    h.db.exec("UPDATE jobs SET status = 'on hold' WHERE id = 1; UPDATE jobs SET status = 'scheduled' WHERE id = 1")
        .await;
    assert_eq!(h.db.scalar::<i64>("SELECT count(*) FROM herald_inbox").await, 0);
    h.db.exec("DELETE FROM automations WHERE name = 'inserted'").await;
    assert_eq!(triggers().await, ["herald_capture_update"]);
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    assert_eq!(h.db.statuses().await, ["pending"]);
    // detached, status changes are no longer captured
    h.db.exec("SELECT herald_detach('public.jobs'); UPDATE jobs SET status = 'completed' WHERE id = 2")
        .await;
    assert_eq!(h.db.statuses().await, ["pending"]);
}

#[tokio::test]
async fn a_backlog_spanning_several_windows_is_decided_in_event_order() {
    // GIVEN events of one job at 0, 10, 31, 35 and 70 s, all waiting in the inbox at once
    // (the default 30 s window), and a job whose window opened in an earlier run
    let h = Herald::with_jobs_example().await;
    for (at, status) in [
        ("09:00:00", "completed"),
        ("09:00:10", "completed"),
        ("09:00:31", "completed"),
        ("09:00:35", "completed"),
        ("09:01:10", "completed"),
    ] {
        h.db.set_now(&format!("2026-03-01 {at}+00")).await;
        h.db.exec(&format!(
            "UPDATE jobs SET status = 'reopened' WHERE id = 1; UPDATE jobs SET status = '{status}' WHERE id = 1"
        ))
        .await;
    }
    assert_eq!(h.db.statuses().await, vec!["pending"; 5]);

    // WHEN they are moved to the ledger in one run (which counts those it suppressed)
    let moved: String =
        h.db.scalar("SELECT moved || ' ' || suppressed FROM herald_ingest_counted()")
            .await;
    assert_eq!(moved, "5 2");

    // THEN each opens a window or falls inside the one open at its time
    assert_eq!(
        h.db.statuses().await,
        ["pending", "suppressed", "pending", "suppressed", "pending"]
    );
    let holders: Vec<Option<i64>> = h
        .db
        .column("SELECT suppressed_by - (SELECT min(id) FROM automation_execution_logs) FROM automation_execution_logs ORDER BY id")
        .await;
    assert_eq!(holders, [None, Some(0), None, Some(2), None]);

    // AND an event inside a window opened by an earlier run is suppressed by it
    h.db.set_now("2026-03-01 09:01:20+00").await;
    h.db.exec("UPDATE jobs SET status = 'reopened' WHERE id = 1; UPDATE jobs SET status = 'completed' WHERE id = 1")
        .await;
    assert_eq!(h.db.ingest().await, 1);
    assert_eq!(
        h.db.scalar::<i64>("SELECT suppressed_by - (SELECT min(id) FROM automation_execution_logs) FROM automation_execution_logs ORDER BY id DESC LIMIT 1")
            .await,
        4
    );
}

#[tokio::test]
async fn in_low_latency_mode_a_capture_wakes_the_listening_scheduler() {
    use herald_shared::model::Wakeups;
    // GIVEN low-latency mode, and the scheduler's listener
    let h = Herald::with_jobs_example().await;
    h.db.exec("SELECT herald_low_latency(true)").await;
    let mut listener = h.scheduler.db.listen("herald_inbox").await.unwrap();
    // WHEN a change is captured
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    // THEN the listener wakes long before its fallback poll
    let waited = std::time::Instant::now();
    listener.wait(std::time::Duration::from_secs(120)).await;
    assert!(
        waited.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        waited.elapsed()
    );
    // AND the generated capture function notifies only in this mode
    let notifies = || {
        h.db.scalar::<bool>("SELECT bool_or(prosrc LIKE '%pg_notify%') FROM pg_proc WHERE proname LIKE 'herald_cap_%'")
    };
    assert!(notifies().await);
    h.db.exec("SELECT herald_low_latency(false)").await;
    assert!(!notifies().await);
}
