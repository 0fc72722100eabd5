//! Triggers beyond a single status: updates of named columns, deletes, and several `from` / `to`
//! statuses, captured by the generated functions (by row and by statement) and run as workflows.

use std::time::Duration;

use herald_tests::Herald;
use serde_json::json;

#[tokio::test]
async fn updates_of_named_columns_deletes_and_lists_of_statuses_start_their_flows_and_nothing_else() {
    named_columns_deletes_and_lists("row").await;
}

#[tokio::test]
async fn captured_by_statement_updates_of_named_columns_deletes_and_lists_of_statuses_start_the_same_flows() {
    named_columns_deletes_and_lists("statement").await;
}

/// Each trigger once, and changes no trigger listens to, with the table captured by `mode`.
async fn named_columns_deletes_and_lists(mode: &str) {
    let mut h = Herald::new().await;
    h.db.exec(&format!(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, starts_at timestamptz, notes text, email text);
         INSERT INTO bookings SELECT g, CASE g WHEN 2 THEN 'held' ELSE 'new' END, '2030-01-01T09:00:00Z', '',
                                     'b' || g || '-{tag}@example.com' FROM generate_series(1, 3) g;
         SELECT herald_attach('public.bookings', 'status', 'id', capture => '{mode}');
         INSERT INTO automations (name, source_table, email_to, email_subject, email_text, suppression_window)
         SELECT n, 'bookings', 'x', 'x', 'x', '0' FROM unnest(ARRAY['moved', 'gone', 'settled']) n;",
        tag = h.tag
    ))
    .await;
    let email = |subject: &str| {
        json!([{"id": "tell", "type": "send_email", "to": "{{ email }}", "subject": subject,
                "text": "Booking {{ id }}: {{ status }} at {{ starts_at }} ({{ herald.event }})"}])
    };
    for (name, trigger, subject) in [
        (
            "moved",
            json!({"type": "update", "table": "public.bookings", "columns": ["starts_at"]}),
            "Moved",
        ),
        ("gone", json!({"type": "delete", "table": "public.bookings"}), "Deleted"),
        (
            "settled",
            json!({"type": "status_change", "table": "public.bookings", "from": ["new", "held"], "to": ["confirmed", "paid"]}),
            "Settled",
        ),
    ] {
        h.db.client
            .query_one(
                "SELECT herald_save_automation($1, $2)",
                &[&name, &json!({"trigger": trigger, "steps": email(subject)})],
            )
            .await
            .unwrap();
    }

    let clock = h.manual_clock();
    h.db.exec(
        "UPDATE bookings SET notes = 'call first' WHERE id = 1;                 -- nothing listens
         UPDATE bookings SET starts_at = '2030-01-02T09:00:00Z' WHERE id = 1;   -- moved
         UPDATE bookings SET status = 'confirmed' WHERE id = 1;                 -- settled: new -> confirmed
         UPDATE bookings SET status = 'paid' WHERE id = 1;                      -- confirmed is not a `from`
         UPDATE bookings SET status = 'paid' WHERE id = 2;                      -- settled: held -> paid
         UPDATE bookings SET status = 'cancelled' WHERE id = 3;                 -- not a `to`
         DELETE FROM bookings WHERE id = 3;                                     -- gone",
    )
    .await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 4);
    assert!(h.deliver_all().await.is_empty());

    let logs: Vec<String> =
        h.db.column(
            "SELECT concat_ws(' ', a.name, l.subject_id, l.event, l.old_status, l.new_status, l.status)
             FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id ORDER BY l.id",
        )
        .await;
    assert_eq!(
        logs,
        [
            "moved 1 update new new completed",
            "settled 1 status_change new confirmed completed",
            "settled 2 status_change held paid completed",
            "gone 3 delete cancelled completed",
        ]
    );
    let mut bodies: Vec<String> = h
        .moto
        .emails_from(&h.from)
        .await
        .into_iter()
        .map(|e| format!("{}: {}", e.subject, e.body))
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            // The deleted row, as it was deleted.
            "Deleted: Booking 3: cancelled at 2030-01-01T09:00:00+00:00 (delete)",
            // The others, as they are now.
            "Moved: Booking 1: paid at 2030-01-02T09:00:00+00:00 (update)",
            "Settled: Booking 1: paid at 2030-01-02T09:00:00+00:00 (status_change)",
            "Settled: Booking 2: paid at 2030-01-01T09:00:00+00:00 (status_change)",
        ]
    );
}

