//! Definitions are checked when saved, in SQL, with the path of every mistake; Herald's own
//! reader agrees with SQL on every mistake both can see.

use herald_shared::workflow::definition;
use herald_tests::TestDb;
use serde_json::{json, Value as Json};

async fn db() -> TestDb {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE bookings (id bigint PRIMARY KEY, status text NOT NULL, starts_at timestamptz, vip boolean,
                                total numeric, tags text[], email text, phone text, name text, reminded boolean,
                                country text);",
    )
    .await;
    db
}

fn flow() -> Json {
    json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "timezone": "Europe/London",
        "region": "GB",
        "admins": {"emails": ["owner@example.com"]},
        "exit": [{"if": {"field": "status", "op": "=", "value": "cancelled"}, "reason": "booking cancelled"}],
        "steps": [
            {"id": "confirm", "type": "send_email", "to": "{{ email }}", "subject": "Booked", "text": "See you, {{ name }}"},
            {"id": "night-before", "type": "wait", "until": {"field": "starts_at", "offset": "-1 day", "at": "18:00"}},
            {"id": "vip", "type": "branch",
             "if": {"all": [{"field": "vip", "op": "=", "value": true},
                            {"field": "starts_at", "op": "<", "value": {"now": "7 days"}},
                            {"field": "tags", "op": "contains", "value": "gold"},
                            {"field": "total", "op": "in", "value": [100, 200]}]},
             "then": [{"id": "tell-owner", "type": "notify_admin", "subject": "VIP", "text": "{{ name }} comes tomorrow"}],
             "else": [{"id": "tag", "type": "add_tag", "tag": "regular"}]},
            {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "Tomorrow!", "on_error": "continue",
             "on_unknown": "resend", "region": {"field": "country"}},
            {"id": "review", "type": "webhook", "url": "https://hooks.example.com/review", "body": "{\"id\": {{ id }}}",
             "secret": "herald/webhooks/review", "timeout": "5 seconds",
             "on_error": {"retry": {"times": 3, "backoff": "30 seconds"}}, "on_unknown": "hold"},
            {"id": "mark", "type": "update_field", "set": {"reminded": "true"}},
            {"id": "follow-up", "type": "create_task", "title": "Call {{ name }}", "due": "2 days"}
        ]
    })
}

/// The first part of `flow()`: email, wait, branch, admins, SMS.
fn runnable() -> Json {
    let mut doc = flow();
    let steps = doc["steps"].as_array_mut().unwrap();
    steps.truncate(4);
    steps[2].as_object_mut().unwrap().remove("else");
    doc
}

fn with(pointer: &str, value: Json) -> Json {
    let mut doc = flow();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match doc.pointer_mut(parent).unwrap() {
        Json::Object(o) => drop(o.insert(key.to_owned(), value)),
        other => *other.get_mut(key.parse::<usize>().unwrap()).unwrap() = value,
    }
    doc
}

async fn sql_problems(db: &TestDb, doc: &Json) -> Vec<(String, String)> {
    db.client
        .query("SELECT path, message FROM herald_definition_problems($1)", &[doc])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Saves `doc` as automation `name`'s next version; a refusal as its SQLSTATE and detail.
async fn save(db: &TestDb, name: &str, doc: &Json) -> Result<i32, (String, String)> {
    db.client
        .query_one("SELECT herald_save_automation($1, $2)", &[&name, doc])
        .await
        .map(|r| r.get(0))
        .map_err(|e| match e.as_db_error() {
            Some(d) => (d.code().code().to_owned(), d.detail().unwrap_or_default().to_owned()),
            None => (String::new(), e.to_string()),
        })
}

fn rust_paths(doc: &Json) -> Vec<String> {
    match definition::parse(doc) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.into_iter().map(|p| p.path).collect(),
    }
}

#[tokio::test]
async fn a_sound_definition_passes_both_checks() {
    let db = db().await;
    assert_eq!(sql_problems(&db, &flow()).await, vec![]);
    assert_eq!(rust_paths(&flow()), Vec::<String>::new());
}

