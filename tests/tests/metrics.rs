//! The functions' metrics: EMF lines that CloudWatch would take, counting what really
//! happened in a batch.

use std::time::{Duration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use herald_shared::aws::SqsQueue;
use herald_shared::metrics::{ExecutorMetrics, Outcome, SchedulerMetrics};
use herald_tests::emf::{self, Emf};
use herald_tests::{lambda_context, repo_file, Herald};
use lambda_runtime::LambdaEvent;
use serde_json::json;

fn one(line: &str) -> Emf {
    emf::read(line)
        .unwrap_or_else(|why| panic!("invalid EMF ({why}): {line}"))
        .unwrap_or_else(|| panic!("not EMF: {line}"))
}

#[test]
fn the_reader_refuses_what_cloudwatch_refuses() {
    let good = || {
        json!({
            "_aws": {"Timestamp": 1_700_000_000_000u64, "CloudWatchMetrics": [{
                "Namespace": "Herald", "Dimensions": [["Function"]],
                "Metrics": [{"Name": "Completed", "Unit": "Count"}, {"Name": "StepDuration", "Unit": "Milliseconds"}]
            }]},
            "Function": "executor", "Completed": 3, "StepDuration": [12, 40.5]
        })
    };
    let doc = one(&good().to_string());
    assert_eq!(doc.dimension("Function"), Some("executor"));
    assert_eq!(doc.value("Completed"), Some(3.0));
    assert_eq!(doc.values("StepDuration"), [12.0, 40.5]);
    assert_eq!(emf::read(r#"{"level":"INFO","fields":{"message":"x"}}"#), Ok(None));
    assert_eq!(emf::read("not json"), Ok(None));

    type Change = fn(&mut serde_json::Value);
    let cases: Vec<(&str, Change)> = vec![
        ("Timestamp", |d| d["_aws"]["Timestamp"] = json!(1.5)),
        ("Timestamp", |d| d["_aws"]["Timestamp"] = json!("1700000000000")),
        ("CloudWatchMetrics", |d| d["_aws"]["CloudWatchMetrics"] = json!([])),
        ("Namespace", |d| {
            d["_aws"]["CloudWatchMetrics"][0]["Namespace"] = json!("")
        }),
        ("no dimension set", |d| {
            d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([])
        }),
        ("not a member", |d| {
            d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([["Function", "Automation"]])
        }),
        ("not a string", |d| d["Function"] = json!(7)),
        ("a dimension set has 31", |d| {
            let names: Vec<String> = (0..31).map(|i| format!("D{i}")).collect();
            for n in &names {
                d[n] = json!("x");
            }
            d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([names]);
        }),
        ("metrics in one directive", |d| {
            let metrics: Vec<serde_json::Value> = (0..101)
                .map(|i| {
                    d[format!("M{i}")] = json!(1);
                    json!({"Name": format!("M{i}")})
                })
                .collect();
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"] = json!(metrics);
        }),
        ("is not a number", |d| d["Completed"] = json!("3")),
        ("is not a number", |d| d["StepDuration"] = json!([1, "2"])),
        ("values", |d| d["StepDuration"] = json!((0..101).collect::<Vec<_>>())),
        ("values", |d| d["StepDuration"] = json!([])),
        ("metric Completed is not a member", |d| {
            d.as_object_mut().unwrap().remove("Completed");
        }),
        ("unit", |d| {
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Instances")
        }),
        ("defined twice", |d| {
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"][1]["Name"] = json!("Completed")
        }),
    ];
    for (why, change) in cases {
        let mut doc = good();
        change(&mut doc);
        let err = emf::read(&doc.to_string()).expect_err(why);
        assert!(err.contains(why), "{why}: {err}");
    }
}

#[test]
fn every_line_the_functions_can_write_is_valid_emf() {
    // Many automations, more step durations than one line may carry, every outcome.
    let mut m = ExecutorMetrics::new(true, 300);
    for (i, o) in Outcome::ALL.iter().cycle().take(300).enumerate() {
        m.count(*o, (i % 7 != 0).then_some(i as i64 % 40));
    }
    m.claimed(290);
    m.steps((0..250).map(|i| i * 3).collect());
    let lines = m.lines("herald-prod-ExecutorFunction-Ab12Cd34", 1_700_000_000_000);
    assert_eq!(
        lines.len(),
        3 + 40,
        "the function's line, two more of durations, one per automation"
    );
    let docs: Vec<Emf> = lines.iter().map(|l| one(l)).collect();
    for d in &docs {
        assert_eq!(d.namespace, "Herald");
        assert_eq!(d.timestamp_ms, 1_700_000_000_000);
        assert_eq!(d.dimension("Function"), Some("herald-prod-ExecutorFunction-Ab12Cd34"));
    }
    let total: f64 = Outcome::ALL.iter().map(|o| docs[0].value(o.name()).unwrap()).sum();
    assert_eq!(total, 300.0);
    let per_automation: f64 = docs[3..]
        .iter()
        .flat_map(|d| {
            Outcome::ALL
                .iter()
                .filter_map(|o| d.metrics.get(o.name()).map(|(_, v)| v[0]))
        })
        .sum();
    assert_eq!(per_automation, (0..300).filter(|i| i % 7 != 0).count() as f64);
    let durations: Vec<f64> = docs.iter().flat_map(|d| d.values("StepDuration").to_vec()).collect();
    assert_eq!(durations.len(), 250);
    assert_eq!(docs[0].unit("StepDuration"), Some("Milliseconds"));

    let s = SchedulerMetrics {
        claimed: 5,
        oldest_due_age: Some(Duration::from_secs(90)),
        ..Default::default()
    };
    let doc = one(&s.lines("scheduler", 1)[0]);
    assert_eq!(
        (doc.value("Claimed"), doc.value("OldestDueAge")),
        (Some(5.0), Some(90.0))
    );
    assert_eq!(doc.unit("OldestDueAge"), Some("Seconds"));
}

#[tokio::test]
async fn a_real_batch_reports_what_happened_as_emf() {
    // GIVEN three jobs completed (an email and an SMS each) and one rejected, whose automation
    // sends from an address SES refuses
    let h = Herald::with_jobs_example().await;
    h.db.exec(&format!(
        "INSERT INTO clients (id, name, email, phone) VALUES (3, 'Cy', '{}', '{}');
         INSERT INTO jobs (id, client_id, title) VALUES (3, 3, 'Job three'), (4, 3, 'Job four');
         INSERT INTO automations (name, source_table, to_status, email_from, email_to, email_subject, email_text)
           VALUES ('rejected', 'jobs', 'rejected', 'unverified.sender@private.example.com', 'owner@example.com',
                   'Sorry', 'Sorry');
         UPDATE jobs SET status = 'completed' WHERE id IN (1, 2, 3);
         UPDATE jobs SET status = 'rejected' WHERE id = 4;",
        h.email_of(3),
        h.phone_of(3)
    ))
    .await;
    let automation = |name: &str| {
        let name = name.to_owned();
        let db = &h.db;
        async move {
            db.client
                .query_one("SELECT id FROM automations WHERE name = $1", &[&name])
                .await
                .unwrap()
                .get::<_, i64>(0)
                .to_string()
        }
    };
    let (completed_id, rejected_id) = (automation("job-completed").await, automation("rejected").await);

    // WHEN the scheduler runs
    let event: EventBridgeEvent = serde_json::from_str(&repo_file("events/scheduled.json")).unwrap();
    let (summary, lines) = herald_scheduler::invoke(&h.scheduler, LambdaEvent::new(event, lambda_context(60)))
        .await
        .unwrap();
    // THEN its one line says it claimed and queued the four, and left nothing due
    assert_eq!(summary.claimed, 4);
    assert_eq!(lines.len(), 1);
    let doc = one(&lines[0]);
    assert_eq!(doc.dimension("Function"), Some("scheduler"));
    for (name, want) in [
        ("Claimed", 4.0),
        ("Queued", 4.0),
        ("QueueRejected", 0.0),
        ("OldestDueAge", 0.0),
    ] {
        assert_eq!(doc.value(name), Some(want), "{name}");
    }

    // WHEN the executor runs the four as one batch
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 4);
    let (response, lines) = herald_executor::invoke(&h.executor, LambdaEvent::new(event, lambda_context(60)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.db.statuses().await, ["completed", "completed", "completed", "failed"]);
    // THEN its lines are valid EMF: the function's counts, then one line per automation
    let docs: Vec<Emf> = lines.iter().map(|l| one(l)).collect();
    assert_eq!(docs.len(), 3, "{lines:#?}");
    let function = &docs[0];
    assert_eq!(function.dimension("Function"), Some("executor"));
    assert_eq!(function.dimensions, [[("Function".to_owned(), "executor".to_owned())]]);
    for (name, want) in [
        ("Claimed", 4.0),
        ("Completed", 3.0),
        ("Failed", 1.0),
        ("Unknown", 0.0),
        ("Dead", 0.0),
    ] {
        assert_eq!(function.value(name), Some(want), "{name}");
    }
    // (three emails and three SMS sent, one email refused: seven effects timed)
    let durations = function.values("StepDuration");
    assert_eq!(durations.len(), 7, "{durations:?}");
    assert!(durations.iter().all(|ms| (0.0..60_000.0).contains(ms)));
    let mut per_automation: Vec<(String, Vec<(String, f64)>)> = docs[1..]
        .iter()
        .map(|d| {
            let counts = d.metrics.iter().map(|(n, (_, v))| (n.clone(), v[0])).collect();
            (d.dimension("Automation").unwrap().to_owned(), counts)
        })
        .collect();
    per_automation.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (completed_id, vec![("Completed".to_owned(), 3.0)]),
        (rejected_id, vec![("Failed".to_owned(), 1.0)]),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(per_automation, want);
}

#[tokio::test]
async fn a_run_that_leaves_logs_due_reports_how_long_the_oldest_has_waited() {
    // GIVEN two logs that became due about ten minutes ago (on the scheduler's clock), and a
    // queue that refuses every message
    let mut h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed'").await;
    h.manual_clock_at(SystemTime::now() + Duration::from_secs(600));
    h.scheduler.queue = SqsQueue::new(&h.moto.sdk, format!("{}-gone", h.queue_url));

    // WHEN the scheduler runs
    let event: EventBridgeEvent = serde_json::from_str(&repo_file("events/scheduled.json")).unwrap();
    let (summary, lines) = herald_scheduler::invoke(&h.scheduler, LambdaEvent::new(event, lambda_context(60)))
        .await
        .unwrap();

    // THEN both were claimed, refused and put back, and the line says how long the oldest waits
    assert_eq!((summary.claimed, summary.failed), (2, 2));
    let doc = one(&lines[0]);
    assert_eq!(
        (doc.value("Queued"), doc.value("QueueRejected")),
        (Some(0.0), Some(2.0))
    );
    let age = doc.value("OldestDueAge").unwrap();
    assert!((600.0..660.0).contains(&age), "{age}");
}

#[tokio::test]
async fn the_oldest_due_log_is_read_from_the_due_index() {
    // The statement, as the scheduler prepares it, with the time bound written in.
    let h = Herald::with_jobs_example().await;
    let sql = repo_file("shared/sql/oldest_due.sql").replace("$1::timestamptz", "now()");
    h.db.exec("SET enable_seqscan = off").await;
    let plan: serde_json::Value =
        h.db.client
            .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), &[])
            .await
            .unwrap()
            .get(0);
    let plan = plan.to_string();
    assert!(plan.contains("automation_execution_logs_due"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
