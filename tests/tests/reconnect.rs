//! The functions keep one Postgres connection per container and re-open it when it broke.

use herald_tests::{lambda_context, repo_file, Herald};
use lambda_runtime::LambdaEvent;

/// Ends every session of the test database but the caller's, as a restart or an idle
/// timeout would.
async fn kill_connections(h: &Herald) -> i64 {
    h.db.scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
}

#[tokio::test]
async fn a_broken_connection_is_reopened_by_the_next_invocation() {
    // GIVEN both functions have connected once
    let h = Herald::with_jobs_example().await;
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());

    // WHEN the database drops their connections
    assert_eq!(kill_connections(&h).await, 2);
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 2").await;

    // THEN the scheduler works again by its next invocation at the latest
    let mut results = Vec::new();
    for _ in 0..2 {
        let event = serde_json::from_str(&repo_file("events/scheduled.json")).unwrap();
        let r = herald_scheduler::handle(&h.scheduler, LambdaEvent::new(event, lambda_context(60))).await;
        let ok = r.is_ok();
        results.push(r.map(|s| s.claimed).map_err(|e| e.to_string()));
        if ok {
            break;
        }
    }
    assert_eq!(results.last().unwrap().as_ref().ok(), Some(&1), "{results:?}");

    // AND so does the executor: a message that met the broken connection is retried
    // through SQS, and the log is sent once
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 1);
    // (only the scheduler's new connection is left: the executor's died with the first kill)
    assert_eq!(kill_connections(&h).await, 1);
    let mut invocations = 0;
    loop {
        invocations += 1;
        let response = h.execute(event.clone()).await;
        if response.batch_item_failures.is_empty() {
            break;
        }
        assert!(invocations < 2, "still failing on invocation {invocations}");
    }
    assert_eq!(h.db.statuses().await, ["completed", "completed"]);
    assert_eq!(h.moto.sms_to(&h.phone_of(2)).await.len(), 1);
}
