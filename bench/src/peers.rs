//! graphile-worker and pg-boss (from npm, pinned in `bench/peers/package.json`) draining the
//! same number of no-op jobs on the same server, in the same run.

use std::path::Path;

use serde::Deserialize;

use crate::db::Server;
use crate::Settings;

/// The configurations the bench runs: graphile-worker's defaults, and both queues' best
/// documented settings. (pg-boss's defaults wait a poll interval after every fetch, so they
/// measure the interval, not the queue.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    GraphileDefault,
    GraphileBest,
    PgBossBest,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::GraphileDefault, Peer::GraphileBest, Peer::PgBossBest];

    /// The queue and the configuration, as `peers.mjs` takes them.
    fn args(self) -> [&'static str; 2] {
        match self {
            Peer::GraphileDefault => ["graphile", "default"],
            Peer::GraphileBest => ["graphile", "best"],
            Peer::PgBossBest => ["pgboss", "best"],
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Peer::GraphileDefault => "graphile-worker 0.18.0, defaults (concurrency 10)",
            Peer::GraphileBest => "graphile-worker 0.18.0, local queue 500 + batched completion, concurrency 24",
            Peer::PgBossBest => "pg-boss 12.35.0, batchSize 100, localConcurrency 24, burstWhenBatchFull",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    jobs_per_s: f64,
}

/// Installs the peers' packages once (`npm ci` into `bench/peers/node_modules`).
pub async fn install(dir: &Path) -> Result<(), String> {
    if dir.join("node_modules/graphile-worker").exists() && dir.join("node_modules/pg-boss").exists() {
        return Ok(());
    }
    crate::progress("installing graphile-worker and pg-boss from npm");
    let out = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .output()
        .await
        .map_err(|e| format!("running npm (Node.js is needed for the peer queues): {e}"))?;
    if !out.status.success() {
        return Err(format!("npm ci failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// One peer draining `n` no-op jobs in a database of its own: jobs per second, and rows
/// written per job.
pub async fn drain(server: &Server, settings: &Settings, peer: Peer, n: i64) -> Result<(f64, f64), String> {
    let [queue, config] = peer.args();
    let name = format!("bench_peer_{queue}_{config}");
    let db = server.database(&name, false).await?;
    let dir = settings.repo.join("bench/peers");
    let out = tokio::process::Command::new("node")
        .arg(dir.join("peers.mjs"))
        .args([queue, config, &db.url, &n.to_string()])
        .current_dir(&dir)
        .output()
        .await
        .map_err(|e| format!("running node: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} failed: {stdout}{}",
            peer.describe(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let answer: Answer = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("no result from {}: {stdout}", peer.describe()))?;
    let written = db.rows_written().await? as f64 / n as f64;
    Ok((answer.jobs_per_s, written))
}
