//! The migration runner against a real, empty database.

use herald_db::{migrate, MigrateError, MIGRATIONS};
use herald_tests::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cold_starts_apply_each_migration_once_and_a_rerun_is_a_no_op() {
    // GIVEN an empty database and two processes starting at once
    let db = TestDb::empty().await;
    let (mut a, mut b) = (db.connect().await, db.connect().await);

    // WHEN both migrate concurrently
    let (ra, rb) = tokio::join!(migrate(&mut a), migrate(&mut b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());

    // THEN exactly one applied everything and the other found it done
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let mut results = [ra, rb];
    results.sort();
    assert_eq!(results, [vec![], all.clone()]);
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM herald_migrations").await,
        all.len() as i64
    );

    // AND running again changes nothing
    assert_eq!(migrate(&mut a).await.unwrap(), Vec::<i32>::new());
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE status = 'pending';")
            .await,
        0
    );
}

/// The checksums (md5 of the text, as `herald_migrations` keeps them) of the migrations that
/// have shipped. A shipped migration is never edited: databases that applied it would refuse
/// to start. A change goes into a new migration; add a line here when one ships.
const SHIPPED: &[(i32, &str)] = &[
    (1, "4199d266f895c81befed093aa7c44a07"),
    (2, "e77a639bdae90339ee6e16ca177f743d"),
    (3, "04794877d920f6015212aff2df89f287"),
    (4, "5e09ec0a640f3886c3401bb4016bf711"),
    (5, "c19f49121b98b0426914e373f94d8def"),
    (6, "dd10345242f2ac8b615ca928fd6beebd"),
    (7, "15ff805207e82df34ea2b693791af0ae"),
    (8, "a593d85c13587e9ccf66f6975cf5bf63"),
    (9, "ca23560fd87fa0553b84aebb0385562f"),
    (10, "99d7cc966d12a6f45abcb917b3867438"),
    (11, "23680106300b13d5f4941de53ef57b29"),
    (12, "3b5b9c40409ef0e4e4ab46b2f075cc4f"),
    (13, "8d7a24d0a24da102f1831b91fa2d9012"),
    (14, "f567daa766f4db1a4023cce2480de2c4"),
    (15, "db538c247edd6acde64ca8d47fe9093e"),
];

#[tokio::test]
async fn shipped_migrations_are_unchanged() {
    let db = TestDb::empty().await;
    let c = db.connect().await;
    for (version, want) in SHIPPED {
        let m = MIGRATIONS.iter().find(|m| m.version == *version).unwrap();
        let got: String = c.query_one("SELECT md5($1::text)", &[&m.sql]).await.unwrap().get(0);
        assert_eq!(&got, want, "{} was edited after it shipped", m.name);
    }
}

