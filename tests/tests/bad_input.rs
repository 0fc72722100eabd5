//! Bad input fails the one message or log it concerns, with a clear reason; the rest of
//! the batch is still sent.

use aws_lambda_events::sqs::SqsMessage;
use herald_shared::aws::SnsSms;
use herald_tests::Herald;

fn synthetic(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body.into());
    m
}

async fn error_of(h: &Herald, subject: &str, automation: &str) -> (String, String, Option<String>) {
    let r =
        h.db.client
            .query_one(
                "SELECT l.status, coalesce(l.error, ''), l.error_kind FROM automation_execution_logs l
             LEFT JOIN automations a ON a.id = l.automation_id
             WHERE l.subject_id = $1 AND coalesce(a.name, 'deleted') = $2",
                &[&subject, &automation],
            )
            .await
            .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test]
async fn each_bad_message_or_log_fails_alone_and_the_good_one_is_sent() {
    // GIVEN one good event and five broken ones
    let h = Herald::with_jobs_example().await;
    h.db.exec(&format!(
        "INSERT INTO clients (id, name, email, phone) VALUES
           (3, 'Bad Email', 'not-an-email', '+14155550103'),
           (4, 'Bad Phone', 'ok4@example.com', '+1 415 555');
         INSERT INTO jobs (id, client_id, title) VALUES (3, 3, 'Job three'), (4, 4, 'Job four'), (5, 1, 'Job five'),
           (6, 1, 'Job six'), (7, 1, 'Job seven');
         INSERT INTO automations (name, source_table, to_status, context_relation, context_key_column, sms_to, sms_body) VALUES
           ('needs-refund', 'jobs', 'cancelled', 'public.job_context', 'job_id', '{{{{ client_phone }}}}', 'Refund {{{{ refund_amount }}}}'),
           ('on-hold', 'jobs', 'on_hold', 'public.job_context', 'job_id', '{{{{ client_phone }}}}', 'On hold'),
           ('doomed', 'jobs', 'paused', NULL, NULL, '{{{{ title }}}}', 'x'),
           ('no-view', 'jobs', 'archived', 'public.no_such_view', 'job_id', '+14155550100', 'x');
         INSERT INTO automations (name, source_table, to_status, email_from, email_to, email_subject, email_text) VALUES
           ('unverified-sender', 'jobs', 'escalated', 'nobody@unverified.example.com', 'ok@example.com', 's', 't');
         UPDATE clients SET email = 'good+{tag}@example.com' WHERE id = 1;",
        tag = h.tag
    ))
    .await;
    h.db.exec(
        "UPDATE jobs SET status = 'completed' WHERE id = 1;  -- good
         UPDATE jobs SET status = 'completed' WHERE id = 3;  -- invalid email
         UPDATE jobs SET status = 'on_hold' WHERE id = 4;    -- invalid phone
         UPDATE jobs SET status = 'cancelled' WHERE id = 5;  -- missing template variable
         UPDATE jobs SET status = 'paused' WHERE id = 6;     -- automation deleted before sending
         UPDATE jobs SET status = 'archived' WHERE id = 7;   -- context view missing
         UPDATE jobs SET status = 'escalated' WHERE id = 1;  -- SES rejects the sender
         DELETE FROM automations WHERE name = 'doomed';",
    )
    .await;
    assert_eq!(h.tick().await.sent, 7);

    // WHEN the executor gets them in one batch, with a malformed body and an unknown log id
    let mut event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 7);
    event
        .records
        .insert(2, synthetic("malformed-1", "{\"log_id\": \"seven\""));
    event
        .records
        .push(synthetic("unknown-1", "{\"log_id\": 987654, \"lease\": 1}"));
    let response = h.execute(event).await;

    // THEN only those two are batch item failures
    let mut failed: Vec<String> = herald_tests::failed_ids(&response);
    failed.sort();
    assert_eq!(failed, ["malformed-1", "unknown-1"]);

    // AND the good one was sent
    assert_eq!(
        error_of(&h, "1", "job-completed").await,
        ("completed".into(), "".into(), None)
    );
    let emails = h.moto.emails_from(&h.from).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].destinations.to, [format!("good+{}@example.com", h.tag)]);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);

    // AND an invalid email address fails its step only: the SMS after it (`on_error:
    // continue` in the column form's definition) is still sent
    assert_eq!(error_of(&h, "3", "job-completed").await.0, "completed");
    let (status, error): (String, String) = {
        let r =
            h.db.client
                .query_one(
                    "SELECT r.status, r.error FROM automation_step_runs r JOIN automation_execution_logs l ON l.id = r.log_id
                     WHERE l.subject_id = '3' AND r.step_id = 'email'",
                    &[],
                )
                .await
                .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "failed");
    assert!(
        error.starts_with("invalid email address") && error.contains("it has no @"),
        "{error}"
    );
    assert_eq!(h.moto.sms_to("+14155550103").await.len(), 1);

    // AND each broken log failed for good with its reason, sending nothing
    let permanent = Some("permanent".to_string());
    let (status, error, kind) = error_of(&h, "4", "on-hold").await;
    assert_eq!((status.as_str(), kind.clone()), ("failed", permanent.clone()));
    assert!(
        error.starts_with("step `sms` failed: invalid phone number") && error.contains("too short"),
        "{error}"
    );
    assert!(!error.contains("415 555"), "the number is masked: {error}");
    assert_eq!(
        error_of(&h, "5", "needs-refund").await,
        (
            "failed".into(),
            "step `sms` failed: missing template variable `refund_amount` in sms_body".into(),
            permanent.clone()
        )
    );
    let (status, error, _) = error_of(&h, "6", "deleted").await;
    assert_eq!(status, "failed");
    assert!(error.starts_with("unknown automation "), "{error}");
    assert_eq!(
        error_of(&h, "7", "no-view").await,
        (
            "failed".into(),
            "the data: context relation public.no_such_view does not exist".into(),
            permanent
        )
    );
    // the provider's own rejection is permanent too, with its code kept apart
    let (status, error, kind) = error_of(&h, "1", "unverified-sender").await;
    assert_eq!((status.as_str(), kind), ("failed", Some("permanent".to_string())));
    assert!(
        error.starts_with("step `email` failed: Email address not verified"),
        "{error}"
    );
    let code: String =
        h.db.scalar("SELECT error_code FROM automation_step_runs WHERE error LIKE 'Email address not verified%'")
            .await;
    assert_eq!(code, "MessageRejected");
    // nothing but the good log's two sends, job 3's SMS and the rejected email was attempted
    let sends: Vec<String> =
        h.db.column(
            "SELECT channel || ' ' || status FROM herald_sends WHERE recipient IS NOT NULL ORDER BY log_id, channel",
        )
        .await;
    assert_eq!(sends, ["email sent", "sms sent", "sms sent", "email failed"]);
}

