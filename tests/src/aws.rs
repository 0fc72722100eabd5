//! The moto server from the tests' side: SDK config, queues, sender identities, and what
//! was "sent".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::config::Credentials;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::services;

/// Whether this process's moto server has answered each service once.
static WARM: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn sdk_config(url: &str, timeouts: aws_config::timeout::TimeoutConfig) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "herald-tests"))
        .timeout_config(timeouts)
        .load()
        .await
}

/// moto loads a service's backend on its first request, which can take longer than the
/// functions' SDK timeouts on a loaded machine; so each service the tests use is asked once,
/// with time to spare, before any test (or function under test) talks to it. An error here
/// is the test's to meet later, with its own message.
async fn warm_up(url: &str) {
    let patient = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .operation_attempt_timeout(Duration::from_secs(120))
        .operation_timeout(Duration::from_secs(120))
        .build();
    let sdk = sdk_config(url, patient).await;
    let _ = aws_sdk_sqs::Client::new(&sdk).list_queues().send().await;
    let _ = aws_sdk_sesv2::Client::new(&sdk).list_email_identities().send().await;
    let _ = aws_sdk_sns::Client::new(&sdk).list_topics().send().await;
    let _ = aws_sdk_secretsmanager::Client::new(&sdk).list_secrets().send().await;
}

#[derive(Clone)]
pub struct Moto {
    pub url: String,
    pub sdk: SdkConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SentEmail {
    pub id: String,
    pub source: String,
    pub destinations: Destinations,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Destinations {
    #[serde(rename = "ToAddresses")]
    pub to: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SentSms {
    pub phone_number: String,
    pub message: String,
}

impl Moto {
    pub async fn new() -> Self {
        let url = services().moto_url().to_owned();
        let sdk = sdk_config(&url, herald_shared::aws::timeouts()).await;
        WARM.get_or_init(|| warm_up(&url)).await;
        Self { url, sdk }
    }

    /// A queue of the test's own; returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let out = sqs.create_queue().queue_name(name).send().await.expect("CreateQueue");
        out.queue_url().expect("queue url").to_owned()
    }

    /// SES refuses to send from an address until it is verified.
    pub async fn verify_sender(&self, address: &str) {
        aws_sdk_sesv2::Client::new(&self.sdk)
            .create_email_identity()
            .email_identity(address)
            .send()
            .await
            .expect("CreateEmailIdentity");
    }

    /// Receives everything on the queue (up to `max`) as one SQS event, like Lambda's
    /// poller does, and deletes nothing.
    pub async fn receive(&self, queue_url: &str, max: usize) -> SqsEvent {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let mut records = Vec::new();
        while records.len() < max {
            let want = (max - records.len()).min(10) as i32;
            let out = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(want)
                .visibility_timeout(300)
                .send()
                .await
                .expect("ReceiveMessage");
            let got = out.messages();
            if got.is_empty() {
                break;
            }
            for m in got {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id().map(str::to_owned);
                r.receipt_handle = m.receipt_handle().map(str::to_owned);
                r.body = m.body().map(str::to_owned);
                r.event_source = Some("aws:sqs".into());
                records.push(r);
            }
        }
        let mut event = SqsEvent::default();
        event.records = records;
        event
    }

    /// Deletes the messages of `event` except those the handler reported as failed.
    pub async fn delete_done(&self, queue_url: &str, event: &SqsEvent, failed: &[String]) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        for r in &event.records {
            if failed.iter().any(|f| Some(f) == r.message_id.as_ref()) {
                continue;
            }
            // Messages a test made up never came from the queue.
            let Some(handle) = r.receipt_handle.clone() else {
                continue;
            };
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(handle)
                .send()
                .await
                .expect("DeleteMessage");
        }
    }

    /// Makes the `failed` messages of `event` visible again now, as if their visibility
    /// timeout had run out.
    pub async fn make_visible(&self, queue_url: &str, event: &SqsEvent, failed: &[String]) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        for r in event
            .records
            .iter()
            .filter(|r| failed.iter().any(|f| Some(f) == r.message_id.as_ref()))
        {
            sqs.change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(r.receipt_handle.clone().unwrap_or_default())
                .visibility_timeout(0)
                .send()
                .await
                .expect("ChangeMessageVisibility");
        }
    }

    /// Messages waiting on the queue (visible or not).
    pub async fn queue_depth(&self, queue_url: &str) -> usize {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let out = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .expect("GetQueueAttributes");
        let attrs = out.attributes().cloned().unwrap_or_default();
        let n = |k: aws_sdk_sqs::types::QueueAttributeName| {
            attrs.get(&k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0)
        };
        n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            + n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
    }

    /// Every email moto accepted whose sender is `from`.
    pub async fn emails_from(&self, from: &str) -> Vec<SentEmail> {
        let data = self.data().await;
        let all: Vec<SentEmail> = serde_json::from_value(data["ses"]["Message"].clone()).unwrap_or_default();
        all.into_iter().filter(|m| m.source == from).collect()
    }

    /// Every SMS moto accepted.
    pub async fn all_sms(&self) -> Vec<SentSms> {
        serde_json::from_value(self.data().await["sns"]["SMS"].clone()).unwrap_or_default()
    }

    /// Creates a queue whose messages move to a dead-letter queue after `max_receives`
    /// receives; returns (queue URL, dead-letter queue URL).
    pub async fn create_queue_with_dlq(&self, name: &str, max_receives: u32) -> (String, String) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let dlq = self.create_queue(&format!("{name}-dlq")).await;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes");
        let arn = attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives}).to_string();
        let out = sqs
            .create_queue()
            .queue_name(name)
            .attributes(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy, policy)
            .send()
            .await
            .expect("CreateQueue with a redrive policy");
        (out.queue_url().unwrap().to_owned(), dlq)
    }

    /// Sends one raw message body.
    pub async fn send_raw(&self, queue_url: &str, body: &str) {
        aws_sdk_sqs::Client::new(&self.sdk)
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .expect("SendMessage");
    }

    /// Every SMS moto accepted for `number`.
    pub async fn sms_to(&self, number: &str) -> Vec<SentSms> {
        let data = self.data().await;
        let all: Vec<SentSms> = serde_json::from_value(data["sns"]["SMS"].clone()).unwrap_or_default();
        all.into_iter().filter(|m| m.phone_number == number).collect()
    }

    /// moto's whole state (`GET /moto-api/data.json`), over a plain HTTP/1.0 request.
    async fn data(&self) -> serde_json::Value {
        let authority = self.url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(authority)
            .await
            .expect("connecting to moto");
        let req = format!("GET /moto-api/data.json HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        serde_json::from_str(body).expect("moto data.json")
    }
}

/// A Lambda context with a deadline `secs` from now.
pub fn lambda_context(secs: u64) -> lambda_runtime::Context {
    lambda_context_until(SystemTime::now() + Duration::from_secs(secs))
}

/// A Lambda context with this deadline (one already past, as `cargo lambda watch` sends).
pub fn lambda_context_until(deadline: SystemTime) -> lambda_runtime::Context {
    let mut ctx = lambda_runtime::Context::default();
    ctx.request_id = "test-request".into();
    ctx.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    ctx
}
