//! The `herald` command, run as its real binary against a real Postgres (and, where an
//! instance must really send, the functions against moto): every verb, its exit code, and
//! its `--json` parsed back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_tests::{Herald, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What a run of the command left: its exit code, stdout and stderr.
#[derive(Debug)]
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

async fn herald(url: &str, args: &[&str]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("DATABASE_SSLMODE", "disable")
        .output()
        .await
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8(o.stdout).unwrap(),
        err: String::from_utf8(o.stderr).unwrap(),
    }
}

/// A folder of this test's own, emptied first.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const PEOPLE: &str = "CREATE TABLE people (id bigint PRIMARY KEY, status text NOT NULL, email text, first_name text);
                      SELECT herald_attach('public.people', 'status', 'id');";

const WELCOME: &str = "\
trigger:
  type: status_change
  table: people
  to: active
settings:
  suppression_window: 0s
steps:
  - id: hello
    type: send_email
    to: '{{ email }}'
    subject: 'Welcome, {{ first_name }}'
    text: 'Hello {{ first_name }}'
";

#[tokio::test]
async fn validate_reports_every_mistake_of_every_file_with_its_path_and_a_suggestion() {
    let db = TestDb::new().await;
    db.exec(PEOPLE).await;
    let dir = folder("validate");
    write(&dir, "welcome.yaml", WELCOME);
    write(
        &dir,
        "typo.yaml",
        &WELCOME.replace("Hello {{ first_name }}", "Hello {{ frist_name }}"),
    );
    write(
        &dir,
        "bad.json",
        r#"{"trigger": {"type": "status_change", "table": "peeple", "to": "active"},
            "settings": {"max_attempts": 0}, "steps": [{"id": "x", "type": "send_sms"}]}"#,
    );
    write(&dir, "broken.yml", "trigger: [unclosed\n");
    let run = herald(&db.url, &["validate", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 3, "{run:?}");
    let lines: Vec<&str> = run.out.lines().collect();
    let file = |f: &str| dir.join(f).display().to_string();
    assert!(
        lines.contains(&format!("{}: automation `welcome` is valid", file("welcome.yaml")).as_str()),
        "{run:?}"
    );
    assert!(
        lines.contains(
            &format!(
                "{}: steps[0].text: unknown variable \"frist_name\"; did you mean \"first_name\"?",
                file("typo.yaml")
            )
            .as_str()
        ),
        "{run:?}"
    );
    for want in [
        "trigger.table: no table `peeple`",
        "settings.max_attempts: is a whole number from 1 to 100",
        "steps[0].to: is required",
    ] {
        assert!(
            lines.contains(&format!("{}: {want}", file("bad.json")).as_str()),
            "{want}: {run:?}"
        );
    }
    assert!(
        run.out
            .contains(&format!("{}: (document): not YAML", file("broken.yml"))),
        "{run:?}"
    );
    assert!(run.err.contains("mistake(s) in the definitions"), "{run:?}");

    // --json: one entry per file, each problem with its path.
    let run = herald(&db.url, &["validate", "--json", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 3);
    let report = run.json();
    let by_name = |n: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("welcome")["valid"], json!(true));
    assert_eq!(
        by_name("typo")["problems"],
        json!([{"path": "steps[0].text", "message": "unknown variable \"frist_name\"; did you mean \"first_name\"?"}])
    );
    assert!(by_name("bad")["problems"].as_array().unwrap().len() >= 3);
    // Nothing was saved by validating.
    let saved: i64 = db.scalar("SELECT count(*) FROM automations").await;
    assert_eq!(saved, 0);
}

