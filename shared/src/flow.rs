//! The executor's loop for workflow instances: one queue batch in, each instance moved on
//! as far as it goes (until a wait, its end, a failure or the invocation's time budget),
//! with the ledger written a few times per round for the whole batch.
//!
//! A round: the step machine names each instance's next effect; the effects are recorded as
//! started (one write), performed with bounded concurrency, then recorded as ended together
//! with the decisions made in memory and the instances that park (one write, which also
//! returns the instances' fresh data for the next round's exit conditions). Every write
//! names the instance's lease; an instance whose lease was taken over stops at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use jiff::Timestamp;
use serde_json::Value as Json;

use crate::clock::Clock;
use crate::ledger::{
    FlowLedger, FlowStarted, FlowWrite, FlowWritten, LoadedFlow, Parked, Resumed, StepEnd, StepStart, Stop, Taken,
};
use crate::metrics::Outcome;
use crate::model::{ContextError, Failure, Lease, LogId, QueueMessage, StoreError};
use crate::receipt::{give_up_at, keep, micros, write_retrying, Receipt, ReceiptSink, ReceiptStep};
use crate::recipient::{mask_email, mask_phone, redact};
use crate::steps::{prepare, Effect};
use crate::webhook::{WebhookSender, WebhookStep};
use crate::workflow::definition::{Document, OnUnknown};
use crate::workflow::machine::{advance, variables, Advance, Instance, Park, Performed};
use crate::workflow::plan::{find, is_last, Policy, TransientRetry};

/// No new effect starts later than this before the invocation ends.
pub(crate) const EFFECT_MARGIN: Duration = Duration::from_secs(10);

/// Performs effects. `key` is stable for one instance's step, so a receiver can drop a
/// repeat (the webhook id).
pub trait Effects: Sync {
    fn perform(&self, effect: &Effect, key: &str) -> impl Future<Output = Result<Json, Failure>> + Send;
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowOutcome {
    /// The instance stopped where the ledger now says.
    Stopped(Stop),
    /// Nothing to do: not claimable, or the lease was lost on the way.
    Skipped(String),
    /// The ledger could not be written: the message goes back to the queue.
    StoreFailed(String),
    /// The ledger could not be written in time, but how the instance's effects ended is
    /// safe on the receipts queue: the scheduler records it, and the instance goes on from
    /// there once its lease expires. The message is done.
    Deferred(String),
    /// The message is unusable.
    Rejected(String),
}

impl FlowOutcome {
    /// Whether the message must be reported as a batch item failure.
    pub fn is_batch_failure(&self) -> bool {
        matches!(self, FlowOutcome::StoreFailed(_) | FlowOutcome::Rejected(_))
    }

    /// The outcome as the metrics count it.
    pub fn metric(&self) -> Outcome {
        match self {
            FlowOutcome::Stopped(Stop::Park(Park::Completed)) => Outcome::Completed,
            FlowOutcome::Stopped(Stop::Park(Park::Failed(_))) => Outcome::Failed,
            FlowOutcome::Stopped(Stop::Park(Park::Dead(_))) => Outcome::Dead,
            FlowOutcome::Stopped(Stop::Park(Park::Exited(_))) => Outcome::Exited,
            FlowOutcome::Stopped(Stop::Park(Park::Sleeping { .. } | Park::Retrying { .. })) => Outcome::Waiting,
            FlowOutcome::Stopped(Stop::Unknown(_)) => Outcome::Unknown,
            FlowOutcome::Stopped(Stop::Later) => Outcome::Later,
            FlowOutcome::Stopped(Stop::Held(_)) => Outcome::Held,
            FlowOutcome::Skipped(_) => Outcome::Skipped,
            FlowOutcome::Deferred(_) => Outcome::Deferred,
            FlowOutcome::StoreFailed(_) => Outcome::Returned,
            FlowOutcome::Rejected(_) => Outcome::Rejected,
        }
    }
}

/// What the batch learned of the instance one message named, for its log line and its
/// metrics: as much as the claim and the instance's stop told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInstance {
    pub log_id: Option<LogId>,
    pub automation: Option<i64>,
    pub version: Option<i32>,
    /// The step the instance stopped at (none once it completed), and that step's attempts.
    pub step: Option<String>,
    pub attempt: Option<u32>,
}

/// What one queue batch did.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each message's outcome, in order.
    pub outcomes: Vec<FlowOutcome>,
    /// Each message's instance, in order.
    pub instances: Vec<MessageInstance>,
    /// Instances this invocation claimed.
    pub claimed: u32,
    /// How long each effect performed by this invocation (sent to a provider) took, in
    /// milliseconds, in the order they ended. Changes to this database are not among them:
    /// the ledger's write performs them.
    pub effect_ms: Vec<u32>,
}

/// Everything a batch needs.
pub struct FlowRunner<'a, L, E, R> {
    pub ledger: &'a L,
    pub effects: &'a E,
    /// Where the ends of effects go that could not be written in time.
    pub receipts: &'a R,
    pub clock: &'a dyn Clock,
    pub default_from: &'a str,
    pub lease: Duration,
    pub ends_at: Option<SystemTime>,
    /// Most steps one instance may run.
    pub step_limit: u32,
}

struct Going {
    index: usize,
    lease: Lease,
    automation: Option<i64>,
    version: Option<i32>,
    doc: Arc<Document>,
    instance: Instance,
    data: Json,
    /// The event and a manual start's payload, added to fresh data.
    event: (Json, Option<Json>),
    /// The result of the effect performed this round, for the step machine.
    last: Option<Performed>,
    retry: TransientRetry,
}

