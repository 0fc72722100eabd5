//! `herald console` as a person sees it: the real binary against a ledger filled by the real
//! scheduler and executor (against moto), its pages opened in headless Chromium, and what the
//! rendered DOM shows checked. Chromium is Debian's (`scripts/setup` installs it); without it
//! this test fails, saying so.

use std::io::ErrorKind;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use herald_tests::Herald;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// How long a process may take to answer before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(120);

const NO_CHROMIUM: &str =
    "chromium is not installed: run scripts/setup (it installs Debian's chromium, which this test drives headless)";

/// The console, started as `herald console --port 0`; killed when dropped.
struct Console {
    child: Child,
    /// The address it printed: `http://127.0.0.1:PORT/`.
    url: String,
    /// Its stdout, kept open so that it can still write.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Console {
    async fn start(database_url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["console", "--port", "0"])
            .env("DATABASE_URL", database_url)
            .env("DATABASE_SSLMODE", "disable")
            .env_remove("DATABASE_SSLROOTCERT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting herald console");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // The first line says where it listens; it is printed once the port is bound.
        let first = timeout(PATIENCE, lines.next_line())
            .await
            .expect("herald console printed no address in time")
            .expect("reading herald console's output")
            .expect("herald console ended without printing its address");
        let url = first
            .strip_prefix("console: ")
            .unwrap_or_else(|| panic!("herald console's first line is not its address: {first:?}"))
            .to_string();
        Self {
            child,
            url,
            _stdout: lines,
        }
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> &str {
        self.url
            .strip_prefix("http://")
            .and_then(|s| s.strip_suffix('/'))
            .expect("an http address with a trailing slash")
    }

    fn port(&self) -> u16 {
        self.addr().rsplit(':').next().unwrap().parse().unwrap()
    }

