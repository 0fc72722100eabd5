//! Webhooks against a local HTTPS server: signing, repeat ids, answers, and the guard that
//! keeps them off this machine and the metadata service.

use std::time::Duration;

use herald_shared::model::ErrorKind;
use herald_shared::webhook::{
    signature, Call, Guard, WebhookClient, WebhookError, WebhookSecret, STORED_RESPONSE_CHARS,
};
use herald_tests::hooks::{Reply, WebhookServer};
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_795_000_000;

fn client(allow: &str, server: &WebhookServer) -> WebhookClient {
    WebhookClient::new(Guard::parse(allow).unwrap(), std::slice::from_ref(&server.ca_pem)).unwrap()
}

fn call(url: String) -> Call {
    Call {
        url,
        id: "log-7-review".into(),
        body: json!({"booking": 7, "name": "Zoë"}).to_string(),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_signed_post_arrives_with_a_stable_id_and_its_json_answer_is_kept() {
    let server = WebhookServer::start().await;
    let hooks = client("127.0.0.1", &server);
    let secret = WebhookSecret::parse(SECRET).unwrap();
    server.reply(Reply::With(200, "application/json", r#"{"ticket": 42}"#.into()));
    let c = call(format!("https://localhost:{}/hooks/review", server.port));

    let answer = hooks.post(&c, &secret, NOW).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json, Some(json!({"ticket": 42})));
    // The same step's repeat carries the same id, so the receiver can drop it.
    hooks.post(&c, &secret, NOW + 30).await.unwrap();

    let got = server.received();
    assert_eq!(got.len(), 2);
    for (request, at) in got.iter().zip([NOW, NOW + 30]) {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/hooks/review")
        );
        assert_eq!(request.body, c.body);
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("webhook-id"), Some("log-7-review"));
        assert_eq!(request.header("webhook-timestamp"), Some(at.to_string().as_str()));
        let want = signature(&secret, "log-7-review", at, &request.body);
        assert_eq!(request.header("webhook-signature"), Some(want.as_str()));
    }
}

#[tokio::test]
async fn answers_outside_2xx_are_errors_that_keep_a_bounded_body() {
    let server = WebhookServer::start().await;
    let hooks = client("127.0.0.1", &server);
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let c = call(format!("https://127.0.0.1:{}/", server.port));

    server.reply(Reply::With(503, "text/plain", "busy".into()));
    let err = hooks.post(&c, &secret, NOW).await.unwrap_err();
    assert!(
        matches!(&err, WebhookError::Status(a) if a.status == 503 && a.body == "busy"),
        "{err:?}"
    );
    assert_eq!(err.failure().kind, ErrorKind::Transient);
    assert_eq!(err.failure().code.as_deref(), Some("503"));

    server.reply(Reply::With(
        422,
        "application/json",
        r#"{"error": "unknown booking"}"#.into(),
    ));
    let err = hooks.post(&c, &secret, NOW).await.unwrap_err();
    assert_eq!(err.failure().kind, ErrorKind::Permanent);
    assert!(err.to_string().contains("unknown booking"), "{err}");

    // A redirect is an answer, not an instruction.
    server.reply(Reply::With(302, "text/plain", String::new()));
    let err = hooks.post(&c, &secret, NOW).await.unwrap_err();
    assert_eq!(err.failure().kind, ErrorKind::Permanent);

    // Past the read limit, the body is cut and not read as JSON.
    let big = json!({"pad": "x".repeat(100_000)}).to_string();
    server.reply(Reply::With(200, "application/json", big));
    let answer = hooks.post(&c, &secret, NOW).await.unwrap();
    assert_eq!(answer.json, None);
    assert_eq!(answer.body.chars().count(), STORED_RESPONSE_CHARS);
    assert_eq!(server.received().len(), 4);
}

#[tokio::test]
async fn the_guard_refuses_loopback_and_the_metadata_service_unless_allowed() {
    let server = WebhookServer::start().await;
    let hooks = client("", &server);
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let cases = [
        (format!("https://127.0.0.1:{}/", server.port), "127.0.0.1 is loopback"),
        (format!("https://localhost:{}/", server.port), "is loopback"),
        (format!("https://[::ffff:127.0.0.1]:{}/", server.port), "is loopback"),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "the cloud metadata service",
        ),
        ("https://10.0.0.8/hook".to_owned(), "is private"),
        (format!("http://localhost:{}/", server.port), "is not https"),
        ("not a url".to_owned(), "relative URL without a base"),
    ];
    for (url, why) in cases {
        let err = hooks.post(&call(url.clone()), &secret, NOW).await.unwrap_err();
        assert!(
            matches!(&err, WebhookError::Refused(m) if m.contains(why)),
            "{url}: {err:?}"
        );
        assert!(!err.may_have_arrived());
        assert_eq!(err.failure().kind, ErrorKind::Permanent, "{url}");
    }
    assert!(server.received().is_empty(), "nothing reached the server");

    // The allow-list opens exactly the addresses it names.
    let allowed = client("127.0.0.1/32", &server);
    allowed
        .post(&call(format!("https://localhost:{}/", server.port)), &secret, NOW)
        .await
        .unwrap();
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_request_without_an_answer_may_have_arrived_and_one_never_sent_did_not() {
    let server = WebhookServer::start().await;
    let hooks = client("127.0.0.1", &server);
    let secret = WebhookSecret::parse(SECRET).unwrap();

    server.reply(Reply::Close);
    let err = hooks
        .post(&call(format!("https://localhost:{}/", server.port)), &secret, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::NoAnswer(_)), "{err:?}");
    assert!(err.may_have_arrived());
    assert_eq!(err.failure().kind, ErrorKind::Transient);

    server.reply(Reply::Hang);
    let mut hanging = call(format!("https://localhost:{}/", server.port));
    hanging.timeout = Duration::from_millis(300);
    let err = hooks.post(&hanging, &secret, NOW).await.unwrap_err();
    assert!(matches!(err, WebhookError::NoAnswer(_)), "{err:?}");
    assert_eq!(server.received().len(), 2, "both requests arrived");

    // Nothing listens on this port: the request was never sent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = hooks
        .post(&call(format!("https://127.0.0.1:{port}/")), &secret, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Connect(_)), "{err:?}");
    assert!(!err.may_have_arrived());
}