#[tokio::test]
async fn apply_saves_a_folder_all_or_nothing_compare_and_set_and_get_prints_it_back() {
    let db = TestDb::new().await;
    db.exec(PEOPLE).await;
    let dir = folder("apply");
    let welcome = write(&dir, "welcome.yaml", WELCOME);
    write(
        &dir,
        "goodbye.json",
        r#"{"trigger": {"type": "status_change", "table": "people", "to": "gone"},
            "steps": [{"id": "bye", "type": "send_email", "to": "{{ email }}", "subject": "Bye", "text": "Bye"}]}"#,
    );
    let d = dir.to_str().unwrap();
    // A first apply creates both.
    let run = herald(&db.url, &["apply", "--json", d]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let outcomes: Vec<(String, String)> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().into(),
                o["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("goodbye".into(), "created".into()),
            ("welcome".into(), "created".into())
        ]
    );
    // Again: nothing changes, and it says so.
    let run = herald(&db.url, &["apply", d]).await;
    assert_eq!(run.code, 0);
    assert!(
        run.out.contains("automation `welcome`: unchanged, version 1"),
        "{run:?}"
    );
    // get prints the file back; it applies as unchanged.
    let got = herald(&db.url, &["get", "welcome"]).await;
    assert_eq!(got.code, 0, "{got:?}");
    assert!(got.out.starts_with("name: welcome\ntrigger:"), "{got:?}");
    let copy = folder("copy");
    write(&copy, "anything.yaml", &got.out);
    let run = herald(&db.url, &["apply", "--json", copy.to_str().unwrap()]).await;
    assert_eq!(run.json()[0]["outcome"], "unchanged", "{run:?}");
    let got = herald(&db.url, &["get", "--json", "welcome"]).await.json();
    assert_eq!(
        (got["version"].clone(), got["document"]["settings"].clone()),
        (json!(1), json!({"suppression_window": "0s"}))
    );
    let base = got["checksum"].as_str().unwrap().to_owned();

    // diff shows the change, what it is based on, and who stands where.
    std::fs::write(&welcome, WELCOME.replace("Welcome, ", "Hello again, ")).unwrap();
    let run = herald(&db.url, &["diff", "--json", &welcome]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let diff = &run.json()[0];
    assert_eq!(
        (diff["change"].as_str(), diff["base"].as_str()),
        (Some("changed"), Some(base.as_str()))
    );
    let text = diff["diff"].as_str().unwrap();
    assert!(
        text.contains("\n-    subject: \"Welcome, {{ first_name }}\"\n"),
        "{text}"
    );
    assert!(
        text.contains("\n+    subject: \"Hello again, {{ first_name }}\"\n"),
        "{text}"
    );

    // Someone else saves first: a save based on what was read before is stale, and changes nothing.
    let theirs = folder("theirs");
    write(&theirs, "welcome.yaml", &WELCOME.replace("Welcome, ", "Hi, "));
    assert_eq!(herald(&db.url, &["apply", theirs.to_str().unwrap()]).await.code, 0);
    let run = herald(&db.url, &["apply", "--base", &format!("welcome={base}"), &welcome]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.err.contains("is stale") && run.err.contains("nothing was saved"),
        "{run:?}"
    );
    let subject: String = db
        .scalar("SELECT v.definition #>> '{steps,0,subject}' FROM automations a JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version WHERE a.name = 'welcome'")
        .await;
    assert_eq!(subject, "Hi, {{ first_name }}");

    // One file with a mistake: none of the folder is saved.
    write(
        &dir,
        "broken.yaml",
        &WELCOME.replace("first_name }}'\n", "nickname }}'\n"),
    );
    let run = herald(&db.url, &["apply", d]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.out.contains("unknown variable \"nickname\""), "{run:?}");
    let versions: i64 = db.scalar("SELECT count(*) FROM automation_versions").await;
    assert_eq!(versions, 3, "goodbye, welcome and theirs: nothing of this apply");
    let missing = herald(&db.url, &["get", "nobody"]).await;
    assert_eq!(
        (missing.code, missing.err.trim()),
        (5, "herald: no automation is named `nobody`")
    );
}