    fn page(&self, path: &str) -> String {
        format!("{}{}", self.url, path.trim_start_matches('/'))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn chromium_command() -> Command {
    let mut c = Command::new("chromium");
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

/// Fails the test at once, saying what to do, when Chromium is missing.
async fn require_chromium() {
    match chromium_command().arg("--version").output().await {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{NO_CHROMIUM}\n(chromium --version: {})",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{NO_CHROMIUM}"),
        Err(e) => panic!("{NO_CHROMIUM}\n(running chromium: {e})"),
    }
}

/// The DOM Chromium renders for `url`, headless, with a profile of its own. The flags keep
/// it off the network it would otherwise reach for (component updates, sync, Google hosts).
async fn chromium(url: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let profile = std::env::temp_dir().join(format!(
        "herald-console-chromium-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let run = chromium_command()
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output();
    let out = match timeout(PATIENCE, run).await {
        Err(_) => panic!("chromium did not render {url} within {PATIENCE:?}"),
        Ok(Err(e)) if e.kind() == ErrorKind::NotFound => panic!("{NO_CHROMIUM}"),
        Ok(Err(e)) => panic!("running chromium: {e}"),
        Ok(Ok(o)) => o,
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8(out.stdout).expect("the DOM is UTF-8");
    assert!(
        dom.contains("</html>"),
        "chromium printed no document for {url}: {dom:?}"
    );
    dom
}

/// One request as a raw HTTP/1.1 exchange: the status and the whole answer.
async fn http(addr: &str, method: &str, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connecting to the console");
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    timeout(PATIENCE, s.read_to_string(&mut answer))
        .await
        .expect("the console answered in time")
        .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer)
}

/// The text a person reads on the page (the part under its header): tags gone, entities
/// read, white space collapsed.
fn visible(dom: &str) -> String {
    let body = dom.find("<main").map_or(dom, |i| &dom[i..]);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The element that starts at the first `marker`, up to `end`.
fn element<'a>(dom: &'a str, marker: &str, end: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the page:\n{dom}"));
    let len = dom[start..].find(end).unwrap_or(dom.len() - start);
    &dom[start..start + len]
}

/// The text of each cell of a table row.
fn cells(row: &str) -> Vec<String> {
    row.split("<td").skip(1).map(|c| visible(&format!("<td{c}"))).collect()
}

/// Where `needle` first is in `hay`, failing with the page when it is not.
fn at(hay: &str, needle: &str) -> usize {
    hay.find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in the page:\n{hay}"))
}

/// This machine's address on its network, if it has one (no packet is sent: connecting a
/// UDP socket only picks the route).
fn network_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn the_console_shows_automations_instances_timelines_and_definitions_in_a_browser_and_changes_nothing() {
    require_chromium().await;

    // GIVEN two jobs completed under an automation that branches on the job's title: the
    // sink's client is thanked by email and texted; the boiler's owner is told, and the text
    // to its client, whose number is a fixed line, fails.
    let mut h = Herald::with_jobs_example().await;
    let clock = h.manual_clock();
    let owner = format!("owner+{}@example.com", h.tag);
    let doc = json!({
        "trigger": {"type": "status_change", "table": "public.jobs", "to": "completed"},
        "data": {"relation": "public.job_context", "key": "job_id"},
        "admins": {"emails": [owner]},
        "exit": [{"if": {"field": "job_status", "op": "=", "value": "cancelled"}, "reason": "job <cancelled> & gone"}],
        "steps": [
            {"id": "big", "type": "branch", "if": {"field": "job_title", "op": "contains", "value": "boiler"},
             "then": [{"id": "tell", "type": "notify_admin", "subject": "Boiler done", "text": "{{ client_name }}"}],
             "else": [{"id": "thanks", "type": "send_email", "to": "{{ client_email }}",
                       "subject": "Thanks & <welcome>", "text": "Thanks, {{ client_name }}"}]},
            {"id": "text", "type": "send_sms", "to": "{{ client_phone }}", "body": "Done: {{ job_title }}"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('job-completed', $1)", &[&doc])
        .await
        .unwrap();
    let fixed_line = "+44 20 7946 0000";
    h.db.client
        .execute("UPDATE clients SET phone = $1 WHERE id = 2", &[&fixed_line])
        .await
        .unwrap();
    h.db.exec("UPDATE jobs SET status = 'completed'").await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.tick().await.claimed, 2);
    assert!(h.deliver_all().await.is_empty());
    let id_of = |job: &str| {
        let db = &h.db;
        let sql = format!("SELECT id FROM automation_execution_logs WHERE subject_id = '{job}'");
        async move { db.scalar::<i64>(&sql).await }
    };
    let (sink, boiler) = (id_of("1").await, id_of("2").await);
    let statuses: Vec<String> =
        h.db.column(&format!(
            "SELECT status FROM automation_execution_logs WHERE id IN ({sink}, {boiler}) ORDER BY id = {boiler}"
        ))
        .await;
    assert_eq!(statuses, ["completed", "failed"]);
    let ledger = "SELECT (SELECT count(*) FROM automation_step_runs)::text || ' ' || \
                  (SELECT string_agg(status || updated_at::text, ',' ORDER BY id) FROM automation_execution_logs)";
    let before: String = h.db.scalar(ledger).await;

    // WHEN the console runs against that database, as a role that may only read what
    // docs/console.md says it reads.
    h.db.exec(
        "DO $$ BEGIN CREATE ROLE herald_console_reader NOLOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         GRANT SELECT ON automations, automation_versions, automation_execution_logs, automation_step_runs,
                         herald_status TO herald_console_reader;",
    )
    .await;
    let joiner = if h.db.url.contains('?') { '&' } else { '?' };
    let as_reader = format!("{}{joiner}options=-c%20role%3Dherald_console_reader", h.db.url);
    let console = Console::start(&as_reader).await;

    // THEN it listens on 127.0.0.1 only.
    assert!(
        console.url.starts_with("http://127.0.0.1:") && console.port() != 0,
        "{}",
        console.url
    );
    if let Some(ip) = network_address() {
        let refused = TcpStream::connect((ip, console.port())).await;
        assert!(refused.is_err(), "the console answered on {ip}, not only on 127.0.0.1");
    }

    // The automations, with their counts and links.
    let dom = chromium(&console.url).await;
    let row = element(&dom, "<tr data-automation=\"job-completed\"", "</tr>");
    let counts = cells(row);
    // automation, version, state, pending, due, waiting, running, failed, dead, unknown, paused, oldest due
    assert_eq!(counts[0], "job-completed", "{counts:?}");
    assert_eq!(counts[2], "active", "{counts:?}");
    assert_eq!(
        counts[3..12],
        ["0", "0", "0", "0", "1", "0", "0", "0", "-"],
        "{counts:?}"
    );
    assert!(row.contains("href=\"/automations/job-completed\""), "{row}");
    assert!(
        row.contains("href=\"/instances?automation=job-completed&amp;status=failed\""),
        "{row}"
    );
    assert!(row.contains("href=\"/instances?automation=job-completed\""), "{row}");

    // The instance list, filtered by status through its form's query.
    let dom = chromium(&console.page("/instances?automation=job-completed&status=failed&subject=")).await;
    assert!(dom.contains(&format!("<tr data-instance=\"{boiler}\"")), "{dom}");
    assert!(!dom.contains(&format!("<tr data-instance=\"{sink}\"")), "{dom}");
    assert!(
        dom.contains("<option value=\"failed\" selected=\"\">"),
        "the form keeps its filter: {dom}"
    );
    let all = chromium(&console.page("/instances")).await;
    let (newest, oldest) = (
        at(&all, &format!("data-instance=\"{boiler}\"")),
        at(&all, &format!("data-instance=\"{sink}\"")),
    );
    assert!(newest < oldest, "newest first: {all}");

    // The sink's timeline: its steps in order, recipients masked, the branch's decision
    // with the value it read.
    let dom = chromium(&console.page(&format!("/instances/{sink}"))).await;
    let steps: Vec<usize> = ["big", "thanks", "text"]
        .iter()
        .map(|s| at(&dom, &format!("class=\"step-id\">{s}<")))
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "steps out of order: {dom}");
    assert!(
        !dom.contains("class=\"step-id\">tell<"),
        "the branch did not take then: {dom}"
    );
    let (email, phone) = (h.email_of(1), h.phone_of(1));
    assert!(dom.contains("c***@example.com"), "the email is shown masked: {dom}");
    assert!(
        dom.contains(&format!("+*******{}", &phone[phone.len() - 4..])),
        "the phone is shown masked: {dom}"
    );
    assert!(
        !dom.contains(&email) && !dom.contains(&phone),
        "a recipient is shown whole: {dom}"
    );
    let decision = visible(element(&dom, "<li class=\"run decided\"><div class=\"run-head\"><code class=\"step-id\">big</code><span class=\"type\">branch</span>", "</li>"));
    for want in [
        "if job_title contains \"boiler\"",
        "did not hold: took else",
        "job_title \"Fix the kitchen sink\"",
    ] {
        assert!(decision.contains(want), "{want:?} not in the decision: {decision}");
    }
    let text = visible(&dom);
    assert!(text.contains("Instance") && text.contains("completed"), "{text}");

    // The boiler's: the owner told (masked), and the text that failed, with its error.
    let dom = chromium(&console.page(&format!("/instances/{boiler}"))).await;
    assert!(
        at(&dom, "class=\"step-id\">tell<") < at(&dom, "class=\"step-id\">text<"),
        "{dom}"
    );
    assert!(dom.contains("o***@example.com") && !dom.contains(&owner), "{dom}");
    assert!(
        dom.contains("<pre class=\"error\">"),
        "the failed step's error is shown: {dom}"
    );
    assert!(!dom.contains("+442079460000") && !dom.contains(fixed_line), "{dom}");
    assert!(visible(&dom).contains("took then"), "{dom}");

    // The definition: the branch with its arms, the trigger, and the document.
    let dom = chromium(&console.page("/automations/job-completed")).await;
    let (then, tell, otherwise, thanks, text) = (
        at(&dom, "<div class=\"arm then\">"),
        at(&dom, "data-step=\"tell\""),
        at(&dom, "<div class=\"arm else\">"),
        at(&dom, "data-step=\"thanks\""),
        at(&dom, "data-step=\"text\""),
    );
    assert!(
        then < tell && tell < otherwise && otherwise < thanks && thanks < text,
        "{dom}"
    );
    let shown = visible(&dom);
    for want in [
        "a row of public.jobs changes its status to completed",
        "Templates and conditions read public.job_context",
        "big branch if job_title contains \"boiler\"",
        "tell notify_admin “Boiler done” to the admins",
        "thanks send_email “Thanks & <welcome>” to {{ client_email }}",
        "text send_sms “Done: {{ job_title }}” to {{ client_phone }}",
        "when job_status = \"cancelled\" : job <cancelled> & gone",
        "name: job-completed",
    ] {
        assert!(shown.contains(want), "{want:?} not on the page: {shown}");
    }
    // Users' text is text, never markup.
    assert!(
        dom.contains("Thanks &amp; &lt;welcome&gt;") && !dom.contains("<welcome>"),
        "{dom}"
    );
    assert!(!dom.contains("<cancelled>"), "{dom}");

    // Nothing there: a 404 page.
    for path in ["/instances/999999999", "/instances/abc", "/automations/nope", "/nope"] {
        let (code, _) = http(console.addr(), "GET", path, console.addr()).await;
        assert_eq!(code, 404, "{path}");
    }
    let shown = visible(&chromium(&console.page("/instances/999999999")).await);
    assert!(shown.contains("Not found No instance has log id 999999999."), "{shown}");

    // Read-only: a POST is refused, and a request for another host name is not answered.
    let (code, answer) = http(console.addr(), "POST", "/", console.addr()).await;
    assert_eq!(code, 405, "{answer}");
    let (code, _) = http(console.addr(), "POST", "/instances/1", console.addr()).await;
    assert_eq!(code, 405);
    let (code, _) = http(console.addr(), "GET", "/", "rebound.example:8025").await;
    assert_eq!(code, 403);
    let (code, answer) = http(console.addr(), "GET", "/", &format!("localhost:{}", console.port())).await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer.contains("content-security-policy: default-src 'none'"),
        "{answer}"
    );

    // A database error: a 500 page with its message; the console keeps serving.
    h.db.exec("DROP VIEW herald_status").await;
    let (code, answer) = http(console.addr(), "GET", "/", console.addr()).await;
    assert_eq!(code, 500, "{answer}");
    assert!(
        answer.contains("relation &quot;herald_status&quot; does not exist"),
        "{answer}"
    );
    let (code, _) = http(console.addr(), "GET", "/instances", console.addr()).await;
    assert_eq!(code, 200);

    // Nothing the console did changed the ledger.
    assert_eq!(h.db.scalar::<String>(ledger).await, before);
    drop(console);
}