#[tokio::test]
async fn mistakes_of_shape_are_refused_by_sql_and_by_herald_at_the_same_path() {
    let db = db().await;
    let cases: Vec<(Json, &str, &str)> = vec![
        (
            with("/steps/1/id", json!("confirm")),
            "steps[1].id",
            "`confirm` is the id of an earlier step",
        ),
        (
            with("/steps/2/then/0/id", json!("remind")),
            "steps[3].id",
            "`remind` is the id of an earlier step",
        ),
        (with("/steps/0/id", json!("a b")), "steps[0].id", "letters, digits"),
        (
            with("/steps/0/type", json!("send_fax")),
            "steps[0].type",
            "unknown step type `send_fax`",
        ),
        (with("/steps/0/to", json!(5)), "steps[0].to", "is text"),
        (with("/steps/0/colour", json!("red")), "steps[0].colour", "unknown key"),
        (
            with("/steps/1/until/offset", json!("a day")),
            "steps[1].until.offset",
            "`a day` is not a span",
        ),
        (
            with("/steps/1/until/at", json!("6pm")),
            "steps[1].until.at",
            "local time of day",
        ),
        (
            with("/steps/1/until/timezone", json!("Mars/Base")),
            "steps[1].until.timezone",
            "`Mars/Base` is not a time zone",
        ),
        (
            with("/steps/2/if/all/0/op", json!("~")),
            "steps[2].if.all[0].op",
            "unknown operator `~`",
        ),
        (
            with("/steps/2/if/all/0/value", Json::Null),
            "steps[2].if.all[0].value",
            "by `is null`",
        ),
        (
            with("/steps/2/if/all/3/value", json!(100)),
            "steps[2].if.all[3].value",
            "`in` takes a list",
        ),
        (
            with("/steps/2/if/all/1/value", json!({"now": "soon"})),
            "steps[2].if.all[1].value",
            "`soon` is not a span",
        ),
        (
            with("/steps/2/if", json!({"every": []})),
            "steps[2].if",
            "unknown condition with keys every",
        ),
        (
            with("/steps/2/then/0/type", json!("nope")),
            "steps[2].then[0].type",
            "unknown step type",
        ),
        (
            with("/steps/3/on_error", json!("ignore")),
            "steps[3].on_error",
            "\"stop\", \"continue\"",
        ),
        (
            with("/steps/4/on_error/retry/times", json!(50)),
            "steps[4].on_error.retry.times",
            "from 1 to 10",
        ),
        (
            with("/steps/3/on_unknown", json!("retry")),
            "steps[3].on_unknown",
            "\"hold\" or \"resend\"",
        ),
        (
            with("/steps/1/on_unknown", json!("hold")),
            "steps[1].on_unknown",
            "unknown key",
        ),
        (
            with("/steps/4/url", json!("http://hooks.example.com")),
            "steps[4].url",
            "https://",
        ),
        (with("/steps/5/set", json!({})), "steps[5].set", "at least one column"),
        (
            with("/steps/6/due", json!("-1 day")),
            "steps[6].due",
            "span after the step runs",
        ),
        (
            with("/trigger/type", json!("cron")),
            "trigger.type",
            "unknown trigger type `cron`",
        ),
        (with("/timezone", json!("Mars/Base")), "timezone", "not a time zone"),
        // Regions: ISO 3166 codes in capitals that the phone metadata knows.
        (with("/region", json!("gb")), "region", "`gb` is not a region"),
        (with("/region", json!("UK")), "region", "`UK` is not a region"),
        (with("/region", json!(44)), "region", "is a region code"),
        (
            with("/steps/3/region", json!("XX")),
            "steps[3].region",
            "`XX` is not a region",
        ),
        (
            with("/steps/3/region", json!({"column": "country"})),
            "steps[3].region",
            "a region is a code (\"US\") or {\"field\": ...}",
        ),
        (
            with("/steps/3/region", json!({"field": "country", "else": "US"})),
            "steps[3].region",
            "a region is a code (\"US\") or {\"field\": ...}",
        ),
        (
            with("/steps/3/region", json!(true)),
            "steps[3].region",
            "a region is a code",
        ),
        (
            with("/steps/3/region", json!({"field": 5})),
            "steps[3].region.field",
            "a field is text",
        ),
        (with("/exit/0/reason", json!("")), "exit[0].reason", "is empty"),
        (with("/admins", json!({})), "admins", "notify_admin steps need"),
        (with("/colour", json!("red")), "colour", "unknown key"),
        (with("/steps", json!("all of them")), "steps", "a list of steps"),
        // What Herald's reader refuses is refused at save, with the same words where both
        // can say it: a trigger's keys, the longest wait, templates that cannot compile.
        (
            with("/trigger/colour", json!("red")),
            "trigger.colour",
            "unknown key; expected type, table, column, to, from",
        ),
        (
            with("/trigger/to", json!(["confirmed", 3])),
            "trigger.to",
            "is a list of text",
        ),
        (
            with(
                "/steps/1",
                json!({"id": "night-before", "type": "wait", "for": "500 days"}),
            ),
            "steps[1].for",
            "`500 days` is longer than the longest wait, 400 days",
        ),
        (
            with(
                "/steps/1",
                json!({"id": "night-before", "type": "wait", "for": "14 months"}),
            ),
            "steps[1].for",
            "`14 months` is longer than the longest wait, 400 days",
        ),
        (
            with("/steps/0/text", json!("See you, {{ name")),
            "steps[0].text",
            "the template does not compile",
        ),
        (
            with("/steps/3/body", json!("{% if vip %}VIP! Tomorrow")),
            "steps[3].body",
            "the template does not compile",
        ),
        (
            with("/steps/5/set/reminded", json!("{{ true }")),
            "steps[5].set.reminded",
            "the template does not compile",
        ),
        (
            with("/steps/2/else/0/key", json!("{{ id }}")),
            "steps[2].else[0].table",
            "is required",
        ),
    ];
    for (doc, path, part) in cases {
        let sql = sql_problems(&db, &doc).await;
        assert!(
            sql.iter().any(|(p, m)| p == path && m.contains(part)),
            "SQL: want {path}: …{part}…, got {sql:?}"
        );
        assert_eq!(sql.len(), 1, "one mistake, one problem: {sql:?}");
        assert_eq!(rust_paths(&doc), vec![path.to_owned()], "Herald's reader, for {path}");
    }
}

#[tokio::test]
async fn a_filters_literal_arguments_are_refused_by_sql_and_by_herald_in_the_same_words() {
    let db = db().await;
    let cases: Vec<(Json, &str, &str)> = vec![
        (
            with("/steps/0/text", json!("Total {{ total | money(\"EURO\") }}")),
            "steps[0].text",
            "`| money`: `EURO` is not a currency code such as \"EUR\" (three capital letters)",
        ),
        (
            with("/steps/0/subject", json!("{{ total | money() }}")),
            "steps[0].subject",
            "`| money`: needs a currency code, as in money(\"EUR\")",
        ),
        (
            with("/steps/3/body", json!("{{ total | number(11) }}")),
            "steps[3].body",
            "`| number`: 11 decimals; from 0 to 10",
        ),
        (
            with("/steps/3/body", json!("{{ starts_at | datetime('%a (%K)', tz=tz) }}")),
            "steps[3].body",
            "`| datetime`: `%a (%K)` is not a strftime format such as \"%a %-d %b %Y\"",
        ),
        (
            with(
                "/steps/2/then/0/text",
                json!("{{ starts_at | relative(tz='Mars/Base') }}"),
            ),
            "steps[2].then[0].text",
            "`| relative`: `Mars/Base` is not a time zone name such as \"Europe/London\"",
        ),
        (
            with(
                "/steps/5/set/reminded",
                json!("{{ starts_at | date('%d', tz=\"Europe/Lndon\") }}"),
            ),
            "steps[5].set.reminded",
            "`| date`: `Europe/Lndon` is not a time zone name such as \"Europe/London\"",
        ),
    ];
    for (doc, path, message) in cases {
        let sql = sql_problems(&db, &doc).await;
        assert_eq!(sql, vec![(path.to_owned(), message.to_owned())], "SQL");
        let rust: Vec<(String, String)> = definition::parse(&doc)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect();
        assert_eq!(rust, sql, "Herald's reader");
    }
    // Arguments from variables, and formats and zones that exist, pass both.
    let fine = with(
        "/steps/0/text",
        json!("{{ starts_at | datetime(\"%a %-d %b, %H:%M (%Z)\", tz=\"America/New_York\") }} {{ total | money(currency) }} {{ total | number(2) }} {{ starts_at | relative('%-I:%M %p') }}"),
    );
    assert_eq!(sql_problems(&db, &fine).await, vec![]);
    assert_eq!(rust_paths(&fine), Vec::<String>::new());
}

