//! A TCP proxy in front of a server (moto, Postgres), for fault tests: it can delay every
//! chunk the client sends, be down (refusing new connections and cutting open ones), lose
//! one Postgres reply after its statement committed, or hold every connection (a network
//! that drops packets without a reset).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct State {
    up: AtomicBool,
    /// The next Postgres reply that completes a command is swallowed, then the proxy goes
    /// down: the statement committed, the client never hears.
    lose_reply: AtomicBool,
    delay_ms: AtomicU64,
    /// Bumped when the proxy goes down, to cut the open connections.
    cut: watch::Sender<u64>,
    /// While true, connections stay open and new ones are taken, but nothing is passed on in
    /// either direction. Being a process, the proxy still has its kernel acknowledge what it
    /// reads: the client's TCP keepalives and user timeout see a live peer.
    held: watch::Sender<bool>,
}

pub struct Proxy {
    /// `http://127.0.0.1:PORT`, to use as an endpoint URL.
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (`http://host:port`) on the current runtime.
    pub async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            lose_reply: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            cut: watch::channel(0).0,
            held: watch::channel(false).0,
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !s.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(serve(client, target.clone(), s.clone()));
            }
        });
        Self { url, state, task }
    }

    /// Down: new connections are dropped at once, open ones are cut.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
        if !up {
            self.state.cut.send_modify(|n| *n += 1);
        }
    }

    /// Postgres only: the next reply in which a command completed (not a mere prepare) is
    /// swallowed whole, up to the server's ReadyForQuery (so the statement's transaction is
    /// over), and then the proxy goes down, cutting every connection, until `set_up(true)`.
    pub fn lose_next_reply(&self) {
        self.state.lose_reply.store(true, Ordering::SeqCst);
    }

    /// Holds every connection, open and new: what either side sends is read and kept, not
    /// passed on, until `set_held(false)`, when it goes on in order. Connections cut while
    /// held (`set_up(false)`) lose what was kept.
    pub fn set_held(&self, held: bool) {
        self.state.held.send_replace(held);
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::SeqCst)
    }

    /// Holds every chunk the client sends for this long before passing it on.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(client: TcpStream, target: String, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let mut cut = state.cut.subscribe();
    let generation = *cut.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if !pass(&state, generation).await || sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        // While a reply is awaited to be lost: what came of it so far. The client waits for
        // each reply's ReadyForQuery before it sends more, so a reply starts a message.
        let mut reply: Vec<u8> = Vec::new();
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !pass(&state, generation).await {
                break;
            }
            if !state.lose_reply.load(Ordering::SeqCst) {
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                continue;
            }
            reply.extend_from_slice(&buf[..n]);
            let Some(completes) = whole_reply(&reply) else {
                continue;
            };
            if completes {
                // A statement ran and its transaction ended: lose the answer, go down.
                state.lose_reply.store(false, Ordering::SeqCst);
                state.up.store(false, Ordering::SeqCst);
                state.cut.send_modify(|n| *n += 1);
                break;
            }
            // Only a prepare (no command ran): pass it on and wait for the next reply.
            if cw.write_all(&reply).await.is_err() {
                break;
            }
            reply.clear();
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(upstream, downstream) } => {}
        _ = cut.changed() => {}
    }
}

/// Waits out a hold; false when the connection was cut meanwhile (what it held is lost).
async fn pass(state: &State, generation: u64) -> bool {
    let _ = state.held.subscribe().wait_for(|held| !*held).await;
    *state.cut.borrow() == generation
}

/// Whether `bytes` (Postgres backend messages from the start of a reply) hold a whole
/// reply, up to its ReadyForQuery: `Some(true)` if a command completed in it.
fn whole_reply(bytes: &[u8]) -> Option<bool> {
    let mut at = 0;
    let mut completes = false;
    while at + 5 <= bytes.len() {
        let kind = bytes[at];
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().ok()?) as usize;
        if at + 1 + len > bytes.len() {
            return None;
        }
        match kind {
            b'C' => completes = true,
            b'Z' => return Some(completes),
            _ => {}
        }
        at += 1 + len;
    }
    None
}
