//! `cargo lambda watch`: the Lambda runtime emulator running the function binaries.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::repo_root;

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
pub fn log_file() -> PathBuf {
    let dir = repo_root().join("target/tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("emulator-watch-{}.log", std::process::id()))
}

/// `cargo lambda watch` in its own process group, killed with the group on drop.
pub struct Watch {
    child: std::process::Child,
    port: u16,
    path: String,
}

impl Watch {
    pub fn start(env: &[(&str, String)]) -> Self {
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
            .stdout(std::fs::File::create(log_file()).expect("creating the watch log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(log_file())
                    .expect("opening the watch log"),
            );
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

    /// `cargo lambda invoke FUNCTION --data-file FILE`, as it ran; killed after 180 s.
    pub fn invoke_output(&self, function: &str, data_file: &str) -> std::process::Output {
        let mut child = Command::new("cargo")
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running cargo lambda invoke");
        let until = Instant::now() + Duration::from_secs(180);
        while child.try_wait().expect("waiting for cargo lambda invoke").is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().expect("cargo lambda invoke output")
    }

    /// `cargo lambda invoke FUNCTION --data-file FILE`; returns the parsed response.
    pub fn invoke(&self, function: &str, data_file: &str) -> Value {
        let out = self.invoke_output(function, data_file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "invoke {function} failed: {stdout}\n{}\n(function logs: {})",
            String::from_utf8_lossy(&out.stderr),
            log_file().display()
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{function} answered non-JSON ({e}): {stdout}"))
    }

    /// SIGKILLs the running instances of function binary `name` started by this emulator;
    /// returns how many.
    pub fn kill_function(&self, name: &str) -> usize {
        // Where cargo builds: `CARGO_TARGET_DIR` (relative to the repository), or target/.
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), std::path::PathBuf::from);
        let binary = repo_root().join(target).join("debug").join(name);
        let mut killed = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
            if exe == binary && descends_from(pid, self.child.id()) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed += 1;
            }
        }
        killed
    }
}

/// Whether `ancestor` is `pid`'s parent, grandparent, ...
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    while pid > 1 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        else {
            return false;
        };
        pid = ppid.parse().unwrap_or(0);
        if pid == ancestor {
            return true;
        }
    }
    false
}

impl Watch {
    /// Stops the emulator and its functions (an invoke waiting on them then returns).
    pub fn stop(&self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
        let _ = self.child.wait();
    }
}
