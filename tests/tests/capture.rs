//! Capture by row and by statement (`herald_attach(..., capture => ...)`): one statement that
//! changes many rows records one event per row and automation that listens, the same events
//! either way, as if each row had been changed on its own; by statement, old and new rows are
//! paired as Postgres wrote them, even when the key changes too.

use herald_tests::TestDb;

/// How a table's changes are captured.
const MODES: [&str; 2] = ["row", "statement"];

/// `items` (id, code, status, note), attached with `code` as its key and captured by
/// `mode`, and automations
/// listening for statuses: `done` (to done), `reopened` (from done or held to new),
/// `made` (insert) and `removed` (delete).
async fn items(rows: i64, mode: &str) -> TestDb {
    let db = TestDb::new().await;
    db.exec(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY DEFERRABLE, code text, status text NOT NULL, note text);
         INSERT INTO items SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'held' ELSE 'new' END, 'note ' || g
         FROM generate_series(1, {rows}) g;
         SELECT herald_attach('public.items', 'status', 'code', capture => '{mode}');
         INSERT INTO automations (name, source_table, trigger_event, from_status, to_status, sms_to, sms_body)
         VALUES ('done', 'items', 'status_change', NULL, 'done', 'x', 'x'),
                ('reopened', 'items', 'status_change', 'done', 'new', 'x', 'x'),
                ('made', 'items', 'insert', NULL, NULL, 'x', 'x'),
                ('removed', 'items', 'delete', NULL, NULL, 'x', 'x');"
    ))
    .await;
    db
}

/// Each captured event as "automation subject old->new", in id order.
async fn events(db: &TestDb) -> Vec<String> {
    db.column(
        "SELECT concat(a.name, ' ', i.subject_id, ' ', i.old_status, '->', i.new_status)
         FROM herald_inbox i JOIN automations a ON a.id = i.automation_id ORDER BY i.id",
    )
    .await
}

