//! The schema runner against a real, empty database: migrations once, schema files again
//! whenever they change, and the plain `psql -f` order the docs give builds the same schema.

use herald_db::{migrate, Applied, MigrateError, MIGRATIONS, SCHEMA};
use herald_tests::{repo_file, TestDb};

fn everything() -> Applied {
    Applied {
        migrations: MIGRATIONS.iter().map(|m| m.version).collect(),
        schema_files: SCHEMA.iter().map(|f| f.name).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cold_starts_apply_everything_once_and_a_rerun_is_a_no_op() {
    // GIVEN an empty database and two processes starting at once
    let db = TestDb::empty().await;
    let (a, b) = (db.connect().await, db.connect().await);

    // WHEN both migrate concurrently
    let (ra, rb) = tokio::join!(migrate(&a), migrate(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());

    // THEN exactly one applied everything and the other found it done
    let (one, other) = if ra.is_empty() { (rb, ra) } else { (ra, rb) };
    assert_eq!(one, everything());
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM herald_schema_files").await,
        SCHEMA.len() as i64
    );

    // AND running again changes nothing
    assert!(migrate(&a).await.unwrap().is_empty());
}

/// The checksums (md5 of the text, as `herald_migrations` keeps them) of the migrations that
/// are kept: from the 0.1 baseline on, a migration is never edited (databases that applied it
/// would refuse to start). A change goes into a new migration; add a line here with it.
const SHIPPED: &[(i32, &str)] = &[
    (1, "ec7e47e8773a66257f56dc33e1d71332"),
    (2, "07ccae4b13524df9896f098f5d7d9d92"),
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
    let c = db.connect().await;
    migrate(&c).await.unwrap();

    db.exec("UPDATE herald_migrations SET checksum = 'edited' WHERE version = 1")
        .await;
    assert!(matches!(
        migrate(&c).await,
        Err(MigrateError::Changed { version: 1, .. })
    ));

    db.exec("DELETE FROM herald_migrations; INSERT INTO herald_migrations (version, name, checksum) VALUES (99, 'future.sql', 'x')").await;
    assert!(matches!(migrate(&c).await, Err(MigrateError::Unknown(99))));
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    // GIVEN a database where the baseline cannot apply (a clashing table)
    let db = TestDb::empty().await;
    db.exec("CREATE TABLE automations (id int)").await;
    let c = db.connect().await;
    // WHEN it is run
    let err = migrate(&c).await.unwrap_err();
    // THEN the error names the file, and the transaction left no partial schema
    assert!(err.to_string().starts_with("0001_baseline.sql failed"), "{err}");
    assert_eq!(
        db.scalar::<i64>(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('herald_migrations', 'herald_schema_files', 'automation_execution_logs')"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_changed_schema_file_is_applied_again_and_recompiles_the_capture_triggers() {
    // GIVEN a migrated database with a table attached and an automation listening to it,
    // whose claim and capture files were applied in an older text: a function that has
    // since changed, and a capture trigger compiled by an older compiler (here: lost)
    let db = TestDb::empty().await;
    let c = db.connect().await;
    migrate(&c).await.unwrap();
    db.exec(
        "CREATE TABLE orders (ref text PRIMARY KEY, state text);
         INSERT INTO orders VALUES ('A-1', 'new');
         SELECT herald_attach('public.orders', 'state', 'ref');
         INSERT INTO automations (name, source_table, to_status, sms_to, sms_body)
           VALUES ('paid', 'orders', 'paid', '+14155550000', 'x');
         CREATE OR REPLACE FUNCTION herald_backoff(attempts integer, base interval, cap interval)
           RETURNS interval LANGUAGE sql VOLATILE AS $$ SELECT interval '1 year' $$;
         DROP TRIGGER herald_capture_update ON orders;
         UPDATE herald_schema_files SET checksum = 'older' WHERE name IN ('claim.sql', 'capture.sql');",
    )
    .await;

    // WHEN the runner runs
    let applied = migrate(&c).await.unwrap();

    // THEN it applied exactly those two files, in their order, and nothing else
    assert_eq!(
        applied,
        Applied {
            migrations: vec![],
            schema_files: vec!["capture.sql", "claim.sql"],
        }
    );
    // AND the function is the file's again
    assert!(
        db.scalar::<bool>(
            "SELECT herald_backoff(1, interval '30 seconds', interval '1 hour') <= interval '30 seconds'"
        )
        .await
    );
    // AND the attached table captures again
    db.exec("UPDATE orders SET state = 'paid'").await;
    assert_eq!(db.statuses().await, ["pending"]);
    assert!(migrate(&c).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_psql_order_the_docs_give_builds_the_schema_the_runner_builds() {
    // GIVEN one database built by the runner and one by the files in the documented order
    let by_runner = TestDb::empty().await;
    migrate(&by_runner.connect().await).await.unwrap();
    let by_hand = TestDb::empty().await;
    let docs = repo_file("docs/deploying.md");
    let order: Vec<&str> = docs
        .lines()
        .filter_map(|l| l.trim().strip_prefix("psql -v ON_ERROR_STOP=1 -f "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(order.len() > SCHEMA.len(), "{order:?}");
    for file in &order {
        by_hand.exec(&repo_file(file)).await;
    }

    // THEN both hold the same functions (with the same text), views, tables and triggers
    let catalog = "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
         SELECT p.oid::regprocedure::text || md5(pg_get_functiondef(p.oid)) AS x
         FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
         UNION ALL SELECT c.relkind::text || c.relname::text FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
           AND c.relname NOT IN ('herald_migrations', 'herald_schema_files', 'herald_migrations_pkey', 'herald_schema_files_pkey')
         UNION ALL SELECT tgname::text || tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal) s";
    let want: String = by_runner.scalar(catalog).await;
    let got: String = by_hand.scalar(catalog).await;
    assert_eq!(got, want);
}