#[tokio::test]
async fn references_to_the_data_are_checked_against_the_table() {
    let db = db().await;
    let cases: Vec<(Json, &str, &str)> = vec![
        (
            with("/trigger/table", json!("public.bokings")),
            "trigger.table",
            "no table `public.bokings`",
        ),
        (
            with("/trigger/column", json!("state")),
            "trigger.column",
            "has no column `state`",
        ),
        (
            with("/exit/0/if/field", json!("statuss")),
            "exit[0].if.field",
            "the data has no column `statuss`",
        ),
        (
            with("/steps/2/if/all/0/value", json!("yes")),
            "steps[2].if.all[0].value",
            "`vip` holds true/false, so it cannot be compared with text",
        ),
        (
            with("/steps/2/if/all/3/value", json!(["a", "b"])),
            "steps[2].if.all[3].value",
            "`total` holds number, so it cannot be compared with text",
        ),
        (
            with("/steps/2/if/all/1/value", json!(3)),
            "steps[2].if.all[1].value",
            "`starts_at` holds a time, so it cannot be compared with a number",
        ),
        (
            with("/steps/2/if/all/2/field", json!("total")),
            "steps[2].if.all[2].op",
            "`total` holds number; `contains` looks in a list or in text",
        ),
        (
            with("/steps/1/until/field", json!("vip")),
            "steps[1].until.field",
            "`vip` holds bool, not a time",
        ),
        (
            with("/steps/1/until/field", json!("ends_at")),
            "steps[1].until.field",
            "the data has no column `ends_at`",
        ),
        (
            with("/steps/5/table", json!("public.nowhere")),
            "steps[5].table",
            "no table `public.nowhere`",
        ),
        (
            with("/steps/3/region/field", json!("land")),
            "steps[3].region.field",
            "the data has no column `land`",
        ),
        (
            with("/steps/3/region/field", json!("total")),
            "steps[3].region.field",
            "`total` holds number, not a region code",
        ),
    ];
    for (doc, path, part) in cases {
        let sql = sql_problems(&db, &doc).await;
        assert!(
            sql.iter().any(|(p, m)| p == path && m.contains(part)),
            "want {path}: …{part}…, got {sql:?}"
        );
        assert_eq!(sql.len(), 1, "{sql:?}");
    }
    // Event fields, earlier steps' outputs and a manual start's payload are not columns.
    let doc = with(
        "/exit/0/if",
        json!({"all": [{"field": "herald.new_status", "op": "=", "value": "x"},
                       {"field": "steps.review.ticket", "op": "=", "value": 1},
                       {"field": "payload.source", "op": "=", "value": "app"}]}),
    );
    assert_eq!(sql_problems(&db, &doc).await, vec![]);
}

#[tokio::test]
async fn saving_refuses_a_definition_with_every_mistake_and_versions_a_sound_one() {
    let db = db().await;
    db.exec("INSERT INTO automations (name, source_table) VALUES ('reminders', 'bookings')")
        .await;
    let bad = json!({"trigger": {"type": "status_change", "table": "bookings"}, "steps": [
        {"id": "a", "type": "wait", "for": "forever"},
        {"id": "a", "type": "send_sms", "to": "{{ phone }}"}
    ]});
    let err = db
        .client
        .query_one("SELECT herald_save_automation('reminders', $1)", &[&bad])
        .await
        .unwrap_err();
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(db_err.code().code(), "22023");
    assert_eq!(
        db_err.message(),
        "automation reminders refused: 3 mistake(s) in its definition"
    );
    assert_eq!(
        db_err.detail(),
        Some(
            "steps[0].for: `forever` is not a span such as \"2 hours\" or \"-1 day\"\n\
             steps[1].body: is required\n\
             steps[1].id: `a` is the id of an earlier step; step ids are unique"
        )
    );
    let versions: i64 = db.scalar("SELECT count(*) FROM automation_versions").await;
    assert_eq!(versions, 0, "nothing saved");

    // Every step type of the language runs: the whole flow saves.
    let v: i32 = db
        .client
        .query_one("SELECT herald_save_automation('reminders', $1)", &[&flow()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);

    // Saving the document that runs again changes nothing.
    for want in [2, 2] {
        let v: i32 = db
            .client
            .query_one("SELECT herald_save_automation('reminders', $1)", &[&runnable()])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, want);
    }
    let row = db
        .client
        .query_one(
            "SELECT a.version, v.definition, v.checksum FROM automations a
             JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version WHERE a.name = 'reminders'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), Some(2));
    assert_eq!(row.get::<_, Json>(1), runnable());
    let checksum: String = row.get(2);
    assert!(
        checksum.starts_with("sha256:") && checksum.len() == 7 + 64,
        "{checksum}"
    );
}

