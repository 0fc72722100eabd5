//! Hostile and broken input, table-driven: each case has one clear outcome. Row data
//! cases end as a ledger row (sent as text, or failed with a reason, the email's failure not
//! stopping the SMS); message cases end as a batch item failure. Nothing panics and nothing
//! else in the batch is affected.

use aws_lambda_events::sqs::SqsMessage;
use herald_tests::Herald;

enum Expect {
    /// Sent, and the email subject is exactly this.
    Sent(&'static str),
    /// The email step failed with an error containing this; the SMS was still sent.
    EmailFailed(&'static str),
    /// The email was sent; the SMS step failed with an error containing this, and so did
    /// the instance.
    SmsFailed(&'static str),
    /// Both steps failed, one with an error containing this; nothing was sent.
    Failed(&'static str),
}

struct Row {
    case: &'static str,
    name: Option<String>,
    email: String,
    phone: String,
    expect: Expect,
}

fn rows(tag: u32) -> Vec<Row> {
    let email = |local: &str| format!("{local}+{tag}@example.com");
    let phone = |n: u32| format!("+1415{}{n:04}", 200 + tag % 800);
    let row = |case, name: &str, email: String, phone: String, expect| Row {
        case,
        name: Some(name.to_owned()),
        email,
        phone,
        expect,
    };
    vec![
        row("plain", "Ann", email("ann"), phone(1), Expect::Sent("Hello Ann")),
        row(
            "SQL-looking value",
            "Robert'); DROP TABLE items;--",
            email("bobby"),
            phone(2),
            Expect::Sent("Hello Robert'); DROP TABLE items;--"),
        ),
        row(
            "template-looking value",
            "{{ 7 * 7 }}{% for x in range(999999999) %}",
            email("tpl"),
            phone(3),
            Expect::Sent("Hello {{ 7 * 7 }}{% for x in range(999999999) %}"),
        ),
        row(
            "markup",
            "<script>alert(1)</script>",
            email("xss"),
            phone(4),
            Expect::Sent("Hello <script>alert(1)</script>"),
        ),
        row(
            "unicode",
            "Zoë 🎉 Ωμέγα",
            email("zoe"),
            phone(5),
            Expect::Sent("Hello Zoë 🎉 Ωμέγα"),
        ),
        row(
            "email without a dot",
            "Cy",
            "cy@localhost".into(),
            phone(6),
            Expect::EmailFailed("the domain has no dot"),
        ),
        row(
            "email with a space",
            "Di",
            "di ana@example.com".into(),
            phone(7),
            Expect::EmailFailed("invalid email address"),
        ),
        row(
            "email local part too long",
            "Ed",
            format!("{}@example.com", "e".repeat(65)),
            phone(8),
            Expect::EmailFailed("too long"),
        ),
        row(
            "header injection in the address",
            "Flo",
            format!("{}\nBcc: victim@example.com", email("flo")),
            phone(9),
            Expect::EmailFailed("invalid email address"),
        ),
        row(
            "email list",
            "Gus",
            "a@example.com,b@example.com".into(),
            phone(10),
            Expect::EmailFailed("invalid email address"),
        ),
        row(
            "phone with spaces, sent in E.164",
            "Hal",
            email("hal"),
            format!("+1 415 {} 0014", 200 + tag % 800),
            Expect::Sent("Hello Hal"),
        ),
        row(
            "phone too short",
            "Ivy",
            email("ivy"),
            "+12345".into(),
            Expect::SmsFailed("too short"),
        ),
        row(
            "phone with letters",
            "Jo",
            email("jo"),
            "+1415CALLNOW".into(),
            Expect::SmsFailed("letters"),
        ),
        row(
            "phone without +",
            "Kit",
            email("kit"),
            "14155550100".into(),
            Expect::SmsFailed("no region is known"),
        ),
        row(
            "control character",
            "Bell\u{7}",
            email("bell"),
            phone(11),
            Expect::Failed("control character U+0007"),
        ),
        Row {
            case: "NULL value",
            name: None,
            email: email("nul"),
            phone: phone(12),
            expect: Expect::Failed("`name` in email_subject is null"),
        },
        row(
            "huge value",
            &"z".repeat(5000),
            email("huge"),
            phone(13),
            Expect::SmsFailed("sms_body rendered to 5003 characters"),
        ),
    ]
}

fn message(id: &str, body: String) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body);
    m
}

#[tokio::test]
async fn hostile_and_broken_input_each_get_their_clear_outcome() {
    // GIVEN one row per case and an automation that emails and texts each of them
    let h = Herald::new().await;
    h.db.exec(
        "CREATE TABLE items (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new', name text, email text, phone text);
         SELECT herald_attach('public.items', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text, sms_to, sms_body)
         VALUES ('hostile', 'items', 'go', '{{ email }}', 'Hello {{ name }}', 'Dear {{ name }}', '{{ phone }}', 'Hi {{ name }}');",
    )
    .await;
    let cases = rows(h.tag);
    for (i, r) in cases.iter().enumerate() {
        h.db.client
            .execute(
                "INSERT INTO items (id, name, email, phone) VALUES ($1, $2, $3, $4)",
                &[&(i as i64 + 1), &r.name, &r.email, &r.phone],
            )
            .await
            .unwrap();
    }
    h.db.exec("UPDATE items SET status = 'go'").await;
    assert_eq!(h.tick().await.sent as usize, cases.len());

    // WHEN the executor gets them, in batches of 10, with hostile messages mixed in
    let hostile_messages = [
        ("malformed JSON", "{\"log_id\": 1,".to_owned()),
        ("not an object", "[1, 1]".to_owned()),
        ("wrong types", "{\"log_id\": \"1\", \"lease\": true}".to_owned()),
        ("fractional id", "{\"log_id\": 1.5, \"lease\": 1}".to_owned()),
        ("negative id", "{\"log_id\": -4, \"lease\": 1}".to_owned()),
        ("lone surrogate", "{\"log_id\": \"\\ud800\", \"lease\": 1}".to_owned()),
        (
            "huge body",
            format!(
                "{{\"log_id\": 99999998, \"lease\": 1, \"pad\": \"{}\"}}",
                "x".repeat(256 * 1024)
            ),
        ),
        ("unknown log", "{\"log_id\": 99999999, \"lease\": 1}".to_owned()),
        (
            "SQL in the id",
            "{\"log_id\": \"1; DROP TABLE automation_execution_logs\", \"lease\": 1}".to_owned(),
        ),
        ("empty", String::new()),
    ];
    let mut failed_ids = Vec::new();
    let mut first = true;
    loop {
        let mut event = h.moto.receive(&h.queue_url, 10).await;
        if event.records.is_empty() {
            break;
        }
        if first {
            for (i, (_, body)) in hostile_messages.iter().enumerate() {
                event.records.insert(
                    i % (event.records.len() + 1),
                    message(&format!("hostile-{i}"), body.clone()),
                );
            }
            first = false;
        }
        let response = h.execute(event.clone()).await;
        let failed: Vec<String> = herald_tests::failed_ids(&response);
        h.moto.delete_done(&h.queue_url, &event, &failed).await;
        failed_ids.extend(failed);
    }

    // THEN every hostile message, and nothing else, is a batch item failure
    failed_ids.sort();
    let mut expected: Vec<String> = (0..hostile_messages.len()).map(|i| format!("hostile-{i}")).collect();
    expected.sort();
    assert_eq!(failed_ids, expected);

    // AND every row has its outcome in the ledger
    let emails = h.moto.emails_from(&h.from).await;
    for (i, r) in cases.iter().enumerate() {
        let row =
            h.db.client
                .query_one(
                    "SELECT l.status, coalesce(l.error, ''),
                            coalesce((SELECT string_agg(x.step_id || ': ' || x.error, ' | ' ORDER BY x.id)
                                      FROM automation_step_runs x WHERE x.log_id = l.id AND x.status = 'failed'), '')
                     FROM automation_execution_logs l WHERE l.subject_id = $1",
                    &[&(i + 1).to_string()],
                )
                .await
                .unwrap();
        let (status, error, steps): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let mail: Vec<_> = emails
            .iter()
            .filter(|m| m.destinations.to == [r.email.clone()])
            .collect();
        // Sent in E.164.
        let texts = h.moto.sms_to(&r.phone.replace(' ', "")).await.len();
        match r.expect {
            Expect::Sent(subject) => {
                assert_eq!(
                    (status.as_str(), steps.as_str()),
                    ("completed", ""),
                    "{}: {error}",
                    r.case
                );
                assert_eq!((mail.len(), texts), (1, 1), "{}", r.case);
                assert_eq!(mail[0].subject, subject, "{}", r.case);
            }
            Expect::EmailFailed(reason) => {
                assert_eq!(status, "completed", "{}: {error}", r.case);
                assert!(
                    steps.starts_with("email: ") && steps.contains(reason) && !steps.contains("sms: "),
                    "{}: {steps:?} should say {reason:?}",
                    r.case
                );
                assert_eq!((mail.len(), texts), (0, 1), "{}", r.case);
            }
            Expect::SmsFailed(reason) => {
                assert_eq!(status, "failed", "{}", r.case);
                assert!(error.starts_with("step `sms` failed: "), "{}: {error:?}", r.case);
                assert!(error.contains(reason), "{}: {error:?} should say {reason:?}", r.case);
                assert_eq!((mail.len(), texts), (1, 0), "{}", r.case);
            }
            Expect::Failed(reason) => {
                assert_eq!(status, "failed", "{}", r.case);
                assert!(
                    steps.contains("email: ") && steps.contains("sms: ") && steps.contains(reason),
                    "{}: {steps:?} should say {reason:?}",
                    r.case
                );
                assert_eq!((mail.len(), texts), (0, 0), "{}", r.case);
            }
        }
    }
    // the SQL-looking value did nothing to the database
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM items").await,
        cases.len() as i64
    );
    // and only what was expected reached a provider
    let emailed = cases
        .iter()
        .filter(|r| matches!(r.expect, Expect::Sent(_) | Expect::SmsFailed(_)))
        .count();
    assert_eq!(emails.len(), emailed);
}
