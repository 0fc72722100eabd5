//! The functions work as the least-privilege roles of db/roles.sql, and those roles cannot
//! read what they do not need or change definitions.

use std::time::Duration;

use herald_shared::pg::Database;
use herald_tests::{lambda_context, repo_file, Herald};
use lambda_runtime::LambdaEvent;

#[tokio::test]
async fn the_functions_run_as_least_privilege_roles() {
    // GIVEN the roles script applied, and the executor allowed to read the context view
    let mut h = Herald::with_jobs_example().await;
    h.db.exec(&repo_file("db/roles.sql")).await;
    h.db.exec(&repo_file("db/roles.sql")).await; // idempotent
    h.db.exec("GRANT SELECT ON public.job_context TO herald_executor").await;
    let as_role = |role: &str| {
        let mut c = h.db.config();
        c.user(role);
        c
    };
    let (scheduler, executor) = (as_role("herald_scheduler"), as_role("herald_executor"));
    h.scheduler.db = Database::new(scheduler.clone());
    h.executor.db = Database::new(executor.clone());

    // WHEN the pipeline runs as those roles
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    let clock = h.manual_clock();
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    // THEN the log is sent
    assert_eq!(h.db.statuses().await, ["completed"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
    // AND the scheduler's rescue works too (a lost message)
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 2").await;
    // (The capture stamps the event with the database's clock, which went on while the
    // first delivery ran: a minute on is after it however slow this machine is.)
    clock.advance(Duration::from_secs(60));
    assert_eq!(h.tick().await.claimed, 1);
    clock.advance(Duration::from_secs(901));
    assert_eq!(h.tick().await.rescued.requeued, 1);
    // AND the scheduler reads the oldest due log's age for its metrics (the rescued log,
    // claimed again by that run: none is left due)
    let event = serde_json::from_str(&repo_file("events/scheduled.json")).unwrap();
    let (_, lines) = herald_scheduler::invoke(&h.scheduler, LambdaEvent::new(event, lambda_context(60)))
        .await
        .unwrap();
    assert!(lines[0].contains("\"OldestDueAge\":0"), "{lines:?}");
    // AND a log whose automation was deleted before it ran fails at its claim
    h.db.exec(
        "INSERT INTO automations (name, source_table, to_status, sms_to, sms_body)
           VALUES ('doomed', 'jobs', 'paused', '{{ client_phone }}', 'x');
         UPDATE jobs SET status = 'paused' WHERE id = 1;
         DELETE FROM automations WHERE name = 'doomed';",
    )
    .await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    let doomed: String =
        h.db.scalar("SELECT status || ': ' || error FROM automation_execution_logs WHERE subject_id = '1' AND event = 'status_change' ORDER BY id DESC LIMIT 1")
            .await;
    assert!(doomed.starts_with("failed: unknown automation "), "{doomed}");

    // AND each role is refused what it does not need
    let denied = |who: &'static str, sql: &'static str| (who, sql);
    let checks = [
        denied("herald_scheduler", "SELECT snapshot FROM automation_execution_logs"),
        denied("herald_scheduler", "SELECT subject_id FROM automation_execution_logs"),
        denied("herald_scheduler", "SELECT email_to FROM automations"),
        denied("herald_scheduler", "UPDATE automations SET is_active = false"),
        denied("herald_scheduler", "DELETE FROM automation_execution_logs"),
        denied("herald_scheduler", "SELECT * FROM job_context"),
        denied("herald_executor", "SELECT snapshot FROM automation_execution_logs"),
        denied("herald_executor", "UPDATE automations SET email_subject = 'pwned'"),
        denied(
            "herald_executor",
            "INSERT INTO automations (name, source_table, sms_to, sms_body) VALUES ('x', 'jobs', 'x', 'x')",
        ),
        denied("herald_executor", "DELETE FROM automation_execution_logs"),
        denied(
            "herald_executor",
            "UPDATE automation_execution_logs SET automation_id = 1",
        ),
        denied("herald_executor", "SELECT * FROM clients"),
    ];
    for (role, sql) in checks {
        let c = Database::new(if role == "herald_scheduler" {
            scheduler.clone()
        } else {
            executor.clone()
        })
        .client()
        .await
        .unwrap();
        let err = c.batch_execute(sql).await.expect_err(&format!("{role} may not: {sql}"));
        let code = err.code().map(|c| c.code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{role}: {sql}: {err:?}");
    }
}

#[tokio::test]
async fn workflow_instances_run_as_the_same_roles() {
    let mut h = Herald::with_jobs_example().await;
    h.db.exec(&repo_file("db/roles.sql")).await;
    h.db.exec(
        "GRANT SELECT ON public.job_context TO herald_executor;
         GRANT SELECT (id), UPDATE (status) ON public.jobs TO herald_executor;
         INSERT INTO automations (name, source_table, to_status, context_relation, context_key_column,
                                  email_to, email_subject, email_text)
         VALUES ('job-closed', 'jobs', 'closed', 'public.job_context', 'job_id', '{{ client_email }}', 'Closed', 'Closed');",
    )
    .await;
    let as_role = |role: &str| {
        let mut c = h.db.config();
        c.user(role);
        c
    };
    let (scheduler, executor) = (as_role("herald_scheduler"), as_role("herald_executor"));
    h.scheduler.db = Database::new(scheduler.clone());
    h.executor.db = Database::new(executor.clone());
    let doc = serde_json::json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "steps": [
            {"id": "thanks", "type": "send_email", "to": "{{ client_email }}", "subject": "Done", "text": "Thanks"},
            {"id": "later", "type": "wait", "for": "1 hour"},
            {"id": "review", "type": "send_sms", "to": "{{ client_phone }}", "body": "How did we do?"},
            {"id": "close", "type": "update_field", "set": {"status": "closed"}},
            {"id": "tag", "type": "add_tag", "tag": "reviewed"},
            {"id": "call", "type": "create_task", "title": "Call {{ client_name }}"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&doc])
        .await
        .unwrap();
    let clock = h.manual_clock();
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    clock.advance(Duration::from_secs(3601));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed", "pending"]);
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await.len(), 1);
    // The executor changed the job, tagged it and made a task: the grants above and those of
    // db/roles.sql are enough.
    let status: String = h.db.scalar("SELECT status FROM jobs WHERE id = 1").await;
    assert_eq!(status, "closed");
    // Its change was captured, as the executor, and fired the automation on closed jobs.
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.moto.emails_from(&h.from).await.len(), 2);
    let made: Vec<String> =
        h.db.column("SELECT name FROM herald_labels UNION ALL SELECT title FROM herald_tasks")
            .await;
    assert_eq!(made, ["reviewed", "Call Ann Lee"]);

    for (config, sql) in [
        (&scheduler, "SELECT definition FROM automation_versions"),
        (&scheduler, "SELECT * FROM automation_step_runs"),
        (&executor, "UPDATE automation_versions SET definition = '{}'"),
        (&executor, "SELECT herald_save_automation('job-completed', '{}')"),
        (&executor, "UPDATE jobs SET title = 'x'"),
    ] {
        let c = Database::new(config.clone()).client().await.unwrap();
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code().map(|c| c.code().to_owned()).as_deref(),
            Some("42501"),
            "{sql}: {err:?}"
        );
    }
}