#[tokio::test]
async fn a_context_row_that_is_missing_doubled_or_raising_fails_only_its_own_log() {
    // GIVEN a context view that has no row for job 13, two rows for job 12, and raises an
    // error when job 14's row is read, and five jobs of one batch that read it
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "CREATE VIEW picky_context AS
           SELECT j.id AS job_id, j.title, c.phone AS client_phone,
                  1 / (CASE WHEN j.title = 'boom' THEN 0 ELSE 1 END) AS one
           FROM jobs j JOIN clients c ON c.id = j.client_id
           LEFT JOIN (VALUES (1), (2)) AS twin(n) ON j.title = 'twin'
           WHERE j.id <> 13;
         INSERT INTO jobs (id, client_id, title) VALUES
           (11, 1, 'good one'), (12, 1, 'twin'), (13, 1, 'missing'), (14, 1, 'boom'), (15, 1, 'good two');
         INSERT INTO automations (name, source_table, to_status, context_relation, context_key_column, sms_to, sms_body)
         VALUES ('picky', 'jobs', 'review', 'public.picky_context', 'job_id', '{{ client_phone }}', 'Review {{ title }}');
         UPDATE jobs SET status = 'review' WHERE id BETWEEN 11 AND 15;",
    )
    .await;
    assert_eq!(h.tick().await.sent, 5);

    // WHEN the executor gets them in one batch
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 5);
    let response = h.execute(event).await;
    assert!(herald_tests::failed_ids(&response).is_empty());

    // THEN the two good jobs are sent with their own data
    for job in ["11", "15"] {
        assert_eq!(
            error_of(&h, job, "picky").await.0,
            "completed",
            "job {job}: {:?}",
            error_of(&h, job, "picky").await
        );
    }
    let mut bodies: Vec<String> = h
        .moto
        .sms_to(&h.phone_of(1))
        .await
        .into_iter()
        .map(|m| m.message)
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["Review good one", "Review good two"]);

    // AND each broken one failed alone, with its own reason
    let (status, error, _) = error_of(&h, "12", "picky").await;
    assert_eq!(status, "failed");
    assert_eq!(error, "the data: more than one row in picky_context where job_id = 12");
    let (status, error, _) = error_of(&h, "13", "picky").await;
    assert_eq!(status, "failed");
    assert_eq!(error, "the data: no row in picky_context where job_id = 13");
    let (status, error, _) = error_of(&h, "14", "picky").await;
    assert_ne!(status, "completed");
    assert!(error.contains("division by zero"), "{error}");
}

