//! The AWS adapters: SES v2 for email, SNS for SMS, SQS for the queue, Secrets Manager
//! for the database secret. Provider errors are classified here, once.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sesv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::model::{Email, EmailSender, ErrorKind, Failure, LogId, Queue, QueueMessage, Sms, SmsSender};
use crate::receipt::{Receipt, ReceiptSink, ReceiptSource};

/// The SDK configuration from the environment (region, credentials, and
/// `AWS_ENDPOINT_URL` for emulators), with timeouts that fit inside a Lambda invocation.
pub async fn load_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts())
        .load()
        .await
}

pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(12))
        .build()
}

/// Error codes that mean "slow down" or "our side broke": worth retrying.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "Throttled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalErrorException",
    "InternalServerError",
    "KMSThrottlingException",
];

/// Whether a provider's error is worth retrying, from its HTTP status and error code:
/// throttling and server-side errors are transient; everything else (a rejected message,
/// an unverified sender, an invalid parameter, an opted-out number) is permanent.
pub(crate) fn kind_of(status: u16, code: &str) -> ErrorKind {
    if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code) {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    }
}

/// Sorts an SDK error into permanent or transient, keeping the provider's code.
pub(crate) fn classify<E>(err: &SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_owned();
            let message = service.err().message().unwrap_or("no message").to_owned();
            let kind = kind_of(service.raw().status().as_u16(), &code);
            Failure {
                kind,
                code: Some(code),
                message,
            }
        }
        SdkError::ConstructionFailure(_) => Failure::permanent(DisplayErrorContext(err).to_string()),
        // Timeouts, connection failures, unreadable responses.
        _ => Failure::transient(DisplayErrorContext(err).to_string()),
    }
}

/// Email through SES v2 `SendEmail`.
pub struct SesEmail {
    client: aws_sdk_sesv2::Client,
    configuration_set: Option<String>,
}

impl SesEmail {
    pub fn new(config: &SdkConfig, configuration_set: Option<String>) -> Self {
        Self {
            client: aws_sdk_sesv2::Client::new(config),
            configuration_set,
        }
    }
}

fn utf8(data: &str) -> Result<Content, Failure> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(|e| Failure::permanent(e.to_string()))
}

impl EmailSender for SesEmail {
    async fn send_email(&self, email: &Email) -> Result<String, Failure> {
        let mut body = Body::builder();
        if let Some(text) = &email.text {
            body = body.text(utf8(text)?);
        }
        if let Some(html) = &email.html {
            body = body.html(utf8(html)?);
        }
        let message = Message::builder()
            .subject(utf8(&email.subject)?)
            .body(body.build())
            .build();
        let out = self
            .client
            .send_email()
            .from_email_address(&email.from)
            .destination(Destination::builder().to_addresses(&email.to).build())
            .content(EmailContent::builder().simple(message).build())
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        out.message_id()
            .map(str::to_owned)
            .ok_or_else(|| Failure::transient("SES returned no message id"))
    }
}

/// Transactional SMS through SNS `Publish`.
pub struct SnsSms {
    client: aws_sdk_sns::Client,
    sender_id: Option<String>,
}

impl SnsSms {
    pub fn new(config: &SdkConfig, sender_id: Option<String>) -> Self {
        Self {
            client: aws_sdk_sns::Client::new(config),
            sender_id,
        }
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, Failure> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| Failure::permanent(e.to_string()))
}

impl SmsSender for SnsSms {
    async fn send_sms(&self, sms: &Sms) -> Result<String, Failure> {
        let mut req = self
            .client
            .publish()
            .phone_number(&sms.to)
            .message(&sms.body)
            .message_attributes("AWS.SNS.SMS.SMSType", string_attribute("Transactional")?);
        if let Some(sender) = &self.sender_id {
            req = req.message_attributes("AWS.SNS.SMS.SenderID", string_attribute(sender)?);
        }
        let out = req.send().await.map_err(|e| classify(&e))?;
        out.message_id()
            .map(str::to_owned)
            .ok_or_else(|| Failure::transient("SNS returned no message id"))
    }
}

/// The executor's queue, through SQS `SendMessageBatch`.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(config: &SdkConfig, url: String) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            url,
        }
    }
}

impl Queue for SqsQueue {
    async fn send_batch(&self, messages: &[QueueMessage]) -> Result<Vec<LogId>, Failure> {
        let bodies = messages.iter().map(|m| (m.log_id.to_string(), m.to_body()));
        let rejected = send_message_batch(&self.client, &self.url, bodies).await?;
        Ok(rejected.iter().filter_map(|id| id.parse().ok()).collect())
    }
}

