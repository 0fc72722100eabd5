//! The built function binaries under cargo-lambda's Lambda runtime emulator, answering the
//! sample events of `events/`. No Docker: `cargo lambda watch` plays the Lambda service.

use herald_tests::{Herald, Watch};
use serde_json::json;

#[test]
fn the_function_binaries_answer_the_sample_events() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // GIVEN a database with one pending log (id 1: the sample SQS event names it)
    let h = rt.block_on(async {
        let h = Herald::with_jobs_example().await;
        h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
        h
    });
    let env = [
        ("DATABASE_URL", h.db.url.clone()),
        ("HERALD_QUEUE_URL", h.queue_url.clone()),
        ("HERALD_RECEIPTS_QUEUE_URL", h.receipts_url.clone()),
        ("HERALD_FROM_ADDRESS", h.from.clone()),
        ("AWS_ENDPOINT_URL", h.moto.url.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("RUST_LOG", "info".into()),
    ];
    let watch = Watch::start(&env);

    // WHEN the scheduler binary gets the EventBridge event
    let summary = watch.invoke("scheduler", "events/scheduled.json");
    // THEN it claimed and queued the log
    assert_eq!(summary["claimed"], 1, "{summary}");
    assert_eq!(summary["sent"], 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["stopped_by"], "drained", "{summary}");

    // WHEN the executor binary gets the malformed SQS event (which also starts it, so that the
    // good event's invocation has its whole time budget for its steps)
    let response = watch.invoke("executor", "events/sqs-malformed.json");
    // THEN that message, and only it, is reported back for SQS to retry / dead-letter
    assert_eq!(
        response,
        json!({"batchItemFailures": [{"itemIdentifier": "7b1f0a52-4c3e-4f43-9d5a-2f0c1e9a0bad"}]})
    );

    // WHEN it gets the good SQS event
    let response = watch.invoke("executor", "events/sqs-good.json");
    // THEN no item failed, and the log ran as an instance of its two-step definition
    assert_eq!(response, json!({"batchItemFailures": []}));
    rt.block_on(async {
        assert_eq!(h.db.statuses().await, ["completed"]);
        assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    });

    // AND the good event again is a no-op: the log was already sent
    assert_eq!(
        watch.invoke("executor", "events/sqs-good.json"),
        json!({"batchItemFailures": []})
    );
    rt.block_on(async { assert_eq!(h.moto.emails_from(&h.from).await.len(), 1) });
    drop(watch);
}