#[tokio::test]
async fn one_update_of_many_rows_records_an_event_for_each_row_that_changed_as_listened_for() {
    // GIVEN 2,000 items, half new and half held, and 10 already done
    for mode in MODES {
        let db = items(2_000, mode).await;
        db.exec("UPDATE items SET status = 'done' WHERE id > 1990").await;
        db.exec("DELETE FROM herald_inbox").await;

        // WHEN one statement sets every item done (the 10 done ones do not change)
        db.exec("UPDATE items SET status = 'done', note = 'closed'").await;

        // THEN there is one `done` event for each of the 1,990 rows whose status changed, each
        // with its own row's old status and its new row as snapshot
        let (n, subjects, from_new, from_held): (i64, i64, i64, i64) = {
            let r = db
                .client
                .query_one(
                    "SELECT count(*), count(DISTINCT subject_id), count(*) FILTER (WHERE old_status = 'new'),
                            count(*) FILTER (WHERE old_status = 'held')
                     FROM herald_inbox i JOIN automations a ON a.id = i.automation_id WHERE a.name = 'done'",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3))
        };
        assert_eq!((n, subjects, from_new, from_held), (1_990, 1_990, 995, 995), "{mode}");
        assert_eq!(
            db.scalar::<i64>(
                "SELECT count(*) FROM herald_inbox
                 WHERE snapshot->>'note' <> 'closed' OR snapshot->>'status' <> 'done' OR snapshot->>'code' <> subject_id
                    OR old_status <> CASE WHEN (snapshot->>'id')::bigint % 2 = 0 THEN 'held' ELSE 'new' END"
            )
            .await,
            0
        );
        assert_eq!(db.scalar::<i64>("SELECT count(*) FROM herald_inbox").await, 1_990);

        // AND a statement that changes no status records nothing; one that reopens some records
        // only the rows that match the automation's from and to
        db.exec("DELETE FROM herald_inbox; UPDATE items SET note = 'again'")
            .await;
        assert!(events(&db).await.is_empty(), "{mode}");
        db.exec("UPDATE items SET status = 'new' WHERE id IN (1, 2, 1999)")
            .await;
        let mut reopened = events(&db).await;
        reopened.sort();
        assert_eq!(
            reopened,
            [
                "reopened c1 done->new",
                "reopened c1999 done->new",
                "reopened c2 done->new"
            ]
        );
    }
}

#[tokio::test]
async fn a_statement_that_changes_keys_as_well_pairs_each_old_row_with_its_own_new_row() {
    // GIVEN c1 done and c2 held
    for mode in MODES {
        let db = items(2, mode).await;
        db.exec("UPDATE items SET status = 'done' WHERE id = 1; DELETE FROM herald_inbox")
            .await;

        // WHEN one statement swaps their keys (ids and codes) and sets both new
        db.exec("UPDATE items SET id = 3 - id, code = 'c' || (3 - id), status = 'new'")
            .await;

        // THEN the item that was done is reopened under its new key, c2; the held one, now c1,
        // was never done, so nothing listens to its change. Rows matched by key instead would
        // have said c1 went from done to new.
        assert_eq!(events(&db).await, ["reopened c2 done->new"], "{mode}");
    }
}

#[tokio::test]
async fn inserts_and_deletes_of_many_rows_record_an_event_per_row_with_the_row() {
    for mode in MODES {
        let db = items(0, mode).await;

        db.exec("INSERT INTO items SELECT g, 'c' || g, 'new', 'n' FROM generate_series(1, 3) g")
            .await;
        db.exec("DELETE FROM items WHERE id <> 2").await;

        assert_eq!(
            events(&db).await,
            [
                "made c1 ->new",
                "made c2 ->new",
                "made c3 ->new",
                "removed c1 new->",
                "removed c3 new->"
            ],
            "{mode}"
        );
        // a deleted row is its event's payload (the instance's data: the row is gone)
        assert_eq!(
            db.column::<String>(
                "SELECT payload->>'code' FROM herald_inbox i JOIN automations a ON a.id = i.automation_id
                 WHERE a.name = 'removed' AND payload = snapshot ORDER BY i.id"
            )
            .await,
            ["c1", "c3"]
        );
    }
}

#[tokio::test]
async fn a_row_without_a_key_fails_its_statement_with_the_column_named() {
    for mode in MODES {
        let db = items(3, mode).await;
        let err = db
            .client
            .batch_execute("UPDATE items SET code = CASE WHEN id = 2 THEN NULL ELSE code END, status = 'done'")
            .await
            .unwrap_err();
        let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert_eq!(
            message, r#"herald: key column "code" of public.items is NULL"#,
            "{mode}: {err:?}"
        );
        // the statement is undone whole: no row changed, nothing captured
        assert_eq!(
            db.scalar::<i64>("SELECT count(*) FROM items WHERE status = 'done' OR code IS NULL")
                .await,
            0
        );
        assert!(events(&db).await.is_empty());
    }
}

#[tokio::test]
async fn a_bulk_update_after_single_row_ones_in_the_same_session_is_not_planned_for_one_row() {
    // GIVEN a session whose capture function ran for many one-row statements (plpgsql keeps
    // the plan it made for them)
    let db = items(20_000, "statement").await;
    for id in 1..=20 {
        db.exec(&format!("UPDATE items SET status = 'done' WHERE id = {id}"))
            .await;
    }
    // WHEN the same session changes 20,000 rows in one statement
    // THEN it finishes well inside a bound that a plan pairing rows by a nested loop (20,000 ×
    // 20,000 comparisons, over a minute here) cannot meet
    db.exec("SET statement_timeout = '30s'; UPDATE items SET status = 'new'; RESET statement_timeout")
        .await;
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM herald_inbox i JOIN automations a ON a.id = i.automation_id WHERE a.name = 'reopened'")
            .await,
        20
    );
}

