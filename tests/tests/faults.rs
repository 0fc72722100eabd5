//! Fault and load runs with real processes: each ends by comparing the ledger with what
//! moto received, and prints its figures (`cargo test --test faults -- --nocapture`).

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use herald_shared::aws::{SesEmail, SnsSms, SqsQueue};
use herald_shared::clock::ManualClock;
use herald_shared::pg::Database;
use herald_tests::fault::{figures, report, settle, tasks_sql, Figures};
use herald_tests::{connect, Herald, PgCluster, Proxy, Watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_status_changes_are_each_sent_exactly_once() {
    // GIVEN 200 tasks
    let mut h = Herald::new().await;
    h.db.exec(&tasks_sql(h.tag, 200).await).await;

    // WHEN 50 connections toggle them 1,000 times in all (new → go → wait → go → wait → go:
    // three transitions to `go` per task), at one pinned instant
    let mut tasks = Vec::new();
    for conn in 0..50i64 {
        let c = h.db.connect().await;
        tasks.push(tokio::spawn(async move {
            c.execute("SELECT set_config('herald.now', '2026-03-01 09:00:00+00', false)", &[])
                .await
                .unwrap();
            for i in 0..20i64 {
                let task = 1 + (conn * 20 + i) % 200;
                c.execute(
                    "UPDATE tasks SET status = CASE WHEN status = 'go' THEN 'wait' ELSE 'go' END WHERE id = $1",
                    &[&task],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // THEN suppression held: one pending log per task, the other 400 events suppressed
    assert_eq!(h.db.ingest().await, 600);
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE status = 'pending'")
            .await,
        200
    );
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE status = 'suppressed'")
            .await,
        400
    );

    // WHEN the pipeline runs
    let clock = h.manual_clock();
    settle(&h, &clock).await;

    // THEN every log went out once per channel, as moto and the ledger both say
    let f = figures(&h.db.client, &h).await;
    report("load (1,000 changes, 50 connections)", &f);
    assert_eq!(
        f,
        Figures {
            logs: 200,
            sent: 200,
            ..Default::default()
        }
    );
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 200);
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM herald_sends WHERE status = 'sent'")
            .await,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_endpoint_unreachable_for_a_while_delays_sends_but_loses_none() {
    // GIVEN an executor whose AWS endpoint is a proxy that is down, without SDK retries
    let mut h = Herald::new().await;
    h.db.exec(&tasks_sql(h.tag, 20).await).await;
    h.db.exec("UPDATE tasks SET status = 'go'").await;
    let clock = h.manual_clock();
    let proxy = Proxy::start(&h.moto.url).await;
    let via_proxy = h
        .moto
        .sdk
        .to_builder()
        .endpoint_url(&proxy.url)
        .retry_config(RetryConfig::disabled())
        .build();
    h.executor.email = SesEmail::new(&via_proxy, None);
    h.executor.sms = SnsSms::new(&via_proxy, None);
    proxy.set_up(false);

    // WHEN the scheduler and executor run while it is down
    assert_eq!(h.tick().await.claimed, 20);
    assert!(h.deliver_all().await.is_empty());
    // THEN every email failed transiently and waits for its retry; nothing is lost
    assert_eq!(h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE status = 'waiting' AND attempts = 1 AND next_step = 'email'").await, 20);
    assert_eq!(h.db.scalar::<i64>("SELECT count(*) FROM automation_step_runs WHERE step_id = 'email' AND status = 'failed' AND error_kind = 'transient'").await, 20);
    assert!(h.moto.emails_from(&h.from).await.is_empty());

    // WHEN it comes back
    proxy.set_up(true);
    settle(&h, &clock).await;

    // THEN all are sent, once
    let f = figures(&h.db.client, &h).await;
    report("AWS endpoint unreachable", &f);
    assert_eq!(
        f,
        Figures {
            logs: 20,
            sent: 20,
            ..Default::default()
        }
    );
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE attempts = 2")
            .await,
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_queue_without_blocking_its_batch() {
    // GIVEN a queue that dead-letters after 2 receives, three good logs and a poison message
    let mut h = Herald::new().await;
    let (queue, dlq) = h.moto.create_queue_with_dlq(&format!("poison-{}", h.tag), 2).await;
    h.scheduler.queue = SqsQueue::new(&h.moto.sdk, queue.clone());
    h.db.exec(&tasks_sql(h.tag, 3).await).await;
    h.db.exec("UPDATE tasks SET status = 'go'").await;
    h.moto.send_raw(&queue, "{\"log_id\": \"drop table\"").await;
    assert_eq!(h.tick().await.sent, 3);

    // WHEN the executor gets batches (a failed message's visibility timeout is cut short,
    // so that it comes back at once)
    let mut failures = 0;
    for _ in 0..4 {
        let event = h.moto.receive(&queue, 10).await;
        if event.records.is_empty() {
            break;
        }
        let response = h.execute(event.clone()).await;
        let failed: Vec<String> = herald_tests::failed_ids(&response);
        failures += failed.len();
        h.moto.delete_done(&queue, &event, &failed).await;
        h.moto.make_visible(&queue, &event, &failed).await;
    }

    // THEN the good ones were sent in the first batch, and the poison sits in the DLQ
    let f = figures(&h.db.client, &h).await;
    report("poison message", &f);
    assert_eq!(
        f,
        Figures {
            logs: 3,
            sent: 3,
            ..Default::default()
        }
    );
    assert_eq!(failures, 2, "reported as a failure on each of its 2 receives");
    assert_eq!(h.moto.queue_depth(&queue).await, 0);
    assert_eq!(h.moto.queue_depth(&dlq).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_while_the_scheduler_drains() {
    // GIVEN a database on a cluster of this test's own, with 600 due logs, and a slow queue
    let cluster = PgCluster::start("restart").unwrap();
    let admin = connect(&cluster.admin_url()).await;
    admin.batch_execute("CREATE DATABASE herald").await.unwrap();
    drop(admin);
    let url = cluster.url_for("herald");
    let c = connect(&url).await;
    herald_db::migrate(&c).await.unwrap();
    let mut h = Herald::new().await;
    c.batch_execute(&tasks_sql(h.tag, 600).await).await.unwrap();
    c.batch_execute("UPDATE tasks SET status = 'go'").await.unwrap();
    drop(c);
    h.scheduler.db = Database::new(url.parse().unwrap());
    h.executor.db = Database::new(url.parse().unwrap());
    h.scheduler.settings.claim_batch = 50;
    h.scheduler.settings.send_concurrency = 1;
    let proxy = Proxy::start(&h.moto.url).await;
    proxy.set_delay(Duration::from_millis(40));
    h.scheduler.queue = SqsQueue::new(
        &h.moto.sdk.to_builder().endpoint_url(&proxy.url).build(),
        h.queue_url.clone(),
    );
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::now() + Duration::from_secs(1)));
    h.scheduler.clock = clock.clone();
    h.executor.clock = clock.clone();

    // WHEN Postgres is killed and restarted while the scheduler drains
    let drain = h.tick_result();
    let crash = async {
        let watcher = connect(&url).await;
        loop {
            let queued: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM automation_execution_logs WHERE status = 'queued'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if queued >= 100 {
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(watcher);
        tokio::task::spawn_blocking(move || cluster.restart().map(|_| cluster))
            .await
            .unwrap()
    };
    let (first, cluster) = tokio::join!(drain, crash);
    let cluster = cluster.unwrap();

    // THEN that invocation fails cleanly with an error (a statement was cut) or goes on
    // over a new connection (the restart fell between statements); the next one reconnects
    match &first {
        Ok(s) => println!("interrupted invocation reconnected and went on: {s:?}"),
        Err(e) => println!("interrupted invocation failed: {e}"),
    }
    let second = h.tick_result().await.expect("the next invocation reconnects");
    println!("next invocation: {second:?}");
    proxy.set_delay(Duration::ZERO);
    for _ in 0..12 {
        h.deliver_all().await;
        let db = connect(&url).await;
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM automation_execution_logs WHERE status <> 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        clock.advance(Duration::from_secs(3700));
        h.tick().await;
    }
    let db = connect(&url).await;
    let f = figures(&db, &h).await;
    report("Postgres restarted mid-drain", &f);
    assert_eq!(
        f,
        Figures {
            logs: 600,
            sent: 600,
            ..Default::default()
        }
    );
    drop(cluster);
}

#[test]
fn the_executor_binary_killed_mid_batch_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // GIVEN ten due logs (email and SMS each), queued in one SQS batch
    let (mut h, proxy) = rt.block_on(async {
        let h = Herald::new().await;
        h.db.exec(&tasks_sql(h.tag, 10).await).await;
        h.db.exec("UPDATE tasks SET status = 'go'").await;
        let proxy = Proxy::start(&h.moto.url).await;
        proxy.set_delay(Duration::from_millis(150));
        h.tick().await;
        (h, proxy)
    });
    let event = rt.block_on(h.moto.receive(&h.queue_url, 10));
    assert_eq!(event.records.len(), 10);
    let event_file = std::env::temp_dir().join(format!("herald-kill-{}.json", h.tag));
    std::fs::write(&event_file, serde_json::to_vec(&event).unwrap()).unwrap();

    // WHEN the executor binary, sending through a slow link, is SIGKILLed mid-batch
    let watch = Watch::start(&[
        ("DATABASE_URL", h.db.url.clone()),
        ("HERALD_FROM_ADDRESS", h.from.clone()),
        ("HERALD_RECEIPTS_QUEUE_URL", h.receipts_url.clone()),
        ("HERALD_EXECUTOR_CONCURRENCY", "2".into()),
        ("AWS_ENDPOINT_URL", proxy.url.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("RUST_LOG", "info".into()),
    ]);
    // A first invocation builds and starts the function, so that the batch's invocation has
    // its whole time budget for its steps (the emulator's clock runs from the request).
    watch.invoke_output("executor", "events/sqs-malformed.json");
    let invocation = {
        let file = event_file.to_str().unwrap().to_owned();
        let watch = &watch;
        std::thread::scope(|s| {
            let handle = s.spawn(move || watch.invoke_output("executor", &file));
            rt.block_on(async {
                // Wait until a few deliveries have landed and one is on the wire, then kill.
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                loop {
                    let r = h
                        .db
                        .client
                        .query_one(
                            "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'sending')
                             FROM herald_sends",
                            &[],
                        )
                        .await
                        .unwrap();
                    let (sent, sending): (i64, i64) = (r.get(0), r.get(1));
                    if sent >= 4 && sending >= 1 {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "the executor made no progress");
                    tokio::task::yield_now().await;
                }
            });
            assert!(watch.kill_function("executor") >= 1, "no executor process to kill");
            watch.stop();
            handle.join().unwrap()
        })
    };
    drop(watch);
    let in_flight: i64 = rt.block_on(h.db.scalar("SELECT count(*) FROM herald_sends WHERE status = 'sending'"));
    println!(
        "killed mid-batch: invoke exited with {:?}; {in_flight} sends in flight",
        invocation.status.code()
    );

    // THEN once the leases run out, the pipeline resumes and finishes the work
    rt.block_on(async {
        // let the proxy pass on what it still holds
        proxy.set_delay(Duration::ZERO);
        let clock = h.manual_clock();
        clock.advance(Duration::from_secs(121));
        settle(&h, &clock).await;
        let f = figures(&h.db.client, &h).await;
        report("executor SIGKILLed mid-batch", &f);
        // nothing lost; every instance completed, or held as unknown for a send in flight (its
        // run stays `started`: its end was never recorded). Email and SMS both hold by
        // default, so nothing is sent twice.
        assert_eq!(f.lost, 0, "{f:?}");
        assert_eq!(f.sent + f.unknown, 10, "{f:?}");
        let in_doubt: i64 =
            h.db.scalar("SELECT count(DISTINCT log_id) FROM herald_sends WHERE status IN ('sending', 'unknown')")
                .await;
        assert_eq!(
            f.unknown as i64, in_doubt,
            "unknown logs are exactly those with a send in flight"
        );
        assert!(in_doubt <= in_flight, "{f:?}");
        assert_eq!(f.duplicated, 0, "{f:?}");
    });
    let _ = std::fs::remove_file(event_file);
}
