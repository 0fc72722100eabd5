//! Leases, fencing tokens, rescue, the dead and unknown states, and the operator functions.
//!
//! Automations written with the email and SMS columns run as two-step workflows (`email`,
//! then `sms`).

use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use herald_shared::aws::SnsSms;
use herald_shared::clock::{Clock, ManualClock};
use herald_shared::ledger::{FlowLedger, FlowStarted, FlowWrite, Parked, StepStart, Stop, Taken};
use herald_shared::model::{Email, Lease, QueueMessage, Sms};
use herald_shared::pg::PgStore;
use herald_shared::steps::Effect;
use herald_shared::workflow::machine::{Instance, Park};
use herald_tests::Herald;

/// The one message on the queue, as the executor would get it.
async fn only_message(h: &Herald) -> (SqsEvent, QueueMessage) {
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 1);
    let msg = QueueMessage::parse(event.records[0].body.as_deref().unwrap()).unwrap();
    (event, msg)
}

/// An executor that claims the instance and then stops responding, through the real store.
async fn claim_and_vanish(h: &Herald, msg: QueueMessage, clock_now: std::time::SystemTime) -> (PgStore, Lease) {
    let store = h.executor.db.store().await.unwrap();
    let started = FlowLedger::start(&store, &[msg], clock_now, clock_now + Duration::from_secs(120))
        .await
        .unwrap();
    let Some(FlowStarted::Claimed { lease, .. }) = started.into_iter().next() else {
        panic!("claim failed");
    };
    (store, lease)
}

/// The instance's place at its first step `step`, as the executor records it there.
fn at_first(step: &str) -> Instance {
    Instance {
        next: Some(step.to_owned()),
        steps_run: 1,
        attempt: 1,
        outputs: Default::default(),
    }
}

/// Records the effect of the instance's first step as started, as the executor does before
/// calling the provider; answers how the ledger took it.
async fn effect_started(
    store: &PgStore,
    lease: Lease,
    step: &str,
    effect: Effect,
    now: std::time::SystemTime,
) -> Taken {
    let kind = match effect {
        Effect::Email(_) => "send_email",
        _ => "send_sms",
    };
    let write = FlowWrite {
        started: vec![StepStart {
            lease,
            step: step.to_owned(),
            kind,
            attempt: 1,
            effect,
            place: at_first(step),
        }],
        ..Default::default()
    };
    store.write(&write, &[], now).await.unwrap().started.remove(0)
}

fn email_to(h: &Herald, to: String) -> Effect {
    Effect::Email(Email {
        from: h.from.clone(),
        to,
        subject: "Job completed".into(),
        text: Some("Thanks".into()),
        html: None,
    })
}

fn sms_to(to: &str) -> Effect {
    Effect::Sms(Sms {
        to: to.to_owned(),
        body: "hello".into(),
    })
}

/// Each step run of the ledger, in order: `step attempt status`.
async fn runs(h: &Herald) -> Vec<String> {
    h.db.column("SELECT step_id || ' ' || attempt || ' ' || status FROM automation_step_runs ORDER BY id")
        .await
}