/// The signing secret of this test's webhooks, in Secrets Manager; returns its name.
async fn signing_secret(h: &herald_tests::Herald) -> String {
    let name = format!("herald/webhooks/jobs-{}", h.tag);
    aws_sdk_secretsmanager::Client::new(&h.moto.sdk)
        .create_secret()
        .name(&name)
        .secret_string(SECRET)
        .send()
        .await
        .unwrap();
    name
}

/// Saves a job flow whose first step is `hook`, signed with `secret`, then an SMS.
async fn webhook_flow(h: &herald_tests::Herald, hook: serde_json::Value, name: &str, sms: &str) {
    let mut hook = hook;
    hook["secret"] = json!(name);
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "steps": [
            hook,
            {"id": "text", "type": "send_sms", "to": "{{ client_phone }}", "body": sms}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&doc])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_webhook_step_posts_signed_json_retries_under_the_same_id_and_its_answer_feeds_later_steps() {
    let mut h = herald_tests::Herald::with_jobs_example().await;
    let server = WebhookServer::start().await;
    h.executor.webhooks = client("127.0.0.1", &server);
    webhook_flow(
        &h,
        json!({"id": "hook", "type": "webhook", "url": format!("https://localhost:{}/jobs/done", server.port),
               "body": "{\"job\": {{ job_id }}, \"title\": {{ job_title | tojson }}}",
               "on_error": {"retry": {"times": 2, "backoff": "1 minute"}}}),
        &signing_secret(&h).await,
        "Ticket {{ steps.hook.json.ticket }}",
    )
    .await;
    server.reply(Reply::With(503, "text/plain", "busy".into()));
    server.reply(Reply::With(200, "application/json", r#"{"ticket": 42}"#.into()));

    h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
    // The functions' clock, from just after the change (the setup above may take seconds).
    let clock = h.manual_clock();
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(
        h.db.statuses().await,
        ["waiting"],
        "the 503 is retried after its backoff"
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(h.tick().await.claimed, 1);
    assert!(h.deliver_all().await.is_empty());
    assert_eq!(h.db.statuses().await, ["completed"]);

    let log_id: i64 = h.db.scalar("SELECT id FROM automation_execution_logs").await;
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let got = server.received();
    assert_eq!(got.len(), 2);
    for request in &got {
        assert_eq!(request.path, "/jobs/done");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&request.body).unwrap(),
            json!({"job": 1, "title": "Fix the kitchen sink"})
        );
        // One id for the step, however often it is sent: the receiver can drop repeats.
        let id = format!("{log_id}-hook");
        assert_eq!(request.header("webhook-id"), Some(id.as_str()));
        let at: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
        let want = signature(&secret, &id, at, &request.body);
        assert_eq!(request.header("webhook-signature"), Some(want.as_str()));
    }
    let runs: Vec<String> =
        h.db.column(
            "SELECT concat_ws(' ', step_id, attempt, status, error_code, output) FROM automation_step_runs
             WHERE status <> 'decided' ORDER BY id",
        )
        .await;
    assert_eq!(runs[0], "hook 1 failed 503");
    assert_eq!(runs[1], "hook 2 done {\"json\": {\"ticket\": 42}, \"status\": 200}");
    let sms = h.moto.sms_to(&h.phone_of(1)).await;
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].message, "Ticket 42");
}

#[tokio::test]
async fn a_webhook_step_to_loopback_or_the_metadata_service_fails_without_being_sent() {
    // The executor as deployed: no networks allowed beyond the public internet.
    let mut h = herald_tests::Herald::with_jobs_example().await;
    let server = WebhookServer::start().await;
    let secret = signing_secret(&h).await;
    for (job, url) in [
        (1, format!("https://127.0.0.1:{}/jobs/done", server.port)),
        (2, "https://169.254.169.254/latest/meta-data/".to_owned()),
    ] {
        // Each job's instance takes the version saved just before it.
        webhook_flow(
            &h,
            json!({"id": "hook", "type": "webhook", "url": url, "body": "{}", "on_error": "continue"}),
            &secret,
            "Job {{ job_id }} done",
        )
        .await;
        // The functions' clock, from just before the change.
        let clock = h.manual_clock();
        h.db.exec(&format!("UPDATE jobs SET status = 'completed' WHERE id = {job}"))
            .await;
        clock.advance(Duration::from_secs(1));
        assert_eq!(h.tick().await.claimed, 1);
        assert!(h.deliver_all().await.is_empty());
    }
    assert!(server.received().is_empty(), "nothing was sent");
    let runs: Vec<String> =
        h.db.column(
            "SELECT concat_ws(' ', step_id, status, error_kind, error) FROM automation_step_runs
             WHERE step_id = 'hook' ORDER BY id",
        )
        .await;
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0].starts_with("hook failed permanent webhook refused") && runs[0].contains("loopback"),
        "{runs:?}"
    );
    assert!(runs[1].contains("the cloud metadata service"), "{runs:?}");
    // `continue`: the SMS still went.
    assert_eq!(h.moto.sms_to(&h.phone_of(1)).await[0].message, "Job 1 done");
    assert_eq!(h.db.statuses().await, ["completed", "completed"]);
}