#[tokio::test]
async fn saving_refuses_a_status_column_the_capture_does_not_watch() {
    let db = db().await;
    db.exec(
        "SELECT herald_attach('public.bookings', 'status', 'id');
         INSERT INTO automations (name, source_table) VALUES ('reminders', 'bookings')",
    )
    .await;
    let mut doc = runnable();
    doc["trigger"] = json!({"type": "status_change", "table": "bookings", "column": "vip", "to": ["a", "b"]});
    let (_, detail) = save(&db, "reminders", &doc).await.unwrap_err();
    assert!(!detail.contains("trigger.to"), "several statuses are fine: {detail}");
    assert!(
        detail.contains("trigger.column: public.bookings is attached with status column `status`"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_status_change_trigger_without_a_column_watches_the_attached_one() {
    let db = db().await;
    db.exec(
        "CREATE SCHEMA petcare;
         CREATE TABLE petcare.bookings (id bigint PRIMARY KEY, state text, phone text);
         SELECT herald_attach('petcare.bookings', 'state', 'id');
         INSERT INTO automations (name, source_schema, source_table) VALUES ('confirmed', 'petcare', 'bookings');",
    )
    .await;
    let doc = json!({"trigger": {"type": "status_change", "table": "petcare.bookings", "to": "confirmed"},
                     "steps": [{"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": "Booked"}]});
    let v = save(&db, "confirmed", &doc)
        .await
        .expect("saved: the trigger watches `state`, the column the table is attached with");
    assert_eq!(v, 1);
    db.exec(
        "INSERT INTO petcare.bookings VALUES (1, 'requested', '+14155550100');
         UPDATE petcare.bookings SET state = 'confirmed' WHERE id = 1;",
    )
    .await;
    assert_eq!(db.ingest().await, 1, "the change of `state` is captured");
    // Naming another column is still refused, with the one the capture watches.
    let mut other = doc.clone();
    other["trigger"]["column"] = json!("phone");
    let (_, detail) = save(&db, "confirmed", &other).await.unwrap_err();
    assert!(detail.contains("attached with status column `state`"), "{detail}");
}

/// Every JSON and YAML example in the README and docs/: whole definitions, and the triggers, steps,
/// conditions and waits written inline, each made into a definition.
fn documented_definitions() -> Vec<(String, Json)> {
    let mut pages = vec![("README.md".to_owned(), herald_tests::repo_file("README.md"))];
    if let Ok(dir) = std::fs::read_dir(herald_tests::repo_root().join("docs")) {
        for entry in dir.flatten() {
            let name = format!("docs/{}", entry.file_name().to_string_lossy());
            if name.ends_with(".md") {
                pages.push((name.clone(), herald_tests::repo_file(&name)));
            }
        }
    }
    let around = |trigger: Json, steps: Json| json!({"trigger": trigger, "admins": {"emails": ["owner@example.com"]}, "steps": steps});
    let bookings = json!({"type": "status_change", "table": "public.bookings", "to": "confirmed"});
    let mut found = Vec::new();
    for (page, text) in pages {
        // Documents saved with herald_save_automation, and ```json blocks.
        let saved = text.split("herald_save_automation('").skip(1).filter_map(|s| {
            let body = s.split_once("$${")?.1.split_once("}$$")?.0;
            Some(format!("{{{body}}}"))
        });
        let blocks = text
            .split("```json")
            .skip(1)
            .filter_map(|s| s.split_once("```").map(|b| b.0.to_owned()));
        // Definition files, ```yaml blocks (a file's `name` is not part of its document).
        for source in text
            .split("```yaml")
            .skip(1)
            .filter_map(|s| s.split_once("```").map(|b| b.0))
        {
            let Ok(Json::Object(mut doc)) = serde_saphyr::from_str::<Json>(source) else {
                panic!("{page}: a ```yaml block that is not a document:{source}");
            };
            doc.remove("name");
            if doc.contains_key("steps") {
                found.push((
                    format!("{page}: {}", &source[..source.len().min(60)]),
                    Json::Object(doc),
                ));
            }
        }
        for source in saved.chain(blocks) {
            if let Ok(doc) = serde_json::from_str::<Json>(&source) {
                if doc.get("steps").is_some() {
                    found.push((format!("{page}: {}", &source[..source.len().min(60)]), doc));
                }
            }
        }
        // Inline examples in backticks (they may wrap over lines).
        for span in text.split('`').skip(1).step_by(2) {
            let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
            let Ok(Json::Object(o)) = serde_json::from_str::<Json>(&span) else {
                continue;
            };
            let kind = o.get("type").and_then(Json::as_str);
            let doc = if o.contains_key("id") && kind.is_some() {
                around(bookings.clone(), json!([o]))
            } else if kind.is_some() {
                around(
                    Json::Object(o),
                    json!([{"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"}]),
                )
            } else if o.contains_key("for") || o.contains_key("until") {
                let mut wait = o.clone();
                wait.insert("id".into(), json!("wait"));
                wait.insert("type".into(), json!("wait"));
                around(bookings.clone(), json!([wait]))
            } else if ["field", "all", "any", "not"].iter().any(|k| o.contains_key(*k))
                && o.contains_key("op") != o.contains_key("all")
            {
                around(
                    bookings.clone(),
                    json!([{"id": "b", "type": "branch", "if": o, "then": []}]),
                )
            } else if !o.is_empty()
                && o.keys()
                    .all(|k| ["title", "assignee", "due", "notes"].contains(&k.as_str()))
            {
                let mut task = o.clone();
                task.insert("id".into(), json!("task"));
                task.insert("type".into(), json!("create_task"));
                around(bookings.clone(), json!([task]))
            } else {
                continue; // outputs and values, not definitions
            };
            found.push((format!("{page}: `{span}`"), doc));
        }
    }
    found
}

#[tokio::test]
async fn every_documented_example_saves_and_is_read_back_by_herald() {
    let db = db().await;
    // The tables and columns the examples name. `bookings` is attached with `state`, as in
    // the README's own example, and keeps a `status` column too for the examples that read it.
    db.exec(
        "ALTER TABLE bookings ADD COLUMN state text, ADD COLUMN room text, ADD COLUMN visits integer,
                              ADD COLUMN renews_at timestamptz, ADD COLUMN tz text, ADD COLUMN member_id bigint;
         CREATE TABLE members (id bigint PRIMARY KEY, status text, plan text, renews_at timestamptz, tz text, phone text);
         SELECT herald_attach('public.bookings', 'state', 'id');
         SELECT herald_attach('public.members', 'status', 'id');
         CREATE VIEW paying_members AS SELECT * FROM members WHERE plan = 'paid';
         CREATE TABLE member_stats (id bigint PRIMARY KEY, visits integer);
         INSERT INTO automations (name, source_table) VALUES ('example', 'bookings');",
    )
    .await;
    // And the jobs of the example schema, which the example definition file reads.
    db.exec(&herald_tests::repo_file("db/examples/jobs.sql")).await;
    let examples = documented_definitions();
    assert!(
        examples.len() >= 13,
        "the docs' examples were found: {}",
        examples.len()
    );
    for (name, doc) in examples {
        if let Err((code, detail)) = save(&db, "example", &doc).await {
            panic!("{name}: refused at save: {code} {detail}\n{doc:#}");
        }
        let stored: Json = db
            .client
            .query_one(
                "SELECT definition FROM automation_versions v JOIN automations a ON a.id = v.automation_id
                 WHERE a.name = 'example' AND v.version = a.version",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if let Err(problems) = definition::parse(&stored) {
            panic!("{name}: saved, but Herald cannot read it: {problems:?}");
        }
    }
}

#[tokio::test]
async fn every_shape_herald_reads_is_saved_and_every_refusal_is_refused_by_both() {
    let db = db().await;
    db.exec(
        "CREATE TABLE members (id bigint PRIMARY KEY, email text);
         SELECT herald_attach('public.bookings', 'status', 'id');
         INSERT INTO automations (name, source_table) VALUES ('shapes', 'bookings');",
    )
    .await;
    let sms = json!({"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"});
    let trigger = json!({"type": "status_change", "table": "public.bookings", "to": "confirmed"});
    let doc = |trigger: Json, steps: Json| json!({"trigger": trigger, "admins": {"phones": ["+14155550199"]}, "steps": steps});
    let triggers = [
        json!({"type": "status_change", "table": "bookings", "column": "status", "from": ["new", "held"], "to": "confirmed"}),
        json!({"type": "insert", "table": "public.bookings"}),
        json!({"type": "insert", "table": "public.bookings", "to": "trial"}),
        json!({"type": "insert", "table": "public.bookings", "to": ["trial", "paid"]}),
        json!({"type": "update", "table": "public.bookings", "columns": ["starts_at"]}),
        json!({"type": "delete", "table": "public.bookings"}),
        json!({"type": "tag_added", "tag": "vip"}),
        json!({"type": "tag_removed", "tag": "vip"}),
        json!({"type": "segment_joined", "segment": "trial"}),
        json!({"type": "segment_left", "segment": "trial"}),
        json!({"type": "manual"}),
        json!({"type": "date", "table": "public.bookings", "column": "starts_at"}),
        json!({"type": "date", "table": "bookings", "column": "starts_at", "offset": "-1 day", "at": "18:00",
               "timezone": "Europe/London", "lateness": "30 minutes"}),
        json!({"type": "date", "table": "bookings", "column": "starts_at", "offset": "P1W", "timezone": {"field": "status"}}),
        json!({"type": "schedule", "cron": "0 9 * * MON"}),
        json!({"type": "schedule", "cron": "*/15 8-18 * JAN-MAR 1-5", "timezone": "Europe/London", "lateness": "10 minutes",
               "audience": {"relation": "public.bookings"}}),
        json!({"type": "schedule", "cron": "0 0 L * *", "audience": {"relation": "members", "key": "id"}}),
        json!({"type": "schedule", "cron": "0 9 15W * *"}),
        json!({"type": "schedule", "cron": "0 9 * * 5L"}),
        json!({"type": "schedule", "cron": "0 9 * * MON#2"}),
        json!({"type": "schedule", "cron": "0 0 31 4-8 *"}),
        json!({"type": "schedule", "cron": "0 0 29 2 *"}),
    ];
    let steps = [
        json!({"id": "e", "type": "send_email", "from": "desk@example.com", "to": "{{ email }}", "subject": "S", "html": "<p>{{ name }}</p>", "on_unknown": "resend"}),
        json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{% if vip %}VIP {% endif %}{{ name }}", "on_error": "continue"}),
        json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "B", "region": "DE"}),
        json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "B", "region": {"field": "country"}}),
        json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "B", "region": {"field": ["country"]}}),
        json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "B", "region": {"field": "payload.country"}}),
        json!({"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ starts_at | datetime(\"%a %d %b, %H:%M (%Z)\", tz=\"Asia/Kolkata\") }} {{ starts_at | relative(tz=tz) }} {{ 12.5 | money(\"CHF\") }} {{ 2 | number(2) }}"}),
        json!({"id": "w", "type": "wait", "for": "400 days"}),
        json!({"id": "w", "type": "wait", "for": "PT2H"}),
        json!({"id": "w", "type": "wait", "until": {"field": "starts_at", "offset": "-1 day", "at": "18:00", "timezone": "Europe/London"}}),
        json!({"id": "b", "type": "branch", "if": {"not": {"field": "vip", "op": "is null"}}, "then": [sms.clone()], "else": []}),
        json!({"id": "u", "type": "update_field", "set": {"reminded": "{{ true }}"}}),
        json!({"id": "t", "type": "add_tag", "tag": "vip"}),
        json!({"id": "t", "type": "add_tag", "tag": "payer", "table": "public.members", "key": "{{ id }}"}),
        json!({"id": "t", "type": "remove_from_segment", "segment": "trial", "table": "members", "key": "{{ id }}"}),
        json!({"id": "h", "type": "webhook", "url": "https://x.example.com/{{ id }}", "body": "{}", "secret": "s", "timeout": "15 seconds"}),
        json!({"id": "k", "type": "create_task", "title": "Call {{ name }}", "assignee": "sam", "due": "2 days", "notes": "n"}),
        json!({"id": "n", "type": "notify_admin", "subject": "S", "text": "T", "on_unknown": "resend"}),
    ];
    let regional = json!({"trigger": trigger, "region": "NZ", "admins": {"phones": ["021 123 4567"]}, "steps": [sms]});
    let accepted = triggers
        .iter()
        .map(|t| doc(t.clone(), json!([sms])))
        .chain(steps.iter().map(|s| doc(trigger.clone(), json!([s]))))
        .chain([regional]);
    for d in accepted {
        let saved = save(&db, "shapes", &d).await;
        assert!(saved.is_ok(), "saved: {d}: {saved:?}");
        assert!(
            definition::parse(&d).is_ok(),
            "read by Herald: {d}: {:?}",
            definition::parse(&d).err()
        );
    }
    let refused = [
        doc(
            json!({"type": "insert", "table": "public.bookings", "from": "x"}),
            json!([sms]),
        ),
        doc(
            json!({"type": "delete", "table": "public.bookings", "to": "x"}),
            json!([sms]),
        ),
        doc(json!({"type": "manual", "table": "public.bookings"}), json!([sms])),
        doc(json!({"type": "date", "table": "public.bookings"}), json!([sms])),
        doc(
            json!({"type": "date", "table": "bookings", "column": "starts_at", "offset": "a week"}),
            json!([sms]),
        ),
        doc(
            json!({"type": "date", "table": "bookings", "column": "starts_at", "at": "6pm"}),
            json!([sms]),
        ),
        doc(
            json!({"type": "date", "table": "bookings", "column": "starts_at", "lateness": "-1 hour"}),
            json!([sms]),
        ),
        doc(
            json!({"type": "date", "table": "bookings", "column": "starts_at", "timezone": "Mars/Base"}),
            json!([sms]),
        ),
        doc(
            json!({"type": "date", "table": "bookings", "column": "starts_at", "every": "day"}),
            json!([sms]),
        ),
        doc(json!({"type": "schedule"}), json!([sms])),
        doc(json!({"type": "schedule", "cron": "61 * * * *"}), json!([sms])),
        doc(json!({"type": "schedule", "cron": "0 25 * * *"}), json!([sms])),
        doc(json!({"type": "schedule", "cron": "0 0 30 2 *"}), json!([sms])),
        doc(
            json!({"type": "schedule", "cron": "0 0 31 APR,JUN,SEP *"}),
            json!([sms]),
        ),
        doc(json!({"type": "schedule", "cron": "* * *"}), json!([sms])),
        doc(json!({"type": "schedule", "cron": "0 0 0 * * *"}), json!([sms])),
        doc(
            json!({"type": "schedule", "cron": "0 9 * * MON", "timezone": "Mars/Base"}),
            json!([sms]),
        ),
        doc(
            json!({"type": "schedule", "cron": "0 9 * * MON", "audience": {"relation": "public.bookings", "colour": 1}}),
            json!([sms]),
        ),
        doc(
            json!({"type": "schedule", "cron": "0 9 * * MON", "table": "public.bookings"}),
            json!([sms]),
        ),
        doc(json!({"type": "tag_added", "tag": "vip", "segment": "x"}), json!([sms])),
        doc(trigger.clone(), json!([{"id": "w", "type": "wait", "for": "401 days"}])),
        doc(trigger.clone(), json!([{"id": "w", "type": "wait", "for": "2 years"}])),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone", "body": "x"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{% for x in y %}"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{# note"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "h", "type": "webhook", "url": "https://x.example.com", "body": "{}", "secret": "s", "timeout": "16 seconds"}]),
        ),
        // Filters' literal arguments that no render could take.
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ 5 | money('EURO') }}"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ 5 | number(11) }}"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ starts_at | date(\"%d %K\") }}"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "{{ starts_at | time(tz='Mars/Base') }}"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "t", "type": "add_tag", "tag": "x", "table": "public.members"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "t", "type": "add_tag", "tag": "x", "key": "{{ id }}"}]),
        ),
        json!({"trigger": trigger, "region": "nz", "steps": [sms]}),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "x", "region": "Deutschland"}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "x", "region": {"column": "country"}}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "e", "type": "send_email", "to": "{{ email }}", "subject": "x", "text": "x", "region": "DE"}]),
        ),
        // Keys the shape (herald_definition_shape) does not list, wherever they are.
        json!({"trigger": trigger, "admins": {"phones": ["+14155550199"], "sms": ["+14155550199"]}, "steps": [sms]}),
        json!({"trigger": trigger, "exit": [{"if": {"field": "status", "op": "=", "value": "x"}, "reason": "r", "colour": 1}], "steps": [sms]}),
        doc(
            trigger.clone(),
            json!([{"id": "s", "type": "send_sms", "to": "{{ phone }}", "body": "x", "on_error": {"retry": {"times": 2, "jitter": true}}}]),
        ),
        doc(
            trigger.clone(),
            json!([{"id": "w", "type": "wait", "for": "1 hour", "on_unknown": "hold"}]),
        ),
    ];
    for d in refused {
        let saved = save(&db, "shapes", &d).await;
        let code = saved.as_ref().err().map(|(code, _)| code.as_str());
        assert_eq!(code, Some("22023"), "refused at save: {d}: {saved:?}");
        assert!(definition::parse(&d).is_err(), "refused by Herald: {d}");
    }
}