#[tokio::test]
async fn the_follow_waits_trigger_is_compiled_from_every_version_and_wakes_paused_waits_too() {
    let db = herald_tests::TestDb::new().await;
    db.exec(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, starts_at timestamptz, tz text, note text);
         INSERT INTO bookings VALUES (1, 'confirmed', '2030-01-10T09:00:00Z', 'UTC', '');
         SELECT herald_attach('public.bookings', 'status');
         INSERT INTO automations (name, source_table) VALUES ('reminder', 'bookings');",
    )
    .await;
    let follows = "SELECT coalesce((SELECT pg_get_triggerdef(oid) FROM pg_trigger
                                    WHERE tgrelid = 'bookings'::regclass AND tgname = 'herald_follow_waits'), 'none')";
    let save = |steps: serde_json::Value| json!({"trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"}, "steps": steps});
    let sms = json!({"id": "remind", "type": "send_sms", "to": "+15550100", "body": "Tomorrow"});
    let wait = json!({"id": "night-before", "type": "wait",
                      "until": {"field": "starts_at", "offset": "-1 day", "timezone": {"field": "tz"}}});
    // No wait reads the data: no trigger.
    db.client
        .query_one("SELECT herald_save_automation('reminder', $1)", &[&save(json!([sms]))])
        .await
        .unwrap();
    assert_eq!(db.scalar::<String>(follows).await, "none");
    // A version whose wait reads starts_at and tz: the trigger tests those two columns.
    db.client
        .query_one(
            "SELECT herald_save_automation('reminder', $1)",
            &[&save(json!([wait, sms]))],
        )
        .await
        .unwrap();
    let def: String = db.scalar(follows).await;
    assert!(
        def.contains("AFTER UPDATE ON public.bookings FOR EACH ROW WHEN"),
        "{def}"
    );
    assert!(def.contains("old.starts_at IS DISTINCT FROM new.starts_at"), "{def}");
    assert!(def.contains("old.tz IS DISTINCT FROM new.tz"), "{def}");
    assert!(!def.contains("note"), "{def}");
    // A later version without the wait: instances of the earlier one may still sleep in it,
    // so the trigger stays.
    db.client
        .query_one("SELECT herald_save_automation('reminder', $1)", &[&save(json!([sms]))])
        .await
        .unwrap();
    assert_eq!(db.scalar::<String>(follows).await, def);

    // Instances sleeping in the wait, one of them paused: both are woken by a move; an
    // instance waiting elsewhere (a retry of another step) is not.
    db.exec(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, snapshot, status,
            held_from, run_at, created_at, updated_at, version, next_step)
         SELECT a.id, 'public', 'bookings', 'id', '1', 'status_change', '{}', s.status, s.held_from,
                '2030-01-09T09:00:00Z', now(), now(), 2, s.step
         FROM automations a,
              (VALUES ('waiting', NULL, 'night-before'), ('paused', 'waiting', 'night-before'),
                      ('waiting', NULL, 'remind')) AS s (status, held_from, step)",
    )
    .await;
    db.set_now("2029-12-01T00:00:00Z").await;
    db.exec("UPDATE bookings SET note = 'ring twice'").await;
    let run_at = "SELECT string_agg(status || ' ' || next_step || ' ' || to_char(run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), ', ' ORDER BY id)
                  FROM automation_execution_logs";
    let untouched =
        "waiting night-before 2030-01-09 09:00, paused night-before 2030-01-09 09:00, waiting remind 2030-01-09 09:00";
    assert_eq!(db.scalar::<String>(run_at).await, untouched);
    db.exec("UPDATE bookings SET starts_at = '2030-01-17T09:00:00Z'").await;
    assert_eq!(
        db.scalar::<String>(run_at).await,
        "waiting night-before 2029-12-01 00:00, paused night-before 2029-12-01 00:00, waiting remind 2030-01-09 09:00"
    );

    // Detached, the table keeps none of Herald's triggers.
    db.exec("SELECT herald_detach('public.bookings')").await;
    assert_eq!(db.scalar::<String>(follows).await, "none");
}