impl<L: FlowLedger, E: Effects, R: ReceiptSink> FlowRunner<'_, L, E, R> {
    /// Runs one queue batch; each message gets its own outcome, in order.
    pub async fn run(&self, bodies: &[String], concurrency: usize) -> Vec<FlowOutcome> {
        self.run_batch(bodies, concurrency).await.outcomes
    }

    /// Runs one queue batch: each message's outcome and instance, in order, and what the
    /// batch's metrics count.
    pub async fn run_batch(&self, bodies: &[String], concurrency: usize) -> Batch {
        let mut outcomes = Outcomes {
            of_message: vec![None; bodies.len()],
            index_of: HashMap::new(),
            instances: vec![MessageInstance::default(); bodies.len()],
            claimed: 0,
            effect_ms: Vec::with_capacity(bodies.len()),
        };
        let mut valid = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            match QueueMessage::parse(body) {
                Ok(m) => {
                    outcomes.instances[i].log_id = Some(m.log_id);
                    valid.push((i, m))
                }
                Err(e) => outcomes.of_message[i] = Some(FlowOutcome::Rejected(e)),
            }
        }
        if !valid.is_empty() {
            self.run_valid(&valid, &mut outcomes, concurrency.max(1)).await;
        }
        Batch {
            outcomes: outcomes
                .of_message
                .into_iter()
                .map(|o| o.unwrap_or(FlowOutcome::StoreFailed("no outcome".into())))
                .collect(),
            instances: outcomes.instances,
            claimed: outcomes.claimed,
            effect_ms: outcomes.effect_ms,
        }
    }

    /// Runs the messages that parsed: the batch's instances are claimed, then moved on
    /// round by round (each round starts the next effects, performs them and records how
    /// they ended) until none has an effect left to perform in this invocation.
    async fn run_valid(&self, valid: &[(usize, QueueMessage)], outcomes: &mut Outcomes, concurrency: usize) {
        let now = self.clock.now();
        let lease_until = now + self.lease;
        // Writes of effects' ends are retried until then, leaving time to keep them as receipts.
        let give_up_at = give_up_at(now, lease_until, self.ends_at);
        let msgs: Vec<QueueMessage> = valid.iter().map(|(_, m)| *m).collect();
        let started = match self.ledger.start(&msgs, now, lease_until).await {
            Ok(s) => s,
            Err(e) => {
                for (i, _) in valid {
                    outcomes.of_message[*i] = Some(FlowOutcome::StoreFailed(e.to_string()));
                }
                return;
            }
        };
        let (mut going, mut write) = take_claimed(valid, started, outcomes);
        // Instances whose next effect the last write of effects' ends also started.
        let mut carried = Took::default();
        loop {
            let took = self.start_effects(going, write, carried, outcomes).await;
            if took.sending.is_empty() && took.recorded.is_empty() {
                break;
            }
            let results = self.perform(took.sending, concurrency, &mut outcomes.effect_ms).await;
            let Some(next) = self.end_effects(results, took.recorded, give_up_at, outcomes).await else {
                return;
            };
            (going, carried) = next;
            write = FlowWrite::default();
        }
    }

    /// A round's start: each instance's next effect, decided with its data as it is now, is
    /// recorded as started in one write with the decisions, the stops, and what `write`
    /// holds already. Returns the effects the ledger took, with those an earlier write
    /// started (`carried`).
    async fn start_effects(
        &self,
        going: Vec<Going>,
        mut write: FlowWrite,
        carried: Took,
        outcomes: &mut Outcomes,
    ) -> Took {
        let now = self.clock.now();
        let at = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
        let left = self.left(now);
        let performing: Vec<Going> = going
            .into_iter()
            .filter_map(|g| self.next_effect(g, left, at, &mut write))
            .collect();
        let mut took = carried;
        if !write.is_empty() {
            match self.ledger.write(&write, &[], self.clock.now()).await {
                Ok(written) => {
                    let more = outcomes.settle(&mut write, &written, performing);
                    took.sending.extend(more.sending);
                    took.recorded.extend(more.recorded);
                }
                // Its instances go back to the queue. Effects an earlier write started
                // (carried) are still performed, and their ends written.
                Err(e) => outcomes.store_failed(&write, &e),
            }
        }
        took
    }

    /// A round's effects, performed with at most `concurrency` at once; how each ended.
    /// How long each took is added to `took_ms`.
    async fn perform(
        &self,
        sending: Vec<(Going, StepStart)>,
        concurrency: usize,
        took_ms: &mut Vec<u32>,
    ) -> Vec<(Going, StepEnd)> {
        stream::iter(sending)
            .map(|(g, start)| async move {
                let key = format!("{}-{}", g.lease.log_id, start.step);
                let began = self.clock.now();
                let result = self.effects.perform(&start.effect, &key).await;
                let ms = millis(self.clock.now().duration_since(began).unwrap_or_default());
                log_effect(&g, &start, &result, ms);
                let end = StepEnd {
                    lease: start.lease,
                    step: start.step,
                    kind: start.kind,
                    attempt: start.attempt,
                    result,
                };
                (g, end, ms)
            })
            .buffer_unordered(concurrency)
            .map(|(g, end, ms)| {
                took_ms.push(ms);
                (g, end)
            })
            .collect()
            .await
    }

    /// A round's end: how its effects ended (`performed` here, `recorded` by the write that
    /// performed them) is written, with what follows each where that is decided now (see
    /// [`FlowRunner::after_effects`]), retrying until `give_up_at`. Returns the instances to
    /// decide next round, with their data read again, and the effects this write started;
    /// none when the write could not be made (its ends were kept as receipts if they could
    /// be).
    async fn end_effects(
        &self,
        performed: Vec<(Going, StepEnd)>,
        recorded: Vec<(Going, StepEnd)>,
        give_up_at: SystemTime,
        outcomes: &mut Outcomes,
    ) -> Option<(Vec<Going>, Took)> {
        let Ends {
            mut write,
            moved,
            next,
            fresh_for,
        } = self.after_effects(performed, recorded);
        let written = match self.write_ends(&write, &fresh_for, give_up_at).await {
            Ok(w) => w,
            Err((e, at)) => {
                // Every instance of this write stays running until its lease expires.
                let outcome = self.keep(&write.ended, at, &e).await;
                let leases = leases_of(&write)
                    .chain(fresh_for.iter().copied())
                    .chain(next.iter().map(|g| g.lease));
                for lease in leases {
                    outcomes.set(lease.log_id, outcome.clone());
                }
                return None;
            }
        };
        // A lost lease settles its instance's outcome here.
        let carried = outcomes.settle(&mut write, &written, moved);
        let mut going = Vec::new();
        for mut g in next {
            if outcomes.of_message[g.index].is_some() {
                continue;
            }
            let outcome = match written.data.get(&g.lease.log_id) {
                Some(Ok(data)) => {
                    g.data = with_event(data.clone(), &g.event);
                    going.push(g);
                    continue;
                }
                Some(Err(e)) => FlowOutcome::StoreFailed(format!("reading the data: {e}")),
                None => FlowOutcome::StoreFailed("the data was not read".into()),
            };
            outcomes.of_message[g.index] = Some(outcome);
        }
        Some((going, carried))
    }

    /// The write of a round's ends. Where an instance goes next (its next effect's start, or
    /// its stop) is decided now and written with it when that needs no fresh data; the data
    /// of the instances whose next decision reads it again is read in the same round trip,
    /// and they are decided in the next round.
    fn after_effects(&self, performed: Vec<(Going, StepEnd)>, recorded: Vec<(Going, StepEnd)>) -> Ends {
        let mut ends = Ends::default();
        let now = self.clock.now();
        let at = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
        let left = self.left(now);
        let both = performed
            .into_iter()
            .map(|(g, end)| (g, end, false))
            .chain(recorded.into_iter().map(|(g, end)| (g, end, true)));
        for (mut g, end, local) in both {
            g.last = Some(performed_as(end.result.clone()));
            let decide_now = is_last(&g.doc.steps, &end.step) || !needs_fresh_data(&g.doc, local);
            // An effect performed by the write that recorded it is already ended.
            if !local {
                ends.write.ended.push(end);
            }
            if decide_now {
                if let Some(g) = self.next_effect(g, left, at, &mut ends.write) {
                    ends.moved.push(g);
                }
            } else {
                ends.fresh_for.push(g.lease);
                ends.next.push(g);
            }
        }
        ends
    }

    /// Time left before the invocation ends, at `now`.
    fn left(&self, now: SystemTime) -> Option<Duration> {
        self.ends_at.map(|end| end.duration_since(now).unwrap_or_default())
    }

    /// Writes how effects ended (and reads the data of `fresh_for`), retrying until
    /// `give_up_at` (see [`write_retrying`]).
    async fn write_ends(
        &self,
        ends: &FlowWrite,
        fresh_for: &[Lease],
        give_up_at: SystemTime,
    ) -> Result<FlowWritten, (StoreError, SystemTime)> {
        write_retrying(self.clock, give_up_at, "writing steps' ends", |at| {
            self.ledger.write(ends, fresh_for, at)
        })
        .await
    }

    /// Ends that could not be written go to the receipts queue, one receipt per instance.
    /// What became of their instances' messages.
    async fn keep(&self, ended: &[StepEnd], at: SystemTime, e: &StoreError) -> FlowOutcome {
        match keep(self.receipts, &step_receipts(ended, at), e).await {
            Ok(why) => FlowOutcome::Deferred(why),
            Err(why) => FlowOutcome::StoreFailed(why),
        }
    }

    /// Moves `g` on to its next effect, or parks it in `write`. A step that cannot be made
    /// ready fails there and then (recorded as ended), and the machine decides what follows.
    /// An effect that may not end in the time `left` (with [`EFFECT_MARGIN`] kept for the
    /// writes) is not started: the instance goes on in a later invocation.
    fn next_effect(&self, mut g: Going, left: Option<Duration>, at: Timestamp, write: &mut FlowWrite) -> Option<Going> {
        let fits = |budget: Duration| left.is_none_or(|left| EFFECT_MARGIN + budget < left);
        let out_of_time = !fits(Duration::ZERO);
        let park = |g: Going, stop: Stop, write: &mut FlowWrite| {
            write.parked.push(Parked {
                lease: g.lease,
                instance: g.instance,
                stop,
            })
        };
        if out_of_time && g.last.is_none() {
            park(g, Stop::Later, write);
            return None;
        }
        loop {
            let policy = Policy {
                step_limit: self.step_limit,
                transient: TransientRetry {
                    jitter: fastrand::f64(),
                    ..g.retry
                },
            };
            let (next, decided) = advance(&g.doc, &mut g.instance, &g.data, g.last.take(), &policy, at);
            write.decided.extend(decided.into_iter().map(|d| (g.lease, d)));
            let (step, attempt) = match next {
                Advance::Park(p) => {
                    park(g, Stop::Park(p), write);
                    return None;
                }
                Advance::Perform { .. } if out_of_time => {
                    // Nothing of the step has happened: it runs in a later invocation.
                    g.instance.steps_run -= 1;
                    g.instance.attempt -= 1;
                    park(g, Stop::Later, write);
                    return None;
                }
                Advance::Perform { step, attempt } => (step, attempt),
            };
            let vars = variables(&g.data, &g.instance);
            let found = find(&g.doc.steps, &step);
            let kind = found.map_or("unknown", |s| s.action.type_name());
            let ready = found.and_then(|s| {
                let doc = &g.doc;
                prepare(s, &vars, &doc.admins, self.default_from, at, &doc.timezone, doc.region)
            });
            match ready {
                Some(Ok(effect)) if !fits(effect.budget()) => {
                    g.instance.steps_run -= 1;
                    g.instance.attempt -= 1;
                    park(g, Stop::Later, write);
                    return None;
                }
                Some(Ok(effect)) => {
                    write.started.push(StepStart {
                        lease: g.lease,
                        step,
                        kind,
                        attempt,
                        effect,
                        place: g.instance.clone(),
                    });
                    return Some(g);
                }
                Some(Err(failure)) => {
                    g.last = Some(Performed::Failed {
                        error: failure.message.clone(),
                        transient: failure.kind == crate::model::ErrorKind::Transient,
                    });
                    write.ended.push(StepEnd {
                        lease: g.lease,
                        step,
                        kind,
                        attempt,
                        result: Err(failure),
                    });
                }
                None => {
                    park(
                        g,
                        Stop::Park(Park::Failed(format!("step `{step}` has no effect to perform"))),
                        write,
                    );
                    return None;
                }
            }
        }
    }
}