#[tokio::test]
async fn conditions_are_checked_against_the_automations_context_relation() {
    let db = db().await;
    db.exec(
        "CREATE VIEW booking_details AS SELECT id AS booking_id, status, starts_at, 'gold'::text AS tier FROM bookings;
         INSERT INTO automations (name, source_table) VALUES ('details', 'bookings')",
    )
    .await;
    let mut doc = json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "data": {"relation": "public.booking_details", "key": "booking_id"},
        "exit": [{"if": {"field": "tier", "op": "=", "value": "lead"}, "reason": "downgraded"}],
        "steps": [{"id": "hi", "type": "send_email", "to": "{{ email }}", "subject": "s", "text": "t"}]
    });
    // `tier` is a column of the view the templates read, not of the trigger's table.
    let v: i32 = db
        .client
        .query_one("SELECT herald_save_automation('details', $1)", &[&doc])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    doc["exit"][0]["if"]["field"] = json!("teir");
    let err = db
        .client
        .query_one("SELECT herald_save_automation('details', $1)", &[&doc])
        .await
        .unwrap_err();
    let detail = err
        .as_db_error()
        .and_then(|e| e.detail())
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("exit[0].if.field: the data has no column `teir`"),
        "{detail}"
    );
}

#[tokio::test]
async fn the_column_form_is_saved_as_a_two_step_definition_and_a_document_replaces_it() {
    let db = db().await;
    db.exec(
        "SELECT herald_attach('public.bookings', 'status', 'id');
         INSERT INTO automations (name, source_table, from_status, to_status, email_from, email_to, email_subject,
                                  email_text, email_html, sms_to, sms_body)
         VALUES ('confirmed', 'bookings', 'requested', 'confirmed', 'desk@example.com', '{{ email }}', 'Booked',
                 'See you, {{ name }}', '<p>See you</p>', '{{ phone }}', 'Booked!');
         INSERT INTO automations (name, source_table, to_status, sms_to, sms_body, sms_on_unknown)
         VALUES ('texted', 'bookings', 'cancelled', '{{ phone }}', 'Cancelled', 'resend');",
    )
    .await;
    let definition = |name: &'static str| {
        let db = &db;
        async move {
            let r = db
                .client
                .query_one(
                    "SELECT a.version, v.definition, v.checksum = 'sha256:' || encode(sha256(convert_to(v.definition::text, 'UTF8')), 'hex')
                     FROM automations a JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
                     WHERE a.name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            let (version, doc, checksum_ok): (i32, Json, bool) = (r.get(0), r.get(1), r.get(2));
            assert!(checksum_ok, "{name}: its checksum is of the document as stored");
            (version, doc)
        }
    };
    // Email first, continuing to the SMS when it fails; each channel's unknown-outcome policy,
    // which is `hold` for both unless the row says otherwise, as for a step of a document.
    assert_eq!(
        definition("confirmed").await,
        (
            1,
            json!({
                "trigger": {"type": "status_change", "table": "public.bookings", "from": "requested", "to": "confirmed"},
                "steps": [
                    {"id": "email", "type": "send_email", "from": "desk@example.com", "to": "{{ email }}",
                     "subject": "Booked", "text": "See you, {{ name }}", "html": "<p>See you</p>",
                     "on_unknown": "hold", "on_error": "continue"},
                    {"id": "sms", "type": "send_sms", "to": "{{ phone }}", "body": "Booked!", "on_unknown": "hold"}
                ]
            })
        )
    );
    assert_eq!(
        definition("texted").await.1["steps"],
        json!([{"id": "sms", "type": "send_sms", "to": "{{ phone }}", "body": "Cancelled", "on_unknown": "resend"}])
    );
    // Herald reads what the column form saved.
    let (_, doc) = definition("confirmed").await;
    definition::parse(&doc).expect("the column form's document is one Herald runs");

    // A change of a template is a new version; a change of anything the document does not
    // hold is not.
    db.exec("UPDATE automations SET sms_body = 'Booked: {{ starts_at }}' WHERE name = 'confirmed'")
        .await;
    let (v, doc) = definition("confirmed").await;
    assert_eq!(
        (v, doc["steps"][1]["body"].clone()),
        (2, json!("Booked: {{ starts_at }}"))
    );
    db.exec("UPDATE automations SET suppression_window = '1 minute', max_attempts = 3 WHERE name = 'confirmed'")
        .await;
    assert_eq!(definition("confirmed").await.0, 2);
    // Dropping the SMS leaves one step, which stops the instance when it fails.
    db.exec("UPDATE automations SET sms_to = NULL, sms_body = NULL WHERE name = 'confirmed'")
        .await;
    let (v, doc) = definition("confirmed").await;
    assert_eq!(v, 3);
    assert_eq!(doc["steps"].as_array().unwrap().len(), 1);
    assert_eq!(doc["steps"][0].get("on_error"), None);

    // A document saved replaces the columns, which no longer describe the automation (nor do
    // their unknown-outcome policies: its steps say theirs), and a later change of another
    // column keeps the document.
    let own = json!({
        "trigger": {"type": "status_change", "table": "public.bookings", "to": "confirmed"},
        "steps": [{"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"}]
    });
    let v: i32 = db
        .client
        .query_one("SELECT herald_save_automation('confirmed', $1)", &[&own])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 4);
    let left: i64 = db
        .scalar("SELECT count(*) FROM automations WHERE name = 'confirmed' AND num_nonnulls(email_from, email_to, email_subject, email_text, email_html, sms_to, sms_body, email_on_unknown, sms_on_unknown) > 0")
        .await;
    assert_eq!(left, 0);
    db.exec("UPDATE automations SET to_status = 'confirmed', suppression_window = '0' WHERE name = 'confirmed'")
        .await;
    assert_eq!(definition("confirmed").await, (4, own));

    // An automation with neither columns nor a document captures nothing until it has one.
    db.exec(
        "INSERT INTO automations (name, source_table, to_status) VALUES ('draft', 'bookings', 'draft');
         INSERT INTO bookings (id, status) VALUES (1, 'new');
         UPDATE bookings SET status = 'draft' WHERE id = 1;",
    )
    .await;
    let captured: i64 = db.scalar("SELECT count(*) FROM herald_inbox").await;
    assert_eq!(captured, 0);
}

