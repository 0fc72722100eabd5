//! Herald wired for one test: its own database, queue and sender address, and the real
//! scheduler and executor handlers pointed at them.

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use herald_executor::Executor;
use herald_scheduler::Scheduler;
use herald_shared::aws::{SecretsManager, SesEmail, SnsSms, SqsQueue, SqsReceipts};
use herald_shared::clock::{ManualClock, SystemClock};
use herald_shared::drain::DrainSummary;
use herald_shared::pg::Database;
use herald_shared::webhook::{Guard, WebhookClient, Webhooks};
use lambda_runtime::LambdaEvent;

use crate::{lambda_context, repo_file, Moto, TestDb};

pub struct Herald {
    pub db: TestDb,
    pub moto: Moto,
    pub queue_url: String,
    /// The receipts queue both functions use.
    pub receipts_url: String,
    /// This test's verified sender; its emails are the ones moto lists with this source.
    pub from: String,
    /// A number unique to this test, for recipients.
    pub tag: u32,
    pub scheduler: Scheduler,
    pub executor: Executor,
}

impl Herald {
    pub async fn new() -> Self {
        let tag = crate::unique_tag().await;
        let db = TestDb::new().await;
        let moto = Moto::new().await;
        let queue_url = moto.create_queue(&format!("herald-{}-{tag}", db.name)).await;
        let receipts_url = moto.create_queue(&format!("herald-receipts-{}-{tag}", db.name)).await;
        let from = format!("herald-{tag}@notify.example.com");
        moto.verify_sender(&from).await;
        let scheduler = Scheduler {
            db: Database::new(db.config()),
            queue: SqsQueue::new(&moto.sdk, queue_url.clone()),
            receipts: SqsReceipts::new(&moto.sdk, receipts_url.clone()).without_waiting(),
            clock: Arc::new(SystemClock),
            settings: herald_scheduler::Settings {
                claim_batch: 100,
                send_concurrency: 4,
                deadline_margin: std::time::Duration::from_secs(5),
                queue_lease: std::time::Duration::from_secs(900),
                low_latency: false,
                poll: std::time::Duration::from_secs(1),
                function: "scheduler".into(),
            },
        };
        let executor = Executor {
            db: Database::new(db.config()).index_scans_only(),
            email: SesEmail::new(&moto.sdk, None),
            sms: SnsSms::new(&moto.sdk, Some("Herald".into())),
            receipts: SqsReceipts::new(&moto.sdk, receipts_url.clone()),
            // Webhooks reach the public internet only, as deployed.
            webhooks: WebhookClient::new(Guard::parse("").unwrap(), &[]).unwrap(),
            secrets: SecretsManager::new(&moto.sdk),
            clock: Arc::new(SystemClock),
            settings: herald_executor::Settings {
                default_from: from.clone(),
                concurrency: 4,
                lease: std::time::Duration::from_secs(120),
                function: "executor".into(),
                metrics_per_automation: true,
            },
        };
        Self {
            db,
            moto,
            queue_url,
            receipts_url,
            from,
            tag,
            scheduler,
            executor,
        }
    }

    /// Gives both functions one clock that only moves when the test says, starting now.
    /// The executor's webhook steps, as its handler wires them.
    pub fn webhooks(&self) -> Webhooks<'_, SecretsManager> {
        Webhooks {
            client: &self.executor.webhooks,
            secrets: &self.executor.secrets,
            clock: self.executor.clock.as_ref(),
        }
    }

    pub fn manual_clock(&mut self) -> Arc<ManualClock> {
        self.manual_clock_at(std::time::SystemTime::now())
    }

    /// Both functions on one manual clock, starting at `start`.
    pub fn manual_clock_at(&mut self, start: std::time::SystemTime) -> Arc<ManualClock> {
        let clock = Arc::new(ManualClock::new(start));
        self.scheduler.clock = clock.clone();
        self.executor.clock = clock.clone();
        clock
    }

    /// Loads the sample schema of `db/examples/jobs.sql` and gives its clients this
    /// test's recipients.
    pub async fn with_jobs_example() -> Self {
        let h = Self::new().await;
        h.db.exec(&repo_file("db/examples/jobs.sql")).await;
        for id in [1, 2] {
            h.db.client
                .execute(
                    "UPDATE clients SET email = $2, phone = $3 WHERE id = $1",
                    &[&(id as i64), &h.email_of(id), &h.phone_of(id)],
                )
                .await
                .unwrap();
        }
        h
    }

    /// The email address this test gives client `n`.
    pub fn email_of(&self, n: u32) -> String {
        format!("client{n}+{}@example.com", self.tag)
    }

    /// The phone number this test gives client `n` (E.164, unique to the test).
    pub fn phone_of(&self, n: u32) -> String {
        format!("+1415{}", 2_000_000 + (self.tag * 10 + n) % 8_000_000)
    }

    /// One scheduler invocation through the real handler, as it returned. (The handlers'
    /// metric lines are not written: `invoke` is the handler without them.)
    pub async fn tick_result(&self) -> Result<DrainSummary, lambda_runtime::Error> {
        let event: EventBridgeEvent = serde_json::from_str(&repo_file("events/scheduled.json")).unwrap();
        herald_scheduler::invoke(&self.scheduler, LambdaEvent::new(event, lambda_context(60)))
            .await
            .map(|(summary, _metrics)| summary)
    }

    /// One scheduler invocation through the real handler, with the sample EventBridge event.
    pub async fn tick(&self) -> DrainSummary {
        self.tick_result().await.expect("scheduler invocation")
    }

    /// One executor invocation through the real handler.
    pub async fn execute(&self, event: SqsEvent) -> SqsBatchResponse {
        herald_executor::invoke(&self.executor, LambdaEvent::new(event, lambda_context(60)))
            .await
            .map(|(response, _metrics)| response)
            .expect("executor invocation")
    }

    /// What Lambda's SQS poller does: receive up to 10, invoke, delete what succeeded.
    /// Repeats until the queue is empty; returns the ids reported as failures.
    pub async fn deliver_all(&self) -> Vec<String> {
        let mut failures = Vec::new();
        loop {
            let event = self.moto.receive(&self.queue_url, 10).await;
            if event.records.is_empty() {
                return failures;
            }
            let response = self.execute(event.clone()).await;
            let failed: Vec<String> = crate::failed_ids(&response);
            self.moto.delete_done(&self.queue_url, &event, &failed).await;
            failures.extend(failed);
        }
    }
}
