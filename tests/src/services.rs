//! Postgres and moto as child processes of the test process. They are started from a
//! thread that lives as long as the process and get SIGKILL/SIGTERM when it dies, so a
//! test run never leaves servers behind.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Services {
    /// `postgres://…/postgres` of a role that may create databases.
    admin_url: String,
    moto_url: String,
}

impl Services {
    pub fn admin_url(&self) -> String {
        self.admin_url.clone()
    }

    /// The URL of database `name` on the same server.
    pub fn url_for(&self, name: &str) -> String {
        let (url, query) = match self.admin_url.split_once('?') {
            Some((url, q)) => (url, format!("?{q}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let (base, _) = url.rsplit_once('/').expect("DATABASE_URL names a database");
        format!("{base}/{name}{query}")
    }

    pub fn moto_url(&self) -> &str {
        &self.moto_url
    }
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// Starts (once) or finds the servers the tests need.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("herald-test-services".into())
            .spawn(move || {
                let started = start();
                tx.send(started).expect("test services receiver");
                // Children get a signal when the thread that spawned them ends: keep it.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the services thread");
        rx.recv()
            .expect("services thread")
            .unwrap_or_else(|e| panic!("starting test services: {e}"))
    })
}

fn start() -> Result<Services, String> {
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start_postgres()?,
    };
    let moto_url = match std::env::var("HERALD_MOTO_URL") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => start_moto()?,
    };
    Ok(Services { admin_url, moto_url })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_for_port(port: u16, what: &str, child: &mut std::process::Child) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("{what} did not open port {port} within 60 s"))
}

/// The user to run Postgres as: itself, unless it is root (initdb refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Makes the child run as `user` and die with its parent thread.
fn child_of_this_process(cmd: &mut Command, user: Option<(u32, u32)>, signal: libc::c_int) {
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid: a change of credentials clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("HERALD_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(tool)
}

fn start_postgres() -> Result<String, String> {
    remove_stale_clusters();
    let user = postgres_user();
    let dir = std::env::temp_dir().join(format!("herald-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = user {
        let c = std::ffi::CString::new(dir.as_os_str().to_str().unwrap()).unwrap();
        unsafe { libc::chown(c.as_ptr(), uid, gid) };
    }
    let data = dir.join("data");
    let mut initdb = Command::new(pg_bin("initdb"));
    initdb
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    child_of_this_process(&mut initdb, user, libc::SIGKILL);
    let out = initdb
        .output()
        .map_err(|e| format!("running initdb ({}): {e}", pg_bin("initdb").display()))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port()?;
    let mut pg = Command::new(pg_bin("postgres"));
    pg.args([
        "-D",
        data.to_str().unwrap(),
        "-p",
        &port.to_string(),
        "-k",
        dir.to_str().unwrap(),
    ])
    .args([
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
    ])
    .args([
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=300",
        "-c",
        "shared_buffers=128MB",
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?);
    // SIGQUIT: immediate shutdown, the backends follow.
    child_of_this_process(&mut pg, user, libc::SIGQUIT);
    let mut child = pg.spawn().map_err(|e| format!("starting postgres: {e}"))?;
    wait_for_port(port, "postgres", &mut child)?;
    // The port opens a moment before connections are accepted.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(pg_bin("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > until {
            return Err("postgres did not become ready within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    std::mem::forget(child);
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// Clusters of test processes that are gone.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("herald-test-pg-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_MOTO_SERVER") {
        return p.into();
    }
    let local = crate::repo_root().join(".tools/moto/bin/moto_server");
    if local.exists() {
        local
    } else {
        "moto_server".into()
    }
}

fn start_moto() -> Result<String, String> {
    let port = free_port()?;
    let mut cmd = Command::new(moto_server());
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    child_of_this_process(&mut cmd, None, libc::SIGKILL);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {} ({e}); run scripts/setup first", moto_server().display()))?;
    wait_for_port(port, "moto_server", &mut child)?;
    std::mem::forget(child);
    Ok(format!("http://127.0.0.1:{port}"))
}