#[tokio::test]
async fn a_redelivered_message_never_sends_twice() {
    let h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    h.tick().await;
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert!(h.execute(event.clone()).await.batch_item_failures.is_empty());
    // SQS delivers the same message again (at-least-once): it is done, not resent
    assert!(h.execute(event.clone()).await.batch_item_failures.is_empty());
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
    assert_eq!(h.db.statuses().await, ["completed"]);
    assert_eq!(
        h.db.scalar::<i32>("SELECT attempts FROM automation_execution_logs")
            .await,
        1
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_after_a_backoff_and_channels_already_sent_are_not_resent() {
    // GIVEN an executor whose SNS endpoint is unreachable (SES works; email goes first)
    let mut h = Herald::with_jobs_example().await;
    let unreachable = h.moto.sdk.to_builder().endpoint_url("http://127.0.0.1:9").build();
    let good_sms = std::mem::replace(&mut h.executor.sms, SnsSms::new(&unreachable, None));
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    let clock = h.manual_clock();
    h.tick().await;

    // WHEN the executor runs
    assert!(
        h.deliver_all().await.is_empty(),
        "the ledger owns the retry: the message is done"
    );

    // THEN the instance waits for its SMS step's next try, due within the first backoff (30 s
    // base), and the step's run says why
    let r =
        h.db.client
            .query_one(
                "SELECT status, attempts, extract(epoch FROM run_at - updated_at)::float8, next_step
             FROM automation_execution_logs",
                &[],
            )
            .await
            .unwrap();
    let (status, attempts, delay, next): (String, i32, f64, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!((status.as_str(), attempts, next.as_str()), ("waiting", 1, "sms"));
    assert!((0.0..=30.0).contains(&delay), "{delay}");
    let (error, kind): (String, String) = {
        let r =
            h.db.client
                .query_one(
                    "SELECT error, error_kind FROM automation_step_runs WHERE step_id = 'sms'",
                    &[],
                )
                .await
                .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(kind, "transient");
    assert!(!error.is_empty());
    // the email went out; the SMS did not
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert!(h.moto.sms_to(&h.phone_of(1)).await.is_empty());

    // WHEN SNS is back and the backoff has passed
    h.executor.sms = good_sms;
    assert_eq!(h.tick().await.claimed, 0, "not due before its backoff");
    clock.advance(std::time::Duration::from_secs(31));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());

    // THEN the SMS is sent, and the email is not sent a second time
    assert_eq!(h.db.statuses().await, ["completed"]);
    assert_eq!(
        h.db.scalar::<i32>("SELECT attempts FROM automation_execution_logs")
            .await,
        2
    );
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
    // AND every try of each step is in the history
    let runs: Vec<String> =
        h.db.column("SELECT step_id || ' ' || attempt || ' ' || status FROM automation_step_runs ORDER BY id")
            .await;
    assert_eq!(runs, ["email 1 done", "sms 1 failed", "sms 2 done"]);
}

#[tokio::test]
async fn a_flow_message_that_names_no_instance_fails_alone_in_its_batch() {
    // GIVEN two instances queued, and a third already finished
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "INSERT INTO jobs (id, client_id, title) VALUES (5, 1, 'Job five'), (6, 2, 'Job six');
               UPDATE jobs SET status = 'completed' WHERE id = 1;",
    )
    .await;
    assert_eq!(h.tick().await.sent, 1);
    let first = h.moto.receive(&h.queue_url, 10).await;
    let finished = first.records[0].body.clone().unwrap();
    assert!(herald_tests::failed_ids(&h.execute(first).await).is_empty());
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id IN (5, 6)")
        .await;
    assert_eq!(h.tick().await.sent, 2);
    let mut event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 2);
    let queued: serde_json::Value = serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();

    // WHEN one batch also carries every message that names no instance to run: a log that
    // does not exist, a lease that is not the log's, and a finished log's message again
    let stale = serde_json::json!({"log_id": queued["log_id"], "lease": queued["lease"].as_i64().unwrap() + 1000});
    event
        .records
        .insert(0, synthetic("unknown-log", r#"{"log_id": 987654321, "lease": 1}"#));
    event.records.push(synthetic("finished-log", &finished));
    event.records.push(synthetic("stale-lease", &stale.to_string()));
    let response = h.execute(event).await;

    // THEN only the unknown log fails, as what it is, and both instances ran
    assert_eq!(herald_tests::failed_ids(&response), ["unknown-log"]);
    let statuses: Vec<String> =
        h.db.column("SELECT status FROM automation_execution_logs ORDER BY subject_id::int")
            .await;
    assert_eq!(statuses, ["completed", "completed", "completed"]);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 2, "job 1 once, job 5 once");
    assert_eq!(h.moto.sms_to(&h.phone_of(2)).await.len(), 1);
}