/// `herald_retry` on the only log, then one scheduler and executor run.
async fn operator_retries_and_it_is_sent(h: &Herald, clock: &ManualClock) {
    assert!(
        h.db.scalar::<bool>("SELECT herald_retry(id) FROM automation_execution_logs")
            .await
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
}

async fn row(h: &Herald) -> (String, i32, Option<String>, Option<String>) {
    let r =
        h.db.client
            .query_one(
                "SELECT status, attempts, error_code, error FROM automation_execution_logs",
                &[],
            )
            .await
            .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test]
async fn a_lost_sqs_message_is_requeued_and_the_late_original_is_skipped() {
    // GIVEN a queued log whose message is lost (it is received, never processed)
    let mut h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    let clock = h.manual_clock();
    assert_eq!(h.tick().await.claimed, 1);
    let (lost, _) = only_message(&h).await;

    // WHEN the queue lease (15 min) runs out
    assert_eq!(h.tick().await.rescued.requeued, 0, "not before the lease ends");
    clock.advance(Duration::from_secs(901));
    let summary = h.tick().await;

    // THEN the scheduler re-queues it under a new lease, and it is sent once
    assert_eq!((summary.rescued.requeued, summary.claimed), (1, 1));
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed"]);
    // AND the original message, arriving late, is stale: skipped, not sent again
    assert!(h.execute(lost).await.batch_item_failures.is_empty());
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
}

#[tokio::test]
async fn a_slow_executor_whose_lease_was_taken_over_cannot_overwrite_the_newer_attempt() {
    // GIVEN executor A claims an instance and stalls before sending
    let mut h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    let clock = h.manual_clock();
    h.tick().await;
    let (_, msg) = only_message(&h).await;
    let (stale, lease_a) = claim_and_vanish(&h, msg, clock.now()).await;

    // WHEN its lease runs out, the scheduler rescues the instance and queues it again at
    // once, and executor B runs it
    clock.advance(Duration::from_secs(121));
    let summary = h.tick().await;
    assert_eq!((summary.rescued.resumed, summary.claimed), (1, 1));
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed"]);

    // THEN A, coming back, can neither start a send nor stop the instance with its verdict
    let now = clock.now();
    let email = email_to(&h, h.email_of(1));
    assert_eq!(effect_started(&stale, lease_a, "email", email, now).await, Taken::Lost);
    let verdict = FlowWrite {
        parked: vec![Parked {
            lease: lease_a,
            instance: at_first("email"),
            stop: Stop::Park(Park::Failed("A's late verdict".into())),
        }],
        ..Default::default()
    };
    assert_eq!(stale.write(&verdict, &[], now).await.unwrap().parked, [Taken::Lost]);
    let (status, attempts, _, error) = row(&h).await;
    assert_eq!((status.as_str(), attempts, error), ("completed", 2, None));
    // AND the instance was parked by B's lease, the newer one
    let parked_by: i64 = h.db.scalar("SELECT parked_lease FROM automation_execution_logs").await;
    assert!(parked_by > lease_a.token, "{parked_by} after {}", lease_a.token);
    assert_eq!(runs(&h).await, ["email 1 done", "sms 1 done"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
}

#[tokio::test]
async fn a_send_in_flight_when_the_executor_died_is_unknown_by_default_and_resent_when_its_policy_says_so() {
    // GIVEN two instances whose executor died in the middle of a send: one SMS, one email
    let mut h = Herald::with_jobs_example().await;
    h.db.exec(
        "INSERT INTO automations (name, source_table, to_status, sms_to, sms_body)
           VALUES ('sms-only', 'jobs', 'sms', '+14155550142', 'hello');
         UPDATE jobs SET status = 'sms' WHERE id = 2;",
    )
    .await;
    let clock = h.manual_clock();
    h.tick().await;
    let (_, msg) = only_message(&h).await;
    let (store, lease) = claim_and_vanish(&h, msg, clock.now()).await;
    let sms = sms_to("+14155550142");
    assert_eq!(effect_started(&store, lease, "sms", sms, clock.now()).await, Taken::Yes);

    // WHEN the lease runs out, and the rescued instance is claimed again
    clock.advance(Duration::from_secs(121));
    let summary = h.tick().await;
    assert_eq!((summary.rescued.resumed, summary.claimed), (1, 1));
    assert!(h.deliver_all().await.is_empty());

    // THEN its SMS step is held as unknown, visible in SQL, and not sent again
    let (status, _, _, error) = row(&h).await;
    assert_eq!(status, "unknown");
    let error = error.unwrap();
    assert!(
        error.contains("step `sms` (send_sms) started but its outcome was never recorded"),
        "{error}"
    );
    assert_eq!(runs(&h).await, ["sms 1 started"]);
    let send: String = h.db.scalar("SELECT status FROM herald_sends").await;
    assert_eq!(send, "sending");
    clock.advance(Duration::from_secs(3600));
    assert_eq!(h.tick().await.claimed, 0);
    assert!(h.moto.sms_to("+14155550142").await.is_empty());

    // WHEN an operator decides to resend it
    operator_retries_and_it_is_sent(&h, &clock).await;
    // THEN it is sent, as the step's second try
    assert_eq!(h.db.statuses().await, ["completed"]);
    assert_eq!(h.moto.sms_to("+14155550142").await.len(), 1);
    assert_eq!(runs(&h).await, ["sms 1 unknown", "sms 2 done"]);

    // AND an email in the same situation is resent when its automation says so (the
    // default is `hold`, as for SMS)
    h.db.exec(
        "UPDATE automations SET email_on_unknown = 'resend' WHERE name = 'job-completed';
         UPDATE jobs SET status = 'completed' WHERE id = 1;",
    )
    .await;
    clock.advance(Duration::from_secs(1));
    h.tick().await;
    let (_, msg) = only_message(&h).await;
    let (store, lease) = claim_and_vanish(&h, msg, clock.now()).await;
    let email = email_to(&h, h.email_of(1));
    assert_eq!(
        effect_started(&store, lease, "email", email, clock.now()).await,
        Taken::Yes
    );
    clock.advance(Duration::from_secs(121));
    let summary = h.tick().await;
    assert_eq!((summary.rescued.resumed, summary.claimed), (1, 1));
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed", "completed"]);
    let email_runs: Vec<String> =
        h.db.column("SELECT attempt || ' ' || status FROM automation_step_runs WHERE step_id = 'email' ORDER BY id")
            .await;
    assert_eq!(email_runs, ["1 started", "2 done"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
}

#[tokio::test]
async fn after_the_last_attempt_a_log_is_dead_with_its_history_and_retry_revives_it() {
    // GIVEN an automation allowing 2 attempts, and SNS unreachable
    let mut h = Herald::with_jobs_example().await;
    let unreachable = h.moto.sdk.to_builder().endpoint_url("http://127.0.0.1:9").build();
    let good_sms = std::mem::replace(&mut h.executor.sms, SnsSms::new(&unreachable, None));
    h.db.exec(
        "UPDATE automations SET max_attempts = 2, retry_base = '10 seconds', retry_cap = '20 seconds',
                email_to = NULL, email_subject = NULL, email_text = NULL, email_html = NULL;
         UPDATE jobs SET status = 'completed' WHERE id = 1;",
    )
    .await;
    let clock = h.manual_clock();

    // WHEN both attempts fail transiently
    for _ in 0..2 {
        assert_eq!(h.tick().await.claimed, 1);
        assert!(h.deliver_all().await.is_empty());
        clock.advance(Duration::from_secs(21));
    }

    // THEN the instance is dead, and its step's tries tell the story
    let (status, attempts, _, error) = row(&h).await;
    assert_eq!((status.as_str(), attempts), ("dead", 2));
    assert!(error.unwrap().starts_with("step `sms` failed: "));
    let kind: String = h.db.scalar("SELECT error_kind FROM automation_execution_logs").await;
    assert_eq!(kind, "transient");
    let history: Vec<(i32, String, String)> =
        h.db.client
            .query(
                "SELECT attempt, status, error_kind FROM automation_step_runs WHERE step_id = 'sms' ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    assert_eq!(
        history,
        [
            (1, "failed".into(), "transient".into()),
            (2, "failed".into(), "transient".into())
        ]
    );
    assert_eq!(h.tick().await.claimed, 0);

    // WHEN SNS is back and an operator retries it
    h.executor.sms = good_sms;
    operator_retries_and_it_is_sent(&h, &clock).await;
    // THEN it is sent, as a third try of its step
    assert_eq!(row(&h).await.0, "completed");
    let sent: i32 =
        h.db.scalar("SELECT attempt FROM automation_step_runs WHERE step_id = 'sms' AND status = 'done'")
            .await;
    assert_eq!(sent, 3);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
    // AND retry refuses what is not dead, failed or unknown
    assert!(
        !h.db
            .scalar::<bool>("SELECT herald_retry(id) FROM automation_execution_logs")
            .await
    );
}

#[tokio::test]
async fn cancel_stops_a_pending_or_queued_log() {
    let h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed'").await;
    // a pending one is never claimed
    assert!(
        h.db.scalar::<bool>("SELECT herald_cancel(min(id)) FROM automation_execution_logs")
            .await
    );
    assert_eq!(h.tick().await.claimed, 1);
    // a queued one: its message is skipped
    assert!(
        h.db.scalar::<bool>("SELECT herald_cancel(max(id)) FROM automation_execution_logs")
            .await
    );
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["cancelled", "cancelled"]);
    assert!(h.moto.emails_from(&h.from).await.is_empty());
    // a finished one cannot be cancelled
    assert!(
        !h.db
            .scalar::<bool>("SELECT herald_cancel(min(id)) FROM automation_execution_logs")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_executors_racing_on_the_same_messages_send_each_log_once() {
    // GIVEN ten queued logs, and the same batch handed to two executors at once (as a
    // redelivery during a slow first attempt would)
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "UPDATE automations SET suppression_window = '0';
         INSERT INTO jobs (id, client_id, title) SELECT g, 1, 'job ' || g FROM generate_series(10, 19) g;
         UPDATE jobs SET status = 'completed' WHERE id >= 10;",
    )
    .await;
    assert_eq!(h.tick().await.sent, 10);
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 10);
    let second = herald_executor::Executor {
        db: herald_shared::pg::Database::new(h.db.config()),
        email: herald_shared::aws::SesEmail::new(&h.moto.sdk, None),
        sms: SnsSms::new(&h.moto.sdk, None),
        receipts: herald_shared::aws::SqsReceipts::new(&h.moto.sdk, h.receipts_url.clone()),
        webhooks: h.executor.webhooks.clone(),
        secrets: herald_shared::aws::SecretsManager::new(&h.moto.sdk),
        clock: std::sync::Arc::new(herald_shared::clock::SystemClock),
        settings: h.executor.settings.clone(),
    };

    // WHEN both run it concurrently
    let ctx = || herald_tests::lambda_context(60);
    let (a, b) = tokio::join!(
        herald_executor::handle(&h.executor, lambda_runtime::LambdaEvent::new(event.clone(), ctx())),
        herald_executor::handle(&second, lambda_runtime::LambdaEvent::new(event.clone(), ctx())),
    );

    // THEN every message is done for both, and each log was sent exactly once
    assert!(a.unwrap().batch_item_failures.is_empty());
    assert!(b.unwrap().batch_item_failures.is_empty());
    assert_eq!(h.db.statuses().await, vec!["completed"; 10]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 10);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 10);
    assert_eq!(
        h.db.scalar::<i64>(
            "SELECT count(*) FROM automation_execution_logs WHERE attempts = 1 AND parked_lease IS NOT NULL"
        )
        .await,
        10
    );
}

#[tokio::test]
async fn the_same_message_twice_in_one_batch_sends_once() {
    // GIVEN one queued log whose message SQS delivers twice, in the same batch
    let h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    h.tick().await;
    let (mut event, _) = only_message(&h).await;
    let mut twin = event.records[0].clone();
    twin.message_id = Some("twin".into());
    event.records.push(twin);

    // WHEN the executor gets the batch
    let response = h.execute(event).await;

    // THEN one message sends it and the other is skipped (not a failure, not a second send)
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(h.db.statuses().await, ["completed"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
}

#[tokio::test]
async fn a_stale_message_and_its_requeued_successor_in_one_batch_send_once_by_the_newer_lease() {
    // GIVEN a queued log whose first message was never run, rescued and queued again under a
    // new lease, so both messages are in the queue
    let mut h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    let clock = h.manual_clock();
    assert_eq!(h.tick().await.claimed, 1);
    clock.advance(Duration::from_secs(901));
    assert_eq!(h.tick().await.claimed, 1);

    // WHEN the executor gets both in one batch, the stale one first
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 2);
    let response = h.execute(event).await;

    // THEN the newer lease runs it, once, and the stale one is skipped (not a failure)
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(h.db.statuses().await, ["completed"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
}
