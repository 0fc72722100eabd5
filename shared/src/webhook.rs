//! Webhooks: an HTTPS POST of a JSON body, signed the Standard Webhooks way, to an address
//! that is checked after DNS resolution.
//!
//! Signing: `webhook-id` (stable for one instance's step, so a receiver can drop repeats),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` = `v1,` + base64 of
//! HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the secret's bytes (`whsec_` +
//! base64, as Standard Webhooks libraries make them).
//!
//! The guard: a workflow's URL comes from its author and its templates from data, so the
//! client refuses to reach this machine, its network or the cloud's metadata service:
//! loopback, private, shared, link-local and unspecified addresses, IPv6 unique-local and
//! link-local, the EC2 metadata addresses, and IPv4-mapped forms of all of them. Names are
//! resolved first and only the allowed addresses are connected to, so a name that resolves
//! to a private address is refused however it is spelt. An allow-list of networks opens
//! chosen ones (private endpoints, tests). No proxy is used and redirects are not followed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use serde_json::Value as Json;
use sha2::Sha256;

use crate::clock::Clock;
use crate::model::{ErrorKind, Failure};

/// How much of a response is read; a longer body is cut here (and is then not read as JSON).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of a response's text is kept in the ledger.
pub const STORED_RESPONSE_CHARS: usize = 2048;

/// A webhook signing secret: `whsec_` followed by base64 of 24 to 64 random bytes.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "a webhook secret is whsec_ followed by base64".to_owned())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("a webhook secret holds 24 to 64 bytes, not {}", key.len()));
        }
        Ok(Self(key))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// The `webhook-signature` header for one message.
pub fn signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.0).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Why an address may not be reached, or `None` when it may.
pub(crate) fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("the cloud metadata service")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the cloud metadata service")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (private)")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast")
    } else {
        None
    }
}

/// Which addresses a webhook may reach: every public one, and the allow-listed networks.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
}

