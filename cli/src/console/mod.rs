//! `herald console`: a read-only web console, server-rendered HTML on 127.0.0.1 only.
//!
//! Pages: `/` (each automation and how many logs stand where), `/instances` (a filtered list),
//! `/instances/{id}` (one instance's timeline, decisions with the values they read) and
//! `/automations/{name}` (the definition drawn as steps and branches, and as YAML).
//!
//! It cannot change anything: its session is `default_transaction_read_only`, it runs only the
//! SELECTs of `cli/sql/`, and it answers GET (and HEAD) only. Recipients are masked and
//! secrets left out as `herald show` does ([`crate::ledger::shown`]). Every value is escaped
//! by the templates; no page has a script, and the Content-Security-Policy allows none.

mod automation;
mod instances;
mod overview;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_shared::pg::Conn;
use herald_shared::recipient::redact;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::db::describe;
use crate::ledger::text;
use crate::{Failure, Out};

/// How long one page's statement may run before it ends as an error page.
const STATEMENT_TIMEOUT: &str = "30s";

/// Listens on 127.0.0.1:`port` (0: any free port), prints the address, and serves until the
/// process ends.
pub async fn serve(client: Arc<Conn>, port: u16, out: &mut Out<impl Write>) -> Result<(), Failure> {
    // Every transaction of this session is read-only, whatever a query says; times are UTC.
    client
        .batch_execute(&format!(
            "SET default_transaction_read_only = on; SET statement_timeout = '{STATEMENT_TIMEOUT}'; SET TimeZone = 'UTC'"
        ))
        .await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| Failure::Error(format!("listening on 127.0.0.1:{port}: {e}")))?;
    let at = listener
        .local_addr()
        .map_err(|e| Failure::Error(format!("listening on 127.0.0.1:{port}: {e}")))?;
    // Printed whatever --json says: it is how a person, or a test, finds the console.
    out.raw(&format!("console: http://{at}/\n"))?;
    axum::serve(listener, router(client))
        .await
        .map_err(|e| Failure::Error(format!("console: {e}")))
}

fn router(client: Arc<Conn>) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/instances", get(instances::list))
        .route("/instances/{id}", get(instances::timeline))
        .route("/automations/{name}", get(automation::page))
        .fallback(|| async { Page::NotFound("There is no such page.".into()) })
        .method_not_allowed_fallback(|| async {
            let body = layout(
                "Read-only",
                html! { h1 { "Read-only" } p { "The console only reads: it answers GET requests only." } },
            );
            (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")], body)
        })
        .layer(axum::middleware::from_fn(guard))
        .with_state(client)
}

/// Answers only requests addressed to this machine by name or loopback address (a page
/// elsewhere that points a name of its own at 127.0.0.1 cannot read the console), and
/// forbids scripts, framing and caching of every answer.
async fn guard(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let mut response = if local_host(host) {
        next.run(request).await
    } else {
        let body = layout(
            "Refused",
            html! { h1 { "Refused" } p { "The console answers only to http://127.0.0.1 or http://localhost." } },
        );
        (StatusCode::FORBIDDEN, body).into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `127.0.0.1`, `localhost` or `[::1]`, with any port (an SSH tunnel may use another).
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    matches!(name.to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "::1")
}

/// A page that could not be made: nothing by that path or id (404), or the database's
/// error (500, its message masked as logs are).
#[derive(Debug)]
pub(crate) enum Page {
    NotFound(String),
    Error(String),
}

impl From<tokio_postgres::Error> for Page {
    fn from(e: tokio_postgres::Error) -> Self {
        Page::Error(redact(&describe(&e)))
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            Page::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            Page::Error(m) => (StatusCode::INTERNAL_SERVER_ERROR, "Database error", m),
        };
        let body = layout(
            title,
            html! {
                h1 { (title) }
                @match self {
                    Page::NotFound(_) => p { (message) },
                    Page::Error(_) => pre.error { (message) },
                }
                p { a href="/" { "Back to the automations" } }
            },
        );
        (status, body).into_response()
    }
}

pub(crate) type Answer = Result<Html<String>, Page>;

