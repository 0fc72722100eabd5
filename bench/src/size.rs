//! The functions as Lambda runs them: the arm64 release zip of each, and how long the
//! binary takes from process start to asking the runtime API for its first event, with a
//! reachable Postgres.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::db::Server;
use crate::report::Row;
use crate::Settings;

const FUNCTIONS: [(&str, &str); 2] = [("scheduler", "SchedulerFunction"), ("executor", "ExecutorFunction")];

/// The arm64 `bootstrap` of a function: from `sam build`, or from `cargo lambda build`
/// (run here when neither exists).
async fn bootstrap(settings: &Settings, bin: &str, sam_name: &str) -> Result<PathBuf, String> {
    let candidates = [
        settings.repo.join(".aws-sam/build").join(sam_name).join("bootstrap"),
        settings.cargo_target().join("lambda").join(bin).join("bootstrap"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    crate::progress(&format!("building the arm64 release of {bin} with cargo lambda"));
    let status = tokio::process::Command::new("cargo")
        .args(["lambda", "build", "--release", "--arm64", "--bin", bin])
        .current_dir(&settings.repo)
        .status()
        .await
        .map_err(|e| format!("running cargo lambda (scripts/setup installs it): {e}"))?;
    if !status.success() {
        return Err(format!("cargo lambda build of {bin} failed"));
    }
    Ok(candidates[1].clone())
}

/// The size of `file` zipped as Lambda takes it (deflate, by Python's zipfile).
async fn zipped_size(file: &Path, work: &Path) -> Result<u64, String> {
    let zip = work.join("function.zip");
    let _ = std::fs::remove_file(&zip);
    let script = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as z:\n    z.write(sys.argv[1], 'bootstrap')\n";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .arg(&zip)
        .output()
        .await
        .map_err(|e| format!("running python3 to zip: {e}"))?;
    if !out.status.success() {
        return Err(format!("zipping failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::metadata(&zip).map(|m| m.len()).map_err(|e| e.to_string())
}

/// Milliseconds from spawning the native binary to its first `GET .../invocation/next`.
async fn start_time(binary: &Path, database_url: &str) -> Result<f64, String> {
    let api = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = api.local_addr().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("DATABASE_URL", database_url)
        .env("HERALD_QUEUE_URL", "http://127.0.0.1:9/000000000000/bench")
        .env(
            "HERALD_RECEIPTS_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/bench-receipts",
        )
        .env("HERALD_FROM_ADDRESS", "bench@example.com")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let asked = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut conn, _) = api.accept().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        if line.contains("/runtime/invocation/next") {
            Ok(started.elapsed())
        } else {
            Err(format!("unexpected first request: {line}"))
        }
    })
    .await
    .map_err(|_| format!("{} did not ask for an event within 30 s", binary.display()))??;
    let _ = child.kill().await;
    Ok(asked.as_secs_f64() * 1000.0)
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (bin, sam_name) in FUNCTIONS {
        let path = bootstrap(settings, bin, sam_name).await?;
        let size = zipped_size(&path, &settings.work_dir).await? as f64 / 1_000_000.0;
        crate::progress(&format!("size: {bin} {size:.2} MB zipped ({})", path.display()));
        rows.push(
            Row::new("function size", format!("{bin}, arm64 release zip"), vec![size], "MB")
                .bar("≤ 10 MB")
                .note(format!(
                    "from {}",
                    path.strip_prefix(&settings.repo).unwrap_or(&path).display()
                )),
        );
    }
    // Start-up is measured on this machine's native build of the same code.
    let profile = if settings.quick { "debug" } else { "release" };
    let mut args = vec!["build", "--quiet", "--bin", "scheduler", "--bin", "executor"];
    if !settings.quick {
        args.push("--release");
    }
    let status = tokio::process::Command::new("cargo")
        .args(&args)
        .current_dir(&settings.repo)
        .status()
        .await
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("building the functions failed".into());
    }
    let db = server.database("bench_start", true).await?;
    for (bin, _) in FUNCTIONS {
        let binary = settings.cargo_target().join(profile).join(bin);
        let mut times = Vec::new();
        for _ in 0..settings.runs.max(3) {
            times.push(start_time(&binary, &db.url).await?);
        }
        crate::progress(&format!("start: {bin} {times:?} ms"));
        rows.push(
            Row::new(
                "function start",
                format!("{bin}, process start → first event request"),
                times,
                "ms",
            )
            .note(format!(
                "native {profile} build, runtime API served by the bench, Postgres reachable"
            )),
        );
    }
    Ok(rows)
}
