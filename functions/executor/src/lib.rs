//! The executor function: each SQS message names a log, which the flow runner moves on as
//! far as it goes, writing the ledger as it goes.

use std::sync::Arc;
use std::time::SystemTime;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use herald_shared::aws::{load_config, SecretsManager, SesEmail, SnsSms, SqsReceipts};
use herald_shared::clock::{Clock, SystemClock};
use herald_shared::config::{self, ConfigError};
use herald_shared::drain::invocation_time_left;
use herald_shared::flow::{FlowOutcome, FlowRunner, Performers};
use herald_shared::ledger::Stop;
use herald_shared::pg::Database;
use herald_shared::receipt::RECEIPT_MARGIN;
use herald_shared::recipient::redact;
use herald_shared::webhook::{Guard, WebhookClient, Webhooks};
use herald_shared::workflow::machine::Park;
use lambda_runtime::{Error, LambdaEvent};
use tracing::{error, info, warn};

/// What the function keeps between invocations.
pub struct Executor {
    pub db: Database,
    pub email: SesEmail,
    pub sms: SnsSms,
    /// Where the ends of effects go that the database could not take in time.
    pub receipts: SqsReceipts,
    /// Workflows' webhook steps, and the signing secrets they name.
    pub webhooks: WebhookClient,
    pub secrets: SecretsManager,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Sender for automations that set none (`HERALD_FROM_ADDRESS`).
    pub default_from: String,
    /// Messages of a batch handled at once (`HERALD_EXECUTOR_CONCURRENCY`, default 4).
    pub concurrency: usize,
    /// How long a claimed log is the executor's before the scheduler may rescue it
    /// (`HERALD_LEASE_SECS`, default 120: well over the function's timeout).
    pub lease: std::time::Duration,
}

impl Settings {
    fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            default_from: config::required("HERALD_FROM_ADDRESS")?,
            concurrency: config::number("HERALD_EXECUTOR_CONCURRENCY", 4, 1, 10)?,
            lease: std::time::Duration::from_secs(config::number("HERALD_LEASE_SECS", 120, 5, 3_600)?),
        })
    }
}

impl Executor {
    /// Built once per container, from the environment.
    pub async fn from_env() -> Result<Self, Error> {
        let aws = load_config().await;
        // Networks webhooks may reach besides the public internet (`HERALD_WEBHOOK_ALLOW`:
        // comma-separated, such as `10.1.0.0/16`), and extra authorities to trust, as PEM
        // (`HERALD_WEBHOOK_ROOTS`), for private endpoints.
        let guard = Guard::parse(&config::var("HERALD_WEBHOOK_ALLOW").unwrap_or_default()).map_err(|why| {
            ConfigError::Invalid {
                name: "HERALD_WEBHOOK_ALLOW",
                why,
            }
        })?;
        let roots: Vec<Vec<u8>> = config::var("HERALD_WEBHOOK_ROOTS")
            .map(String::into_bytes)
            .into_iter()
            .collect();
        let webhooks = WebhookClient::new(guard, &roots).map_err(|why| ConfigError::Invalid {
            name: "HERALD_WEBHOOK_ROOTS",
            why,
        })?;
        Ok(Self {
            webhooks,
            secrets: SecretsManager::new(&aws),
            db: config::database_handle(&aws)
                .await?
                .index_scans_only()
                .timeout(db_timeout()?),
            email: SesEmail::new(&aws, config::var("HERALD_SES_CONFIGURATION_SET")),
            sms: SnsSms::new(&aws, config::var("HERALD_SMS_SENDER_ID")),
            receipts: SqsReceipts::new(&aws, config::required("HERALD_RECEIPTS_QUEUE_URL")?),
            clock: Arc::new(SystemClock),
            settings: Settings::from_env()?,
        })
    }
}

/// How long a round trip to Postgres may go unanswered (`HERALD_DB_TIMEOUT_MS`): 3 s by
/// default, 5 s at most. A write's last try starts up to [`RECEIPT_MARGIN`] before
/// the invocation's end; one that hangs must still leave time to keep its receipts.
fn db_timeout() -> Result<std::time::Duration, ConfigError> {
    let margin = RECEIPT_MARGIN.as_millis() as u64;
    config::db_timeout(margin / 2, margin - 1_000)
}

/// One SQS batch. Each message stands alone: the ones to retry are reported as batch
/// item failures, the rest are done.
pub async fn handle(e: &Executor, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
    let store = e.db.store().await?;
    let webhooks = Webhooks {
        client: &e.webhooks,
        secrets: &e.secrets,
        clock: e.clock.as_ref(),
    };
    let performers = Performers {
        email: &e.email,
        sms: &e.sms,
        webhooks: &webhooks,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        receipts: &e.receipts,
        clock: e.clock.as_ref(),
        default_from: &e.settings.default_from,
        lease: e.settings.lease,
        // The invocation's end, on the function's clock. Unknown (an emulator's deadline, already
        // past), the lease bounds the work.
        ends_at: invocation_time_left(event.context.deadline, SystemTime::now()).map(|left| e.clock.now() + left),
        step_limit: herald_shared::workflow::plan::DEFAULT_STEP_LIMIT,
    };
    let (ids, bodies): (Vec<String>, Vec<String>) = event
        .payload
        .records
        .into_iter()
        .map(|r| (r.message_id.unwrap_or_default(), r.body.unwrap_or_default()))
        .unzip();
    let mut response = SqsBatchResponse::default();
    for (id, outcome) in ids.into_iter().zip(runner.run(&bodies, e.settings.concurrency).await) {
        log_outcome(&id, &outcome);
        if outcome.is_batch_failure() {
            response.add_failure(id);
        }
    }
    Ok(response)
}

/// Logs what became of one message. Reasons can quote provider messages, which can quote
/// addresses: they are masked.
fn log_outcome(id: &str, outcome: &FlowOutcome) {
    match outcome {
        FlowOutcome::Stopped(Stop::Later) => info!(message_id = %id, "instance continues later"),
        FlowOutcome::Stopped(Stop::Held(status)) => info!(message_id = %id, status, "instance held"),
        FlowOutcome::Stopped(Stop::Park(Park::Failed(why))) => {
            warn!(message_id = %id, why = %redact(why), "instance failed")
        }
        FlowOutcome::Stopped(Stop::Park(Park::Dead(why))) => {
            warn!(message_id = %id, why = %redact(why), "instance dead")
        }
        FlowOutcome::Stopped(Stop::Park(park)) => info!(message_id = %id, ?park, "instance parked"),
        FlowOutcome::Stopped(Stop::Unknown(why)) => {
            warn!(message_id = %id, why = %redact(why), "outcome unknown: held")
        }
        FlowOutcome::Skipped(why) => info!(message_id = %id, why = %redact(why), "skipped"),
        FlowOutcome::Deferred(why) => {
            warn!(message_id = %id, why = %redact(why), "deferred to the receipts queue")
        }
        FlowOutcome::StoreFailed(why) => error!(message_id = %id, why = %redact(why), "ledger unreachable"),
        FlowOutcome::Rejected(why) => error!(message_id = %id, why = %redact(why), "rejected"),
    }
}
