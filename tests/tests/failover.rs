//! Database failovers in the middle of a send: Postgres goes away (a proxy in front of it is
//! cut) right after a provider answered, for a moment or for longer than the executor may
//! wait. Each run compares the ledger with what moto received (`--nocapture` prints the
//! fault table).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use herald_shared::aws::{SesEmail, SnsSms, SqsQueue};
use herald_shared::clock::{Clock, ManualClock, Sleep};
use herald_shared::drain::{drain, DrainOptions};
use herald_shared::flow::{FlowOutcome, FlowRunner, Performers};
use herald_shared::ledger::{DueLogs, Stop};
use herald_shared::model::{
    Email, EmailSender, Failure, LogId, Queue, QueueMessage, Rescued, Sms, SmsSender, StoreError,
};
use herald_shared::pg::{Database, PgStore};
use herald_shared::receipt::Receipt;
use herald_shared::workflow::machine::Park;
use herald_tests::fault::{figures, report, settle, tasks_sql, Figures};
use herald_tests::{Herald, Proxy};

/// Which provider answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Email,
    Sms,
}

/// How the database goes away after a provider's answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Down at once (connections cut, new ones refused).
    Down,
    /// The next statement commits, its reply is lost, then down.
    AfterCommit,
    /// Every connection hangs: nothing is answered, nothing is refused or reset (packets
    /// dropped on the way).
    Hold,
}

/// How long the functions wait for Postgres on a held connection, in these tests.
const HOLD_TIMEOUT: Duration = Duration::from_secs(1);

/// The test's clock: the functions' manual clock, which also brings the database back
/// once its outage has lasted long enough (a retry's backoff is what moves it).
struct OutageClock {
    manual: Arc<ManualClock>,
    proxy: Arc<Proxy>,
    back_at: Mutex<Option<SystemTime>>,
}

impl Clock for OutageClock {
    fn now(&self) -> SystemTime {
        self.manual.now()
    }

    fn sleep(&self, d: Duration) -> Sleep<'_> {
        self.manual.advance(d);
        let mut back_at = self.back_at.lock().unwrap();
        if back_at.is_some_and(|t| self.manual.now() >= t) {
            *back_at = None;
            self.proxy.set_up(true);
            self.proxy.set_held(false);
        }
        Box::pin(tokio::task::yield_now())
    }
}

/// moto's SES and SNS, cutting the database as the first answer of each channel in
/// `cut_on` comes back; it stays away for `outage` of clock time (for ever: `None`).
struct CuttingSenders {
    email: SesEmail,
    sms: SnsSms,
    clock: Arc<OutageClock>,
    cut: Cut,
    cut_on: Vec<Channel>,
    outage: Option<Duration>,
    done: [AtomicBool; 2],
}

impl CuttingSenders {
    fn answered(&self, channel: Channel) {
        let i = channel as usize;
        if !self.cut_on.contains(&channel) || self.done[i].swap(true, Ordering::SeqCst) {
            return;
        }
        *self.clock.back_at.lock().unwrap() = self.outage.map(|d| self.clock.now() + d);
        match self.cut {
            Cut::Down => self.clock.proxy.set_up(false),
            Cut::AfterCommit => self.clock.proxy.lose_next_reply(),
            Cut::Hold => self.clock.proxy.set_held(true),
        }
    }
}

impl EmailSender for CuttingSenders {
    async fn send_email(&self, email: &Email) -> Result<String, Failure> {
        let r = self.email.send_email(email).await;
        self.answered(Channel::Email);
        r
    }
}

impl SmsSender for CuttingSenders {
    async fn send_sms(&self, sms: &Sms) -> Result<String, Failure> {
        let r = self.sms.send_sms(sms).await;
        self.answered(Channel::Sms);
        r
    }
}

/// Ten tasks gone to `go` (due logs); returns the harness, its manual clock and a proxy in
/// front of its database.
async fn ten_due() -> (Herald, Arc<ManualClock>, Arc<Proxy>) {
    let mut h = Herald::new().await;
    h.db.exec(&tasks_sql(h.tag, 10).await).await;
    h.db.exec("UPDATE tasks SET status = 'go'").await;
    let clock = h.manual_clock();
    let cfg = h.db.config();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test database is not on TCP: {other:?}"),
    };
    let port = cfg.get_ports()[0];
    let proxy = Arc::new(Proxy::start(&format!("{host}:{port}")).await);
    (h, clock, proxy)
}

