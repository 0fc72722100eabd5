//! Triggers beyond a single status: updates of named columns, deletes, and several `from` / `to`
//! statuses, captured by the generated functions (by row and by statement) and run as workflows.

use std::time::Duration;

use herald_shared::clock::Clock;
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
    let sms = json!({"id": "remind", "type": "send_sms", "to": "+14155550100", "body": "Tomorrow"});
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

#[tokio::test]
async fn a_date_trigger_fires_once_per_date_follows_a_moved_date_and_records_what_it_missed() {
    let mut h = Herald::new().await;
    let start: jiff::Timestamp = "2030-03-01T00:00:00Z".parse().unwrap();
    let clock = h.manual_clock_at(start.into());
    // The database's clock is the functions' (the save computes each row's time from it).
    h.db.set_now(&start.to_string()).await;
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, plan text NOT NULL,
                               renews_at timestamptz, tz text NOT NULL, phone text NOT NULL);
         INSERT INTO members VALUES
           (1, 'active', 'paid', '2030-03-10T12:00:00Z', 'Europe/London',    '+14152{tag:04}01'),
           (2, 'active', 'paid', '2030-03-10T12:00:00Z', 'America/New_York', '+14152{tag:04}02'),
           (3, 'active', 'free', '2030-03-10T12:00:00Z', 'Europe/London',    '+14152{tag:04}03'),
           (4, 'active', 'paid', '2030-03-20T12:00:00Z', 'Europe/London',    '+14152{tag:04}04'),
           (5, 'active', 'paid', NULL,                   'Europe/London',    '+14152{tag:04}05');
         SELECT herald_attach('public.members', 'status');
         INSERT INTO automations (name, source_table) VALUES ('renewal', 'members');",
        tag = h.tag % 10_000
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "date", "table": "public.members", "column": "renews_at",
                    "offset": "-7 days", "at": "09:00", "timezone": {"field": "tz"}},
        "conditions": {"field": "plan", "op": "=", "value": "paid"},
        "steps": [{"id": "remind", "type": "send_sms", "to": "{{ phone }}",
                   "body": "Member {{ id }}: your plan renews on {{ payload.date }}"}]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('renewal', $1)", &[&doc])
        .await
        .unwrap();
    // 09:00 a week before, in each member's zone; none for a member without a date.
    let next: Vec<String> = h
        .db
        .column("SELECT subject_id || ' ' || fire_at::text || ' ' || local_time FROM herald_next_fires('renewal', 10)")
        .await;
    assert_eq!(
        next,
        [
            "1 2030-03-03 09:00:00+00 2030-03-03 09:00 Europe/London",
            "3 2030-03-03 09:00:00+00 2030-03-03 09:00 Europe/London",
            "2 2030-03-03 14:00:00+00 2030-03-03 09:00 America/New_York",
            "4 2030-03-13 09:00:00+00 2030-03-13 09:00 Europe/London",
        ]
    );
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let advance_to = |to: jiff::Timestamp| {
        let now = jiff::Timestamp::try_from(clock.now()).unwrap();
        clock.advance(to.duration_since(now).unsigned_abs());
    };

    // Nothing is due before its time.
    advance_to(at("2030-03-03T08:59:00Z"));
    assert_eq!(h.tick().await.dates.fired, 0);
    // Member 2 moves a week later (New York's clocks go forward on 10 March: 09:00 EDT).
    h.db.set_now("2030-03-03T08:59:00Z").await;
    h.db.exec("UPDATE members SET renews_at = '2030-03-17T12:00:00Z' WHERE id = 2")
        .await;
    // Member 1's and member 3's time comes: member 3 is on the free plan, so its instance
    // exits by the trigger's conditions and sends nothing.
    advance_to(at("2030-03-03T09:00:30Z"));
    let tick = h.tick().await;
    assert_eq!((tick.dates.fired, tick.claimed), (2, 2));
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(
        sms_starting(&h, "Member ").await,
        ["Member 1: your plan renews on 2030-03-10T12:00:00+00:00"]
    );
    // Member 2's old time passes with nothing due; its new one fires once.
    advance_to(at("2030-03-03T14:00:30Z"));
    assert_eq!(h.tick().await.dates.fired, 0);
    advance_to(at("2030-03-10T13:00:30Z"));
    assert_eq!(h.tick().await.dates.fired, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.tick().await.dates.fired, 0);

    // The scheduler does not run for two hours past member 4's time: more than the trigger's
    // lateness (one hour), so it is recorded as missed, not sent late.
    advance_to(at("2030-03-13T11:00:00Z"));
    let tick = h.tick().await;
    assert_eq!((tick.dates.fired, tick.dates.missed, tick.claimed), (0, 1, 0));

    // A date that fired does not fire again: member 1's renewal set to another date and back.
    h.db.set_now("2030-03-13T11:00:00Z").await;
    h.db.exec(
        "UPDATE members SET renews_at = '2030-03-21T12:00:00Z' WHERE id = 1;
         UPDATE members SET renews_at = '2030-03-10T12:00:00Z' WHERE id = 1;",
    )
    .await;
    // At 09:20 the next day, a date set already past: within the lateness it fires at once
    // (member 5's is 09:00 today); further back it never fires (member 6's, yesterday). A
    // deleted row does not fire (member 7).
    advance_to(at("2030-03-14T09:20:00Z"));
    h.db.set_now("2030-03-14T09:20:00Z").await;
    h.db.exec(&format!(
        "UPDATE members SET renews_at = '2030-03-21T12:00:00Z' WHERE id = 5;
         INSERT INTO members VALUES
           (6, 'active', 'paid', '2030-03-20T12:00:00Z', 'Europe/London', '+14152{tag:04}06'),
           (7, 'active', 'paid', '2030-03-25T12:00:00Z', 'Europe/London', '+14152{tag:04}07');
         DELETE FROM members WHERE id = 7;",
        tag = h.tag % 10_000
    ))
    .await;
    advance_to(at("2030-03-14T09:30:00Z"));
    assert_eq!(h.tick().await.dates.fired, 1);
    assert!(h.deliver_all().await.is_empty());
    advance_to(at("2030-03-30T00:00:00Z"));
    assert_eq!(h.tick().await.dates.fired, 0);
    assert_eq!(
        sms_starting(&h, "Member ").await,
        [
            "Member 1: your plan renews on 2030-03-10T12:00:00+00:00",
            "Member 2: your plan renews on 2030-03-17T12:00:00+00:00",
            "Member 5: your plan renews on 2030-03-21T12:00:00+00:00",
        ]
    );
    let ledger: Vec<String> =
        h.db.column(
            "SELECT subject_id || ' ' || occurs_on || ' ' || state FROM herald_occurrences ORDER BY subject_id, fire_at",
        )
        .await;
    assert_eq!(
        ledger,
        [
            "1 2030-03-10T12:00:00+00:00 fired",
            "2 2030-03-17T12:00:00+00:00 fired",
            "3 2030-03-10T12:00:00+00:00 fired",
            "4 2030-03-20T12:00:00+00:00 missed",
            "5 2030-03-21T12:00:00+00:00 fired",
        ]
    );
    let exited: Vec<String> =
        h.db.column("SELECT subject_id || ' ' || status || ' ' || coalesce(exit_reason, '') FROM automation_execution_logs WHERE status = 'exited'")
            .await;
    assert_eq!(exited, ["3 exited the trigger's conditions do not hold"]);
}