/// One SQS `SendMessageBatch` of (entry id, body) pairs (10 at most); returns the ids of the
/// entries SQS rejected, each logged with its reason.
async fn send_message_batch(
    client: &aws_sdk_sqs::Client,
    url: &str,
    bodies: impl Iterator<Item = (String, String)>,
) -> Result<Vec<String>, Failure> {
    let entries = bodies
        .map(|(id, body)| {
            SendMessageBatchRequestEntry::builder()
                .id(id)
                .message_body(body)
                .build()
                .map_err(|e| Failure::permanent(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| classify(&e))?;
    for f in out.failed() {
        tracing::warn!(
            id = f.id(),
            code = f.code(),
            sender_fault = f.sender_fault(),
            "SQS rejected a message"
        );
    }
    Ok(out.failed().iter().map(|f| f.id().to_owned()).collect())
}

/// The receipts queue: the executor sends to it, the scheduler receives from it.
pub struct SqsReceipts {
    client: aws_sdk_sqs::Client,
    url: String,
    /// How long a receive waits for a message (long polling asks every SQS server, so an
    /// empty answer means the queue is empty, not that the servers asked had nothing).
    wait: Duration,
}

impl SqsReceipts {
    pub fn new(config: &SdkConfig, url: String) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            url,
            wait: Duration::from_secs(1),
        }
    }

    /// Receives without waiting (short polling), for emulators and tests.
    pub fn without_waiting(mut self) -> Self {
        self.wait = Duration::ZERO;
        self
    }
}

impl ReceiptSink for SqsReceipts {
    async fn put(&self, receipts: &[Receipt]) -> Result<(), Failure> {
        for chunk in receipts.chunks(10) {
            let bodies = chunk.iter().enumerate().map(|(i, r)| (i.to_string(), r.to_body()));
            let rejected = send_message_batch(&self.client, &self.url, bodies).await?;
            if !rejected.is_empty() {
                return Err(Failure::transient(format!(
                    "SQS rejected {} of {} receipts",
                    rejected.len(),
                    chunk.len()
                )));
            }
        }
        Ok(())
    }
}

impl ReceiptSource for SqsReceipts {
    async fn take(&self) -> Result<Vec<(String, String)>, Failure> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| Some((m.receipt_handle()?.to_owned(), m.body().unwrap_or_default().to_owned())))
            .collect())
    }

    async fn delete(&self, handles: &[String]) -> Result<(), Failure> {
        for chunk in handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .build()
                        .map_err(|e| Failure::permanent(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(())
    }
}

/// Webhook signing secrets from Secrets Manager, each kept for five minutes (a rotated
/// secret is in use within that time).
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
    cache: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl SecretsManager {
    const KEEP: std::time::Duration = std::time::Duration::from_secs(300);

    pub fn new(config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(config),
            cache: Default::default(),
        }
    }
}

impl crate::webhook::SecretSource for SecretsManager {
    async fn secret(&self, id: &str) -> Result<String, Failure> {
        let kept = self.cache.lock().ok().and_then(|c| {
            c.get(id)
                .filter(|(_, at)| at.elapsed() < Self::KEEP)
                .map(|(v, _)| v.clone())
        });
        if let Some(value) = kept {
            return Ok(value);
        }
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let value = out
            .secret_string()
            .map(str::to_owned)
            .ok_or_else(|| Failure::permanent(format!("secret {id} has no string value")))?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id.to_owned(), (value.clone(), std::time::Instant::now()));
        }
        Ok(value)
    }
}

/// The string value of a Secrets Manager secret.
pub(crate) async fn read_secret(config: &SdkConfig, id: &str) -> Result<String, Failure> {
    let out = aws_sdk_secretsmanager::Client::new(config)
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    out.secret_string()
        .map(str::to_owned)
        .ok_or_else(|| Failure::permanent(format!("secret {id} has no string value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_by_status_and_code() {
        use ErrorKind::{Permanent, Transient};
        let table = [
            // SES v2
            (429, "TooManyRequestsException", Transient),
            (400, "TooManyRequestsException", Transient),
            (400, "MessageRejected", Permanent),
            (400, "MailFromDomainNotVerifiedException", Permanent),
            (400, "AccountSuspendedException", Permanent),
            (400, "SendingPausedException", Permanent),
            (400, "BadRequestException", Permanent),
            (404, "NotFoundException", Permanent),
            (500, "InternalFailure", Transient),
            (503, "ServiceUnavailable", Transient),
            // SNS
            (400, "Throttling", Transient),
            (400, "Throttled", Transient),
            (400, "InvalidParameter", Permanent),
            (400, "InvalidParameterValue", Permanent),
            (400, "OptedOut", Permanent),
            (403, "AuthorizationError", Permanent),
            (500, "InternalError", Transient),
            (502, "Unknown", Transient),
        ];
        for (status, code, kind) in table {
            assert_eq!(kind_of(status, code), kind, "{status} {code}");
        }
    }
}
