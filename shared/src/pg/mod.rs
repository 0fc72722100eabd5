//! The ledger in Postgres, over tokio-postgres. Every statement is a named file in
//! `shared/sql/`; values are always bound parameters.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Mutex;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{info, warn};

use crate::model::Failure;
use crate::model::{
    Channel, Claim, ContextError, Definition, DueLogs, EmailTemplates, EventInfo, Lease, Ledger, LoadedLog, LogId,
    LogResult, QueueMessage, Rescued, SmsTemplates, StoreError,
};

mod sql {
    pub const CLAIM_DUE: &str = include_str!("../../sql/claim_due.sql");
    pub const RELEASE: &str = include_str!("../../sql/release.sql");
    pub const RESCUE: &str = include_str!("../../sql/rescue.sql");
    pub const INGEST: &str = include_str!("../../sql/ingest.sql");
    pub const CLAIM_LOG: &str = include_str!("../../sql/claim_log.sql");
    pub const LOAD_LOG: &str = include_str!("../../sql/load_log.sql");
    pub const CONTEXT: &str = include_str!("../../sql/context.sql");
    pub const DELIVERY_STARTED: &str = include_str!("../../sql/delivery_started.sql");
    pub const DELIVERY_FINISHED: &str = include_str!("../../sql/delivery_finished.sql");
    pub const FINISH_LOG: &str = include_str!("../../sql/finish_log.sql");
}

mod tls;
pub use tls::{SslMode, Tls};

/// One connection per container, opened lazily and re-opened when it was lost.
pub struct Database {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    client: Mutex<Option<Arc<Client>>>,
}

impl Database {
    /// A database reached without TLS.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            tls: None,
            client: Mutex::new(None),
        }
    }

    /// A database reached with these TLS settings; fails if they cannot be loaded (a
    /// missing or empty root certificate file).
    pub fn with_tls(mut config: Config, tls: &Tls) -> Result<Self, String> {
        config.ssl_mode(match tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => PgSslMode::Require,
        });
        Ok(Self {
            config,
            tls: tls.connector()?,
            client: Mutex::new(None),
        })
    }

    /// The open connection, or a new one if there is none or it broke.
    pub async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        if slot.is_some() {
            info!("database connection was closed; reconnecting");
        }
        let client = Arc::new(match &self.tls {
            None => self.connect(NoTls).await?,
            Some(tls) => self.connect(tls.clone()).await?,
        });
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    async fn connect<T>(&self, tls: T) -> Result<Client, StoreError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self
            .config
            .connect(tls)
            .await
            .map_err(|e| StoreError::new("connecting to Postgres", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }

    /// A store over the current connection.
    pub async fn store(&self) -> Result<PgStore, StoreError> {
        Ok(PgStore {
            client: self.client().await?,
        })
    }
}

/// The Postgres implementation of the ledger traits.
#[derive(Clone)]
pub struct PgStore {
    client: Arc<Client>,
}

impl PgStore {
    pub fn new(client: Arc<Client>) -> Self {
        Self { client }
    }
}

fn err(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::new(context, e)
}

impl DueLogs for PgStore {
    async fn ingest(&self, limit: i32) -> Result<u64, StoreError> {
        let r = self
            .client
            .query_one(sql::INGEST, &[&limit])
            .await
            .map_err(err("moving captured events to the ledger"))?;
        Ok(r.get::<_, i32>(0) as u64)
    }

    async fn rescue(&self, now: SystemTime) -> Result<Rescued, StoreError> {
        let r = self
            .client
            .query_one(sql::RESCUE, &[&now])
            .await
            .map_err(err("rescuing expired leases"))?;
        let n = |i: usize| r.get::<_, i32>(i) as u64;
        Ok(Rescued {
            requeued: n(0),
            retried: n(1),
            dead: n(2),
            unknown: n(3),
        })
    }

    async fn claim_due(
        &self,
        limit: i64,
        now: SystemTime,
        lease_until: SystemTime,
    ) -> Result<Vec<QueueMessage>, StoreError> {
        let rows = self
            .client
            .query(sql::CLAIM_DUE, &[&now, &limit, &lease_until])
            .await
            .map_err(err("claiming due logs"))?;
        Ok(rows
            .iter()
            .map(|r| QueueMessage {
                log_id: r.get(0),
                lease: r.get(1),
            })
            .collect())
    }

    async fn release(&self, ids: &[LogId], now: SystemTime) -> Result<u64, StoreError> {
        self.client
            .execute(sql::RELEASE, &[&ids, &now])
            .await
            .map_err(err("releasing logs"))
    }
}

