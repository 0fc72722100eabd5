//! The ledger in Postgres, over tokio-postgres. Every statement is a named file in
//! `shared/sql/`; values are always bound parameters.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Config, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{info, warn};

use crate::ledger::DueLogs;
use crate::model::{
    ContextError, Fired, Ingested, LogId, QueueMessage, Rescued, ScheduleDue, ScheduleFiring, StoreError,
};
use crate::receipt::Receipt;

mod sql {
    pub(crate) const CLAIM_DUE: &str = include_str!("../../sql/claim_due.sql");
    pub(crate) const RELEASE: &str = include_str!("../../sql/release.sql");
    pub(crate) const RESCUE: &str = include_str!("../../sql/rescue.sql");
    pub(crate) const INGEST: &str = include_str!("../../sql/ingest.sql");
    pub(crate) const FIRE_DATES: &str = include_str!("../../sql/fire_dates.sql");
    pub(crate) const DUE_SCHEDULES: &str = include_str!("../../sql/due_schedules.sql");
    pub(crate) const FIRE_SCHEDULE: &str = include_str!("../../sql/fire_schedule.sql");
    pub(crate) const APPLY_RECEIPTS: &str = include_str!("../../sql/apply_receipts.sql");
    pub(crate) const OLDEST_DUE: &str = include_str!("../../sql/oldest_due.sql");
    pub(crate) const FLOW_START: &str = include_str!("../../sql/flow_start.sql");
    pub(crate) const FLOW_WRITE: &str = include_str!("../../sql/flow_write.sql");
    pub(crate) const FLOW_CONTEXTS: &str = include_str!("../../sql/flow_contexts.sql");
}

mod flow;

mod tls;
pub use tls::{SslMode, Tls};

/// How long a connect, or one round trip on a connection, may take unless told otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection per container, opened lazily and re-opened when it was lost. Clones
/// share the connection.
#[derive(Clone)]
pub struct Database {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    client: Arc<Mutex<Option<Arc<Conn>>>>,
    /// Run on every new connection before its first statement.
    session_setup: Option<&'static str>,
    /// The longest a connect, or a round trip, may go unanswered (see [`Database::timeout`]).
    timeout: Duration,
}

/// The task that drives a connection being opened: stopped if the opening is given up on
/// (the socket is closed, not left waiting), unless [`StopOnDrop::keep`] took it back.
struct StopOnDrop(Option<tokio::task::AbortHandle>);

impl StopOnDrop {
    fn keep(mut self) -> tokio::task::AbortHandle {
        self.0.take().expect("kept once")
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// No answer in time: the connection is taken for lost (its packets dropped, no reset).
#[derive(Debug, thiserror::Error)]
#[error("no answer from Postgres within {0:?}")]
pub struct NoAnswer(pub Duration);

/// A connection and the statements prepared on it (named, so that each later use is a
/// single round trip).
pub struct Conn {
    client: Client,
    statements: [OnceCell<Statement>; Sql::COUNT],
    /// Set when a statement found the session ended (closed, or a FATAL error such as a
    /// terminated backend), or got no answer in time: the next caller opens a new
    /// connection instead of waiting for the client to notice.
    broken: AtomicBool,
    timeout: Duration,
    /// The task that drives the connection; stopped with a broken connection, so that a
    /// socket that will never answer is closed rather than left waiting.
    driver: tokio::task::AbortHandle,
}

/// The statements, by their place in `Conn::statements`.
#[derive(Clone, Copy)]
enum Sql {
    ClaimDue,
    Release,
    Rescue,
    Ingest,
    FireDates,
    DueSchedules,
    FireSchedule,
    ApplyReceipts,
    OldestDue,
    FlowStart,
    FlowWrite,
    FlowContexts,
}

impl Sql {
    /// How many there are (`FlowContexts` is the last).
    const COUNT: usize = Sql::FlowContexts as usize + 1;

    fn text(self) -> &'static str {
        match self {
            Sql::ClaimDue => sql::CLAIM_DUE,
            Sql::Release => sql::RELEASE,
            Sql::Rescue => sql::RESCUE,
            Sql::Ingest => sql::INGEST,
            Sql::FireDates => sql::FIRE_DATES,
            Sql::DueSchedules => sql::DUE_SCHEDULES,
            Sql::FireSchedule => sql::FIRE_SCHEDULE,
            Sql::ApplyReceipts => sql::APPLY_RECEIPTS,
            Sql::OldestDue => sql::OLDEST_DUE,
            Sql::FlowStart => sql::FLOW_START,
            Sql::FlowWrite => sql::FLOW_WRITE,
            Sql::FlowContexts => sql::FLOW_CONTEXTS,
        }
    }
}

impl Conn {
    fn new(client: Client, driver: tokio::task::AbortHandle, timeout: Duration) -> Self {
        Self {
            client,
            statements: Default::default(),
            broken: AtomicBool::new(false),
            timeout,
            driver,
        }
    }