/// The data with the event under `herald` and a manual start's payload under `payload`.
fn with_event(data: Json, event: &(Json, Option<Json>)) -> Json {
    match data {
        Json::Object(mut map) => {
            map.insert("herald".into(), event.0.clone());
            if let Some(payload) = &event.1 {
                map.insert("payload".into(), payload.clone());
            }
            Json::Object(map)
        }
        other => other,
    }
}

/// An effect's result, as the step machine reads it.
fn performed_as(result: Result<Json, Failure>) -> Performed {
    match result {
        Ok(output) => Performed::Done(output),
        Err(f) => Performed::Failed {
            transient: f.kind == crate::model::ErrorKind::Transient,
            error: f.message,
        },
    }
}

/// The receipts of ends that could not be written at `at`: one per instance, its steps in
/// the order they ended.
fn step_receipts(ended: &[StepEnd], at: SystemTime) -> Vec<Receipt> {
    let mut out: Vec<Receipt> = Vec::new();
    for end in ended {
        let step = ReceiptStep {
            step: end.step.clone(),
            kind: end.kind.to_owned(),
            attempt: end.attempt,
            output: end.result.as_ref().ok().cloned(),
            error: end.result.as_ref().err().map(|f| f.message.clone()),
            error_kind: end.result.as_ref().err().map(|f| f.kind.as_str().to_owned()),
            error_code: end.result.as_ref().err().and_then(|f| f.code.clone()),
        };
        match out
            .iter_mut()
            .find(|r| r.log_id == end.lease.log_id && r.lease == end.lease.token)
        {
            Some(r) => r.steps.push(step),
            None => out.push(Receipt {
                log_id: end.lease.log_id,
                lease: end.lease.token,
                attempt: end.lease.attempt,
                at_us: micros(at),
                steps: vec![step],
            }),
        }
    }
    out
}

/// Whether an instance's next decision reads its data again: when its flow has exit
/// conditions (checked against fresh data before every step), or when the step that just
/// ended changed this database. Otherwise the data read when the invocation claimed it (or
/// last read it) is still what a template or branch would read.
fn needs_fresh_data(doc: &Document, changed_here: bool) -> bool {
    changed_here || !doc.exit.is_empty()
}

/// Every lease `w` names.
fn leases_of(w: &FlowWrite) -> impl Iterator<Item = Lease> + '_ {
    w.started
        .iter()
        .map(|s| s.lease)
        .chain(w.parked.iter().map(|p| p.lease))
        .chain(w.ended.iter().map(|s| s.lease))
        .chain(w.decided.iter().map(|(l, _)| *l))
}

/// Effects a write took: to perform, and the ones it performed itself (already ended).
#[derive(Default)]
struct Took {
    sending: Vec<(Going, StepStart)>,
    recorded: Vec<(Going, StepEnd)>,
}

/// The write of a round's ends, and the instances it concerns: moved on by it (their next
/// effect or their stop is in it), and to decide next round with their data (`fresh_for`)
/// read again.
#[derive(Default)]
struct Ends {
    write: FlowWrite,
    moved: Vec<Going>,
    next: Vec<Going>,
    fresh_for: Vec<Lease>,
}

/// Each message's outcome, once known, and where a claimed instance's goes: the message
/// that claimed it (a log named twice in one batch is claimed by its first message only;
/// the other is skipped). With what the metrics count.
struct Outcomes {
    of_message: Vec<Option<FlowOutcome>>,
    index_of: HashMap<LogId, usize>,
    instances: Vec<MessageInstance>,
    claimed: u32,
    effect_ms: Vec<u32>,
}

