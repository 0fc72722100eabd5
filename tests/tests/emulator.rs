//! The built function binaries under cargo-lambda's Lambda runtime emulator, answering the
//! sample events of `events/`. No Docker: `cargo lambda watch` plays the Lambda service.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::{repo_root, Herald};
use serde_json::{json, Value};

fn cargo_lambda() -> PathBuf {
    let local = repo_root().join(".tools/cargo-lambda/bin");
    if local.join("cargo-lambda").exists() {
        return local;
    }
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| d.join("cargo-lambda").exists()));
    found.expect("cargo-lambda is not installed: run scripts/setup")
}

/// Where the emulator and the functions write their logs.
fn log_file() -> PathBuf {
    let dir = repo_root().join("target/tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("emulator-watch.log")
}

/// `cargo lambda watch` in its own process group, killed with the group on drop.
struct Watch {
    child: std::process::Child,
    port: u16,
    path: String,
}

impl Watch {
    fn start(env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = format!(
            "{}:{}",
            cargo_lambda().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("cargo");
        cmd.current_dir(repo_root())
            .args(["lambda", "watch", "--ignore-changes", "--quiet"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string()])
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_file()).expect("creating the watch log"));
        for (k, v) in env {
            cmd.arg("--env-var").arg(format!("{k}={v}"));
        }
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting cargo lambda watch");
        let watch = Watch { child, port, path };
        let until = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "cargo lambda watch did not listen within 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        watch
    }

    /// `cargo lambda invoke FUNCTION --data-file FILE`; returns the parsed response.
    fn invoke(&self, function: &str, data_file: &str) -> Value {
        let out = Command::new("cargo")
            .current_dir(repo_root())
            .env("PATH", &self.path)
            .args([
                "lambda",
                "invoke",
                function,
                "--data-file",
                data_file,
                "--output-format",
                "json",
            ])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port", &self.port.to_string()])
            .output()
            .expect("running cargo lambda invoke");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "invoke {function} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{function} answered non-JSON ({e}): {stdout}"))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn the_function_binaries_answer_the_sample_events() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // GIVEN a database with one pending log (id 1: the sample SQS event names it)
    let h = rt.block_on(async {
        let h = Herald::with_jobs_example().await;
        h.db.exec("UPDATE jobs SET status = 'completed' WHERE id = 1").await;
        h
    });
    let env = [
        ("DATABASE_URL", h.db.url.clone()),
        ("HERALD_QUEUE_URL", h.queue_url.clone()),
        ("HERALD_FROM_ADDRESS", h.from.clone()),
        ("AWS_ENDPOINT_URL", h.moto.url.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("RUST_LOG", "info".into()),
    ];
    let watch = Watch::start(&env);

    // WHEN the scheduler binary gets the EventBridge event
    let summary = watch.invoke("scheduler", "events/scheduled.json");
    // THEN it claimed and queued the log
    assert_eq!(summary["claimed"], 1, "{summary}");
    assert_eq!(summary["sent"], 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["stopped_by"], "drained", "{summary}");

    // WHEN the executor binary gets the good SQS event
    let response = watch.invoke("executor", "events/sqs-good.json");
    // THEN no item failed, and the log was sent
    assert_eq!(response, json!({"batchItemFailures": []}));
    rt.block_on(async {
        assert_eq!(h.db.statuses().await, ["sent"]);
        assert_eq!(h.moto.emails_from(&h.from).await.len(), 1);
    });

    // WHEN it gets the malformed one
    let response = watch.invoke("executor", "events/sqs-malformed.json");
    // THEN that message, and only it, is reported back for SQS to retry / dead-letter
    assert_eq!(
        response,
        json!({"batchItemFailures": [{"itemIdentifier": "7b1f0a52-4c3e-4f43-9d5a-2f0c1e9a0bad"}]})
    );

    // AND the good event again is a no-op: the log was already sent
    assert_eq!(
        watch.invoke("executor", "events/sqs-good.json"),
        json!({"batchItemFailures": []})
    );
    rt.block_on(async { assert_eq!(h.moto.emails_from(&h.from).await.len(), 1) });
    drop(watch);
}