    /// Whether this connection can still be used.
    fn usable(&self) -> bool {
        !self.client.is_closed() && !self.broken.load(Ordering::Relaxed)
    }

    /// A store error for a failed statement; marks the connection broken when the error
    /// says the session is over.
    fn fail(&self, context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError + '_ {
        move |e| {
            let fatal = e
                .as_db_error()
                .is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC"));
            if fatal || e.is_closed() {
                self.broken.store(true, Ordering::Relaxed);
            }
            StoreError::new(context, e)
        }
    }

    /// Waits for one round trip, at most the connection's timeout. A round trip that gets
    /// no answer in time marks the connection broken and fails with [`NoAnswer`], as a lost
    /// connection does: the write is retried on a new one (and, made again, a write whose
    /// commit landed is taken as made).
    async fn within<T>(&self, context: &'static str, round_trip: impl Future<Output = T>) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, round_trip).await.map_err(|_| {
            self.broken.store(true, Ordering::Relaxed);
            StoreError::new(context, NoAnswer(self.timeout))
        })
    }

    /// One statement's round trip, bounded by [`Conn::within`].
    async fn round_trip<T>(
        &self,
        context: &'static str,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        self.within(context, statement).await?.map_err(self.fail(context))
    }

    /// The statement, prepared on this connection the first time it is used.
    async fn statement(&self, which: Sql, context: &'static str) -> Result<&Statement, StoreError> {
        self.statements[which as usize]
            .get_or_try_init(|| self.round_trip(context, self.client.prepare(which.text())))
            .await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.broken.load(Ordering::Relaxed) {
            self.driver.abort();
        }
    }
}

/// A connection is used as its client; the statement cache rides along.
impl std::ops::Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Database {
    /// A database reached without TLS.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            tls: None,
            client: Arc::new(Mutex::new(None)),
            session_setup: None,
            timeout: DEFAULT_TIMEOUT,
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
            client: Arc::new(Mutex::new(None)),
            session_setup: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bounds every connect, and every round trip on a connection, to `timeout` (default
    /// [`DEFAULT_TIMEOUT`]). A connection that hangs (its packets dropped, no reset) then
    /// fails its statement in time, as one that was closed does, and is replaced. The socket
    /// is also told to give up on its own: TCP keepalives and a user timeout of about as
    /// long, unless the connection settings name their own.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// For sessions that only find rows by key (the executor's): sequential scans are
    /// turned off on each connection. Its statements are prepared once and their plans
    /// cached, and a plan made while a table was nearly empty (the step runs and attempts
    /// of a new ledger, or of one just cleaned out) would otherwise go on reading the whole
    /// table for every lookup as it grows, until the next ANALYZE.
    pub fn index_scans_only(mut self) -> Self {
        self.session_setup = Some("SET enable_seqscan = off");
        self
    }

    /// The open connection, or a new one if there is none or it broke.
    pub async fn client(&self) -> Result<Arc<Conn>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| c.usable()) {
            return Ok(Arc::clone(client));
        }
        if slot.is_some() {
            info!("database connection was closed; reconnecting");
        }
        let context = "connecting to Postgres";
        // The whole handshake is bounded, not only the socket's connect: a server that
        // accepts and then says nothing hangs there.
        let opened = tokio::time::timeout(self.timeout, async {
            let (client, driver) = match &self.tls {
                None => self.connect(NoTls).await?,
                Some(tls) => self.connect(tls.clone()).await?,
            };
            if let Some(setup) = self.session_setup {
                client
                    .batch_execute(setup)
                    .await
                    .map_err(|e| StoreError::new("setting up the database session", e))?;
            }
            Ok((client, driver.keep()))
        })
        .await;
        let (client, driver) = opened.map_err(|_| StoreError::new(context, NoAnswer(self.timeout)))??;
        let client = Arc::new(Conn::new(client, driver, self.timeout));
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// The connection settings, with the socket told to give up on a silent peer.
    fn socket_config(&self) -> Config {
        bounded(self.config.clone(), self.timeout)
    }

