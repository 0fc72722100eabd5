//! A workflow trigger's conditions tested by the capture functions: an event whose row fails
//! them is not recorded. The capture test decides only where the executor's evaluator would
//! answer the same for that row, and leaves the rest to the evaluator at the first claim.

use herald_shared::workflow::condition::{evaluate, parse};
use herald_tests::TestDb;
use serde_json::{json, Value};

/// How a table's changes are captured.
const MODES: [&str; 2] = ["row", "statement"];

/// What the capture test says of a row: decided (`"true"` / `"false"`), `"undecided"` (the
/// event is recorded and the evaluator decides), or `"not compiled"` (nothing is tested).
async fn capture_test(db: &TestDb, condition: &Value, row: &Value) -> String {
    db.client
        .query_one("SELECT capture_test($1, $2)", &[condition, row])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_capture_test_decides_a_condition_only_where_the_evaluator_answers_the_same() {
    // GIVEN two rows as the capture functions see them (a row's to_jsonb) and a way to run the
    // SQL that herald_condition_sql makes of a condition against one of them
    let db = TestDb::new().await;
    db.exec(
        "CREATE FUNCTION capture_test(c jsonb, r jsonb) RETURNS text LANGUAGE plpgsql AS $$
         DECLARE e text := herald_condition_sql(c, '$1'); b boolean;
         BEGIN
           IF e IS NULL THEN RETURN 'not compiled'; END IF;
           EXECUTE 'SELECT ' || e INTO b USING r;
           RETURN coalesce(b::text, 'undecided');
         END $$;",
    )
    .await;
    let rows = [
        json!({"status": "confirmed", "total": 120, "price": 19.5, "vip": true, "tags": ["vip", "early"],
               "note": "call before noon", "cancelled_at": null, "starts_at": "2026-11-25T09:00:00+00:00",
               "renews_at": "2026-11-28", "big": 12345678901234567890u64, "code": "A7", "n": "5", "room": "é"}),
        json!({"status": "pending", "total": 99, "price": 20, "vip": false, "tags": [], "note": null,
               "cancelled_at": "2026-11-20T10:00:00+00:00", "starts_at": "2026-12-25T09:00:00+00:00",
               "renews_at": null, "big": 1, "code": "b", "n": 5, "room": "e"}),
    ];
    let now_7 = json!({"now": "7 days"});
    // condition, then what the capture test says of each row
    let cases: Vec<(Value, [&str; 2])> = vec![
        (
            json!({"field": "status", "op": "=", "value": "confirmed"}),
            ["true", "false"],
        ),
        (
            json!({"field": "status", "op": "<>", "value": "confirmed"}),
            ["false", "true"],
        ),
        (
            json!({"field": "status", "op": "!=", "value": "pending"}),
            ["true", "false"],
        ),
        (json!({"field": "status", "op": "<", "value": "d"}), ["true", "false"]),
        (json!({"field": "room", "op": ">", "value": "f"}), ["true", "false"]),
        (
            json!({"field": "status", "op": "in", "value": ["pending", "confirmed"]}),
            ["true", "true"],
        ),
        (json!({"field": "total", "op": ">=", "value": 100}), ["true", "false"]),
        (json!({"field": "price", "op": ">", "value": 19.75}), ["false", "true"]),
        (json!({"field": "price", "op": "=", "value": 20}), ["false", "true"]),
        (
            json!({"field": "total", "op": "in", "value": [99, 120.0]}),
            ["true", "true"],
        ),
        (json!({"field": "vip", "op": "=", "value": true}), ["true", "false"]),
        (json!({"field": "vip", "op": "<>", "value": true}), ["false", "true"]),
        (
            json!({"field": "tags", "op": "contains", "value": "vip"}),
            ["true", "false"],
        ),
        (
            json!({"field": "tags", "op": "contains", "value": true}),
            ["false", "false"],
        ),
        (
            json!({"field": "note", "op": "contains", "value": "noon"}),
            ["true", "false"],
        ),
        (json!({"field": "note", "op": "is null"}), ["false", "true"]),
        (json!({"field": "cancelled_at", "op": "is not null"}), ["false", "true"]),
        (
            json!({"not": {"field": "status", "op": "=", "value": "pending"}}),
            ["true", "false"],
        ),
        (
            json!({"not": {"field": "note", "op": "=", "value": "x"}}),
            ["true", "true"],
        ),
        (
            json!({"all": [{"field": "vip", "op": "=", "value": true}, {"field": "total", "op": ">", "value": 100}]}),
            ["true", "false"],
        ),
        (
            json!({"any": [{"field": "status", "op": "=", "value": "pending"},
                           {"field": "tags", "op": "contains", "value": "early"}]}),
            ["true", "true"],
        ),
        // a list item of another kind is an error to the evaluator once it is reached
        (
            json!({"field": "code", "op": "in", "value": ["A7", 3]}),
            ["true", "undecided"],
        ),
        // text compared with a number: an error to the evaluator
        (json!({"field": "n", "op": "=", "value": 5}), ["undecided", "true"]),
        // more digits than the capture test decides
        (json!({"field": "big", "op": ">", "value": 1}), ["undecided", "false"]),
        (
            json!({"field": "nope", "op": "=", "value": "x"}),
            ["undecided", "undecided"],
        ),
        (json!({"field": "nope", "op": "is null"}), ["undecided", "undecided"]),
        // left to the evaluator: text that may be a time, now, another field, herald.*
        (
            json!({"field": "renews_at", "op": "<", "value": "2026-12-01"}),
            ["not compiled", "not compiled"],
        ),
        (
            json!({"field": "starts_at", "op": "<=", "value": now_7}),
            ["not compiled", "not compiled"],
        ),
        (
            json!({"field": "starts_at", "op": "<", "value": {"field": "renews_at"}}),
            ["not compiled", "not compiled"],
        ),
        (
            json!({"field": "herald.new_status", "op": "=", "value": "x"}),
            ["not compiled", "not compiled"],
        ),
        (
            json!({"all": [{"field": "starts_at", "op": "<=", "value": now_7}, {"field": "vip", "op": "=", "value": true}]}),
            ["not compiled", "not compiled"],
        ),
        // decided up to the first part left to the evaluator
        (
            json!({"all": [{"field": "vip", "op": "=", "value": true}, {"field": "starts_at", "op": "<=", "value": now_7}]}),
            ["undecided", "false"],
        ),
        (
            json!({"any": [{"field": "vip", "op": "=", "value": true}, {"field": "starts_at", "op": "<=", "value": now_7}]}),
            ["true", "undecided"],
        ),
    ];
    let now = "2026-11-23T12:00:00Z".parse().unwrap();
    for (condition, want) in &cases {
        let parsed = parse(condition, "conditions").unwrap_or_else(|e| panic!("{condition}: {e:?}"));
        for (row, want) in rows.iter().zip(want) {
            // WHEN the capture test and the evaluator read the same row
            let got = capture_test(&db, condition, row).await;
            let evaluated = evaluate(&parsed, row, now, &jiff::tz::TimeZone::UTC);

            // THEN the capture test says what the table says, and where it decides, the
            // evaluator answers the same
            assert_eq!(&got, want, "{condition} on {row}");
            if let Ok(decided) = got.parse::<bool>() {
                let holds = evaluated.as_ref().map(|e| e.holds);
                assert_eq!(holds, Ok(decided), "{condition} on {row}");
            }
        }
    }
}

/// `bookings`, attached with `mode`, and workflow automations whose trigger conditions the
/// capture functions can test (`vip-big`, `edited-vip`, `new-vip`, `gone-vip`) or cannot
/// (`soon`: now-relative; `via-context`: its data comes from a context relation).
async fn bookings(mode: &str) -> TestDb {
    let db = TestDb::new().await;
    db.exec(&format!(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, vip boolean, total integer,
                                starts_at timestamptz, room text);
         INSERT INTO bookings SELECT g, 'pending', g % 2 = 0, g * 10, now() + g * interval '1 day', 'r' || g
         FROM generate_series(1, 20) g;
         CREATE VIEW booking_data AS SELECT * FROM bookings;
         SELECT herald_attach('public.bookings', 'status', 'id', capture => '{mode}');
         INSERT INTO automations (name, source_table, email_to, email_subject, email_text)
         SELECT n, 'bookings', 'x', 'x', 'x'
         FROM unnest(ARRAY['vip-big', 'edited-vip', 'new-vip', 'gone-vip', 'soon', 'via-context']) n;"
    ))
    .await;
    let step = json!([{"id": "hi", "type": "send_email", "to": "x@example.com", "subject": "s", "text": "t"}]);
    let vip = json!({"field": "vip", "op": "=", "value": true});
    let definitions = [
        (
            "vip-big",
            json!({"type": "status_change", "table": "public.bookings", "to": "confirmed"}),
            json!({"all": [vip, {"field": "total", "op": ">=", "value": 100}]}),
        ),
        (
            "edited-vip",
            json!({"type": "update", "table": "public.bookings", "columns": ["room"]}),
            vip.clone(),
        ),
        (
            "new-vip",
            json!({"type": "insert", "table": "public.bookings"}),
            vip.clone(),
        ),
        (
            "gone-vip",
            json!({"type": "delete", "table": "public.bookings"}),
            vip.clone(),
        ),
        (
            "soon",
            json!({"type": "status_change", "table": "public.bookings", "to": "confirmed"}),
            json!({"field": "starts_at", "op": "<=", "value": {"now": "5 days"}}),
        ),
        (
            "via-context",
            json!({"type": "status_change", "table": "public.bookings", "to": "confirmed"}),
            vip.clone(),
        ),
    ];
    for (name, trigger, conditions) in definitions {
        let mut doc = json!({"trigger": trigger, "conditions": conditions, "steps": step});
        if name == "via-context" {
            doc["data"] = json!({"relation": "public.booking_data", "key": "id"});
        }
        db.client
            .query_one("SELECT herald_save_automation($1, $2)", &[&name, &doc])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    db
}

/// The subjects each automation recorded an event for, as "automation: ids" in name order.
async fn recorded(db: &TestDb) -> Vec<String> {
    db.column(
        "SELECT a.name || ': ' || string_agg(i.subject_id, ',' ORDER BY i.subject_id::bigint)
         FROM herald_inbox i JOIN automations a ON a.id = i.automation_id GROUP BY a.name ORDER BY a.name",
    )
    .await
}

#[tokio::test]
async fn an_event_whose_row_fails_the_triggers_conditions_is_not_recorded() {
    for mode in MODES {
        // GIVEN 20 bookings (even ids vip, total 10 x id) and the automations above
        let db = bookings(mode).await;

        // WHEN bookings 1 to 14 are confirmed in one statement, and then 15 and 16 one by one
        db.exec("UPDATE bookings SET status = 'confirmed' WHERE id <= 14").await;
        db.exec("UPDATE bookings SET status = 'confirmed' WHERE id = 15").await;
        db.exec("UPDATE bookings SET status = 'confirmed' WHERE id = 16").await;

        // THEN vip-big recorded only the vip bookings with a total of 100 or more; the
        // automations whose conditions the capture functions cannot test recorded every one
        let all: String = (1..=16).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert_eq!(
            recorded(&db).await,
            vec![
                format!("soon: {all}"),
                format!("via-context: {all}"),
                "vip-big: 10,12,14,16".to_string()
            ],
            "{mode}"
        );

        // AND an update of the named column, an insert and a delete are recorded for vip rows only
        db.exec("DELETE FROM herald_inbox").await;
        db.exec("UPDATE bookings SET room = room || 'b' WHERE id BETWEEN 1 AND 4")
            .await;
        db.exec(
            "INSERT INTO bookings VALUES (21, 'pending', false, 0, now(), 'x'), (22, 'pending', true, 0, now(), 'y')",
        )
        .await;
        db.exec("DELETE FROM bookings WHERE id IN (5, 6)").await;
        assert_eq!(
            recorded(&db).await,
            vec!["edited-vip: 2,4", "gone-vip: 6", "new-vip: 22"],
            "{mode}"
        );
    }
}

#[tokio::test]
async fn names_and_values_that_look_like_the_generated_functions_quoting_are_captured() {
    for mode in MODES {
        // GIVEN a column and a status holding the dollar quote the capture functions once used
        let db = TestDb::new().await;
        db.exec(&format!(
            r#"CREATE TABLE "t$f$" (id bigint PRIMARY KEY, "st$f$" text NOT NULL, "no$f$te" text);
               INSERT INTO "t$f$" VALUES (1, 'new', 'a$f$b'), (2, 'new', 'c');
               SELECT herald_attach('public."t$f$"', 'st$f$', 'id', capture => '{mode}');
               INSERT INTO automations (name, source_table, email_to, email_subject, email_text)
               VALUES ('quoted', 't$f$', 'x', 'x', 'x');"#
        ))
        .await;
        let doc = json!({
            "trigger": {"type": "status_change", "table": "public.\"t$f$\"", "column": "st$f$", "to": "done$f$; x"},
            "conditions": {"field": "no$f$te", "op": "=", "value": "a$f$b"},
            "steps": [{"id": "hi", "type": "send_email", "to": "x@example.com", "subject": "s", "text": "t"}]
        });
        db.client
            .query_one("SELECT herald_save_automation('quoted', $1)", &[&doc])
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e:?}"));

        // WHEN both rows move to that status
        db.exec(r#"UPDATE "t$f$" SET "st$f$" = 'done$f$; x'"#).await;

        // THEN the row whose column holds the value is recorded, and only it
        assert_eq!(recorded(&db).await, vec!["quoted: 1"], "{mode}");
    }
}