#[tokio::test]
async fn an_edited_or_unknown_migration_is_refused() {
    let db = TestDb::empty().await;
    let mut c = db.connect().await;
    migrate(&mut c).await.unwrap();

    db.exec("UPDATE herald_migrations SET checksum = 'edited' WHERE version = 1")
        .await;
    assert!(matches!(
        migrate(&mut c).await,
        Err(MigrateError::Changed { version: 1, .. })
    ));

    db.exec("UPDATE herald_migrations SET checksum = md5('x'); DELETE FROM herald_migrations; INSERT INTO herald_migrations (version, name, checksum) VALUES (99, 'future.sql', 'x')").await;
    assert!(matches!(migrate(&mut c).await, Err(MigrateError::Unknown(99))));
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    // GIVEN a database where the first migration cannot apply (a clashing table)
    let db = TestDb::empty().await;
    db.exec("CREATE TABLE automations (id int)").await;
    let mut c = db.connect().await;
    // WHEN it is run
    let err = migrate(&mut c).await.unwrap_err();
    // THEN the error names the file, and the transaction left no partial schema
    assert!(err.to_string().starts_with("migration 0001_ledger.sql failed"), "{err}");
    assert_eq!(
        db.scalar::<i64>(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('herald_migrations', 'automation_execution_logs')"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_table_attached_under_schema_2_is_captured_through_the_inbox_after_upgrading() {
    // GIVEN a database at schema 2, with a table attached, an automation, and one event
    let db = at_schema(2).await;
    db.exec(
        "CREATE TABLE orders (ref text PRIMARY KEY, state text);
         INSERT INTO orders VALUES ('A-1', 'new'), ('A-2', 'new');
         SELECT herald_attach('public.orders', 'state', 'ref');
         INSERT INTO automations (name, source_table, to_status, sms_to, sms_body)
           VALUES ('paid', 'orders', 'paid', '+15550000000', 'x');
         UPDATE orders SET state = 'paid' WHERE ref = 'A-1';",
    )
    .await;
    assert_eq!(db.statuses().await, ["pending"]);

    // WHEN the runner upgrades it
    let mut c = db.connect().await;
    assert_eq!(migrate(&mut c).await.unwrap()[0], 3);

    // THEN the old triggers gave way to the generated one, the old log is untouched, and a
    // new event goes through the inbox to the ledger
    let triggers: Vec<String> = db
        .column("SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal")
        .await;
    assert_eq!(triggers, ["herald_capture_update"]);
    let function: String = db
        .scalar("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal")
        .await;
    assert!(function.starts_with("herald_cap_"), "{function}");
    db.exec(
        "UPDATE orders SET state = 'shipped' WHERE ref = 'A-1'; UPDATE orders SET state = 'paid' WHERE ref = 'A-2'",
    )
    .await;
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM herald_inbox").await, 1);
    assert_eq!(db.ingest().await, 1);
    assert_eq!(
        db.column::<String>("SELECT subject_id || ':' || status FROM ONLY automation_execution_logs ORDER BY id")
            .await,
        ["A-1:pending", "A-2:pending"]
    );
}

#[tokio::test]
async fn instances_in_flight_under_schema_14_resume_where_they_were_after_upgrading() {
    // GIVEN a database at schema 14 with two instances whose executor vanished: one while
    // its email was being sent, one after the email's end was written
    let db = at_schema(14).await;
    db.exec(
        r#"CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, email text);
           INSERT INTO members VALUES (1, 'active', 'a@example.com'), (2, 'active', 'b@example.com');
           INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
             VALUES ('welcome', 'members', 'active', 'x', 'x', 'x');
           SELECT herald_save_automation('welcome', '{
             "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
             "steps": [{"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Hi", "text": "Hi"},
                       {"id": "soon", "type": "wait", "for": "1 day"}]}');
           INSERT INTO automation_execution_logs
             (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
              run_at, created_at, updated_at, version, next_step, step_attempt, steps_run, attempts, lease_token,
              lease_expires_at)
           SELECT a.id, 'public', 'members', 'id', g::text, 'status_change', '{}', 'running', now(), now(), now(),
                  a.version, 'hello', 1, 1, 1, 7, now() - interval '1 second'
           FROM automations a, generate_series(1, 2) g;
           INSERT INTO automation_attempts (log_id, attempt, lease_token, started_at)
           SELECT id, 1, 7, now() FROM automation_execution_logs;
           INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at,
                                             finished_at, output)
           SELECT id, 'hello', 'send_email', 1, 7, CASE subject_id WHEN '1' THEN 'started' ELSE 'done' END, now(),
                  CASE subject_id WHEN '2' THEN now() END,
                  CASE subject_id WHEN '2' THEN '{"message_id": "m-2"}'::jsonb END
           FROM automation_execution_logs;"#,
    )
    .await;

    // WHEN the runner upgrades it, the leases are rescued and each instance is claimed again
    let mut c = db.connect().await;
    assert_eq!(
        migrate(&mut c).await.unwrap(),
        (15..=MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );
    assert_eq!(db.scalar::<i32>("SELECT retried FROM herald_rescue(now())").await, 2);
    db.exec("UPDATE automation_execution_logs SET status = 'queued', lease_token = 8")
        .await;
    let resumed: Vec<String> = db
        .column(
            "SELECT f.next_step || ' ' || f.step_attempt || ' ' || f.run_status || ' ' || coalesce(f.run_output::text, '-')
             FROM (SELECT array_agg(id ORDER BY id) ids FROM automation_execution_logs) l,
                  herald_flow_start(l.ids, ARRAY[8, 8]::bigint[], now(), now() + interval '1 hour') f",
        )
        .await;

    // THEN each resumes at the email: in doubt where it was in flight, ended where it was done
    assert_eq!(resumed, ["hello 1 started -", r#"hello 1 done {"message_id": "m-2"}"#]);
}

/// A database with Herald's first `n` migrations applied as the runner records them.
async fn at_schema(n: usize) -> TestDb {
    let db = TestDb::empty().await;
    for m in &MIGRATIONS[..n] {
        db.exec(m.sql).await;
        db.client
            .execute(
                "CREATE TABLE IF NOT EXISTS herald_migrations (version integer PRIMARY KEY, name text NOT NULL,
                   checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                &[],
            )
            .await
            .unwrap();
        db.client
            .execute(
                "INSERT INTO herald_migrations (version, name, checksum) VALUES ($1, $2, md5($3::text))",
                &[&m.version, &m.name, &m.sql],
            )
            .await
            .unwrap();
    }
    db
}