    async fn connect<T>(&self, tls: T) -> Result<(Client, StopOnDrop), StoreError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self
            .socket_config()
            .connect(tls)
            .await
            .map_err(|e| StoreError::new("connecting to Postgres", e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "database connection ended");
            }
        });
        Ok((client, StopOnDrop(Some(driver.abort_handle()))))
    }

    /// A connection of its own that listens on `channel`; every notification wakes the
    /// returned listener (notifications that arrive while nobody waits are kept as one).
    pub async fn listen(&self, channel: &str) -> Result<Listener, StoreError> {
        let context = "listening for captured events";
        let woken = Arc::new(tokio::sync::Notify::new());
        let listening = tokio::time::timeout(self.timeout, async {
            let (client, driver) = match &self.tls {
                None => self.listening(NoTls, woken.clone()).await?,
                Some(tls) => self.listening(tls.clone(), woken.clone()).await?,
            };
            client
                .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
                .await
                .map_err(|e| StoreError::new(context, e))?;
            driver.keep();
            Ok(client)
        });
        let client = listening
            .await
            .map_err(|_| StoreError::new(context, NoAnswer(self.timeout)))??;
        Ok(Listener { _client: client, woken })
    }

    async fn listening<T>(&self, tls: T, woken: Arc<tokio::sync::Notify>) -> Result<(Client, StopOnDrop), StoreError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, mut connection) = self
            .socket_config()
            .connect(tls)
            .await
            .map_err(|e| StoreError::new("connecting to Postgres", e))?;
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => woken.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "listening connection ended");
                        break;
                    }
                    None => break,
                }
            }
            // Whoever waits falls back to polling.
            woken.notify_one();
        });
        Ok((client, StopOnDrop(Some(driver.abort_handle()))))
    }

    /// A store over this database: each statement runs on the open connection, or on a
    /// new one when it was lost. Connects now, so that an unreachable database fails here.
    pub async fn store(&self) -> Result<PgStore, StoreError> {
        self.client().await?;
        Ok(PgStore { db: self.clone() })
    }
}

/// Wakes the scheduler when the capture functions notify (low-latency mode).
pub struct Listener {
    _client: Client,
    woken: Arc<tokio::sync::Notify>,
}

impl crate::model::Wakeups for Listener {
    async fn wait(&mut self, max: std::time::Duration) {
        let _ = tokio::time::timeout(max, self.woken.notified()).await;
    }
}

/// `config` with the socket bounded by about `timeout`: the connect, data left unacknowledged
/// (TCP user timeout), and an idle peer's silence (keepalives, probing every second, three
/// times). Settings the connection string gave are kept.
fn bounded(mut config: Config, timeout: Duration) -> Config {
    let timeout = timeout.max(Duration::from_secs(1));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(timeout);
    }
    // tokio-postgres's own default idle time, two hours, means the settings named none.
    if config.get_keepalives() && config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(timeout);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(1));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    config
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The Postgres implementation of the ledger traits.
#[derive(Clone)]
pub struct PgStore {
    db: Database,
}

impl DueLogs for PgStore {
    async fn ingest(&self, limit: i32) -> Result<Ingested, StoreError> {
        let context = "moving captured events to the ledger";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::Ingest, context).await?;
        let r = conn.round_trip(context, conn.client.query_one(stmt, &[&limit])).await?;
        Ok(Ingested {
            moved: r.get::<_, i32>(0) as u64,
            suppressed: r.get::<_, i32>(1) as u64,
        })
    }

    async fn fire_dates(&self, now: SystemTime) -> Result<Fired, StoreError> {
        let context = "firing date triggers";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::FireDates, context).await?;
        let r = conn.round_trip(context, conn.client.query_one(stmt, &[&now])).await?;
        let n = |i: usize| r.get::<_, i32>(i) as u64;
        Ok(Fired {
            fired: n(0),
            missed: n(1),
        })
    }

    async fn due_schedules(&self) -> Result<Vec<ScheduleDue>, StoreError> {
        let context = "reading schedules";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::DueSchedules, context).await?;
        let rows = conn.round_trip(context, conn.client.query(stmt, &[])).await?;
        Ok(rows
            .iter()
            .map(|r| ScheduleDue {
                automation_id: r.get(0),
                cron: r.get(1),
                zone: r.get(2),
                lateness: std::time::Duration::from_secs_f64(r.get::<_, f64>(3).max(0.0)),
                scanned_to: r.get(4),
            })
            .collect())
    }

    async fn fire_schedule(&self, f: &ScheduleFiring, now: SystemTime) -> Result<Fired, StoreError> {
        let context = "firing a schedule";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::FireSchedule, context).await?;
        let r = conn
            .round_trip(
                context,
                conn.client.query_one(
                    stmt,
                    &[&f.automation_id, &f.from, &f.to, &f.fire, &f.missed, &f.next, &now],
                ),
            )
            .await?;
        let n = |i: usize| r.get::<_, i32>(i) as u64;
        Ok(Fired {
            fired: n(0),
            missed: n(1),
        })
    }

    async fn rescue(&self, now: SystemTime) -> Result<Rescued, StoreError> {
        let context = "rescuing expired leases";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::Rescue, context).await?;
        let r = conn.round_trip(context, conn.client.query_one(stmt, &[&now])).await?;
        let n = |i: usize| r.get::<_, i32>(i) as u64;
        Ok(Rescued {
            requeued: n(0),
            resumed: n(1),
        })
    }

    async fn claim_due(
        &self,
        limit: i64,
        now: SystemTime,
        lease_until: SystemTime,
    ) -> Result<Vec<QueueMessage>, StoreError> {
        let context = "claiming due logs";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::ClaimDue, context).await?;
        let rows = conn
            .round_trip(context, conn.client.query(stmt, &[&now, &limit, &lease_until]))
            .await?;
        Ok(rows
            .iter()
            .map(|r| QueueMessage {
                log_id: r.get(0),
                lease: r.get(1),
            })
            .collect())
    }

    async fn release(&self, ids: &[LogId], now: SystemTime) -> Result<u64, StoreError> {
        let context = "releasing logs";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::Release, context).await?;
        conn.round_trip(context, conn.client.execute(stmt, &[&ids, &now])).await
    }

    async fn apply_receipts(&self, receipts: &[Receipt], now: SystemTime) -> Result<u64, StoreError> {
        let context = "applying receipts";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::ApplyReceipts, context).await?;
        let body = serde_json::to_value(receipts).map_err(|e| StoreError::new(context, e))?;
        let r = conn
            .round_trip(context, conn.client.query_one(stmt, &[&body, &now]))
            .await?;
        Ok(r.get::<_, i64>(0) as u64)
    }
}