#[tokio::test]
async fn attaching_a_table_in_a_schema_the_executor_cannot_use_says_so() {
    use tokio_postgres::AsyncMessage;
    let h = Herald::new().await;
    h.db.exec(&repo_file("db/roles.sql")).await;
    let (client, mut connection) = h.db.config().connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notice(n)) = message {
                let _ = tx.send(n);
            }
        }
    });
    client
        .batch_execute(
            "CREATE SCHEMA club;
             CREATE TABLE club.members (id bigint PRIMARY KEY, status text);
             CREATE TABLE club.payments (id bigint PRIMARY KEY, status text);
             SELECT herald_attach('club.members', 'status', 'id');",
        )
        .await
        .unwrap();
    let warning = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a warning")
        .unwrap();
    assert_eq!(warning.severity(), "WARNING");
    assert_eq!(
        warning.message(),
        "herald_attach: the role herald_executor has no USAGE on schema club"
    );
    assert_eq!(warning.hint(), Some("GRANT USAGE ON SCHEMA club TO herald_executor;"));
    // Granted, nothing more is said.
    client
        .batch_execute(
            "GRANT USAGE ON SCHEMA club TO herald_executor;
             SELECT herald_attach('club.payments', 'status', 'id');",
        )
        .await
        .unwrap();
    assert!(
        notices.try_recv().is_err(),
        "no warning once the executor may use the schema"
    );
}