const CSS: &str = "
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;color:#1d2430;background:#f6f7f9;margin:0}
header{background:#1d2430;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#fff;text-decoration:none}header .brand{font-weight:600}
main{padding:1em 1.5em;max-width:80em}
h1{font-size:1.4em;margin:.3em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
a{color:#1b5fc1}
table{border-collapse:collapse;background:#fff;border:1px solid #d8dce3}
th,td{padding:.3em .7em;text-align:left;border-bottom:1px solid #e6e9ee;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.zero{color:#9aa3af}td.nowrap{white-space:nowrap}td.error{min-width:20em}
code,pre{font:12.5px/1.4 ui-monospace,monospace}
pre{background:#fff;border:1px solid #d8dce3;padding:.7em;overflow:auto;white-space:pre-wrap}
pre.error,.error{color:#a12020}
.muted{color:#6b7480}
.status{display:inline-block;padding:0 .45em;border-radius:.3em;background:#e6e9ee;font-size:.9em}
.status.completed,.status.done,.status.active{background:#d9f2df}
.status.failed,.status.dead,.status.unknown{background:#f9d9d9}
.status.waiting,.status.pending,.status.paused,.status.decided{background:#fdf0c8}
form.filters{display:flex;gap:.8em;align-items:end;margin-bottom:1em;flex-wrap:wrap}
form.filters label{display:flex;flex-direction:column;font-size:.9em}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15em .8em;margin:.3em 0}
dl.kv dt{color:#6b7480}dl.kv dd{margin:0;white-space:pre-wrap;word-break:break-word;max-height:12em;overflow:auto}
ol.timeline{list-style:none;padding:0}
ol.timeline>li{background:#fff;border:1px solid #d8dce3;border-left:4px solid #9aa3af;margin:.5em 0;padding:.5em .8em}
ol.timeline>li.done{border-left-color:#2f9e50}ol.timeline>li.failed,ol.timeline>li.unknown{border-left-color:#c43c3c}
ol.timeline>li.decided{border-left-color:#d8a400}
.run-head{display:flex;gap:.8em;align-items:baseline;flex-wrap:wrap}
.step-id{font-weight:600}
ol.steps{list-style:none;padding:0;margin:.3em 0}
ol.steps>li{background:#fff;border:1px solid #d8dce3;border-radius:.3em;margin:.4em 0;padding:.45em .7em}
.arms{display:flex;gap:.8em;margin-top:.4em;flex-wrap:wrap}
.arm{flex:1;min-width:16em;border:1px dashed #b8c0cc;border-radius:.3em;padding:.3em .6em;background:#f6f7f9}
.arm h4{margin:.1em 0;font-size:.9em;color:#6b7480}
.type{color:#6b7480}
.label{color:#6b7480;font-size:.85em;margin-top:.3em;border-top:1px dashed #e6e9ee;padding-top:.2em}
";

/// A whole page: the header, and `body` under it.
pub(crate) fn layout(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    link rel="icon" href="data:,";
                    title { (title) " · Herald" }
                    style { (PreEscaped(CSS)) }
                }
                body {
                    header {
                        a.brand href="/" { "Herald" }
                        a href="/" { "Automations" }
                        a href="/instances" { "Instances" }
                        span.muted { "read-only" }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A status as a small label.
pub(crate) fn status(s: &str) -> Markup {
    html! { span class={ "status " (s) } { (s) } }
}

/// A JSON object as a list of its keys and values; anything else as text.
pub(crate) fn key_values(v: &serde_json::Value) -> Markup {
    match v {
        serde_json::Value::Object(o) if !o.is_empty() => html! {
            dl.kv {
                @for (k, v) in o {
                    dt { (k) }
                    dd { (text(v)) }
                }
            }
        },
        serde_json::Value::Null => html! {},
        other => html! { code { (text(other)) } },
    }
}

/// Query strings' values in links: what `encodeURIComponent` leaves alone, kept.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_answered() {
        for ok in [
            "127.0.0.1:8025",
            "localhost:9000",
            "LOCALHOST",
            "[::1]:8025",
            "127.0.0.1",
        ] {
            assert!(local_host(ok), "{ok}");
        }
        for no in [
            "",
            "evil.example",
            "evil.example:8025",
            "127.0.0.1.evil.example",
            "192.0.2.2:8025",
        ] {
            assert!(!local_host(no), "{no}");
        }
    }

    #[test]
    fn names_in_links_are_encoded_and_text_is_escaped() {
        assert_eq!(encode("a b&c/é"), "a%20b%26c%2F%C3%A9");
        let page = layout("<t>", html! { p { ("<script>alert('x')</script>") } }).0;
        assert!(page.contains("&lt;script&gt;alert('x')&lt;/script&gt;"), "{page}");
        assert!(!page.contains("<script>"));
        assert!(page.contains("<title>&lt;t&gt; · Herald</title>"));
    }
}