impl PgStore {
    /// When the oldest log due at `now` became due; `None` when none is (see
    /// `sql/oldest_due.sql`).
    pub async fn oldest_due(&self, now: SystemTime) -> Result<Option<SystemTime>, StoreError> {
        let context = "reading the oldest due log";
        let conn = self.db.client().await?;
        let stmt = conn.statement(Sql::OldestDue, context).await?;
        let r = conn.round_trip(context, conn.client.query_one(stmt, &[&now])).await?;
        Ok(r.get(0))
    }
}

/// A context as `herald_try_context` answers it: the data, or why it could not be read.
fn context_of(answer: Option<serde_json::Value>) -> Result<serde_json::Value, ContextError> {
    match answer {
        Some(serde_json::Value::Object(mut answer)) => match answer.remove("context") {
            Some(c) => Ok(c),
            None => {
                let field = |k: &str| answer.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let (message, code) = (field("error"), field("sqlstate"));
                if is_transient_sqlstate(&code) {
                    Err(ContextError::Transient(format!("{message} (SQLSTATE {code})")))
                } else {
                    Err(ContextError::Permanent(message))
                }
            }
        },
        _ => Err(ContextError::Permanent("no template variables".into())),
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
    use std::time::Duration;

    #[test]
    fn sockets_give_up_on_a_silent_server_unless_the_settings_say_otherwise() {
        let secs = Duration::from_secs;
        // url → connect timeout, user timeout, keepalives (on, idle, interval, probes)
        let cases = [
            (
                "postgres://h/db",
                secs(3),
                (Some(secs(3)), Some(secs(3)), (true, secs(3), Some(secs(1)), Some(3))),
            ),
            (
                "postgres://h/db",
                Duration::from_millis(200),
                (Some(secs(1)), Some(secs(1)), (true, secs(1), Some(secs(1)), Some(3))),
            ),
            (
                "postgres://h/db?connect_timeout=20&tcp_user_timeout=9&keepalives_idle=30&keepalives_interval=5&keepalives_retries=9",
                secs(3),
                (Some(secs(20)), Some(secs(9)), (true, secs(30), Some(secs(5)), Some(9))),
            ),
            (
                "postgres://h/db?keepalives=0",
                secs(3),
                (Some(secs(3)), Some(secs(3)), (false, secs(2 * 60 * 60), Some(secs(1)), Some(3))),
            ),
        ];
        for (url, timeout, expected) in cases {
            let c = super::bounded(url.parse().unwrap(), timeout);
            let got = (
                c.get_connect_timeout().copied(),
                c.get_tcp_user_timeout().copied(),
                (
                    c.get_keepalives(),
                    c.get_keepalives_idle(),
                    c.get_keepalives_interval(),
                    c.get_keepalives_retries(),
                ),
            );
            assert_eq!(got, expected, "{url} with {timeout:?}");
        }
    }

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
