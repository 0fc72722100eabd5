//! A TCP proxy in front of Postgres that counts round trips: each time the client sends
//! after the server has answered is one trip (pipelined messages sent together count once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counter {
    trips: AtomicU64,
    /// Whether the server spoke last.
    server_last: AtomicBool,
}

pub struct CountingProxy {
    pub port: u16,
    counter: Arc<Counter>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target_port: u16) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let counter = Arc::new(Counter::default());
        let c = counter.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = c.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if up.server_last.swap(false, Ordering::SeqCst) {
                            up.trips.fetch_add(1, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let down = c.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        down.server_last.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
        Ok(Self { port, counter, task })
    }

    /// Starts counting afresh (after the connection's start-up).
    pub fn reset(&self) {
        self.counter.trips.store(0, Ordering::SeqCst);
        self.counter.server_last.store(true, Ordering::SeqCst);
    }

    pub fn round_trips(&self) -> u64 {
        self.counter.trips.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
