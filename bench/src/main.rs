//! Herald's benchmark harness. Starts a throwaway Postgres (or uses `DATABASE_URL`), runs
//! every case with its baselines interleaved in the same run, prints one table and writes
//! the results as JSON. `--quick` runs each case once at a small size: it checks that the
//! harness works, not how fast anything is.

mod capture;
mod cycle;
mod db;
mod flows;
mod history;
mod latency;
mod peers;
mod proxy;
mod queue;
mod report;
mod size;
mod time;

use std::path::PathBuf;

use clap::Parser;

use crate::report::Row;

#[derive(Debug, Parser)]
#[command(about = "Measures Herald against its baselines and peer queues, in one run")]
struct Args {
    /// Each case once, at a small size (for CI: checks the harness, not the speed).
    #[arg(long)]
    quick: bool,
    /// Runs per case; each figure is their median (default 3, 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Only these cases (comma-separated): capture, queue (drain, ingest, round trips), cycle
    /// (the full cycle and the peer queues), flows (workflow instances), time (date triggers
    /// and schedules), latency, history, size.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

pub struct Settings {
    pub quick: bool,
    pub runs: usize,
    /// The repository's root.
    pub repo: PathBuf,
    /// Scratch files (pgbench scripts).
    pub work_dir: PathBuf,
}

impl Settings {
    /// A case's size: the full one, or the small one with `--quick`.
    pub fn size(&self, full: i64, quick: i64) -> i64 {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// Where cargo builds: `CARGO_TARGET_DIR` (relative to the repository), or target/.
    pub fn cargo_target(&self) -> PathBuf {
        let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
        self.repo.join(dir)
    }

    /// A Postgres program (`HERALD_PG_BIN`, or Debian's PostgreSQL 15).
    pub fn pg_bin(&self, tool: &str) -> PathBuf {
        let dir = std::env::var("HERALD_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        PathBuf::from(dir).join(tool)
    }
}

/// One line on stderr per step, so a long run shows where it is.
pub fn progress(line: &str) {
    eprintln!("bench: {line}");
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("bench: error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the bench crate has no parent folder")?
        .to_path_buf();
    let settings = Settings {
        quick: args.quick,
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        work_dir: repo.join("target/bench"),
        repo,
    };
    std::fs::create_dir_all(&settings.work_dir).map_err(|e| e.to_string())?;
    let wanted = |case: &str| args.only.is_empty() || args.only.iter().any(|c| c == case);
    let server = db::Server::start()?;
    progress(&format!(
        "{} run(s) per case{}",
        settings.runs,
        if settings.quick { ", quick sizes" } else { "" }
    ));

    let mut rows: Vec<Row> = Vec::new();
    if wanted("capture") {
        rows.extend(capture::run(&server, &settings).await?);
    }
    if wanted("queue") {
        rows.extend(queue::run(&server, &settings).await?);
    }
    if wanted("cycle") {
        rows.extend(cycle::run(&server, &settings).await?);
    }
    if wanted("flows") {
        rows.extend(flows::run(&server, &settings).await?);
    }
    if wanted("time") {
        rows.extend(time::run(&server, &settings).await?);
    }
    if wanted("latency") {
        rows.extend(latency::run(&server, &settings).await?);
    }
    if wanted("history") {
        rows.extend(history::run(&server, &settings).await?);
    }
    if wanted("size") {
        rows.extend(size::run(&server, &settings).await?);
    }

    println!("{}", report::table(&rows));
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let json = serde_json::json!({
        "quick": settings.quick,
        "runs": settings.runs,
        "postgres": "fsync=off, synchronous_commit=off, full_page_writes=off: CPU and lock paths, not durability",
        "results": rows,
    });
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("writing {}: {e}", args.json.display()))?;
    progress(&format!("results written to {}", args.json.display()));
    Ok(())
}
