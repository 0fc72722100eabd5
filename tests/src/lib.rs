//! The test harness: a throwaway Postgres cluster (or `DATABASE_URL`) and a moto server
//! (or `HERALD_MOTO_URL`), started once per test process; a template database migrated
//! once; a database of its own for every test.

mod aws;
mod services;

pub use aws::{lambda_context, lambda_context_until, Moto, SentEmail, SentSms};
pub use services::{services, PgCluster, Services};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio_postgres::{Client, Config, NoTls};

/// The repository's root folder.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Reads a file of the repository (fixtures, events, examples) as text.
pub fn repo_file(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// Connects and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// The migrated template database's name; migrated once per process (and, against a
/// shared server, once per schema version: the name carries a hash of the migrations).
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for m in herald_db::MIGRATIONS {
                m.sql.hash(&mut h);
            }
            for f in herald_db::SCHEMA {
                f.sql.hash(&mut h);
            }
            let name = format!("herald_template_{:016x}", h.finish());
            let admin = connect(&services().admin_url()).await;
            // Serialize template creation across processes sharing one server.
            admin.execute("SELECT pg_advisory_lock(4242)", &[]).await.unwrap();
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .unwrap()
                .is_some();
            if !exists {
                let building = format!("{name}_building");
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .unwrap();
                let c = connect(&services().url_for(&building)).await;
                herald_db::migrate(&c).await.expect("migrating the template database");
                drop(c);
                admin
                    .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .await
                    .unwrap();
            }
            admin.execute("SELECT pg_advisory_unlock(4242)", &[]).await.unwrap();
            name
        })
        .await
}

/// A number no other test using these servers has (test processes may share one Postgres
/// and one moto server): recipients, senders and queue names carry it. Below 1,000 for the
/// first thousand tests of a run, which keeps numbers made from it valid phone numbers.
pub async fn unique_tag() -> u32 {
    let admin = connect(&services().admin_url()).await;
    admin
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(4243);
             CREATE SEQUENCE IF NOT EXISTS herald_test_tags MAXVALUE 999999 CYCLE; COMMIT;",
        )
        .await
        .unwrap();
    let n: i64 = admin
        .query_one("SELECT nextval('herald_test_tags')", &[])
        .await
        .unwrap()
        .get(0);
    n as u32
}

/// A database of one test's own, copied from the migrated template and dropped after.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Arc<Client>,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::create(Some(template().await)).await
    }

    /// A database without Herald's schema.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "herald_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&services().admin_url()).await;
        let from = template.map(|t| format!(" TEMPLATE {t}")).unwrap_or_default();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}{from}"))
            .await
            .unwrap();
        let url = services().url_for(&name);
        let client = Arc::new(connect(&url).await);
        Self { name, url, client }
    }

    /// A tokio-postgres config for the functions under test.
    pub fn config(&self) -> Config {
        self.url.parse().unwrap()
    }

    /// A second, independent connection.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }

    /// Runs SQL (several statements allowed) and panics with the error if it fails.
    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\nin:\n{sql}"));
    }

    /// Pins `herald_now()` on this test's main connection.
    pub async fn set_now(&self, at: &str) {
        self.client
            .execute("SELECT set_config('herald.now', $1, false)", &[&at])
            .await
            .unwrap();
    }

    /// The value of a one-column, one-row query.
    pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\nin: {sql}"))
            .get(0)
    }

    /// The first column of every row of a query.
    pub async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> Vec<T> {
        let rows = self
            .client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\nin: {sql}"));
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Moves every captured event from the inbox to the ledger, as the scheduler does
    /// before it claims; returns how many it moved.
    pub async fn ingest(&self) -> i32 {
        self.scalar("SELECT herald_ingest()").await
    }

    /// `status` of every log, in id order.
    pub async fn statuses(&self) -> Vec<String> {
        self.column("SELECT status FROM automation_execution_logs ORDER BY id")
            .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop is not async: do it on a thread of its own with a runtime of its own.
        let name = self.name.clone();
        let admin_url = services().admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The ids of the messages a batch response reports as failed.
pub fn failed_ids(response: &aws_lambda_events::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

pub mod emf;
mod emulator;
pub mod fault;
mod herald;
pub mod hooks;
mod proxy;
pub use emulator::{log_file, Watch};
pub use herald::Herald;
pub use proxy::Proxy;
