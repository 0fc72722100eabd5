//! Steps that change this database (update_field, tags and segments, create_task) and the
//! cascade guard, through the real scheduler, executor, ledger and moto.

use std::time::Duration;

use herald_tests::Herald;
use serde_json::json;

#[tokio::test]
async fn fields_labels_and_tasks_change_once_with_column_types_respected() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, visits integer NOT NULL DEFAULT 0,
                               last_seen timestamptz, phone text, name text);
         INSERT INTO members (id, status, phone, name) VALUES (1, 'new', '+14152{tag:06}', 'Ana'), (2, 'new', '+14153{tag:06}', 'Bo');
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text)
         VALUES ('onboard', 'members', 'active', 'x', 'x', 'x');",
        tag = h.tag
    ))
    .await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "steps": [
            {"id": "mark", "type": "update_field",
             "set": {"visits": "{{ visits + 1 }}", "last_seen": "2030-01-01T09:00:00Z", "status": "onboarded"}},
            {"id": "tag", "type": "add_tag", "tag": "new-member"},
            {"id": "vip", "type": "add_tag", "tag": "vip"},
            {"id": "unvip", "type": "remove_tag", "tag": "vip"},
            {"id": "trial", "type": "add_to_segment", "segment": "trial"},
            {"id": "call", "type": "create_task", "title": "Call {{ name }}", "assignee": "sam", "due": "2 days"},
            {"id": "bad", "type": "update_field", "set": {"visits": "lots"}, "on_error": "continue"},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}",
             "body": "{{ status }}: visits {{ visits }}, {{ steps.mark.rows }} row, task {{ steps.call.task_id }}"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('onboard', $1)", &[&doc])
        .await
        .unwrap();

    h.db.exec("UPDATE members SET status = 'active' WHERE id = 1").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed"]);

    // The row, typed: an integer computed from the data, a time, a status.
    let row =
        h.db.client
            .query_one(
                "SELECT status, visits, last_seen = '2030-01-01T09:00:00Z' FROM members WHERE id = 1",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, bool>(2)),
        ("onboarded".into(), 1, true)
    );
    let untouched: i32 = h.db.scalar("SELECT visits FROM members WHERE id = 2").await;
    assert_eq!(untouched, 0);
    let labels: Vec<String> = h.db.column(
        "SELECT concat_ws(' ', subject_table, subject_id, kind, name, added_by IS NOT NULL) FROM herald_labels ORDER BY kind, name",
    )
    .await;
    assert_eq!(labels, ["members 1 segment trial t", "members 1 tag new-member t"]);
    let task: Vec<String> =
        h.db.column("SELECT concat_ws(' ', title, assignee, status, round(extract(epoch FROM due_at - created_at) / 3600), step_id) FROM herald_tasks")
            .await;
    assert_eq!(task, ["Call Ana sam open 48 call"]);

    // The bad value failed its step, and nothing of it stayed; the SMS saw the fresh data.
    let runs: Vec<String> =
        h.db.column("SELECT concat_ws(' ', step_id, status, error_code, output) FROM automation_step_runs ORDER BY id")
            .await;
    let task_id: i64 = h.db.scalar("SELECT id FROM herald_tasks").await;
    assert_eq!(
        runs,
        [
            "mark done {\"rows\": 1}".to_owned(),
            "tag done {\"changed\": true}".into(),
            "vip done {\"changed\": true}".into(),
            "unvip done {\"changed\": true}".into(),
            "trial done {\"changed\": true}".into(),
            format!("call done {{\"task_id\": {task_id}}}"),
            "bad failed 22P02".into(),
            format!("text done {{\"message_id\": \"{}\"}}", {
                let id: String =
                    h.db.scalar("SELECT output ->> 'message_id' FROM automation_step_runs WHERE step_id = 'text'")
                        .await;
                id
            }),
        ]
    );
    let error: String =
        h.db.scalar("SELECT error FROM automation_step_runs WHERE step_id = 'bad'")
            .await;
    // Postgres's words, once: the step's id is the row's, not repeated in its error.
    assert!(
        error.starts_with("invalid input syntax for type integer") && error.contains("lots"),
        "{error}"
    );
    let sms = h.moto.sms_to(&format!("+14152{:06}", h.tag)).await;
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].message, format!("onboarded: visits 1, 1 row, task {task_id}"));
}

