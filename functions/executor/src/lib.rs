//! The executor function: each SQS message names a log, which the flow runner moves on as
//! far as it goes, writing the ledger as it goes.

use std::sync::Arc;
use std::time::SystemTime;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use herald_shared::aws::{load_config, SecretsManager, SesEmail, SnsSms, SqsReceipts};
use herald_shared::clock::{Clock, SystemClock};
use herald_shared::config::{self, ConfigError};
use herald_shared::drain::invocation_time_left;
use herald_shared::flow::{FlowOutcome, FlowRunner, MessageInstance, Performers};
use herald_shared::ledger::Stop;
use herald_shared::metrics::{self, ExecutorMetrics};
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
    /// The `Function` dimension of its metrics: the function's name (`AWS_LAMBDA_FUNCTION_NAME`,
    /// which Lambda sets; `executor` without it).
    pub function: String,
    /// Whether its metrics are also written per automation (`HERALD_METRICS_PER_AUTOMATION`,
    /// default true).
    pub metrics_per_automation: bool,
}

impl Settings {
    fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            default_from: config::required("HERALD_FROM_ADDRESS")?,
            concurrency: config::number("HERALD_EXECUTOR_CONCURRENCY", 4, 1, 10)?,
            lease: std::time::Duration::from_secs(config::number("HERALD_LEASE_SECS", 120, 5, 3_600)?),
            function: config::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "executor".into()),
            metrics_per_automation: config::flag_or("HERALD_METRICS_PER_AUTOMATION", true)?,
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
/// item failures, the rest are done. The batch's metrics are written to standard output as
/// EMF lines.
pub async fn handle(e: &Executor, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
    let (response, lines) = invoke(e, event).await?;
    metrics::print(&lines);
    Ok(response)
}

/// [`handle`] without writing the metrics: the response, and the EMF lines.
pub async fn invoke(e: &Executor, event: LambdaEvent<SqsEvent>) -> Result<(SqsBatchResponse, Vec<String>), Error> {
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
    let batch = runner.run_batch(&bodies, e.settings.concurrency).await;
    let mut counts = ExecutorMetrics::new(e.settings.metrics_per_automation, batch.outcomes.len());
    counts.claimed(batch.claimed);
    counts.steps(batch.effect_ms);
    let mut response = SqsBatchResponse::default();
    for ((id, outcome), instance) in ids.into_iter().zip(batch.outcomes).zip(&batch.instances) {
        log_outcome(&id, &outcome, instance);
        counts.count(outcome.metric(), instance.automation);
        if outcome.is_batch_failure() {
            response.add_failure(id);
        }
    }
    let lines = counts.lines(&e.settings.function, metrics::epoch_ms(e.clock.now()));
    Ok((response, lines))
}

/// Logs what became of one message, with its instance's log, automation, version, and the
/// step it stopped at. Reasons can quote provider messages, which can quote addresses: they
/// are masked.
fn log_outcome(id: &str, outcome: &FlowOutcome, of: &MessageInstance) {
    let step = of.step.as_deref();
    macro_rules! log {
        ($level:ident, $($rest:tt)+) => {
            $level!(
                message_id = %id,
                log_id = of.log_id,
                automation = of.automation,
                version = of.version,
                step,
                attempt = of.attempt,
                $($rest)+
            )
        };
    }
    match outcome {
        FlowOutcome::Stopped(Stop::Later) => log!(info, "instance continues later"),
        FlowOutcome::Stopped(Stop::Held(status)) => log!(info, status, "instance held"),
        FlowOutcome::Stopped(Stop::Park(Park::Failed(why))) => log!(warn, why = %redact(why), "instance failed"),
        FlowOutcome::Stopped(Stop::Park(Park::Dead(why))) => log!(warn, why = %redact(why), "instance dead"),
        FlowOutcome::Stopped(Stop::Park(park)) => log!(info, ?park, "instance parked"),
        FlowOutcome::Stopped(Stop::Unknown(why)) => log!(warn, why = %redact(why), "outcome unknown: held"),
        FlowOutcome::Skipped(why) => log!(info, why = %redact(why), "skipped"),
        FlowOutcome::Deferred(why) => log!(warn, why = %redact(why), "deferred to the receipts queue"),
        FlowOutcome::StoreFailed(why) => log!(error, why = %redact(why), "ledger unreachable"),
        FlowOutcome::Rejected(why) => log!(error, why = %redact(why), "rejected"),
    }
}