/// The text messages moto received that start with `prefix`, sorted.
async fn sms_starting(h: &Herald, prefix: &str) -> Vec<String> {
    let mut bodies: Vec<String> = h.moto.all_sms().await.into_iter().map(|m| m.message).collect();
    bodies.retain(|b| b.starts_with(prefix));
    bodies.sort();
    bodies
}

#[tokio::test]
async fn a_schedule_fires_each_occurrence_once_per_audience_row_catches_up_and_records_what_it_missed() {
    let mut h = Herald::new().await;
    // Monday 4 March 2030, 08:00 in London (GMT).
    let start: jiff::Timestamp = "2030-03-04T08:00:00Z".parse().unwrap();
    let clock = h.manual_clock_at(start.into());
    h.db.set_now(&start.to_string()).await;
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, plan text NOT NULL, name text NOT NULL,
                               phone text NOT NULL);
         INSERT INTO members VALUES
           (1, 'active', 'paid', 'Ana', '+14153{tag:04}01'), (2, 'active', 'paid', 'Bo', '+14153{tag:04}02'),
           (3, 'active', 'free', 'Cy', '+14153{tag:04}03'), (4, 'active', 'paid', 'Di', '+14153{tag:04}04');
         CREATE VIEW paying_members AS SELECT * FROM members WHERE plan = 'paid';
         INSERT INTO automations (name, source_table) VALUES ('weekly-tip', 'members'), ('nightly', 'members');",
        tag = h.tag % 10_000
    ))
    .await;
    let weekly = json!({
        "trigger": {"type": "schedule", "cron": "0 9 * * MON", "timezone": "Europe/London",
                    "audience": {"relation": "paying_members", "key": "id"}},
        "conditions": {"field": "name", "op": "<>", "value": "Di"},
        "steps": [{"id": "tip", "type": "send_sms", "to": "{{ phone }}",
                   "body": "Weekly tip for {{ name }} ({{ payload.occurrence }})"}]
    });
    // No audience: one instance per occurrence, at 01:30 London time every night.
    let nightly = json!({
        "trigger": {"type": "schedule", "cron": "30 1 * * *", "timezone": "Europe/London"},
        "steps": [{"id": "ping", "type": "send_sms", "to": format!("+14154{:04}00", h.tag % 10_000),
                   "body": "Nightly ({{ herald.event }}) {{ payload.occurrence }}"}]
    });
    for (name, doc) in [("weekly-tip", &weekly), ("nightly", &nightly)] {
        h.db.client
            .query_one("SELECT herald_save_automation($1, $2)", &[&name, doc])
            .await
            .unwrap();
    }
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let advance_to = |to: jiff::Timestamp| {
        let now = jiff::Timestamp::try_from(clock.now()).unwrap();
        clock.advance(to.duration_since(now).unsigned_abs());
    };

    // Before its time, nothing; at 09:00 each paying member is sent the tip once (Di is
    // left out by the definition's conditions, Cy by the audience).
    advance_to(at("2030-03-04T08:59:00Z"));
    assert_eq!(h.tick().await.schedules.fired, 0);
    advance_to(at("2030-03-04T09:00:20Z"));
    let tick = h.tick().await;
    assert_eq!(tick.schedules.fired, 2, "{tick:?}");
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.tick().await.schedules.fired, 0);
    assert_eq!(
        sms_starting(&h, "Weekly").await,
        [
            "Weekly tip for Ana (2030-03-04T09:00:00+00:00)",
            "Weekly tip for Bo (2030-03-04T09:00:00+00:00)"
        ]
    );
    let next: Vec<String> =
        h.db.column("SELECT fire_at::text || ' ' || local_time FROM herald_next_fires('weekly-tip', 2)")
            .await;
    assert_eq!(
        next,
        [
            "2030-03-11 09:00:00+00 2030-03-11 09:00 Europe/London",
            "2030-03-18 09:00:00+00 2030-03-18 09:00 Europe/London"
        ]
    );

    // The scheduler runs late, within the lateness: the occurrence still fires.
    advance_to(at("2030-03-11T09:40:00Z"));
    assert_eq!(h.tick().await.schedules.fired, 2);
    assert!(h.deliver_all().await.is_empty());
    // Then not at all until two hours past the next one: recorded as missed, not sent late.
    advance_to(at("2030-03-18T11:00:00Z"));
    assert_eq!(h.tick().await.schedules.fired, 0);
    let weekly_states: Vec<String> =
        h.db.column(
            "SELECT o.occurs_on || ' ' || o.state || ' ' || count(*) FROM herald_occurrences o
             JOIN automations a ON a.id = o.automation_id WHERE a.name = 'weekly-tip'
             GROUP BY o.occurs_on, o.state, o.fire_at ORDER BY o.fire_at",
        )
        .await;
    assert_eq!(
        weekly_states,
        [
            "2030-03-04T09:00:00+00:00 fired 2",
            "2030-03-11T09:00:00+00:00 fired 2",
            "2030-03-18T09:00:00+00:00 missed 1"
        ]
    );
    assert_eq!(sms_starting(&h, "Weekly").await.len(), 4);

    // London's clocks go forward at 01:00 on 31 March: 01:30 does not exist that night, and
    // the nightly one fires at 02:30 BST (01:30 UTC), the gap's length later. They go back
    // at 02:00 on 27 October: 01:30 happens twice, and it fires once, at the first.
    advance_to(at("2030-03-30T01:30:10Z"));
    assert!(h.tick().await.schedules.fired >= 1);
    advance_to(at("2030-03-31T01:30:10Z"));
    assert_eq!(h.tick().await.schedules.fired, 1);
    advance_to(at("2030-10-27T00:30:10Z"));
    let tick = h.tick().await;
    assert_eq!(tick.schedules.fired, 1, "{tick:?}");
    advance_to(at("2030-10-27T01:30:10Z"));
    assert_eq!(
        h.tick().await.schedules.fired,
        0,
        "the second 01:30 does not fire again"
    );
    assert!(h.deliver_all().await.is_empty());
    let nights: Vec<String> =
        h.db.column(
            "SELECT o.occurs_on || ' ' || o.state FROM herald_occurrences o JOIN automations a ON a.id = o.automation_id
             WHERE a.name = 'nightly' AND o.fire_at >= '2030-03-30' AND o.fire_at < '2030-04-01'
                OR a.name = 'nightly' AND o.fire_at >= '2030-10-26T12:00:00Z' AND o.fire_at < '2030-10-28'
             ORDER BY o.fire_at",
        )
        .await;
    assert_eq!(
        nights,
        [
            "2030-03-30T01:30:00+00:00 fired",
            "2030-03-31T01:30:00+00:00 fired",
            "2030-10-27T00:30:00+00:00 fired"
        ]
    );
    let pings = sms_starting(&h, "Nightly").await;
    let logs: Vec<String> =
        h.db.column("SELECT concat_ws(' ', l.status, l.event, l.error) FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id WHERE a.name = 'nightly'")
            .await;
    assert!(
        pings.contains(&"Nightly (schedule) 2030-10-27T00:30:00+00:00".to_owned()),
        "{pings:?} {logs:?}"
    );

    // The audience's view is dropped: the tick still runs (the error is logged), the schedule
    // stays where it was, and once the view is back its occurrence fires, within the lateness.
    h.db.exec("DROP VIEW paying_members").await;
    advance_to(at("2030-10-28T09:00:20Z"));
    assert_eq!(h.tick().await.schedules.fired, 0);
    h.db.exec("CREATE VIEW paying_members AS SELECT * FROM members WHERE plan = 'paid'")
        .await;
    advance_to(at("2030-10-28T09:10:00Z"));
    assert_eq!(h.tick().await.schedules.fired, 2);
}