#[tokio::test]
async fn a_step_that_changes_a_row_triggers_another_automation_and_the_cascade_limit_stops_a_loop() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(
        "CREATE TABLE tickets (id bigint PRIMARY KEY, status text NOT NULL);
         INSERT INTO tickets VALUES (1, 'new');
         SELECT herald_attach('public.tickets', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status) VALUES ('ping', 'tickets', 'a'), ('pong', 'tickets', 'b');",
    )
    .await;
    for (name, to, set) in [("ping", "a", "b"), ("pong", "b", "a")] {
        let doc = json!({
            "trigger": {"type": "status_change", "table": "public.tickets", "to": to},
            "settings": {"suppression_window": "0s"},
            "steps": [{"id": "flip", "type": "update_field", "set": {"status": set}}]
        });
        h.db.client
            .query_one("SELECT herald_save_automation($1, $2)", &[&name, &doc])
            .await
            .unwrap();
    }

    h.db.exec("UPDATE tickets SET status = 'a' WHERE id = 1").await;
    // The events that steps cause are stamped by the database's clock, which runs on while a
    // tick and its deliveries take their (real) time: each tick moves the functions' clock a
    // minute on, past any event made since. Nothing here waits or depends on the time.
    for _ in 0..20 {
        clock.advance(Duration::from_secs(60));
        if h.tick().await.claimed == 0 {
            break;
        }
        assert!(h.deliver_all().await.is_empty());
    }
    let logs: Vec<String> =
        h.db.column(
            "SELECT concat_ws(' ', a.name, l.status, l.cascade_depth, l.caused_by IS NOT NULL, l.error_code)
         FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id ORDER BY l.id",
        )
        .await;
    assert_eq!(
        logs,
        [
            "ping completed 0 f",
            "pong completed 1 t",
            "ping completed 2 t",
            "pong completed 3 t",
            "ping completed 4 t",
            "pong completed 5 t",
            "ping suppressed 6 t CascadeLimit",
        ]
    );
    // Each change was made by the instance before it; the last one is held by the instance
    // whose step made it, with the reason.
    let chained: bool =
        h.db.scalar(
            "SELECT bool_and(l.caused_by = p.id) FROM automation_execution_logs l
         JOIN automation_execution_logs p ON p.id = (SELECT max(id) FROM automation_execution_logs WHERE id < l.id)
         WHERE l.cascade_depth > 0",
        )
        .await;
    assert!(chained);
    let (by, error): (bool, String) =
        {
            let r = h.db.client
            .query_one(
                "SELECT suppressed_by = caused_by, error FROM automation_execution_logs WHERE status = 'suppressed'",
                &[],
            )
            .await
            .unwrap();
            (r.get(0), r.get(1))
        };
    assert!(by);
    assert!(error.contains("cascade depth 6 is past the limit of 5"), "{error}");
    let status: String = h.db.scalar("SELECT status FROM tickets").await;
    assert_eq!(status, "a");
}

#[tokio::test]
async fn update_field_steps_naming_columns_that_do_not_exist_are_refused_when_saved() {
    let h = Herald::with_jobs_example().await;
    h.db.exec("CREATE TABLE job_notes (job_ref bigint, note text)").await;
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "steps": [
            {"id": "a", "type": "update_field", "set": {"stauts": "x", "title": "y"}},
            {"id": "b", "type": "branch", "if": {"field": "job_status", "op": "=", "value": "completed"},
             "then": [{"id": "c", "type": "update_field", "table": "public.job_notes", "set": {"note": "done"}}]},
            {"id": "d", "type": "update_field", "table": "public.job_notes", "key": "job_ref", "set": {"note": "ok"}}
        ]
    });
    let err =
        h.db.client
            .query_one("SELECT herald_save_automation('job-completed', $1)", &[&doc])
            .await
            .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023");
    let detail = db.detail().unwrap_or_default();
    assert_eq!(
        detail.lines().collect::<Vec<_>>(),
        [
            "steps[0].set.stauts: jobs has no column `stauts`",
            "steps[1].then[0].table: job_notes has no column `id` to find the subject's row by (name it with `key`)",
        ],
        "{detail}"
    );
}