#[tokio::test]
async fn the_ledger_verbs_show_and_control_real_instances_without_printing_recipients() {
    let h = Herald::new().await;
    let url = h.db.url.clone();
    let email = h.email_of(1);
    h.db.exec(&format!(
        "{PEOPLE}
         INSERT INTO people VALUES (1, 'new', '{email}', 'Ada'), (2, 'new', '{email}', 'Bob');"
    ))
    .await;
    let dir = folder("ledger");
    let file = write(
        &dir,
        "welcome.yaml",
        "trigger: {type: manual}
data: {relation: people, key: id}
steps:
  - {id: hello, type: send_email, to: '{{ email }}', subject: 'Hi {{ first_name }}', text: 'Came from {{ payload.source }}'}
  - {id: check, type: branch, if: {field: first_name, op: '=', value: Ada}, then: [{id: tag, type: add_tag, tag: ada}]}
  - {id: later, type: wait, for: 1 day}
  - {id: again, type: send_email, to: '{{ email }}', subject: 'Still there?', text: 'Hi'}
",
    );
    assert_eq!(herald(&url, &["apply", &file]).await.code, 0);

    // start: an instance for one row, with a payload.
    let run = herald(
        &url,
        &[
            "start",
            "--json",
            "welcome",
            "people",
            "1",
            "--payload",
            r#"{"source": "cli"}"#,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json()["instance"].as_i64().unwrap();
    let bad = herald(&url, &["start", "welcome", "people", "99"]).await;
    assert_eq!(bad.code, 3, "{bad:?}");
    assert_eq!(herald(&url, &["start", "welcome", "nowhere", "1"]).await.code, 5);
    h.tick().await;
    assert!(h.deliver_all().await.is_empty());

    // show: the whole history, the decision with what it read, the recipient masked.
    let run = herald(&url, &["show", "--json", &id.to_string()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let shown = run.json();
    assert_eq!(shown["instance"]["status"], "waiting");
    assert_eq!(shown["instance"]["payload"], json!({"source": "cli"}));
    let steps: Vec<String> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["step"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert!(steps.starts_with(&["hello:done".to_string()]), "{steps:?}");
    assert!(
        steps.contains(&"check:decided".to_string()) && steps.contains(&"tag:done".to_string()),
        "{steps:?}"
    );
    assert!(!run.out.contains(&email), "a recipient printed whole: {}", run.out);
    let text = herald(&url, &["show", &id.to_string()]).await;
    assert!(
        text.out
            .contains(&format!("instance {id} of `welcome` (version 1): waiting")),
        "{text:?}"
    );
    assert!(!text.out.contains(&email), "{}", text.out);
    assert_eq!(herald(&url, &["show", "424242"]).await.code, 5);

    // status and logs.
    let status = herald(&url, &["status", "--json"]).await.json();
    assert_eq!(status[0]["automation"], "welcome");
    assert_eq!(
        (status[0]["waiting"].as_i64(), status[0]["due"].as_i64()),
        (Some(1), Some(0))
    );
    let logs = herald(
        &url,
        &["logs", "--json", "--automation", "welcome", "--status", "waiting"],
    )
    .await
    .json();
    assert_eq!(logs.as_array().unwrap().len(), 1);
    assert_eq!(
        (logs[0]["id"].as_i64(), logs[0]["next_step"].as_str()),
        (Some(id), Some("again"))
    );
    let none = herald(&url, &["logs", "--json", "--subject", "2"]).await.json();
    assert_eq!(none, json!([]));
    let table = herald(&url, &["status"]).await;
    assert!(
        table
            .out
            .lines()
            .any(|l| l.split_whitespace().next() == Some("welcome")),
        "{table:?}"
    );

    // pause and resume, an instance and an automation; retry and cancel.
    let run = herald(&url, &["pause", "--instance", &id.to_string()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(h.db.statuses().await, ["paused"]);
    let run = herald(&url, &["resume", "--json", "--instance", &id.to_string()]).await;
    assert_eq!(run.json(), json!({"instance": id, "done": "resume"}), "{run:?}");
    assert_eq!(h.db.statuses().await, ["waiting"]);
    let run = herald(&url, &["pause", "--json", "welcome"]).await;
    assert_eq!((run.code, run.json()["logs"].as_i64()), (0, Some(1)), "{run:?}");
    let paused = herald(&url, &["status", "--json"]).await.json();
    assert_eq!(
        (paused[0]["state"].as_str(), paused[0]["paused"].as_i64()),
        (Some("paused"), Some(1))
    );
    let run = herald(&url, &["resume", "--json", "welcome"]).await;
    assert_eq!(
        run.json(),
        json!({"automation": "welcome", "done": "resume", "logs": 1}),
        "{run:?}"
    );
    assert_eq!(herald(&url, &["pause", "nobody"]).await.code, 5);
    let run = herald(&url, &["retry", &id.to_string()]).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.err
            .contains(&format!("instance {id} is waiting: there is nothing to retry")),
        "{run:?}"
    );
    let run = herald(&url, &["cancel", "--json", &id.to_string()]).await;
    assert_eq!(
        (run.code, run.json()),
        (0, json!({"instance": id, "done": "cancel"})),
        "{run:?}"
    );
    assert_eq!(h.db.statuses().await, ["cancelled"]);
    assert_eq!(herald(&url, &["cancel", &id.to_string()]).await.code, 5);
    h.db.exec(&format!(
        "UPDATE automation_execution_logs SET status = 'dead', error = 'gave up on {email}' WHERE id = {id}"
    ))
    .await;
    let logs = herald(&url, &["logs", "--status", "dead"]).await;
    assert!(
        logs.out.contains("gave up on") && !logs.out.contains(&email),
        "{logs:?}"
    );
    let run = herald(&url, &["retry", "--json", &id.to_string()]).await;
    assert_eq!(
        (run.code, run.json()),
        (0, json!({"instance": id, "done": "retry"})),
        "{run:?}"
    );
    assert_eq!(h.db.statuses().await, ["pending"]);
}

#[tokio::test]
async fn migrate_instances_moves_them_or_lists_who_cannot_move() {
    let db = TestDb::new().await;
    db.exec(PEOPLE).await;
    let dir = folder("versions");
    let file = write(&dir, "welcome.yaml", WELCOME);
    assert_eq!(herald(&db.url, &["apply", &file]).await.code, 0);
    db.exec(
        "INSERT INTO automation_execution_logs (automation_id, subject_schema, subject_table, subject_key_column, subject_id,
                                               event, snapshot, status, run_at, created_at, updated_at, version, next_step)
         SELECT id, 'public', 'people', 'id', '7', 'status_change', '{}', 'waiting', now(), now(), now(), 1, 'hello'
         FROM automations",
    )
    .await;
    std::fs::write(&file, WELCOME.replace("id: hello", "id: greet")).unwrap();
    assert_eq!(herald(&db.url, &["apply", &file]).await.code, 0);
    let run = herald(&db.url, &["migrate-instances", "welcome", "--to", "2"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.err.contains("step `hello`: 1 instance(s)"), "{run:?}");
    std::fs::write(&file, WELCOME.replace("Hello ", "Hi ")).unwrap();
    assert_eq!(herald(&db.url, &["apply", &file]).await.code, 0);
    let run = herald(&db.url, &["migrate-instances", "--json", "welcome", "--to", "3"]).await;
    assert_eq!((run.code, run.json()["moved"].as_i64()), (0, Some(1)), "{run:?}");
    assert_eq!(
        herald(&db.url, &["migrate-instances", "nobody", "--to", "1"])
            .await
            .code,
        5
    );
}

#[tokio::test]
async fn migrate_brings_an_empty_database_up_to_date_and_then_says_it_is_current() {
    let db = TestDb::empty().await;
    let run = herald(&db.url, &["migrate", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let applied = run.json();
    assert_eq!(
        applied["migrations"].as_array().unwrap().len(),
        herald_db::MIGRATIONS.len()
    );
    let run = herald(&db.url, &["migrate"]).await;
    assert_eq!((run.code, run.out.trim()), (0, "schema is current"));
    // Without a database, the command says how to name one.
    let o = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("status")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("set DATABASE_URL or pass --database-url"));
}

#[tokio::test]
async fn logs_follow_prints_each_change_as_it_happens() {
    let db = TestDb::new().await;
    db.exec(PEOPLE).await;
    db.exec("INSERT INTO people VALUES (1, 'new', 'a@example.com', 'Ada'), (2, 'new', 'b@example.com', 'Bob')")
        .await;
    let dir = folder("follow");
    assert_eq!(
        herald(&db.url, &["apply", &write(&dir, "welcome.yaml", WELCOME)])
            .await
            .code,
        0
    );
    db.exec("UPDATE people SET status = 'active' WHERE id = 1; SELECT herald_ingest();")
        .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["logs", "--follow", "--json", "--interval-ms", "20"])
        .env("DATABASE_URL", &db.url)
        .env("DATABASE_SSLMODE", "disable")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a line within a minute")
            .unwrap()
            .expect("the command still running");
        serde_json::from_str(&line).unwrap()
    };
    // What was there already, then each change as it is made.
    let first = next().await;
    assert_eq!(
        (first["subject_id"].as_str(), first["status"].as_str()),
        (Some("1"), Some("pending"))
    );
    db.exec("UPDATE people SET status = 'active' WHERE id = 2; SELECT herald_ingest();")
        .await;
    let second = next().await;
    assert_eq!(
        (second["subject_id"].as_str(), second["status"].as_str()),
        (Some("2"), Some("pending"))
    );
    db.exec("SELECT herald_cancel(id) FROM automation_execution_logs WHERE subject_id = '1'")
        .await;
    let third = next().await;
    assert_eq!(
        (third["subject_id"].as_str(), third["status"].as_str()),
        (Some("1"), Some("cancelled"))
    );
    child.kill().await.unwrap();
}

/// A section of a page: from its heading to the next heading of that level.
fn section(page: &str, heading: &str) -> String {
    let text = herald_tests::repo_file(page);
    let level = heading.split(' ').next().unwrap();
    text.split(&format!("{heading}\n"))
        .nth(1)
        .and_then(|s| s.split(&format!("\n{level} ")).next())
        .unwrap_or_else(|| panic!("{page} has no {heading}"))
        .to_owned()
}

/// The ```lang blocks of a text.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    text.split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|b| b.0.to_owned()))
        .collect()
}

/// The README's "Your first automation", run as written: its table, its definition file saved
/// with the command, and its change, with this test's recipients; what was sent is what the
/// README says.
#[tokio::test]
async fn the_readmes_first_automation_sends_what_the_readme_says() {
    let h = Herald::new().await;
    let section = section("README.md", "## Your first automation");
    let sql = blocks(&section, "sql");
    assert_eq!(sql.len(), 3, "table, change, the sends query");
    let yaml = blocks(&section, "yaml");
    assert_eq!(yaml.len(), 1, "the definition");
    h.db.exec(&sql[0]).await;
    let dir = folder("readme");
    write(&dir, "booking-confirmed.yaml", &yaml[0]);
    assert!(section.contains("herald apply automations/"));
    let run = herald(&h.db.url, &["apply", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.out
            .starts_with("automation `booking-confirmed`: created, version 1 (sha256:"),
        "{run:?}"
    );
    let change = sql[1]
        .replace("ann@example.com", &h.email_of(1))
        .replace("+14155550101", &h.phone_of(1));
    h.db.exec(&change).await;
    h.tick().await;
    let failures = h.deliver_all().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(h.db.statuses().await, ["completed"]);
    // The sentence of step 5 that quotes them: "Ann's email reads `…` and her SMS `…`".
    let quoted: Vec<String> = section
        .split("Ann's email reads")
        .nth(1)
        .unwrap()
        .split('`')
        .skip(1)
        .step_by(2)
        .take(2)
        .map(|q| q.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let emails = h.moto.emails_from(&h.from).await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].body, quoted[0]);
    let sms = h.moto.sms_to(&h.phone_of(1)).await;
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0].message, quoted[1]);
    let sends: i64 =
        h.db.scalar(&format!(
            "SELECT count(*) FROM ({}) s",
            sql[2].trim().trim_end_matches(';')
        ))
        .await;
    assert_eq!(sends, 2, "the sends query lists both");
}

/// The example definition file the docs print (and the demo applies) is saved by the
/// command and runs to its end: the thank-you email, two days, then the big job's task.
#[tokio::test]
async fn the_documented_definition_file_is_the_example_file_and_runs_to_its_end() {
    let file = "db/examples/automations/job-follow-up.yaml";
    let text = herald_tests::repo_file(file);
    let docs = blocks(&section("docs/definitions.md", "### Definitions as files"), "yaml");
    assert_eq!(docs, [text], "docs/definitions.md prints {file} as it is");
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock_at(std::time::SystemTime::now());
    let path = herald_tests::repo_root().join(file).display().to_string();
    let run = herald(&h.db.url, &["validate", &path]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(herald(&h.db.url, &["apply", &path]).await.code, 0);
    let settings: String = h
        .db
        .scalar("SELECT concat_ws(' ', context_relation, suppression_window, max_attempts) FROM automations WHERE name = 'job-follow-up'")
        .await;
    assert_eq!(settings, "public.job_context 00:10:00 5");
    // Job 1 (1,240.50) is completed: both automations of the example start.
    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    clock.advance(Duration::from_secs(60));
    h.tick().await;
    assert!(h.deliver_all().await.is_empty());
    let emails = h.moto.emails_from(&h.from).await;
    let thanks: Vec<_> = emails.iter().filter(|e| e.subject == "Thank you, Ann Lee").collect();
    assert_eq!(thanks.len(), 1, "{emails:?}");
    assert!(
        thanks[0].body.contains("\"Fix the kitchen sink\" ($1,240.50)"),
        "{}",
        thanks[0].body
    );
    // Two days later, a job over 1,000 is a call to make.
    clock.advance(Duration::from_secs(2 * 86_400 + 60));
    h.tick().await;
    assert!(h.deliver_all().await.is_empty());
    let task: String = h.db.scalar("SELECT title FROM herald_tasks").await;
    assert_eq!(task, "Call Ann Lee about Fix the kitchen sink");
    let status = herald(&h.db.url, &["status", "--json"]).await.json();
    let follow_up = status
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["automation"] == "job-follow-up")
        .unwrap();
    assert_eq!(
        (follow_up["waiting"].as_i64(), follow_up["failed"].as_i64()),
        (Some(0), Some(0))
    );
}