/// The test database, reached through the proxy.
fn via(h: &Herald, proxy: &Proxy) -> Database {
    let port = proxy.url.rsplit(':').next().unwrap();
    let url =
        h.db.url
            .replace(&format!(":{}/", h.db.config().get_ports()[0]), &format!(":{port}/"));
    Database::new(url.parse().unwrap())
}

/// The database through the proxy, as the functions reach it when cut this way.
fn via_for(h: &Herald, proxy: &Proxy, cut: Cut) -> Database {
    match cut {
        Cut::Hold => via(h, proxy).timeout(HOLD_TIMEOUT),
        Cut::Down | Cut::AfterCommit => via(h, proxy),
    }
}

/// Ends the outage: what is still held is lost with its connection, then Postgres is back.
fn end_outage(proxy: &Proxy) {
    proxy.set_up(false);
    proxy.set_held(false);
    proxy.set_up(true);
}

/// The functions' clock and the providers, cutting Postgres as told.
fn cutting(
    h: &Herald,
    manual: &Arc<ManualClock>,
    proxy: &Arc<Proxy>,
    cut: Cut,
    cut_on: Vec<Channel>,
    outage: Option<Duration>,
) -> (Arc<OutageClock>, CuttingSenders) {
    let clock = Arc::new(OutageClock {
        manual: manual.clone(),
        proxy: proxy.clone(),
        back_at: Mutex::new(None),
    });
    let senders = CuttingSenders {
        email: SesEmail::new(&h.moto.sdk, None),
        sms: SnsSms::new(&h.moto.sdk, Some("Herald".into())),
        clock: clock.clone(),
        cut,
        cut_on,
        outage,
        done: Default::default(),
    };
    (clock, senders)
}

fn all_sent(n: usize) -> Figures {
    Figures {
        logs: n,
        sent: n,
        ..Default::default()
    }
}

/// Where the scheduler's claim → SendMessageBatch → release sequence is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SchedulerCut {
    /// The claim commits; its reply is lost with the connection.
    ClaimReplyLost,
    /// SendMessageBatch fails, and Postgres is gone before the release.
    SendFailsThenPostgresGone,
    /// SQS takes the messages; its reply is lost (the scheduler thinks they failed).
    SendReplyLost,
}

/// The real store behind the proxy, cutting Postgres where told.
struct CutStore<'a> {
    inner: PgStore,
    proxy: &'a Proxy,
    cut: SchedulerCut,
}

impl DueLogs for CutStore<'_> {
    async fn ingest(&self, limit: i32) -> Result<herald_shared::model::Ingested, StoreError> {
        self.inner.ingest(limit).await
    }
    async fn fire_dates(&self, now: SystemTime) -> Result<herald_shared::model::Fired, StoreError> {
        self.inner.fire_dates(now).await
    }
    async fn due_schedules(&self) -> Result<Vec<herald_shared::model::ScheduleDue>, StoreError> {
        self.inner.due_schedules().await
    }
    async fn fire_schedule(
        &self,
        f: &herald_shared::model::ScheduleFiring,
        now: SystemTime,
    ) -> Result<herald_shared::model::Fired, StoreError> {
        self.inner.fire_schedule(f, now).await
    }
    async fn rescue(&self, now: SystemTime) -> Result<Rescued, StoreError> {
        self.inner.rescue(now).await
    }
    async fn claim_due(&self, limit: i64, now: SystemTime, until: SystemTime) -> Result<Vec<QueueMessage>, StoreError> {
        if self.cut == SchedulerCut::ClaimReplyLost {
            self.proxy.lose_next_reply();
        }
        self.inner.claim_due(limit, now, until).await
    }
    async fn release(&self, ids: &[LogId], now: SystemTime) -> Result<u64, StoreError> {
        if self.cut == SchedulerCut::SendFailsThenPostgresGone {
            self.proxy.set_up(false);
        }
        self.inner.release(ids, now).await
    }
    async fn apply_receipts(&self, receipts: &[Receipt], now: SystemTime) -> Result<u64, StoreError> {
        self.inner.apply_receipts(receipts, now).await
    }
}

