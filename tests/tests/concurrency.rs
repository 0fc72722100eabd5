//! Suppression under concurrent writers: no race lets two events through one window.

use herald_tests::Herald;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_updates_from_twenty_connections_create_exactly_the_expected_logs() {
    // GIVEN ten jobs and two automations on any status change: one with the default 30 s
    // window, one with no window at all
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "CREATE SEQUENCE status_seq;
         INSERT INTO jobs (id, client_id, title) SELECT g, 1, 'job ' || g FROM generate_series(10, 19) g;
         INSERT INTO automations (name, source_table, sms_to, sms_body)
           VALUES ('windowed', 'jobs', '{{ client_phone }}', 'x');
         INSERT INTO automations (name, source_table, suppression_window, sms_to, sms_body)
           VALUES ('unwindowed', 'jobs', '0', '{{ client_phone }}', 'x');",
    )
    .await;

    // WHEN 20 connections each make 10 status changes, all on the same ten rows, at one
    // pinned instant (every change is a real change: each status is new), while four
    // other connections move the inbox to the ledger over and over
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut ingesters = Vec::new();
    for _ in 0..4 {
        let c = h.db.connect().await;
        let writing = writing.clone();
        ingesters.push(tokio::spawn(async move {
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                c.execute("SELECT herald_ingest(7)", &[]).await.unwrap();
            }
        }));
    }
    let mut tasks = Vec::new();
    for conn in 0..20i64 {
        let c = h.db.connect().await;
        tasks.push(tokio::spawn(async move {
            c.execute("SELECT set_config('herald.now', '2026-03-01 09:00:00+00', false)", &[])
                .await
                .unwrap();
            for i in 0..10i64 {
                let job = 10 + (conn + i) % 10;
                c.execute(
                    "UPDATE jobs SET status = 's' || nextval('status_seq') WHERE id = $1",
                    &[&job],
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    for t in ingesters {
        t.await.unwrap();
    }
    h.db.ingest().await;

    // THEN every change is in the ledger once per automation, and the inbox is empty
    let count = |sql: &'static str| h.db.scalar::<i64>(sql);
    assert_eq!(count("SELECT count(*) FROM ONLY automation_execution_logs").await, 400);
    assert_eq!(count("SELECT count(*) FROM herald_inbox").await, 0);
    // the windowed automation let exactly one event per row through
    let per_row = h
        .db
        .client
        .query(
            "SELECT l.subject_id, count(*) FILTER (WHERE l.status = 'pending'), count(*) FILTER (WHERE l.status = 'suppressed')
             FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id
             WHERE a.name = 'windowed' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(per_row.len(), 10);
    for r in &per_row {
        assert_eq!(
            (r.get::<_, i64>(1), r.get::<_, i64>(2)),
            (1, 19),
            "job {}",
            r.get::<_, String>(0)
        );
    }
    // each suppressed event names the pending log of its own row and automation
    let strays: i64 = count(
        "SELECT count(*) FROM automation_execution_logs s
         JOIN automation_execution_logs p ON p.id = s.suppressed_by
         WHERE s.status = 'suppressed'
           AND (p.status <> 'pending' OR p.subject_id <> s.subject_id OR p.automation_id <> s.automation_id)",
    )
    .await;
    assert_eq!(strays, 0);
    // the unwindowed one let all 200 through
    assert_eq!(
        count("SELECT count(*) FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id WHERE a.name = 'unwindowed' AND l.status = 'pending'").await,
        200
    );
}