impl Ledger for PgStore {
    async fn claim(&self, msg: QueueMessage, now: SystemTime, lease_until: SystemTime) -> Result<Claim, StoreError> {
        let row = self
            .client
            .query_one(sql::CLAIM_LOG, &[&msg.log_id, &msg.lease, &now, &lease_until])
            .await
            .map_err(err("claiming a log"))?;
        let attempt: Option<i32> = row.get("attempt");
        let token: Option<i64> = row.get("lease");
        let status: Option<String> = row.get("status");
        Ok(match (attempt, token, status) {
            (Some(attempt), Some(token), _) => Claim::Claimed(Lease {
                log_id: msg.log_id,
                token,
                attempt,
            }),
            (_, _, Some(status)) => Claim::NotClaimable { status },
            _ => Claim::Unknown,
        })
    }

    async fn load(&self, id: LogId) -> Result<Option<LoadedLog>, StoreError> {
        let Some(r) = self
            .client
            .query_opt(sql::LOAD_LOG, &[&id])
            .await
            .map_err(err("loading a log"))?
        else {
            return Ok(None);
        };
        let definition = r.get::<_, bool>("has_automation").then(|| Definition {
            name: r.get("name"),
            is_active: r.get("is_active"),
            email: r.get::<_, Option<String>>("email_to").map(|to| EmailTemplates {
                from: r.get("email_from"),
                to,
                subject: r.get::<_, Option<String>>("email_subject").unwrap_or_default(),
                text: r.get("email_text"),
                html: r.get("email_html"),
            }),
            sms: r.get::<_, Option<String>>("sms_to").map(|to| SmsTemplates {
                to,
                body: r.get::<_, Option<String>>("sms_body").unwrap_or_default(),
            }),
        });
        let delivered: Vec<String> = r.get("delivered");
        Ok(Some(LoadedLog {
            automation_id: r.get("automation_id"),
            event: EventInfo {
                log_id: id,
                event: r.get("event"),
                old_status: r.get("old_status"),
                new_status: r.get("new_status"),
                subject_table: r.get("subject_table"),
                subject_id: r.get("subject_id"),
            },
            definition,
            delivered: delivered.iter().filter_map(|c| Channel::parse(c)).collect(),
        }))
    }

    async fn context(&self, id: LogId) -> Result<serde_json::Value, ContextError> {
        match self.client.query_one(sql::CONTEXT, &[&id]).await {
            Ok(row) => Ok(row.get(0)),
            Err(e) => match e.as_db_error() {
                // Errors of the definition or the data: a missing view or column, no row.
                Some(db) if !is_transient_sqlstate(db.code().code()) => {
                    Err(ContextError::Permanent(db.message().to_owned()))
                }
                _ => Err(ContextError::Store(StoreError::new("loading template variables", e))),
            },
        }
    }

    async fn delivery_started(
        &self,
        lease: &Lease,
        channel: Channel,
        recipient: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let n = self
            .client
            .execute(
                sql::DELIVERY_STARTED,
                &[&lease.log_id, &channel.as_str(), &recipient, &now, &lease.token],
            )
            .await
            .map_err(err("recording a delivery"))?;
        Ok(n == 1)
    }

    async fn delivery_finished(
        &self,
        lease: &Lease,
        channel: Channel,
        result: Result<&str, &Failure>,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let (status, message_id, error) = match result {
            Ok(message_id) => ("sent", Some(message_id), None),
            Err(f) => ("failed", None, Some(f.to_string())),
        };
        let n = self
            .client
            .execute(
                sql::DELIVERY_FINISHED,
                &[
                    &lease.log_id,
                    &channel.as_str(),
                    &status,
                    &message_id,
                    &error,
                    &now,
                    &lease.token,
                ],
            )
            .await
            .map_err(err("recording a delivery's result"))?;
        Ok(n == 1)
    }

    async fn finish(&self, lease: &Lease, result: &LogResult, now: SystemTime) -> Result<Option<String>, StoreError> {
        let (outcome, failure) = match result {
            LogResult::Sent => ("sent", None),
            LogResult::Failed(f) => ("failed", Some(f)),
            LogResult::Retry(f) => ("retry", Some(f)),
        };
        let error = failure.map(|f| f.message.as_str());
        let kind = failure.map(|f| f.kind.as_str());
        let code = failure.and_then(|f| f.code.as_deref());
        let row = self
            .client
            .query_opt(
                sql::FINISH_LOG,
                &[&lease.log_id, &lease.token, &outcome, &error, &kind, &code, &now],
            )
            .await
            .map_err(err("writing a log's result"))?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// SQLSTATE classes worth retrying: connection trouble (08), rollbacks such as
/// serialization failures (40), lack of resources (53), operator intervention such as a
/// shutdown (57), system errors (58).
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(&code[..2.min(code.len())], "08" | "40" | "53" | "57" | "58")
}

#[cfg(test)]
mod tests {
    #[test]
    fn transient_sqlstates() {
        for code in ["08006", "40001", "53300", "57P01", "58030"] {
            assert!(super::is_transient_sqlstate(code), "{code}");
        }
        for code in ["42P01", "42703", "P0002", "P0003", "22P02"] {
            assert!(!super::is_transient_sqlstate(code), "{code}");
        }
    }
}