impl Outcomes {
    /// The outcome of the message that claimed `log_id`.
    fn set(&mut self, log_id: LogId, outcome: FlowOutcome) {
        self.of_message[self.index_of[&log_id]] = Some(outcome);
    }

    /// Where the instance of the message at `index` stopped.
    fn stopped_at(&mut self, index: usize, step: Option<String>, attempt: u32) {
        let instance = &mut self.instances[index];
        instance.attempt = step.is_some().then_some(attempt);
        instance.step = step;
    }

    /// The ledger's answers to `write`: parks and lost leases settle their instances'
    /// outcomes; the effects it took are returned, to perform, or as ended when the write
    /// performed them itself. `performing` are the instances whose starts `write` holds, in
    /// order.
    /// (The write has been made: the parked instances' steps are taken from it, not copied.)
    fn settle(&mut self, write: &mut FlowWrite, written: &FlowWritten, performing: Vec<Going>) -> Took {
        for (p, taken) in write.parked.iter_mut().zip(&written.parked) {
            let outcome = match taken {
                // A park performs nothing.
                Taken::Yes | Taken::Performed(_) => FlowOutcome::Stopped(p.stop.clone()),
                Taken::Lost => lost(&p.lease),
                Taken::Held(status) => FlowOutcome::Stopped(Stop::Held(status.clone())),
            };
            let index = self.index_of[&p.lease.log_id];
            self.of_message[index] = Some(outcome);
            self.stopped_at(index, p.instance.next.take(), p.instance.attempt);
        }
        for (e, ok) in write.ended.iter().zip(&written.ended) {
            if !ok {
                self.set(e.lease.log_id, lost(&e.lease));
            }
        }
        let starts = std::mem::take(&mut write.started);
        let mut took = Took::default();
        for ((g, start), taken) in performing.into_iter().zip(starts).zip(&written.started) {
            let slot = &mut self.of_message[g.index];
            match (&slot, taken) {
                (Some(_), _) => {}
                (None, Taken::Yes) => took.sending.push((g, start)),
                // Performed by the write itself: already recorded as ended.
                (None, Taken::Performed(result)) => {
                    let end = StepEnd {
                        lease: start.lease,
                        step: start.step,
                        kind: start.kind,
                        attempt: start.attempt,
                        result: result.clone(),
                    };
                    took.recorded.push((g, end))
                }
                (None, Taken::Lost) => *slot = Some(lost(&g.lease)),
                (None, Taken::Held(status)) => {
                    *slot = Some(FlowOutcome::Stopped(Stop::Held(status.clone())));
                    self.stopped_at(g.index, Some(start.step), start.attempt);
                }
            }
        }
        took
    }

    /// A write that could not be made: every instance it concerned goes back to the queue.
    fn store_failed(&mut self, write: &FlowWrite, e: &StoreError) {
        for lease in leases_of(write) {
            self.set(lease.log_id, FlowOutcome::StoreFailed(e.to_string()));
        }
    }
}

/// What becomes of each claimed instance: it goes on (returned), it stops at once (its
/// stop in the returned write), or its message gets its outcome now.
fn take_claimed(
    valid: &[(usize, QueueMessage)],
    started: Vec<FlowStarted>,
    outcomes: &mut Outcomes,
) -> (Vec<Going>, FlowWrite) {
    let mut going = Vec::new();
    let mut write = FlowWrite::default();
    for ((index, msg), started) in valid.iter().zip(started) {
        let index = *index;
        let outcome = match started {
            FlowStarted::Unknown => FlowOutcome::Rejected(format!("no execution log {}", msg.log_id)),
            FlowStarted::NotClaimable { status } => FlowOutcome::Skipped(format!("log {} is {status}", msg.log_id)),
            FlowStarted::Failed(why) => FlowOutcome::Stopped(Stop::Park(Park::Failed(why))),
            FlowStarted::Claimed { lease, flow } => {
                outcomes.index_of.insert(msg.log_id, index);
                outcomes.claimed += 1;
                let instance = &mut outcomes.instances[index];
                (instance.automation, instance.version) = (flow.automation_id, flow.version);
                match claimed(index, lease, *flow) {
                    Claimed::Going(g) => going.push(*g),
                    Claimed::Stopped(p) => write.parked.push(p),
                    Claimed::Outcome(o) => outcomes.of_message[index] = Some(o),
                }
                continue;
            }
        };
        outcomes.of_message[index] = Some(outcome);
    }
    (going, write)
}

/// What becomes of one claimed instance.
enum Claimed {
    Going(Box<Going>),
    /// It stops at once, before any effect.
    Stopped(Parked),
    /// Its message gets this outcome now.
    Outcome(FlowOutcome),
}

/// A claimed instance, as loaded, for the message at `index`.
fn claimed(index: usize, lease: Lease, flow: LoadedFlow) -> Claimed {
    let LoadedFlow {
        definition,
        instance,
        data,
        event,
        payload,
        resumed,
        retry,
        automation_id,
        version,
    } = flow;
    let event = (event, payload);
    let data = data.map(|d| with_event(d, &event));
    let stop = |instance, stop| Claimed::Stopped(Parked { lease, instance, stop });
    let (doc, data) = match (definition, data) {
        (_, Err(ContextError::Transient(m))) => {
            return Claimed::Outcome(FlowOutcome::StoreFailed(format!("loading the data: {m}")))
        }
        (Err(why), _) => {
            let why = format!("the definition cannot be read: {why}");
            return stop(instance, Stop::Park(Park::Failed(why)));
        }
        (_, Err(ContextError::Permanent(m))) => {
            return stop(instance, Stop::Park(Park::Failed(format!("the data: {m}"))))
        }
        (Ok(doc), Ok(data)) => (doc, data),
    };
    let at = instance.next.clone().unwrap_or_default();
    let step = find(&doc.steps, &at);
    let kind = step.map_or("unknown", |s| s.action.type_name());
    let last = match resumed {
        Resumed::Fresh => None,
        Resumed::Ended(p) => Some(p),
        // As the step says: by default a webhook is sent again (with the same id, so the
        // receiver drops a repeat), and a message to people is not sent twice blind.
        Resumed::InDoubt if step.is_some_and(|s| s.on_unknown == OnUnknown::Resend) => None,
        Resumed::InDoubt => {
            let why = format!("step `{at}` ({kind}) started but its outcome was never recorded");
            return stop(instance, Stop::Unknown(why));
        }
    };
    Claimed::Going(Box::new(Going {
        index,
        lease,
        automation: automation_id,
        version,
        doc,
        instance,
        data,
        event,
        last,
        retry,
    }))
}

fn lost(lease: &Lease) -> FlowOutcome {
    FlowOutcome::Skipped(format!(
        "the lease of log {} (token {}) was taken over",
        lease.log_id, lease.token
    ))
}

/// Performs effects through the providers' senders and the webhook client.
pub struct Performers<'a, M, S, H> {
    pub email: &'a M,
    pub sms: &'a S,
    pub webhooks: &'a H,
}