/// The problems SQL finds in a document, as "path: message".
async fn mistakes(db: &TestDb, doc: &Json) -> Vec<String> {
    db.client
        .query(
            "SELECT path || ': ' || message FROM herald_definition_mistakes($1)",
            &[doc],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_documents_data_and_settings_are_checked_with_their_paths_and_become_the_automations() {
    let db = db().await;
    db.exec("CREATE VIEW booking_details AS SELECT id AS booking_id, b.*, 'gold'::text AS tier FROM bookings b")
        .await;
    let mut doc = runnable();
    let refusals = [
        (
            json!("booking_details"),
            vec!["data: is an object: {\"relation\": ..., \"key\": ...}"],
        ),
        (
            json!({"relation": "booking_detials", "key": "booking_id", "view": 1}),
            vec![
                "data.view: unknown key; expected relation, key",
                "data.relation: no table or view `booking_detials`",
            ],
        ),
        (
            json!({"relation": "booking_details"}),
            vec!["data.key: is required: the column of `data.relation` that holds the subject's key"],
        ),
        (
            json!({"relation": "booking_details", "key": "bookingid"}),
            vec!["data.key: `booking_details` has no column `bookingid`"],
        ),
    ];
    for (data, want) in refusals {
        doc["data"] = data.clone();
        assert_eq!(mistakes(&db, &doc).await, want, "data {data}");
    }
    doc["data"] = json!({"relation": "booking_details", "key": "booking_id"});
    let refusals = [
        (
            json!([]),
            vec!["settings: is an object of suppression_window, max_attempts, retry_base, retry_cap"],
        ),
        (
            json!({"suppression_window": "soon", "retries": 3}),
            vec![
                "settings.retries: unknown key; expected suppression_window, max_attempts, retry_base, retry_cap",
                "settings.suppression_window: `soon` is not a span such as \"2 hours\" or \"-1 day\"",
            ],
        ),
        (
            json!({"suppression_window": "-1 minute", "retry_base": "0s", "max_attempts": 0}),
            vec![
                "settings.suppression_window: cannot be negative",
                "settings.retry_base: must be longer than zero",
                "settings.max_attempts: is a whole number from 1 to 100",
            ],
        ),
        (
            json!({"max_attempts": 2.5}),
            vec!["settings.max_attempts: is a whole number from 1 to 100"],
        ),
    ];
    for (settings, want) in refusals {
        doc["settings"] = settings.clone();
        assert_eq!(mistakes(&db, &doc).await, want, "settings {settings}");
    }
    // A sound document's data and settings are the automation's, and a document without
    // them gives the automation none and the defaults: the document is the whole truth.
    doc["settings"] =
        json!({"suppression_window": "0s", "max_attempts": 3, "retry_base": "10 seconds", "retry_cap": "PT5M"});
    db.exec("INSERT INTO automations (name, source_table) VALUES ('details', 'bookings')")
        .await;
    db.client
        .query_one("SELECT herald_save_automation('details', $1)", &[&doc])
        .await
        .unwrap();
    let row = "SELECT concat_ws(' ', context_relation, context_key_column, suppression_window, max_attempts, retry_base, retry_cap)
               FROM automations WHERE name = 'details'";
    let got: String = db.scalar(row).await;
    assert_eq!(got, "booking_details booking_id 00:00:00 3 00:00:10 00:05:00");
    let plain = runnable();
    db.client
        .query_one("SELECT herald_save_automation('details', $1)", &[&plain])
        .await
        .unwrap();
    let got: String = db.scalar(row).await;
    assert_eq!(got, "00:00:30 5 00:00:30 01:00:00");
}

/// Saves `doc` as `name` based on `base`: its outcome and version, or the SQLSTATE and
/// message it was refused with.
async fn apply(
    db: &tokio_postgres::Client,
    name: &str,
    doc: &Json,
    base: Option<&str>,
) -> Result<(String, i32), (String, String)> {
    db.query_one(
        "SELECT outcome, version FROM herald_apply_automation($1, $2, $3)",
        &[&name, doc, &base],
    )
    .await
    .map(|r| (r.get(0), r.get(1)))
    .map_err(|e| {
        let d = e.as_db_error().unwrap();
        (d.code().code().to_owned(), d.message().to_owned())
    })
}

async fn checksum(db: &TestDb, name: &str) -> Option<String> {
    db.client
        .query_opt(
            "SELECT v.checksum FROM automations a JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
             WHERE a.name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn saving_is_compare_and_set_on_the_checksum_it_was_based_on() {
    let db = db().await;
    let first = runnable();
    // A first save creates the automation, from its trigger's table.
    assert_eq!(
        apply(&db.client, "reminders", &first, None).await,
        Ok(("created".into(), 1))
    );
    let table: String = db
        .scalar("SELECT source_schema || '.' || source_table FROM automations WHERE name = 'reminders'")
        .await;
    assert_eq!(table, "public.bookings");
    let base = checksum(&db, "reminders").await.unwrap();
    // The same document again changes nothing, whatever it says it was based on.
    assert_eq!(
        apply(&db.client, "reminders", &first, None).await,
        Ok(("unchanged".into(), 1))
    );
    // A change based on the version that runs is saved.
    let mut second = first.clone();
    second["steps"][0]["subject"] = json!("Booked!");
    assert_eq!(
        apply(&db.client, "reminders", &second, Some(&base)).await,
        Ok(("saved".into(), 2))
    );
    // A change based on the older version is stale, and changes nothing.
    let mut third = first.clone();
    third["steps"][0]["subject"] = json!("Your booking");
    let (code, message) = apply(&db.client, "reminders", &third, Some(&base)).await.unwrap_err();
    assert_eq!(code, "ZS409");
    assert!(
        message.contains(&format!("it was based on {base}, and version 2")),
        "{message}"
    );
    let versions: i64 = db.scalar("SELECT count(*) FROM automation_versions").await;
    assert_eq!(versions, 2);
    assert_eq!(checksum(&db, "reminders").await, checksum_of(&db, &second).await);
    // A save as new of a name that exists is stale too; and one based on a name that does not.
    assert_eq!(
        apply(&db.client, "reminders", &third, None).await.unwrap_err().0,
        "ZS409"
    );
    assert_eq!(
        apply(&db.client, "nobody", &third, Some(&base)).await.unwrap_err().0,
        "ZS409"
    );
    // A trigger that names no table makes an automation without one.
    let manual = json!({"trigger": {"type": "manual"}, "steps": [{"id": "x", "type": "add_tag", "tag": "t"}]});
    assert_eq!(
        apply(&db.client, "by-hand", &manual, None).await,
        Ok(("created".into(), 1))
    );
    let table: Option<String> = db
        .scalar("SELECT source_table FROM automations WHERE name = 'by-hand'")
        .await;
    assert_eq!(table, None);

    // Two saves racing from the same base: exactly one wins, for a change and for a creation.
    for (name, base) in [("reminders", checksum(&db, "reminders").await), ("fresh", None)] {
        let (a, b) = (db.connect().await, db.connect().await);
        let mut x = second.clone();
        x["steps"][0]["subject"] = json!("from a");
        let mut y = second.clone();
        y["steps"][0]["subject"] = json!("from b");
        let (ra, rb) = tokio::join!(
            apply(&a, name, &x, base.as_deref()),
            apply(&b, name, &y, base.as_deref())
        );
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{name}: {ra:?} {rb:?}");
        let lost = if ra.is_ok() { &rb } else { &ra };
        assert_eq!(lost.as_ref().unwrap_err().0, "ZS409", "{name}");
        let winner = if ra.is_ok() { &x } else { &y };
        assert_eq!(checksum(&db, name).await, checksum_of(&db, winner).await);
    }
}

async fn checksum_of(db: &TestDb, doc: &Json) -> Option<String> {
    Some(
        db.client
            .query_one("SELECT herald_checksum($1)", &[doc])
            .await
            .unwrap()
            .get(0),
    )
}

#[tokio::test]
async fn instances_move_to_another_version_only_where_their_step_exists_in_it() {
    let db = db().await;
    db.exec("SELECT herald_attach('public.bookings', 'status', 'id')").await;
    let v1 = runnable();
    apply(&db.client, "reminders", &v1, None).await.unwrap();
    let base = checksum(&db, "reminders").await;
    // Version 2 renames the wait; version 3 keeps every step id and changes a text.
    let mut v2 = v1.clone();
    v2["steps"][1]["id"] = json!("evening-before");
    apply(&db.client, "reminders", &v2, base.as_deref()).await.unwrap();
    let base = checksum(&db, "reminders").await;
    let mut v3 = v1.clone();
    v3["steps"][0]["subject"] = json!("Booked!");
    apply(&db.client, "reminders", &v3, base.as_deref()).await.unwrap();
    // Instances of version 1: two waiting at the wait, one paused at the branch's step, one
    // running, one done.
    db.exec(
        "INSERT INTO automation_execution_logs (automation_id, subject_schema, subject_table, subject_key_column, subject_id,
                                               event, snapshot, status, run_at, created_at, updated_at, version, next_step, held_from)
         SELECT a.id, 'public', 'bookings', 'id', s.n::text, 'status_change', '{}', s.status, now(), now(), now(), 1, s.step,
                CASE WHEN s.status = 'paused' THEN 'waiting' END
         FROM automations a,
              (VALUES (1, 'waiting', 'night-before'), (2, 'waiting', 'night-before'), (3, 'paused', 'tell-owner'),
                      (4, 'running', 'vip'), (5, 'completed', NULL)) AS s(n, status, step)
         WHERE a.name = 'reminders'",
    )
    .await;
    let moves = |to: i32| {
        let db = &db;
        async move {
            db.client
                .query_one(
                    "SELECT moved, in_flight FROM herald_migrate_instances('reminders', $1)",
                    &[&to],
                )
                .await
                .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
                .map_err(|e| {
                    e.as_db_error()
                        .map(|d| format!("{}\n{}", d.message(), d.detail().unwrap_or("")))
                        .unwrap()
                })
        }
    };
    // Version 2 has no step `night-before`: nothing moves, and the refusal lists who stands there.
    let refused = moves(2).await.unwrap_err();
    assert!(refused.contains("cannot move to version 2"), "{refused}");
    assert!(refused.contains("step `night-before`: 2 instance(s) ("), "{refused}");
    let versions: Vec<String> = db
        .column("SELECT subject_id || ':' || version FROM automation_execution_logs ORDER BY id")
        .await;
    assert_eq!(versions, ["1:1", "2:1", "3:1", "4:1", "5:1"]);
    // Version 3 has every step they stand at (a branch's steps too): the waiting and the
    // paused move; the running one is counted, and the finished one stays.
    assert_eq!(moves(3).await, Ok((3, 1)));
    let versions: Vec<String> = db
        .column("SELECT subject_id || ':' || version FROM automation_execution_logs ORDER BY id")
        .await;
    assert_eq!(versions, ["1:3", "2:3", "3:3", "4:1", "5:1"]);
    assert!(moves(9).await.unwrap_err().contains("has no version 9"));
}
