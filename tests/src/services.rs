//! Postgres and moto as child processes of the test process. Every child is spawned from
//! one thread that lives as long as the process and gets a signal when the process dies,
//! so a test run never leaves servers behind.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
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
        url_for(&self.admin_url, name)
    }

    pub fn moto_url(&self) -> &str {
        &self.moto_url
    }
}

fn url_for(admin_url: &str, name: &str) -> String {
    let (url, query) = match admin_url.split_once('?') {
        Some((url, q)) => (url, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let (base, _) = url.rsplit_once('/').expect("DATABASE_URL names a database");
    format!("{base}/{name}{query}")
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// Starts (once) or finds the servers the tests need.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| start().unwrap_or_else(|e| panic!("starting test services: {e}")))
}

fn start() -> Result<Services, String> {
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let cluster = PgCluster::start("shared")?;
            let url = cluster.admin_url();
            std::mem::forget(cluster);
            url
        }
    };
    let moto_url = match std::env::var("HERALD_MOTO_URL") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => start_moto()?,
    };
    Ok(Services { admin_url, moto_url })
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on the one thread that spawns the tests' child processes. A child gets its
/// parent-death signal when the thread that spawned it ends, so that thread lives as long
/// as the process.
pub(crate) fn on_spawner_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("herald-test-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .expect("spawner thread");
    rx.recv().expect("spawner thread answer")
}

/// Makes the child run as `user` and get `signal` when the spawner thread ends.
pub(crate) fn child_of_this_process(cmd: &mut Command, user: Option<(u32, u32)>, signal: libc::c_int) {
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

pub(crate) fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) -> Result<(), String> {
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

fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("HERALD_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(tool)
}

/// A throwaway Postgres cluster: initdb'd under the temp dir, run as a child process.
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    server: Mutex<Option<Child>>,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
}

impl PgCluster {
    /// A new cluster; `name` tells it apart from the process's other clusters.
    pub fn start(name: &str) -> Result<Self, String> {
        Self::start_with(name, false)
    }

    /// A cluster that also accepts TLS, with a server certificate for `localhost` and
    /// `127.0.0.1` from a CA of its own; returns it and the CA's PEM file.
    pub fn start_tls(name: &str) -> Result<(Self, PathBuf), String> {
        let cluster = Self::start_with(name, true)?;
        let ca = cluster.dir.join("ca.crt");
        Ok((cluster, ca))
    }

    fn start_with(name: &str, tls: bool) -> Result<Self, String> {
        remove_stale_clusters();
        let user = postgres_user();
        let dir = std::env::temp_dir().join(format!("herald-test-pg-{}-{name}", std::process::id()));
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
            ])
            .arg("--locale=C")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        child_of_this_process(&mut initdb, user, libc::SIGKILL);
        let out = initdb
            .output()
            .map_err(|e| format!("running initdb ({}): {e}", pg_bin("initdb").display()))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut settings = Vec::new();
        if tls {
            make_certificates(&dir, user)?;
            settings.push("ssl=on".to_owned());
            settings.push(format!("ssl_cert_file={}", dir.join("server.crt").display()));
            settings.push(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        let cluster = Self {
            dir,
            port: free_port()?,
            user,
            server: Mutex::new(None),
            settings,
        };
        cluster.run()?;
        Ok(cluster)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn url_for(&self, name: &str) -> String {
        url_for(&self.admin_url(), name)
    }

    fn run(&self) -> Result<(), String> {
        let (dir, port, user, settings) = (self.dir.clone(), self.port, self.user, self.settings.clone());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("postgres.log"))
            .map_err(|e| e.to_string())?;
        let mut child = on_spawner_thread(move || {
            let mut pg = Command::new(pg_bin("postgres"));
            pg.args([
                "-D",
                dir.join("data").to_str().unwrap(),
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
            .stderr(log);
            for setting in &settings {
                pg.args(["-c", setting]);
            }
            // SIGQUIT: immediate shutdown, the backends follow.
            child_of_this_process(&mut pg, user, libc::SIGQUIT);
            pg.spawn()
        })
        .map_err(|e| format!("starting postgres: {e}"))?;
        wait_for_port(self.port, "postgres", &mut child)?;
        // The port opens a moment before connections are accepted.
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if Instant::now() > until {
                return Err("postgres did not become ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and data.
    pub fn restart(&self) -> Result<(), String> {
        self.kill();
        self.run()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, and a server certificate it signed for `localhost` and `127.0.0.1`, whose key
/// only `user` may read.
pub(crate) fn make_certificates(dir: &Path, user: Option<(u32, u32)>) -> Result<(), String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    };
    std::fs::write(dir.join("san.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").map_err(|e| e.to_string())?;
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=Herald Test CA",
    ])?;
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ])?;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = user {
        for f in ["server.key", "server.crt"] {
            let c = std::ffi::CString::new(dir.join(f).to_str().unwrap()).unwrap();
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        }
    }
    Ok(())
}

/// Clusters of test processes that are gone.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("herald-test-pg-") {
            let pid = rest.split('-').next().unwrap_or_default();
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
    let mut child = on_spawner_thread(move || {
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        child_of_this_process(&mut cmd, None, libc::SIGKILL);
        cmd.spawn()
    })
    .map_err(|e| format!("starting {} ({e}); run scripts/setup first", moto_server().display()))?;
    wait_for_port(port, "moto_server", &mut child)?;
    std::mem::forget(child);
    Ok(format!("http://127.0.0.1:{port}"))
}
