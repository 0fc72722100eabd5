//! The functions' logs never carry a full email address, phone number or message body.

use std::io::Write;
use std::sync::{Arc, Mutex};

use herald_tests::Herald;
use tracing::instrument::WithSubscriber;

/// A log sink the test can read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn logs_mask_recipients_and_never_print_bodies() {
    // GIVEN a good log, one whose address is invalid (its SMS still goes), and one that SES
    // rejects
    let h = Herald::with_jobs_example().await;
    h.db.exec(
        "INSERT INTO clients (id, name, email, phone) VALUES (3, 'Cy', 'cy.secret.at.example.com', '+14155550177');
         INSERT INTO jobs (id, client_id, title) VALUES (3, 3, 'Job three');
         INSERT INTO automations (name, source_table, to_status, email_from, email_to, email_subject, email_text)
           VALUES ('rejected', 'jobs', 'rejected', 'unverified.sender@private.example.com', 'boiler.owner@example.com',
                   'Secret subject {{ title }}', 'Secret body {{ title }}');
         UPDATE jobs SET status = 'completed' WHERE id IN (1, 3);
         UPDATE jobs SET status = 'rejected' WHERE id = 2;",
    )
    .await;

    // WHEN both functions run, with their log output captured at the deployed level (info)
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    async {
        h.tick().await;
        h.deliver_all().await;
    }
    .with_subscriber(subscriber)
    .await;
    let logs = captured.text();

    // THEN the logs say what happened, with recipients masked...
    assert!(logs.contains("delivered"), "{logs}");
    assert!(logs.contains("c***@example.com"), "{logs}");
    assert!(logs.contains("+*******"), "{logs}");
    assert!(logs.contains("failed"), "{logs}");
    assert!(
        logs.contains("Email address not verified u***@private.example.com"),
        "{logs}"
    );
    // ...and never a full address, number, subject or body
    for secret in [
        h.email_of(1),
        h.phone_of(1),
        "cy.secret.at.example.com".into(),
        "+14155550177".into(),
        "unverified.sender@private.example.com".into(),
        "boiler.owner@example.com".into(),
        "Fix the kitchen sink".into(),
        "Secret subject".into(),
        "Secret body".into(),
        "Thank you for your business".into(),
    ] {
        assert!(!logs.contains(&secret), "the logs contain {secret:?}:\n{logs}");
    }
    // (and the sends really happened: this is not a quiet run)
    assert_eq!(h.db.statuses().await, ["completed", "completed", "failed"]);
}