#[tokio::test]
async fn a_table_of_its_own_schema_with_quoted_names_and_uuid_keys_is_captured_either_way() {
    for mode in MODES {
        // GIVEN a table in another schema whose names need quoting, keyed by uuid
        let db = TestDb::new().await;
        db.exec(&format!(
            r#"CREATE SCHEMA "Shop ""A""";
               CREATE TABLE "Shop ""A"""."Order's" ("Ref" uuid PRIMARY KEY DEFAULT gen_random_uuid(), "State" text, n int);
               INSERT INTO "Shop ""A"""."Order's" (n, "State") SELECT g, 'open' FROM generate_series(1, 50) g;
               SELECT herald_attach('"Shop ""A"""."Order''s"', 'State', 'Ref', capture => '{mode}');
               INSERT INTO automations (name, source_schema, source_table, to_status, sms_to, sms_body)
               VALUES ('paid', 'Shop "A"', 'Order''s', 'pai''d', 'x', 'x');"#
        ))
        .await;

        // WHEN one statement pays 30 of them
        db.exec(r#"UPDATE "Shop ""A"""."Order's" SET "State" = 'pai''d' WHERE n <= 30"#)
            .await;

        // THEN each has its event, keyed by its uuid, with the table's names as they are
        assert_eq!(
            db.scalar::<i64>(
                r#"SELECT count(DISTINCT i.subject_id) FROM herald_inbox i JOIN "Shop ""A"""."Order's" o ON o."Ref"::text = i.subject_id
                   WHERE i.subject_schema = 'Shop "A"' AND i.subject_table = 'Order''s' AND i.subject_key_column = 'Ref'
                     AND i.old_status = 'open' AND i.new_status = 'pai''d' AND (i.snapshot->>'n')::int <= 30"#
            )
            .await,
            30,
            "{mode}"
        );
        assert_eq!(
            db.scalar::<i64>("SELECT count(*) FROM herald_inbox").await,
            30,
            "{mode}"
        );
    }
}

#[tokio::test]
async fn an_upsert_records_its_inserts_and_its_updates_as_each() {
    for mode in MODES {
        // GIVEN c1 new
        let db = items(1, mode).await;
        // WHEN one INSERT ... ON CONFLICT sets c1 done and adds c2 and c3 done
        db.exec(
            "CREATE UNIQUE INDEX items_code ON items (code);
             INSERT INTO items SELECT g, 'c' || g, 'done', 'upserted' FROM generate_series(1, 3) g
             ON CONFLICT (code) DO UPDATE SET status = excluded.status, note = excluded.note",
        )
        .await;
        // THEN c1's update is a status change, c2 and c3 are inserts
        let mut got = events(&db).await;
        got.sort();
        assert_eq!(got, ["done c1 new->done", "made c2 ->done", "made c3 ->done"], "{mode}");
    }
}

#[tokio::test]
async fn a_partitioned_table_is_refused_capture_by_statement_and_captured_by_row_through_its_partitions() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE visits (id bigint, status text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
         CREATE TABLE visits_low PARTITION OF visits FOR VALUES FROM (0) TO (100);
         INSERT INTO visits VALUES (1, 'new');
         INSERT INTO automations (name, source_table, to_status, sms_to, sms_body)
         VALUES ('done', 'visits', 'done', 'x', 'x');",
    )
    .await;
    let err = db
        .client
        .batch_execute("SELECT herald_attach('public.visits', 'status', 'id', capture => 'statement')")
        .await
        .unwrap_err();
    let err = err.as_db_error().unwrap();
    assert_eq!(
        (err.code().code(), err.message()),
        ("22023", "herald_attach: visits is partitioned; capture it by row")
    );
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM herald_attachments").await, 0);

    // by row, a change made to the partition directly is captured
    db.exec("SELECT herald_attach('public.visits', 'status', 'id'); UPDATE visits_low SET status = 'done'")
        .await;
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM herald_inbox").await, 1);
}