#[tokio::test]
async fn label_changes_start_the_automations_that_listen_to_them() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, email text, phone text, name text);
         INSERT INTO members VALUES (1, 'new', 'm1-{tag}@example.com', '+14152{tag:06}', 'Ana'),
                                    (2, 'new', 'm2-{tag}@example.com', '+14153{tag:06}', 'Bo');
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table, email_to, email_subject, email_text, suppression_window)
         SELECT n, 'members', 'x', 'x', 'x', '0' FROM unnest(ARRAY['promote', 'vip-welcome', 'vip-goodbye']) n;",
        tag = h.tag
    ))
    .await;
    let save = |name: &'static str, doc: serde_json::Value| {
        let db = &h.db;
        async move {
            db.client
                .query_one("SELECT herald_save_automation($1, $2)", &[&name, &doc])
                .await
                .unwrap();
        }
    };
    save(
        "promote",
        json!({"trigger": {"type": "status_change", "table": "public.members", "to": "gold"},
               "steps": [{"id": "tag", "type": "add_tag", "tag": "vip"}]}),
    )
    .await;
    save(
        "vip-welcome",
        json!({"trigger": {"type": "tag_added", "tag": "vip"},
               "steps": [{"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "VIP",
                          "text": "Welcome, {{ name }} ({{ herald.event }})"},
                         {"id": "untag", "type": "remove_tag", "tag": "vip"}]}),
    )
    .await;
    save(
        "vip-goodbye",
        json!({"trigger": {"type": "tag_removed", "tag": "vip"},
               "steps": [{"id": "bye", "type": "send_sms", "to": "{{ phone }}", "body": "Bye, {{ name }}"}]}),
    )
    .await;

    // A step tags member 1; a person tags member 2 in SQL; another label starts nothing.
    h.db.exec(
        "UPDATE members SET status = 'gold' WHERE id = 1;
         INSERT INTO herald_labels (subject_schema, subject_table, subject_id, kind, name)
         VALUES ('public', 'members', '2', 'tag', 'vip'), ('public', 'members', '2', 'segment', 'vip');",
    )
    .await;
    // A minute a tick, as in the cascade test above: label events are stamped by the
    // database's clock.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        if h.tick().await.claimed == 0 {
            break;
        }
        assert!(h.deliver_all().await.is_empty());
    }
    let logs: Vec<String> =
        h.db.column(
            "SELECT concat_ws(' ', a.name, l.subject_id, l.event, l.status, l.cascade_depth)
             FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id ORDER BY l.id",
        )
        .await;
    assert_eq!(
        logs,
        [
            "promote 1 status_change completed 0",
            "vip-welcome 2 tag_added completed 0",
            "vip-welcome 1 tag_added completed 1",
            "vip-goodbye 2 tag_removed completed 1",
            "vip-goodbye 1 tag_removed completed 2",
        ]
    );
    let emails = h.moto.emails_from(&h.from).await;
    let mut bodies: Vec<&str> = emails.iter().map(|e| e.body.as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["Welcome, Ana (tag_added)", "Welcome, Bo (tag_added)"]);
    assert_eq!(h.moto.sms_to(&format!("+14152{:06}", h.tag)).await.len(), 1);
    let left: Vec<String> =
        h.db.column("SELECT kind || ' ' || name FROM herald_labels ORDER BY 1")
            .await;
    assert_eq!(left, ["segment vip"]);
}