impl<M: crate::model::EmailSender, S: crate::model::SmsSender, H: WebhookSender> Effects for Performers<'_, M, S, H> {
    async fn perform(&self, effect: &Effect, key: &str) -> Result<Json, Failure> {
        match effect {
            Effect::Email(m) => self
                .email
                .send_email(m)
                .await
                .map(|id| serde_json::json!({"message_id": id})),
            Effect::Sms(m) => self
                .sms
                .send_sms(m)
                .await
                .map(|id| serde_json::json!({"message_id": id})),
            Effect::NotifyAdmin { emails, sms } => {
                let mut sent = Vec::new();
                for m in emails {
                    sent.push((m.to.clone(), self.email.send_email(m).await));
                }
                for m in sms {
                    sent.push((m.to.clone(), self.sms.send_sms(m).await));
                }
                notified(sent)
            }
            Effect::Webhook {
                url,
                body,
                secret,
                timeout,
            } => {
                self.webhooks
                    .send(&WebhookStep {
                        url,
                        body,
                        secret_id: secret,
                        timeout: *timeout,
                        id: key,
                    })
                    .await
            }
            // Changes to this database are performed by the ledger's write (`Taken::Performed`).
            _ => Err(Failure::permanent(
                "a change to this database is performed by the ledger's write, not by a provider",
            )),
        }
    }
}