impl Guard {
    /// Reads an allow-list: networks or addresses separated by commas
    /// (`"10.1.0.0/16, 127.0.0.1"`); empty allows nothing more than public addresses.
    pub fn parse(allow: &str) -> Result<Self, String> {
        let allow = allow
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{s}` in the webhook allow-list is not an address or a network"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// `Err` with the reason when `ip` may not be reached.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), String> {
        match forbidden(ip) {
            Some(_) if self.allow.iter().any(|net| net.contains(&ip)) => Ok(()),
            Some(why) => Err(format!("{ip} is {why}; webhooks only reach public addresses")),
            None => Ok(()),
        }
    }
}

/// Resolves names for the client, keeping only the addresses the guard allows.
struct GuardedResolver(Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match guard.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no address"));
                return Err(Box::new(Refused(format!("{host}: {why}"))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// One webhook call.
#[derive(Debug, Clone)]
pub struct Call {
    pub url: String,
    /// Stable for an instance's step: the receiver drops repeats by it. No `.` in it.
    pub id: String,
    pub body: String,
    pub timeout: Duration,
}

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The start of the response's text, at most [`STORED_RESPONSE_CHARS`] characters.
    pub body: String,
    /// The response, when it was JSON and no longer than [`MAX_RESPONSE_BYTES`].
    pub json: Option<Json>,
}

/// Why a webhook did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    /// Never sent: the address or the URL was refused.
    #[error("webhook refused: {0}")]
    Refused(String),
    /// Never sent: no connection could be made.
    #[error("webhook could not connect: {0}")]
    Connect(String),
    /// Sent, or perhaps sent, with no answer in time: the receiver may have it.
    #[error("webhook sent but not answered: {0}")]
    NoAnswer(String),
    /// The receiver answered with a status outside 2xx.
    #[error("webhook answered {}: {}", .0.status, .0.body)]
    Status(Answer),
}

impl WebhookError {
    /// Whether the receiver may have the message (so a repeat must carry the same id).
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, WebhookError::NoAnswer(_) | WebhookError::Status(_))
    }

    /// Permanent or transient, as the step's retries see it: 408, 429 and 5xx answers, lost
    /// connections and timeouts may pass; refusals, redirects and other 4xx will not.
    pub fn failure(&self) -> Failure {
        let kind = match self {
            WebhookError::Refused(_) => ErrorKind::Permanent,
            WebhookError::Connect(_) | WebhookError::NoAnswer(_) => ErrorKind::Transient,
            WebhookError::Status(a) if a.status >= 500 || a.status == 408 || a.status == 429 => ErrorKind::Transient,
            WebhookError::Status(_) => ErrorKind::Permanent,
        };
        Failure {
            kind,
            code: match self {
                WebhookError::Status(a) => Some(a.status.to_string()),
                _ => None,
            },
            message: self.to_string(),
        }
    }
}

/// Sends webhooks; build one per process and share it.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    guard: Arc<Guard>,
}

impl WebhookClient {
    /// A client whose connections the guard checks. `roots` are extra certificate
    /// authorities (PEM) to trust besides the system's, for private endpoints and tests.
    pub fn new(guard: Guard, roots: &[Vec<u8>]) -> Result<Self, String> {
        let guard = Arc::new(guard);
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")));
        for pem in roots {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| format!("a webhook root certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        Ok(Self { client, guard })
    }

    /// POSTs `call`, signed with `secret` at `timestamp` (Unix seconds).
    pub async fn post(&self, call: &Call, secret: &WebhookSecret, timestamp: i64) -> Result<Answer, WebhookError> {
        let url = reqwest::Url::parse(&call.url).map_err(|e| WebhookError::Refused(format!("`{}`: {e}", call.url)))?;
        if url.scheme() != "https" {
            return Err(WebhookError::Refused(format!("`{}` is not https", call.url)));
        }
        // The resolver is not asked about addresses written in the URL itself.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(WebhookError::Refused(format!("`{}` names no host", call.url))),
        };
        if let Some(ip) = literal {
            self.guard.check(ip).map_err(WebhookError::Refused)?;
        }
        let response = self
            .client
            .post(url)
            .timeout(call.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &call.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature(secret, &call.id, timestamp, &call.body))
            .body(call.body.clone())
            .send()
            .await
            .map_err(sending_error)?;
        let status = response.status().as_u16();
        let is_json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let (bytes, complete) = read_bounded(response).await.map_err(sending_error)?;
        let text = String::from_utf8_lossy(&bytes);
        let answer = Answer {
            status,
            body: text.chars().take(STORED_RESPONSE_CHARS).collect(),
            json: (is_json && complete)
                .then(|| serde_json::from_slice(&bytes).ok())
                .flatten(),
        };
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(WebhookError::Status(answer))
        }
    }
}

/// Where signing secrets come from: Secrets Manager in the functions.
pub(crate) trait SecretSource: Sync {
    /// The secret's text, by name or ARN.
    fn secret(&self, id: &str) -> impl Future<Output = Result<String, Failure>> + Send;
}

/// Sends a workflow's webhook steps.
pub trait WebhookSender: Sync {
    /// POSTs `body` to `url`, signed with the secret `secret_id` names, under the repeat id
    /// `id`; the output is `{"status": n, "json": answer}` for a JSON answer, else
    /// `{"status": n, "body": "the start of the answer"}`.
    fn send(&self, step: &WebhookStep<'_>) -> impl Future<Output = Result<Json, Failure>> + Send;
}

/// One webhook step, made ready.
#[derive(Debug, Clone, Copy)]
pub struct WebhookStep<'a> {
    pub url: &'a str,
    pub body: &'a str,
    pub secret_id: &'a str,
    pub timeout: Duration,
    /// Stable for an instance's step.
    pub id: &'a str,
}

/// The client, its secrets and the clock that dates signatures.
pub struct Webhooks<'a, S> {
    pub client: &'a WebhookClient,
    pub secrets: &'a S,
    pub clock: &'a dyn Clock,
}

impl<S: SecretSource> WebhookSender for Webhooks<'_, S> {
    async fn send(&self, step: &WebhookStep<'_>) -> Result<Json, Failure> {
        let text = self.secrets.secret(step.secret_id).await?;
        let secret = WebhookSecret::parse(&text)
            .map_err(|e| Failure::permanent(format!("the signing secret {}: {e}", step.secret_id)))?;
        let call = Call {
            url: step.url.to_owned(),
            id: step.id.to_owned(),
            body: step.body.to_owned(),
            timeout: step.timeout,
        };
        let at = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let answer = self.client.post(&call, &secret, at).await.map_err(|e| e.failure())?;
        Ok(match answer.json {
            Some(json) => serde_json::json!({"status": answer.status, "json": json}),
            None => serde_json::json!({"status": answer.status, "body": answer.body}),
        })
    }
}

/// The response's first [`MAX_RESPONSE_BYTES`], and whether that was all of it.
async fn read_bounded(mut response: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, false));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, true))
}

fn sending_error(e: reqwest::Error) -> WebhookError {
    let chain = error_chain(&e);
    if let Some(refused) = source_of::<Refused>(&e) {
        WebhookError::Refused(refused.0.clone())
    } else if e.is_connect() {
        WebhookError::Connect(chain)
    } else {
        // A timeout or a broken connection after the request went out.
        WebhookError::NoAnswer(chain)
    }
}

fn source_of<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        at = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut at = e.source();
    while let Some(err) = at {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        at = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let got = signature(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_read_or_refused() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(WebhookSecret::parse("whsec_not base64!")
            .unwrap_err()
            .contains("base64"));
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("24 to 64 bytes, not 5"));
        assert_eq!(
            format!(
                "{:?}",
                WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "WebhookSecret(…)"
        );
    }

    #[test]
    fn the_guard_refuses_this_machine_its_networks_and_the_metadata_service() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("loopback")),
            ("127.8.9.10", Some("loopback")),
            ("::1", Some("loopback")),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("169.254.169.254", Some("the cloud metadata service")),
            ("fd00:ec2::254", Some("the cloud metadata service")),
            ("169.254.1.1", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("10.0.0.1", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("shared address space (private)")),
            ("fc00::1", Some("unique-local (private)")),
            ("fd12:3456::1", Some("unique-local (private)")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("the cloud metadata service")),
            ("::ffff:10.1.2.3", Some("private")),
            ("255.255.255.255", Some("broadcast or multicast")),
            ("224.0.0.1", Some("broadcast or multicast")),
            ("93.184.215.14", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:93.184.215.14", None),
        ];
        for (ip, want) in cases {
            assert_eq!(forbidden(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn the_allow_list_opens_only_what_it_names() {
        let guard = Guard::parse("127.0.0.1, 10.1.0.0/16").unwrap();
        assert!(guard.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(guard.check("10.1.200.3".parse().unwrap()).is_ok());
        let refused = guard.check("10.2.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(refused, "10.2.0.1 is private; webhooks only reach public addresses");
        assert!(guard.check("169.254.169.254".parse().unwrap()).is_err());
        assert!(Guard::parse("").unwrap().check("127.0.0.1".parse().unwrap()).is_err());
        assert!(Guard::parse("localhost").unwrap_err().contains("`localhost`"));
    }

    #[test]
    fn errors_are_sorted_for_retries() {
        let status = |s| {
            WebhookError::Status(Answer {
                status: s,
                body: String::new(),
                json: None,
            })
        };
        let cases = [
            (WebhookError::Refused("x".into()), ErrorKind::Permanent, false),
            (WebhookError::Connect("x".into()), ErrorKind::Transient, false),
            (WebhookError::NoAnswer("x".into()), ErrorKind::Transient, true),
            (status(500), ErrorKind::Transient, true),
            (status(503), ErrorKind::Transient, true),
            (status(429), ErrorKind::Transient, true),
            (status(408), ErrorKind::Transient, true),
            (status(400), ErrorKind::Permanent, true),
            (status(410), ErrorKind::Permanent, true),
            (status(301), ErrorKind::Permanent, true),
        ];
        for (error, kind, arrived) in cases {
            assert_eq!(error.failure().kind, kind, "{error}");
            assert_eq!(error.may_have_arrived(), arrived, "{error}");
        }
    }
}