/// moto's SQS, failing or losing its replies where told.
struct CutQueue {
    inner: SqsQueue,
    cut: SchedulerCut,
}

impl Queue for CutQueue {
    async fn send_batch(&self, messages: &[QueueMessage]) -> Result<Vec<LogId>, Failure> {
        match self.cut {
            SchedulerCut::SendFailsThenPostgresGone => Err(Failure::transient("connection reset")),
            SchedulerCut::SendReplyLost => {
                self.inner.send_batch(messages).await?;
                Err(Failure::transient("connection reset after the request was sent"))
            }
            SchedulerCut::ClaimReplyLost => self.inner.send_batch(messages).await,
        }
    }
}

async fn scheduler_cut(cut: SchedulerCut) {
    // GIVEN ten due logs
    let (h, clock, proxy) = ten_due().await;
    let queue_lease = h.scheduler.settings.queue_lease;

    // WHEN one scheduler run is cut at this point
    let store = CutStore {
        inner: via(&h, &proxy).store().await.unwrap(),
        proxy: &proxy,
        cut,
    };
    let queue = CutQueue {
        inner: SqsQueue::new(&h.moto.sdk, h.queue_url.clone()),
        cut,
    };
    let opts = DrainOptions {
        queue_lease,
        ..Default::default()
    };
    let run = drain(&store, &queue, &h.scheduler.receipts, clock.as_ref(), &opts).await;
    println!("{cut:?}: the cut run ended with {run:?}");
    proxy.set_up(true);

    // AND the pipeline runs on without moving the clock, and then once past the queue lease
    h.tick().await;
    h.deliver_all().await;
    let early: i64 =
        h.db.scalar("SELECT count(*) FROM automation_execution_logs WHERE status = 'completed'")
            .await;
    // Logs left queued without a message wait for their queue lease; released ones go at once.
    let want_early = if cut == SchedulerCut::SendReplyLost { 10 } else { 0 };
    assert_eq!(early, want_early, "sent before the queue lease ran out");
    clock.advance(queue_lease + Duration::from_secs(1));
    h.tick().await;
    h.deliver_all().await;

    // THEN every log went out once per channel, within one queue lease
    let f = figures(&h.db.client, &h).await;
    report(&format!("scheduler cut: {cut:?}"), &f);
    assert_eq!(f, all_sent(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_is_lost_is_sent_once_after_its_queue_lease() {
    scheduler_cut(SchedulerCut::ClaimReplyLost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_whose_release_is_lost_is_sent_once_after_its_queue_lease() {
    scheduler_cut(SchedulerCut::SendFailsThenPostgresGone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_reply_is_lost_is_delivered_once() {
    scheduler_cut(SchedulerCut::SendReplyLost).await;
}

/// The tasks' automation as a workflow: an email, then an SMS (to the addresses `figures`
/// counts). An email whose outcome is unknown is held, or sent again when `email_on_unknown`
/// says `resend`.
async fn as_flow(h: &Herald, email_on_unknown: &str) {
    let doc = serde_json::json!({
        "trigger": {"type": "status_change", "table": "public.tasks", "to": "go"},
        "steps": [
            {"id": "mail", "type": "send_email", "to": format!("log{{{{ herald.log_id }}}}@t{}.example.com", h.tag),
             "subject": "Task {{ id }}", "text": "Task {{ id }} is go", "on_unknown": email_on_unknown},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Task {{ id }} is go"}
        ]
    });
    h.db.client
        .query_one("SELECT herald_save_automation('task-go', $1)", &[&doc])
        .await
        .unwrap();
}

/// Ten instances of the flow, queued by the scheduler.
async fn ten_queued_instances() -> (Herald, Arc<ManualClock>, Arc<Proxy>) {
    ten_queued_instances_holding("hold").await
}

/// [`ten_queued_instances`], their email's policy for an unknown outcome as told.
async fn ten_queued_instances_holding(email_on_unknown: &str) -> (Herald, Arc<ManualClock>, Arc<Proxy>) {
    let (h, clock, proxy) = ten_due().await;
    as_flow(&h, email_on_unknown).await;
    assert_eq!(h.tick().await.sent, 10);
    (h, clock, proxy)
}

/// One SQS batch of the ten instances through the flow runner, its database behind the
/// proxy, cutting as told, within a 30 s invocation. Returns each message's outcome.
async fn run_flows_with_outage(
    h: &Herald,
    manual: &Arc<ManualClock>,
    proxy: &Arc<Proxy>,
    cut: Cut,
    cut_on: Vec<Channel>,
    outage: Option<Duration>,
) -> Vec<FlowOutcome> {
    let store = via_for(h, proxy, cut).store().await.unwrap();
    let (clock, senders) = cutting(h, manual, proxy, cut, cut_on, outage);
    let hooks = h.webhooks();
    let performers = Performers {
        email: &senders,
        sms: &senders,
        webhooks: &hooks,
    };
    let runner = FlowRunner {
        ledger: &store,
        effects: &performers,
        receipts: &h.executor.receipts,
        clock: clock.as_ref(),
        default_from: &h.from,
        lease: Duration::from_secs(120),
        ends_at: Some(clock.now() + Duration::from_secs(30)),
        step_limit: 100,
    };
    let event = h.moto.receive(&h.queue_url, 10).await;
    assert_eq!(event.records.len(), 10);
    let bodies: Vec<String> = event.records.iter().map(|r| r.body.clone().unwrap()).collect();
    let outcomes = runner.run(&bodies, 4).await;
    let failed: Vec<String> = event
        .records
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_batch_failure())
        .map(|(r, _)| r.message_id.clone().unwrap())
        .collect();
    h.moto.delete_done(&h.queue_url, &event, &failed).await;
    end_outage(proxy);
    outcomes
}

/// The instances' steps as the ledger has them (`step status attempt`, one line per run that
/// reached a provider), and how many emails and SMS moto got per task.
async fn flow_record(h: &Herald) -> (Vec<String>, Vec<(usize, usize)>) {
    let runs: Vec<String> =
        h.db.column(
            "SELECT string_agg(step_id || ' ' || status || ' ' || attempt
                               || CASE WHEN output ? 'message_id' THEN ' id' ELSE '' END, ', ' ORDER BY id)
             FROM automation_step_runs WHERE status <> 'decided' GROUP BY log_id ORDER BY log_id",
        )
        .await;
    let ids: Vec<i64> =
        h.db.column("SELECT id FROM automation_execution_logs ORDER BY id")
            .await;
    let emails = h.moto.emails_from(&h.from).await;
    let sms = h.moto.all_sms().await;
    let phones: Vec<String> = h.db.column("SELECT phone FROM tasks ORDER BY id").await;
    let counts = ids
        .iter()
        .zip(&phones)
        .map(|(id, phone)| {
            let to = format!("log{id}@t{}.example.com", h.tag);
            (
                emails.iter().filter(|m| m.destinations.to[0] == to).count(),
                sms.iter().filter(|m| &m.phone_number == phone).count(),
            )
        })
        .collect();
    (runs, counts)
}

fn once_each() -> (Vec<String>, Vec<(usize, usize)>) {
    (vec!["mail done 1 id, text done 1 id".to_owned(); 10], vec![(1, 1); 10])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_waits_out_a_short_outage_and_a_lost_reply_and_sends_each_step_once() {
    for (cut, scenario) in [
        (Cut::Down, "flow: Postgres away 2 s after the answers"),
        (Cut::AfterCommit, "flow: writes committed, replies lost"),
    ] {
        // GIVEN ten queued instances of email → SMS
        let (h, clock, proxy) = ten_queued_instances().await;
        let t0 = clock.now();

        // WHEN Postgres goes away (or a committed write's reply is lost) right after the
        // first email answer and the first SMS answer, for 2 s
        let out = run_flows_with_outage(
            &h,
            &clock,
            &proxy,
            cut,
            vec![Channel::Email, Channel::Sms],
            Some(Duration::from_secs(2)),
        )
        .await;

        // THEN the writes of the steps' ends were retried until they landed (a write whose
        // commit landed is recognized, not taken for a lost lease): every instance completed
        // in its first attempt, each step ran once with its provider id recorded, both
        // outages were waited out, and nothing went to the receipts queue
        println!("{scenario}: {out:?}");
        assert!(
            out.iter()
                .all(|o| *o == FlowOutcome::Stopped(Stop::Park(Park::Completed))),
            "{scenario}: {out:?}"
        );
        assert!(
            clock.now() >= t0 + Duration::from_secs(4),
            "{scenario}: both outages were waited out"
        );
        let f = figures(&h.db.client, &h).await;
        report(scenario, &f);
        assert_eq!(f, all_sent(10), "{scenario}");
        assert_eq!(flow_record(&h).await, once_each(), "{scenario}");
        assert_eq!(h.db.statuses().await, vec!["completed"; 10]);
        // One attempt each, which ended the instance itself.
        let attempts: Vec<String> =
            h.db.column("SELECT DISTINCT attempts || ' ' || (parked_lease = (SELECT max(lease_token) FROM automation_step_runs r WHERE r.log_id = l.id)) FROM automation_execution_logs l")
                .await;
        assert_eq!(attempts, ["1 true"], "{scenario}");
        assert_eq!(h.moto.queue_depth(&h.receipts_url).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_keeps_its_steps_ends_as_receipts_through_a_long_outage_and_goes_on_from_them() {
    flow_through_a_long_outage(Cut::Down, Channel::Email, "flow: Postgres away 60 s after the emails").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_keeps_its_last_steps_ends_as_receipts_and_completes_without_sending_again() {
    flow_through_a_long_outage(Cut::Down, Channel::Sms, "flow: Postgres away 60 s after the SMS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_connections_hang_gives_up_in_time_and_keeps_its_steps_ends_as_receipts() {
    flow_through_a_long_outage(
        Cut::Hold,
        Channel::Email,
        "flow: Postgres connections hang after the emails",
    )
    .await;
}

/// The flow's step that sends on `channel`.
fn step_of(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "mail",
        Channel::Sms => "text",
    }
}

/// Postgres goes away (as `cut` says) after the first answer on `channel`, for longer than
/// the invocation; then the pipeline runs on.
async fn flow_through_a_long_outage(cut: Cut, channel: Channel, scenario: &str) {
    // GIVEN ten queued instances of email → SMS
    let (h, clock, proxy) = ten_queued_instances().await;

    // WHEN Postgres goes away after the first answer on that channel for longer than the
    // invocation (a run that waited on a hung connection for ever would never end: bounded
    // here)
    let run = run_flows_with_outage(&h, &clock, &proxy, cut, vec![channel], None);
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("{scenario}: the executor was still waiting on Postgres after 120 s"));

    // THEN the executor gave up in time and kept the end of each send on that channel as a
    // receipt
    println!("{scenario}: {out:?}");
    assert!(out.iter().all(|o| matches!(o, FlowOutcome::Deferred(_))), "{out:?}");
    if cut == Cut::Hold {
        let why = format!("no answer from Postgres within {HOLD_TIMEOUT:?}");
        assert!(
            out.iter()
                .all(|o| matches!(o, FlowOutcome::Deferred(w) if w.contains(&why))),
            "{out:?}"
        );
    }
    assert_eq!(h.moto.queue_depth(&h.receipts_url).await, 10);

    // WHEN Postgres is back: the scheduler applies the receipts, then (past the leases)
    // rescues the instances, and the executor runs on
    clock.advance(Duration::from_secs(30));
    let first = h.tick().await;
    assert_eq!((first.receipts, first.receipts_applied), (10, 10), "{first:?}");
    let ended: Vec<String> =
        h.db.column(&format!(
            "SELECT status FROM automation_step_runs WHERE step_id = '{}' ORDER BY log_id",
            step_of(channel)
        ))
        .await;
    assert_eq!(ended, vec!["done"; 10], "the receipts recorded the sends");
    settle(&h, &clock).await;

    // THEN every instance completed, in the invocation after the rescue (which sends the SMS,
    // or, when the receipts carried the SMS, only records the end); each email and SMS was
    // sent once, none is unknown, and applying the receipts again changes nothing
    let f = figures(&h.db.client, &h).await;
    report(scenario, &f);
    assert_eq!(f, all_sent(10));
    assert_eq!(h.db.statuses().await, vec!["completed"; 10]);
    let (runs, counts) = flow_record(&h).await;
    assert_eq!((runs.clone(), counts), once_each());
    assert_eq!(
        h.db.scalar::<i64>("SELECT count(*) FROM automation_execution_logs WHERE attempts = 2")
            .await,
        10,
        "completed in the invocation after the rescue"
    );
    let kept: serde_json::Value =
        h.db.scalar("SELECT jsonb_agg(receipt ORDER BY log_id) FROM automation_receipts WHERE applied")
            .await;
    assert_eq!(kept.as_array().map(Vec::len), Some(10));
    let again: i64 =
        h.db.client
            .query_one(
                "SELECT count(*) FILTER (WHERE applied) FROM herald_apply_step_receipts($1, now())",
                &[&kept],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(again, 10, "a repeat counts as applied");
    assert_eq!(flow_record(&h).await.0, runs);
    assert_eq!(h.moto.queue_depth(&h.receipts_url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_receipt_for_a_lease_taken_over_is_recorded_and_changes_nothing() {
    // GIVEN ten instances whose executor kept its emails' ends as receipts (Postgres away),
    // their email step resent when its outcome is unknown
    let (h, clock, proxy) = ten_queued_instances_holding("resend").await;
    let out = run_flows_with_outage(&h, &clock, &proxy, Cut::Down, vec![Channel::Email], None).await;
    assert!(out.iter().all(|o| matches!(o, FlowOutcome::Deferred(_))), "{out:?}");
    let mails: Vec<String> =
        h.db.column("SELECT status FROM automation_step_runs WHERE step_id = 'mail' ORDER BY log_id")
            .await;
    assert_eq!(mails, vec!["started"; 10], "not recorded yet");
    // ... and the receipts are delayed (received by someone else, invisible for now)
    let late = h.moto.receive(&h.receipts_url, 10).await;
    assert_eq!(late.records.len(), 10);

    // WHEN the leases expire without them: the rescue takes the instances over (the email
    // in flight is resent, as its step says), and a second attempt sends everything
    clock.advance(Duration::from_secs(150));
    settle(&h, &clock).await;
    let before = flow_record(&h).await;

    // AND the late receipts arrive
    let ids: Vec<String> = late.records.iter().map(|r| r.message_id.clone().unwrap()).collect();
    h.moto.make_visible(&h.receipts_url, &late, &ids).await;
    let tick = h.tick().await;

    // THEN they are recorded as not applied, and the newer attempt's record stands
    assert_eq!((tick.receipts, tick.receipts_applied), (10, 0), "{tick:?}");
    assert_eq!(flow_record(&h).await, before);
    assert_eq!(
        before.0,
        vec!["mail started 1, mail done 2 id, text done 1 id".to_owned(); 10]
    );
    assert_eq!(
        h.db.scalar::<i64>(
            "SELECT count(*) FROM automation_receipts r JOIN automation_execution_logs l
               ON l.id = r.log_id AND r.lease_token < l.parked_lease
             WHERE NOT r.applied"
        )
        .await,
        10
    );
    assert_eq!(
        h.db.scalar::<i64>(
            "SELECT count(*) FROM automation_execution_logs WHERE status = 'completed' AND attempts = 2"
        )
        .await,
        10
    );
    let f = figures(&h.db.client, &h).await;
    report("flow: late receipts (lease taken over)", &f);
    assert_eq!((f.sent, f.lost, f.unknown), (10, 0, 0));
    // The emails whose ends came too late were resent, as the step's policy for an email in
    // flight says; nothing else was.
    assert_eq!(f.duplicated, 10);
}
