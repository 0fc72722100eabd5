//! The server the bench measures: a throwaway cluster of its own (fsync and synchronous
//! commit off: the bench measures CPU and lock paths, not the disk), or `DATABASE_URL`.

use std::time::{Duration, Instant};

use herald_tests::PgCluster;
use tokio_postgres::{Client, NoTls};

pub struct Server {
    admin_url: String,
    _cluster: Option<PgCluster>,
}

impl Server {
    pub fn start() -> Result<Self, String> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(Self {
                admin_url: url,
                _cluster: None,
            }),
            _ => {
                let cluster = PgCluster::start("bench")?;
                Ok(Self {
                    admin_url: cluster.admin_url(),
                    _cluster: Some(cluster),
                })
            }
        }
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        let (url, query) = match self.admin_url.split_once('?') {
            Some((u, q)) => (u, format!("?{q}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
        format!("{base}/{name}{query}")
    }

    /// A new, empty database (dropped first if a run before left it), with Herald's schema
    /// when `herald` is set.
    pub async fn database(&self, name: &str, herald: bool) -> Result<Db, String> {
        let admin = connect(&self.admin_url).await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {}", pg_error(&e)))?;
        }
        let url = self.url(name);
        let client = connect(&url).await?;
        if herald {
            herald_db::migrate(&client)
                .await
                .map_err(|e| format!("migrating {name}: {e}"))?;
        }
        Ok(Db { url, client })
    }
}

pub struct Db {
    pub url: String,
    pub client: Client,
}

impl Db {
    pub async fn exec(&self, sql: &str) -> Result<(), String> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{}\nin: {sql}", pg_error(&e)))
    }

    pub async fn count(&self, sql: &str) -> Result<i64, String> {
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| format!("{}\nin: {sql}", pg_error(&e)))?;
        Ok(row.get(0))
    }

    /// Rows inserted, updated and deleted in every user table so far, as the statistics
    /// collector sees them once every other session has ended.
    pub async fn rows_written(&self) -> Result<i64, String> {
        let sql = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables";
        // Sessions flush their counters when they end; wait until two reads agree.
        let until = Instant::now() + Duration::from_secs(5);
        let mut last = -1;
        loop {
            self.exec("SELECT pg_stat_clear_snapshot()").await?;
            let now = self.count(sql).await?;
            if now == last || Instant::now() > until {
                return Ok(now);
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Between runs: vacuum, fresh statistics, a checkpoint.
    pub async fn settle(&self) -> Result<(), String> {
        self.exec("VACUUM ANALYZE").await?;
        self.exec("CHECKPOINT").await
    }
}

pub async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A Postgres error with the server's message, when it sent one.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}
