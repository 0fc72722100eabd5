//! The built function binaries under cargo-lambda's Lambda runtime emulator, answering the
//! sample events of `events/`, with their logs in JSON as deployed. No Docker: `cargo lambda
//! watch` plays the Lambda service.

use herald_tests::emf::{self, Emf};
use herald_tests::{log_file, Herald, Watch};
use serde_json::{json, Value};

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
        // What Lambda sets for LoggingConfig's LogFormat: JSON (template.yaml).
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
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

    // AND every line the functions wrote is a JSON object; the emulator's own are not
    let output = std::fs::read_to_string(log_file()).unwrap();
    let events = function_events(&output);
    let messages: Vec<&str> = events.iter().filter_map(|e| e["fields"]["message"].as_str()).collect();
    for expected in [
        "scheduled run",
        "drain finished",
        "rejected",
        "delivered",
        "instance parked",
        "skipped",
    ] {
        assert!(messages.contains(&expected), "no {expected:?} among {messages:?}");
    }
    // AND Herald's events are of an invocation (its request id), and those about an instance
    // name its log, automation, version and, for a step, the step and its attempt
    for e in events.iter().filter(|e| e.get("_aws").is_none()) {
        let fields = &e["fields"];
        assert!(e["level"].is_string(), "{e}");
        if fields.get("log_id").is_some() {
            assert!(e["span"]["requestId"].is_string(), "{e}");
        }
        if ["delivered", "instance parked"].contains(&fields["message"].as_str().unwrap_or_default()) {
            for key in ["log_id", "automation", "version"] {
                assert!(fields[key].is_i64(), "{key}: {e}");
            }
        }
        if fields["message"] == "delivered" {
            // (The sample definition's steps are named for their kind: email, then sms.)
            assert_eq!(fields["step"], fields["kind"], "{e}");
            assert_eq!(fields["attempt"], 1, "{e}");
            assert!(fields["duration_ms"].is_u64(), "{e}");
            assert!(fields["to"].as_str().is_some_and(|to| to.contains("***")), "{e}");
        }
    }
    // AND no recipient is written out whole
    for secret in [h.email_of(1), h.email_of(2), h.phone_of(1), h.phone_of(2)] {
        assert!(!output.contains(&secret), "the logs contain {secret}:\n{output}");
    }

    // AND each invocation wrote its metrics as EMF, counting what it did
    let docs: Vec<Emf> = emf::documents(&output);
    let function_wide = |function: &str| -> Vec<&Emf> {
        docs.iter()
            .filter(|d| d.dimension("Function") == Some(function) && d.dimension("Automation").is_none())
            .collect()
    };
    let total = |docs: &[&Emf], metric: &str| {
        docs.iter()
            .filter_map(|d| d.metrics.get(metric))
            .map(|(_, v)| v[0])
            .sum::<f64>()
    };
    let scheduler = function_wide("scheduler");
    assert_eq!(scheduler.len(), 1, "one line per run");
    assert_eq!((total(&scheduler, "Claimed"), total(&scheduler, "Queued")), (1.0, 1.0));
    assert_eq!(total(&scheduler, "OldestDueAge"), 0.0);
    let executor = function_wide("executor");
    assert_eq!(executor.len(), 3, "one line per invocation");
    for (metric, n) in [
        ("Rejected", 1.0),
        ("Claimed", 1.0),
        ("Completed", 1.0),
        ("Skipped", 1.0),
        ("Failed", 0.0),
    ] {
        assert_eq!(total(&executor, metric), n, "{metric}");
    }
    let by_automation: Vec<&Emf> = docs.iter().filter(|d| d.dimension("Automation").is_some()).collect();
    assert_eq!(by_automation.len(), 1, "the completed instance's automation");
    assert_eq!(by_automation[0].value("Completed"), Some(1.0));
}

/// The lines of the emulator's output that are JSON objects: the functions' log events and
/// metrics. A line that is not must be the emulator's or cargo's own, never Herald's.
fn function_events(output: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => events.push(v),
            _ => {
                for herald in [
                    "requestId",
                    "log_id",
                    "message_id",
                    "delivered",
                    "drain finished",
                    "scheduled run",
                    "_aws",
                ] {
                    assert!(!line.contains(herald), "not JSON: {line}");
                }
            }
        }
    }
    events
}