#[tokio::test]
async fn a_data_step_that_stops_its_instance_says_why_once_with_its_sqlstate() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, visits integer NOT NULL DEFAULT 0);
         INSERT INTO members (id, status) VALUES (1, 'new');
         SELECT herald_attach('public.members', 'status', 'id');
         INSERT INTO automations (name, source_table) VALUES ('count', 'members');",
    )
    .await;
    let doc = json!({"trigger": {"type": "status_change", "table": "public.members", "to": "active"},
                     "steps": [{"id": "set", "type": "update_field", "set": {"visits": "lots"}}]});
    h.db.client
        .query_one("SELECT herald_save_automation('count', $1)", &[&doc])
        .await
        .unwrap();
    h.db.exec("UPDATE members SET status = 'active' WHERE id = 1").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    let row =
        h.db.client
            .query_one("SELECT status, error, error_code FROM automation_execution_logs", &[])
            .await
            .unwrap();
    let (status, error, code): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(status, "failed");
    assert!(
        error.starts_with("step `set` failed: invalid input syntax for type integer"),
        "{error}"
    );
    assert_eq!(error.matches("`set`").count(), 1, "{error}");
    assert_eq!(code.as_deref(), Some("22P02"), "the instance keeps its step's SQLSTATE");
}

#[tokio::test]
async fn label_steps_may_label_another_row_than_the_subject() {
    // A payment's flow tags the member who made it, which starts the member's own flow.
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    h.db.exec(&format!(
        "CREATE SCHEMA club;
         CREATE TABLE club.members (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'active', phone text);
         CREATE TABLE club.payments (id bigint PRIMARY KEY, member_id bigint NOT NULL, status text NOT NULL);
         INSERT INTO club.members (id, phone) VALUES (7, '+14152{tag:06}'), (8, '+14153{tag:06}');
         SELECT herald_attach('club.members', 'status', 'id');
         SELECT herald_attach('club.payments', 'status', 'id');
         INSERT INTO automations (name, source_schema, source_table) VALUES ('payment-failed', 'club', 'payments'),
           ('dunning', 'club', 'members');",
        tag = h.tag
    ))
    .await;
    let payment = json!({"trigger": {"type": "status_change", "table": "club.payments", "to": "failed"},
                         "steps": [{"id": "flag", "type": "add_tag", "tag": "payment-failed",
                                    "table": "club.members", "key": "{{ member_id }}"},
                                   {"id": "nowhere", "type": "add_to_segment", "segment": "dunning",
                                    "table": "club.members", "key": "{{ member_id + 100 }}", "on_error": "continue"}]});
    let member = json!({"trigger": {"type": "tag_added", "tag": "payment-failed"},
                        "steps": [{"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Your payment failed"}]});
    for (name, doc) in [("payment-failed", payment), ("dunning", member)] {
        h.db.client
            .query_one("SELECT herald_save_automation($1, $2)", &[&name, &doc])
            .await
            .unwrap();
    }
    h.db.exec(
        "INSERT INTO club.payments VALUES (1, 7, 'pending'); UPDATE club.payments SET status = 'failed' WHERE id = 1;",
    )
    .await;
    for _ in 0..2 {
        clock.advance(Duration::from_secs(1));
        h.tick().await;
        assert!(h.deliver_all().await.is_empty());
    }
    let labels: Vec<String> =
        h.db.column("SELECT concat_ws(' ', subject_schema, subject_table, subject_id, kind, name) FROM herald_labels")
            .await;
    assert_eq!(labels, ["club members 7 tag payment-failed"]);
    let runs: Vec<String> = h
        .db
        .column("SELECT concat_ws(' ', step_id, status, error_code, error) FROM automation_step_runs WHERE step_id <> 'text' ORDER BY id")
        .await;
    assert_eq!(
        runs,
        [
            "flag done".to_owned(),
            "nowhere failed P0002 club.members has no row whose id is '107'".into()
        ]
    );
    let flows: Vec<String> = h
        .db
        .column("SELECT concat_ws(' ', a.name, l.subject_table, l.subject_id, l.status) FROM automation_execution_logs l JOIN automations a ON a.id = l.automation_id ORDER BY l.id")
        .await;
    assert_eq!(
        flows,
        ["payment-failed payments 1 completed", "dunning members 7 completed"]
    );
    assert_eq!(h.moto.sms_to(&format!("+14152{:06}", h.tag)).await.len(), 1);
}
