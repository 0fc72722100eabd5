//! Recipients as businesses store them, through the functions: national phone numbers read in
//! the definition's region or a column's, sent to SNS and recorded in E.164; a fixed line
//! refused with the reason in the ledger; an email domain in Unicode sent in its ASCII form.

use std::time::Duration;

use herald_tests::Herald;
use serde_json::json;

#[tokio::test]
async fn national_numbers_are_sent_in_e164_and_a_fixed_line_fails_with_the_reason() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    let tag = h.tag;
    // Numbers unique to this test, in the national forms a business keeps.
    let us = 2_000_000 + (tag * 10) % 8_000_000;
    let us_national = format!("(415) {}-{:04}", us / 10_000, us % 10_000);
    let us_e164 = format!("+1415{us}");
    let de = 20_000_000 + tag % 80_000_000;
    let de_national = format!("0151 {de}");
    let de_e164 = format!("+49151{de}");
    h.db.client
        .batch_execute(&format!(
            "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, name text, email text, phone text,
                                   country text);
             SELECT herald_attach('public.members', 'status', 'id');
             INSERT INTO automations (name, source_table) VALUES ('welcome', 'members');
             INSERT INTO members VALUES
               (1, 'new', 'Anna', 'anna-{tag}@bücher.example', '{us_national}', NULL),
               (2, 'new', 'Bernd', 'bernd-{tag}@example.com', '{de_national}', 'de'),
               (3, 'new', 'Carla', 'carla-{tag}@example.com', '030 1234567', 'DE');"
        ))
        .await
        .unwrap();
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "region": "US",
        "steps": [
            {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome", "text": "Hi {{ name }}"},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Welcome, {{ name }}",
             "region": {"field": "country"}}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('welcome', $1)", &[&doc])
        .await
        .unwrap();
    h.db.exec("UPDATE members SET status = 'active'").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 3);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed", "completed", "failed"]);

    // SNS got the E.164 forms: the US number read in the definition's region (the member's
    // country is null), the German one in the member's (`de`).
    let to_us = h.moto.sms_to(&us_e164).await;
    assert_eq!(to_us.len(), 1, "{:?}", h.moto.all_sms().await);
    assert_eq!(to_us[0].message, "Welcome, Anna");
    let to_de = h.moto.sms_to(&de_e164).await;
    assert_eq!(to_de.len(), 1, "{:?}", h.moto.all_sms().await);
    assert!(h.moto.sms_to("+49301234567").await.is_empty());
    // SES got the domain in ASCII.
    let mut emailed: Vec<String> = h
        .moto
        .emails_from(&h.from)
        .await
        .into_iter()
        .map(|m| m.destinations.to[0].clone())
        .collect();
    emailed.sort();
    assert_eq!(
        emailed,
        [
            format!("anna-{tag}@xn--bcher-kva.example"),
            format!("bernd-{tag}@example.com"),
            format!("carla-{tag}@example.com")
        ]
    );

    // The ledger records what was sent (`effect.to`), and why the landline was not.
    let runs =
        h.db.client
            .query(
                "SELECT m.name, r.step_id, r.effect ->> 'to', r.error, r.error_kind
             FROM automation_step_runs r
             JOIN automation_execution_logs l ON l.id = r.log_id
             JOIN members m ON m.id::text = l.subject_id
             WHERE r.status <> 'decided' ORDER BY m.id, r.id",
                &[],
            )
            .await
            .unwrap();
    let sent: Vec<(String, String, Option<String>)> = runs
        .iter()
        .filter(|r| r.get::<_, Option<String>>(3).is_none())
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let sent: Vec<(&str, &str, Option<&str>)> = sent
        .iter()
        .map(|(n, s, t)| (n.as_str(), s.as_str(), t.as_deref()))
        .collect();
    let anna = format!("anna-{tag}@xn--bcher-kva.example");
    let (bernd, carla) = (format!("bernd-{tag}@example.com"), format!("carla-{tag}@example.com"));
    assert_eq!(
        sent,
        [
            ("Anna", "hello", Some(anna.as_str())),
            ("Anna", "text", Some(us_e164.as_str())),
            ("Bernd", "hello", Some(bernd.as_str())),
            ("Bernd", "text", Some(de_e164.as_str())),
            ("Carla", "hello", Some(carla.as_str())),
        ]
    );
    let refused = runs
        .iter()
        .find(|r| r.get::<_, Option<String>>(3).is_some())
        .expect("the landline's run");
    let (name, step, to, error, kind): (String, String, Option<String>, String, String) = (
        refused.get(0),
        refused.get(1),
        refused.get(2),
        refused.get(3),
        refused.get(4),
    );
    assert_eq!((name.as_str(), step.as_str()), ("Carla", "text"));
    assert_eq!(to, None, "nothing was sent");
    assert!(error.contains("is a fixed line: it cannot receive SMS"), "{error}");
    assert!(!error.contains("1234567"), "the number is masked: {error}");
    assert_eq!(kind, "permanent");
    let (log_error, kind): (Option<String>, Option<String>) = {
        let r =
            h.db.client
                .query_one(
                    "SELECT error, error_kind FROM automation_execution_logs WHERE status = 'failed'",
                    &[],
                )
                .await
                .unwrap();
        (r.get(0), r.get(1))
    };
    let log_error = log_error.unwrap_or_default();
    assert!(
        log_error.contains("step `text` failed") && log_error.contains("is a fixed line"),
        "{log_error}"
    );
    assert_eq!(kind.as_deref(), Some("permanent"));
}

#[tokio::test]
async fn a_national_number_without_a_region_fails_saying_one_is_needed() {
    let mut h = Herald::new().await;
    let clock = h.manual_clock();
    let tag = h.tag;
    let number = 2_000_000 + (tag * 10 + 1) % 8_000_000;
    h.db.client
        .batch_execute(&format!(
            "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, phone text);
             SELECT herald_attach('public.members', 'status', 'id');
             INSERT INTO automations (name, source_table) VALUES ('welcome', 'members');
             INSERT INTO members VALUES (1, 'new', '415 {number}'), (2, 'new', '+1 415 {number}');"
        ))
        .await
        .unwrap();
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
        "steps": [{"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"}]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('welcome', $1)", &[&doc])
        .await
        .unwrap();
    h.db.exec("UPDATE members SET status = 'active'").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 2);
    assert!(h.deliver_all().await.is_empty());
    // The number with its country code needs no region; the national one fails.
    assert_eq!(h.db.statuses().await, ["failed", "completed"]);
    assert_eq!(h.moto.sms_to(&format!("+1415{number}")).await.len(), 1);
    let error: String =
        h.db.scalar("SELECT error FROM automation_step_runs WHERE status = 'failed'")
            .await;
    assert!(error.contains("no region is known to read it in"), "{error}");
}
