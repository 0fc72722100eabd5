//! A local HTTPS server that receives webhooks: it records every request and answers each
//! as the test told it to. Its certificate is signed by a CA made for it; clients trust
//! that CA through `ca_pem`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, content type and body.
    With(u16, &'static str, String),
    /// Reads the request, then closes the connection without a word.
    Close,
    /// Reads the request and never answers.
    Hang,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub struct WebhookServer {
    pub port: u16,
    /// The CA that signed the server's certificate, as PEM.
    pub ca_pem: Vec<u8>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    received: Arc<Mutex<Vec<Received>>>,
    _dir: TempDir,
}

impl WebhookServer {
    /// Starts on 127.0.0.1, a free port. Requests beyond the queued replies get 200 `{}`.
    pub async fn start() -> Self {
        let dir = TempDir::new("hooks");
        crate::services::make_certificates(&dir.0, None).expect("making test certificates");
        let read = |f: &str| std::fs::read(dir.0.join(f)).unwrap();
        let certs = vec![CertificateDer::from_pem_slice(&read("server.crt")).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(&read("server.key")).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let replies: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (r, rec) = (replies.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, r, rec) = (acceptor.clone(), r.clone(), rec.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(request) = read_request(&mut tls).await else {
                        return;
                    };
                    rec.lock().unwrap().push(request);
                    let reply =
                        r.lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or(Reply::With(200, "application/json", "{}".into()));
                    match reply {
                        Reply::With(status, content_type, body) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = tls.write_all(head.as_bytes()).await;
                            let _ = tls.write_all(body.as_bytes()).await;
                            let _ = tls.shutdown().await;
                        }
                        Reply::Close => drop(tls),
                        Reply::Hang => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Self {
            port,
            ca_pem: read("ca.crt"),
            replies,
            received,
            _dir: dir,
        }
    }

    /// Queues the answer to the next request not yet answered.
    pub fn reply(&self, reply: Reply) {
        self.replies.lock().unwrap().push_back(reply);
    }

    /// Every request so far, in the order they arrived.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn read_request<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

/// A folder under the temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-test-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