/// How a `notify_admin` step went, from each admin's answer: done when at least one admin
/// was reached (the output lists the provider ids, and the admins who were not reached with
/// why), so that no admin is notified twice by a retry; failed when none was (transient if
/// any failure was, so that `on_error` may retry).
fn notified(sent: Vec<(String, Result<String, Failure>)>) -> Result<Json, Failure> {
    let (ok, failed): (Vec<_>, Vec<_>) = sent.into_iter().partition(|(_, r)| r.is_ok());
    let reached: Vec<(String, String)> = ok.into_iter().filter_map(|(to, r)| r.ok().map(|id| (to, id))).collect();
    let ids: Vec<&str> = reached.iter().map(|(_, id)| id.as_str()).collect();
    let failures: Vec<(String, Failure)> = failed
        .into_iter()
        .filter_map(|(to, r)| r.err().map(|f| (to, f)))
        .collect();
    if ids.is_empty() {
        let message = failures
            .iter()
            .map(|(to, f)| format!("{to}: {}", f.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(
            match failures
                .iter()
                .any(|(_, f)| f.kind == crate::model::ErrorKind::Transient)
            {
                true => Failure::transient(format!("no admin was reached: {message}")),
                false => Failure::permanent(format!("no admin was reached: {message}")),
            },
        );
    }
    // Each admin reached, with the provider's id (herald_sends lists them).
    let sent: Vec<Json> = reached
        .iter()
        .map(|(to, id)| serde_json::json!({"to": to, "message_id": id}))
        .collect();
    let mut output = serde_json::json!({"message_ids": ids, "sent": sent});
    if !failures.is_empty() {
        output["not_reached"] = failures
            .iter()
            .map(|(to, f)| serde_json::json!({"to": to, "error": f.message}))
            .collect();
    }
    Ok(output)
}

/// Whole milliseconds of `d`, at most `u32::MAX` (49 days).
fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

/// Logs how an effect that leaves this database went, with its instance's log, automation,
/// version, step and attempt; recipients masked and reasons redacted (they can quote
/// addresses).
fn log_effect(g: &Going, start: &StepStart, result: &Result<Json, Failure>, duration_ms: u32) {
    let (log_id, automation, version) = (g.lease.log_id, g.automation, g.version);
    let (step, attempt) = (start.step.as_str(), start.attempt);
    let (kind, to) = match &start.effect {
        Effect::Email(e) => ("email", mask_email(&e.to)),
        Effect::Sms(m) => ("sms", mask_phone(&m.to)),
        Effect::Webhook { .. } => ("webhook", String::new()),
        Effect::NotifyAdmin { emails, sms } => ("notify_admin", format!("{} admins", emails.len() + sms.len())),
        _ => return,
    };
    match result {
        Ok(output) => {
            let message_id = output.get("message_id").and_then(Json::as_str).unwrap_or_default();
            tracing::info!(
                log_id,
                automation,
                version,
                step,
                attempt,
                kind,
                to,
                message_id,
                duration_ms,
                "delivered"
            )
        }
        Err(f) => tracing::warn!(
            log_id,
            automation,
            version,
            step,
            attempt,
            kind,
            to,
            duration_ms,
            error = %redact(&f.to_string()),
            error_kind = f.kind.as_str(),
            "delivery failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::ErrorKind;
    use crate::workflow::definition::parse;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn doc(steps: Json) -> Document {
        parse(&json!({
            "trigger": {"type": "manual"},
            "exit": [{"if": {"field": "status", "op": "=", "value": "cancelled"}, "reason": "cancelled"}],
            "steps": steps
        }))
        .unwrap()
    }

    fn three_steps() -> Document {
        doc(json!([
            {"id": "email", "type": "send_email", "to": "{{ email }}", "subject": "Hi", "text": "Hi {{ name }}"},
            {"id": "pause", "type": "wait", "for": "0 seconds"},
            {"id": "sms", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ name }}"}
        ]))
    }

    fn data(id: i64) -> Json {
        json!({"status": "confirmed", "name": format!("n{id}"), "email": format!("m{id}@example.com"), "phone": "+14155550100"})
    }

    /// A ledger in memory: instances by log id, every write kept, data changeable between
    /// writes, and leases that can be lost.
    #[derive(Default)]
    struct FakeLedger {
        flows: Mutex<HashMap<LogId, (Document, Json)>>,
        writes: Mutex<Vec<FlowWrite>>,
        lost: Mutex<Vec<LogId>>,
        /// Instances an operator holds, with the status the ledger parks them in.
        held: Mutex<HashMap<LogId, String>>,
        /// Applied to the data after each write: (log id, field, value).
        changes: Mutex<Vec<(LogId, &'static str, Json)>>,
        fail_writes: bool,
        /// Calls of `write` (counted from 1, retries included) that fail.
        failing: Vec<usize>,
        /// How many instances' data each write read.
        reads: Mutex<Vec<usize>>,
        calls: Mutex<usize>,
    }

    impl FlowLedger for FakeLedger {
        async fn start(
            &self,
            messages: &[QueueMessage],
            _now: SystemTime,
            _until: SystemTime,
        ) -> Result<Vec<FlowStarted>, StoreError> {
            let flows = self.flows.lock().unwrap();
            Ok(messages
                .iter()
                .map(|m| match flows.get(&m.log_id) {
                    None => FlowStarted::Unknown,
                    Some((doc, data)) => FlowStarted::Claimed {
                        lease: Lease {
                            log_id: m.log_id,
                            token: m.lease,
                            attempt: 1,
                        },
                        flow: Box::new(LoadedFlow {
                            definition: Ok(Arc::new(doc.clone())),
                            instance: Instance::new(doc),
                            data: Ok(data.clone()),
                            event: Json::Null,
                            payload: None,
                            resumed: Resumed::Fresh,
                            retry: TransientRetry::DEFAULT,
                            automation_id: Some(m.log_id % 2 + 1),
                            version: Some(3),
                        }),
                    },
                })
                .collect())
        }

        async fn write(
            &self,
            write: &FlowWrite,
            fresh_for: &[Lease],
            _now: SystemTime,
        ) -> Result<FlowWritten, StoreError> {
            let call = {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            if self.fail_writes || self.failing.contains(&call) {
                return Err(StoreError::new(
                    "writing",
                    std::io::Error::other("the database went away"),
                ));
            }
            self.writes.lock().unwrap().push(write.clone());
            self.reads.lock().unwrap().push(fresh_for.len());
            let lost = self.lost.lock().unwrap().clone();
            let held = self.held.lock().unwrap().clone();
            let ok = |l: &Lease| !lost.contains(&l.log_id);
            let taken = |l: &Lease| match held.get(&l.log_id) {
                _ if !ok(l) => Taken::Lost,
                Some(status) => Taken::Held(status.clone()),
                None => Taken::Yes,
            };
            let mut flows = self.flows.lock().unwrap();
            for (id, field, value) in self.changes.lock().unwrap().drain(..) {
                flows.get_mut(&id).unwrap().1[field] = value;
            }
            Ok(FlowWritten {
                ended: write.ended.iter().map(|e| ok(&e.lease)).collect(),
                started: write
                    .started
                    .iter()
                    .map(|s| match taken(&s.lease) {
                        // The ledger performs changes to its own database as it records them.
                        Taken::Yes if s.effect.is_local() => Taken::Performed(Ok(json!({"rows": 1}))),
                        other => other,
                    })
                    .collect(),
                parked: write.parked.iter().map(|p| taken(&p.lease)).collect(),
                data: fresh_for
                    .iter()
                    .map(|l| (l.log_id, Ok(flows[&l.log_id].1.clone())))
                    .collect(),
            })
        }
    }

    /// Effects kept in order, with the key each was performed under; SMS to `+14155550666`
    /// fail permanently.
    #[derive(Default)]
    struct FakeEffects(Mutex<Vec<(String, Effect)>>, Option<(Arc<ManualClock>, Duration)>);

    impl Effects for FakeEffects {
        async fn perform(&self, effect: &Effect, key: &str) -> Result<Json, Failure> {
            self.0.lock().unwrap().push((key.to_owned(), effect.clone()));
            if let Some((clock, takes)) = &self.1 {
                clock.advance(*takes);
            }
            match effect {
                Effect::Sms(s) if s.to == "+14155550666" => Err(Failure::permanent("opted out")),
                _ => Ok(json!({"message_id": format!("id-{key}")})),
            }
        }
    }

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    /// Receipts kept in memory.
    #[derive(Default)]
    struct KeptReceipts(Mutex<Vec<Receipt>>);

    impl ReceiptSink for KeptReceipts {
        async fn put(&self, receipts: &[Receipt]) -> Result<(), Failure> {
            self.0.lock().unwrap().extend_from_slice(receipts);
            Ok(())
        }
    }

    async fn run(
        ledger: &FakeLedger,
        effects: &FakeEffects,
        ids: &[i64],
        ends_at: Option<SystemTime>,
    ) -> Vec<FlowOutcome> {
        run_keeping(ledger, effects, ids, ends_at, &KeptReceipts::default()).await
    }

    async fn run_keeping(
        ledger: &FakeLedger,
        effects: &FakeEffects,
        ids: &[i64],
        ends_at: Option<SystemTime>,
        receipts: &KeptReceipts,
    ) -> Vec<FlowOutcome> {
        let clock = effects
            .1
            .as_ref()
            .map_or_else(|| Arc::new(ManualClock::new(at())), |(c, _)| c.clone());
        let runner = FlowRunner {
            ledger,
            effects,
            receipts,
            clock: clock.as_ref(),
            default_from: "club@example.com",
            lease: Duration::from_secs(120),
            ends_at,
            step_limit: 100,
        };
        let bodies: Vec<String> = ids
            .iter()
            .map(|id| json!({"log_id": id, "lease": 9}).to_string())
            .collect();
        runner.run(&bodies, 4).await
    }

    fn ledger_of(flows: Vec<(LogId, Document, Json)>) -> FakeLedger {
        let ledger = FakeLedger::default();
        *ledger.flows.lock().unwrap() = flows.into_iter().map(|(id, d, j)| (id, (d, j))).collect();
        ledger
    }

    #[tokio::test]
    async fn a_batch_says_what_it_claimed_where_each_instance_stopped_and_how_long_effects_took() {
        // GIVEN two instances, one of them paused by an operator, a log that does not exist
        // and a malformed message; each effect takes 40 ms
        let ledger = ledger_of(vec![(1, three_steps(), data(1)), (2, three_steps(), data(2))]);
        ledger.held.lock().unwrap().insert(2, "paused".into());
        let clock = Arc::new(ManualClock::new(at()));
        let effects = FakeEffects(Mutex::default(), Some((clock.clone(), Duration::from_millis(40))));
        let runner = FlowRunner {
            ledger: &ledger,
            effects: &effects,
            receipts: &KeptReceipts::default(),
            clock: clock.as_ref(),
            default_from: "club@example.com",
            lease: Duration::from_secs(120),
            ends_at: None,
            step_limit: 100,
        };
        let mut bodies: Vec<String> = [1, 2, 3]
            .iter()
            .map(|id| json!({"log_id": id, "lease": 9}).to_string())
            .collect();
        bodies.push("junk".into());
        // WHEN the batch runs
        let batch = runner.run_batch(&bodies, 4).await;
        // THEN each message's outcome, as the metrics count it
        let counted: Vec<Outcome> = batch.outcomes.iter().map(FlowOutcome::metric).collect();
        assert_eq!(
            counted,
            [Outcome::Completed, Outcome::Held, Outcome::Rejected, Outcome::Rejected]
        );
        // AND its instance: the automation and version of a claimed one, and where it stopped
        let instance = |log_id, automation, step: Option<&str>, attempt| MessageInstance {
            log_id,
            automation,
            version: automation.map(|_| 3),
            step: step.map(str::to_owned),
            attempt,
        };
        assert_eq!(
            batch.instances,
            [
                instance(Some(1), Some(2), None, None),
                instance(Some(2), Some(1), Some("email"), Some(1)),
                instance(Some(3), None, None, None),
                instance(None, None, None, None),
            ]
        );
        assert_eq!(batch.claimed, 2);
        // AND how long each effect sent took: the email and the SMS of the first
        assert_eq!(batch.effect_ms, [40, 40]);
    }

    #[tokio::test]
    async fn a_batch_runs_every_instance_to_its_end_in_few_writes() {
        let ledger = ledger_of((1..=3).map(|id| (id, three_steps(), data(id))).collect());
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1, 2, 3], None).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed)); 3]);
        let mut done: Vec<(String, &'static str)> = effects
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, e)| (k.clone(), if matches!(e, Effect::Email(_)) { "email" } else { "sms" }))
            .collect();
        done.sort();
        assert_eq!(
            done,
            [
                ("1-email", "email"),
                ("1-sms", "sms"),
                ("2-email", "email"),
                ("2-sms", "sms"),
                ("3-email", "email"),
                ("3-sms", "sms")
            ]
            .map(|(k, e)| (k.to_owned(), e))
        );
        let writes = ledger.writes.lock().unwrap();
        // Exits checked and emails started; emails ended (fresh data read for the exit
        // checks); exits checked, waits decided and SMS started; SMS ended and, as nothing
        // follows the last step, completed in the same write (no data read).
        assert_eq!(writes.len(), 4, "{writes:#?}");
        assert_eq!(*ledger.reads.lock().unwrap(), [0, 3, 0, 0]);
        assert_eq!((writes[0].decided.len(), writes[0].started.len()), (3, 3));
        assert_eq!(writes[1].ended.len(), 3);
        assert_eq!((writes[2].decided.len(), writes[2].started.len()), (9, 3));
        assert!(writes[3].decided.is_empty());
        assert_eq!((writes[3].ended.len(), writes[3].parked.len()), (3, 3));
        let outputs = &writes[3].parked[0].instance.outputs;
        assert_eq!(
            outputs["email"]["message_id"],
            json!(format!("id-{}-email", writes[3].parked[0].lease.log_id))
        );
    }

    #[tokio::test]
    async fn an_exit_condition_read_after_an_effect_stops_the_instance() {
        let ledger = ledger_of(vec![(1, three_steps(), data(1)), (2, three_steps(), data(2))]);
        ledger.changes.lock().unwrap().push((1, "status", json!("cancelled")));
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1, 2], None).await;
        assert_eq!(
            out,
            vec![
                FlowOutcome::Stopped(Stop::Park(Park::Exited("cancelled".into()))),
                FlowOutcome::Stopped(Stop::Park(Park::Completed)),
            ]
        );
        assert_eq!(
            effects.0.lock().unwrap().len(),
            3,
            "one email and nothing else for the cancelled one"
        );
    }

    #[tokio::test]
    async fn failures_follow_on_error_and_unready_steps_fail_without_an_effect() {
        let d = doc(json!([
            {"id": "sms", "type": "send_sms", "to": "{{ phone }}", "body": "x", "on_error": "continue"},
            {"id": "email", "type": "send_email", "to": "{{ missing }}", "subject": "x", "text": "x", "on_error": "continue"},
            {"id": "last", "type": "send_sms", "to": "{{ phone }}", "body": "y"}
        ]));
        let mut opted_out = data(1);
        opted_out["phone"] = json!("+14155550666");
        let ledger = ledger_of(vec![(1, d, opted_out)]);
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1], None).await;
        assert_eq!(
            out,
            vec![FlowOutcome::Stopped(Stop::Park(Park::Failed(
                "step `last` failed: opted out".into()
            )))]
        );
        let writes = ledger.writes.lock().unwrap();
        let ended: Vec<(String, Option<ErrorKind>)> = writes
            .iter()
            .flat_map(|w| w.ended.iter())
            .map(|e| (e.step.clone(), e.result.as_ref().err().map(|f| f.kind)))
            .collect();
        assert_eq!(
            ended,
            [
                ("sms", Some(ErrorKind::Permanent)),
                ("email", Some(ErrorKind::Permanent)),
                ("last", Some(ErrorKind::Permanent))
            ]
            .map(|(s, k)| (s.to_owned(), k))
        );
        assert_eq!(
            effects.0.lock().unwrap().len(),
            2,
            "the email could not be made ready: never performed"
        );
    }

    #[tokio::test]
    async fn lost_leases_stop_instances_and_a_failed_write_returns_the_batch() {
        let ledger = ledger_of(vec![(1, three_steps(), data(1)), (2, three_steps(), data(2))]);
        ledger.lost.lock().unwrap().push(2);
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1, 2, 3], None).await;
        assert_eq!(out[0], FlowOutcome::Stopped(Stop::Park(Park::Completed)));
        assert!(
            matches!(&out[1], FlowOutcome::Skipped(m) if m.contains("log 2")),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], FlowOutcome::Rejected("no execution log 3".into()));
        assert!(effects.0.lock().unwrap().iter().all(|(k, _)| k.starts_with("1-")));

        let broken = FakeLedger {
            fail_writes: true,
            ..ledger_of(vec![(1, three_steps(), data(1))])
        };
        let out = run(&broken, &effects, &[1], None).await;
        assert!(matches!(&out[0], FlowOutcome::StoreFailed(_)), "{out:?}");
    }

    #[test]
    fn notify_admin_is_done_when_any_admin_was_reached_and_never_reaches_one_twice() {
        let sent = |to: &str| (to.to_owned(), Ok(format!("id-{to}")));
        let lost = |to: &str, f: Failure| (to.to_owned(), Err(f));
        let table = [
            // answers, output or (failure kind, message)
            (
                vec![sent("a@x"), sent("+1555")],
                Ok(json!({"message_ids": ["id-a@x", "id-+1555"],
                          "sent": [{"to": "a@x", "message_id": "id-a@x"}, {"to": "+1555", "message_id": "id-+1555"}]})),
            ),
            (
                vec![sent("a@x"), lost("+1555", Failure::transient("throttled"))],
                Ok(
                    json!({"message_ids": ["id-a@x"], "sent": [{"to": "a@x", "message_id": "id-a@x"}],
                          "not_reached": [{"to": "+1555", "error": "throttled"}]}),
                ),
            ),
            (
                vec![
                    lost("a@x", Failure::permanent("bad")),
                    lost("+1555", Failure::transient("throttled")),
                ],
                Err((ErrorKind::Transient, "no admin was reached: a@x: bad; +1555: throttled")),
            ),
            (
                vec![lost("a@x", Failure::permanent("bad"))],
                Err((ErrorKind::Permanent, "no admin was reached: a@x: bad")),
            ),
        ];
        for (answers, want) in table {
            let got = notified(answers.clone()).map_err(|f| (f.kind, f.message));
            let want = want.map_err(|(k, m)| (k, m.to_owned()));
            assert_eq!(got, want, "{answers:?}");
        }
    }

    #[tokio::test]
    async fn ends_that_cannot_be_written_are_retried_then_kept_as_receipts() {
        // Write 1 starts the emails; writes 2 and 3 (their ends) fail, the third try lands.
        let ledger = FakeLedger {
            failing: vec![2, 3],
            ..ledger_of(vec![(1, three_steps(), data(1)), (2, three_steps(), data(2))])
        };
        let effects = FakeEffects(
            Default::default(),
            Some((Arc::new(ManualClock::new(at())), Duration::ZERO)),
        );
        let kept = KeptReceipts::default();
        let out = run_keeping(&ledger, &effects, &[1, 2], None, &kept).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed)); 2]);
        assert!(kept.0.lock().unwrap().is_empty());
        let clock = &effects.1.as_ref().unwrap().0;
        assert_eq!(
            clock.now(),
            at() + Duration::from_millis(600),
            "waited 200 ms, then 400 ms"
        );
        {
            // Every try wrote the same ends at the same time.
            let writes = ledger.writes.lock().unwrap();
            assert_eq!(writes[1].ended.len(), 2);
            assert_eq!(effects.0.lock().unwrap().len(), 4, "each email and SMS once");
        }

        // The database stays away: the ends go to the receipts queue before the lease ends.
        let ledger = FakeLedger {
            failing: (2..1_000).collect(),
            ..ledger_of(vec![(1, three_steps(), data(1)), (2, three_steps(), data(2))])
        };
        let effects = FakeEffects(
            Default::default(),
            Some((Arc::new(ManualClock::new(at())), Duration::ZERO)),
        );
        let kept = KeptReceipts::default();
        let ends_at = Some(at() + Duration::from_secs(30));
        let out = run_keeping(&ledger, &effects, &[1, 2], ends_at, &kept).await;
        assert!(out.iter().all(|o| matches!(o, FlowOutcome::Deferred(_))), "{out:?}");
        assert!(out.iter().all(|o| !o.is_batch_failure()));
        let clock = &effects.1.as_ref().unwrap().0;
        assert!(
            clock.now() <= at() + Duration::from_secs(24),
            "gave up 6 s before the end"
        );
        let kept = kept.0.lock().unwrap();
        assert_eq!(kept.len(), 2);
        for (r, id) in kept.iter().zip([1, 2]) {
            assert_eq!((r.log_id, r.lease, r.attempt, r.at_us), (id, 9, 1, micros(at())));
            assert_eq!(r.steps.len(), 1);
            assert_eq!(
                (r.steps[0].step.as_str(), r.steps[0].kind.as_str()),
                ("email", "send_email")
            );
            assert_eq!(r.steps[0].output, Some(json!({"message_id": format!("id-{id}-email")})));
            assert_eq!(Receipt::parse(&r.to_body()).as_ref(), Ok(r));
        }
        assert_eq!(effects.0.lock().unwrap().len(), 2, "no SMS started");
    }

    #[tokio::test]
    async fn changes_to_the_database_are_performed_by_the_write_and_feed_later_steps() {
        let flow = doc(json!([
            {"id": "mark", "type": "update_field", "set": {"status": "welcomed"}},
            {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "{{ steps.mark.rows }} row changed"}
        ]));
        let ledger = ledger_of(vec![(1, flow, data(1))]);
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1], None).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
        let performed = effects.0.lock().unwrap();
        assert_eq!(performed.len(), 1, "only the SMS reaches a provider: {performed:?}");
        assert!(matches!(&performed[0].1, Effect::Sms(s) if s.body == "1 row changed"));
        let writes = ledger.writes.lock().unwrap();
        assert!(writes[0].started[0].effect.is_local());
        assert!(
            writes.iter().all(|w| w.ended.iter().all(|e| e.step != "mark")),
            "its end was recorded by the write that performed it"
        );
    }

    #[tokio::test]
    async fn without_exit_conditions_data_is_read_again_only_after_a_change_made_here() {
        let flow = parse(&json!({
            "trigger": {"type": "manual"},
            "steps": [
                {"id": "email", "type": "send_email", "to": "{{ email }}", "subject": "Hi", "text": "Hi {{ name }}"},
                {"id": "sms", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ name }}"},
                {"id": "vip", "type": "add_tag", "tag": "vip"},
                {"id": "bye", "type": "send_sms", "to": "{{ phone }}", "body": "Bye {{ name }}"}
            ]
        }))
        .unwrap();
        let ledger = ledger_of(vec![(1, flow, data(1))]);
        // Changed by someone else after the claim: the second SMS, which comes after a step
        // that changed this database, reads it; the first does not.
        ledger.changes.lock().unwrap().push((1, "name", json!("Renamed")));
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1], None).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
        // email started; email ended and SMS started; SMS ended and tag added (by the
        // write); data read with nothing else to write; bye started; bye ended and completed.
        assert_eq!(*ledger.reads.lock().unwrap(), [0, 0, 0, 1, 0, 0]);
        let writes = ledger.writes.lock().unwrap();
        let shape: Vec<(usize, usize, usize)> = writes
            .iter()
            .map(|w| (w.ended.len(), w.started.len(), w.parked.len()))
            .collect();
        assert_eq!(
            shape,
            [(0, 1, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0), (0, 1, 0), (1, 0, 1)]
        );
        drop(writes);
        let bodies: Vec<String> = effects
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, e)| match e {
                Effect::Sms(s) => Some(s.body.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, ["Hi n1", "Bye Renamed"]);
    }

    #[tokio::test]
    async fn a_webhook_that_may_not_answer_before_the_invocation_ends_waits_for_the_next() {
        let flow = || {
            doc(
                json!([{"id": "hook", "type": "webhook", "url": "https://hooks.example.com/x", "body": "{}",
                        "secret": "herald/webhooks/x", "timeout": "15 seconds"}]),
            )
        };
        // 20 s left: the 15 s timeout and the 10 s kept for the writes do not fit.
        let ledger = ledger_of(vec![(1, flow(), data(1))]);
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1], Some(at() + Duration::from_secs(20))).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Later)]);
        assert!(effects.0.lock().unwrap().is_empty());
        let parked = ledger.writes.lock().unwrap()[0].parked[0].instance.clone();
        assert_eq!(
            (parked.next.as_deref(), parked.steps_run, parked.attempt),
            (Some("hook"), 0, 0)
        );
        // 30 s left: it is sent.
        let ledger = ledger_of(vec![(1, flow(), data(1))]);
        let out = run(&ledger, &effects, &[1], Some(at() + Duration::from_secs(30))).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Park(Park::Completed))]);
        assert_eq!(effects.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_held_instance_starts_no_effect_and_stops_as_the_ledger_parked_it() {
        let ledger = ledger_of(vec![(1, three_steps(), data(1)), (2, three_steps(), data(2))]);
        ledger.held.lock().unwrap().insert(2, "paused".into());
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1, 2], None).await;
        assert_eq!(out[0], FlowOutcome::Stopped(Stop::Park(Park::Completed)));
        assert_eq!(out[1], FlowOutcome::Stopped(Stop::Held("paused".into())));
        assert!(effects.0.lock().unwrap().iter().all(|(k, _)| k.starts_with("1-")));
        let writes = ledger.writes.lock().unwrap();
        assert!(
            writes[1..]
                .iter()
                .all(|w| w.started.iter().all(|s| s.lease.log_id == 1)),
            "nothing more is asked of the held instance"
        );
    }

    #[tokio::test]
    async fn near_the_end_of_the_invocation_instances_park_for_later_without_starting_effects() {
        let ledger = ledger_of(vec![(1, three_steps(), data(1))]);
        let effects = FakeEffects::default();
        let out = run(&ledger, &effects, &[1], Some(at() + Duration::from_secs(5))).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Later)]);
        assert!(effects.0.lock().unwrap().is_empty());
        let parked = ledger.writes.lock().unwrap()[0].parked[0].instance.clone();
        assert_eq!(
            (parked.next.as_deref(), parked.steps_run, parked.attempt),
            (Some("email"), 0, 0)
        );

        // An effect that uses up the time: the next step waits for a later invocation.
        let ledger = ledger_of(vec![(1, three_steps(), data(1))]);
        let slow = FakeEffects(
            Mutex::default(),
            Some((Arc::new(ManualClock::new(at())), Duration::from_secs(25))),
        );
        let out = run(&ledger, &slow, &[1], Some(at() + Duration::from_secs(30))).await;
        assert_eq!(out, vec![FlowOutcome::Stopped(Stop::Later)]);
        assert_eq!(slow.0.lock().unwrap().len(), 1, "the email only");
        let writes = ledger.writes.lock().unwrap();
        let parked = &writes.last().unwrap().parked[0].instance;
        assert_eq!(
            (parked.next.as_deref(), parked.steps_run, parked.attempt),
            (Some("sms"), 2, 0)
        );
    }
}
