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
