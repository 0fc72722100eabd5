//! The ledger as the functions see it, and what crosses it: the scheduler's claims,
//! rescues and receipts (`DueLogs`), and the executor's claims and writes of workflow
//! instances (`FlowLedger`). `pg` implements both over Postgres.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value as Json;

use crate::model::{
    ContextError, Failure, Fired, Ingested, Lease, LogId, QueueMessage, Rescued, ScheduleDue, ScheduleFiring,
    StoreError,
};
use crate::receipt::Receipt;
use crate::steps::Effect;
use crate::workflow::definition::Document;
use crate::workflow::machine::{Decided, Instance, Park, Performed};
use crate::workflow::plan::TransientRetry;

/// The scheduler's view of the ledger.
pub trait DueLogs: Sync {
    /// Moves up to `limit` captured events from the inbox to the ledger (pending or
    /// suppressed); returns how many it moved, and how many of them were suppressed.
    fn ingest(&self, limit: i32) -> impl Future<Output = Result<Ingested, StoreError>> + Send;
    /// Starts the instances of date triggers due by `now` (through the inbox), and records
    /// those past their lateness as missed.
    fn fire_dates(&self, now: SystemTime) -> impl Future<Output = Result<Fired, StoreError>> + Send;
    /// The schedules of active automations.
    fn due_schedules(&self) -> impl Future<Output = Result<Vec<ScheduleDue>, StoreError>> + Send;
    /// Fires a schedule's occurrences (each audience row's once), records its missed ones and
    /// moves it on, unless another scheduler moved it first.
    fn fire_schedule(
        &self,
        f: &ScheduleFiring,
        now: SystemTime,
    ) -> impl Future<Output = Result<Fired, StoreError>> + Send;
    /// Rescues logs whose lease expired before `now`.
    fn rescue(&self, now: SystemTime) -> impl Future<Output = Result<Rescued, StoreError>> + Send;
    /// Marks up to `limit` due pending logs as queued, leased until `lease_until`, and
    /// returns the messages to send for them.
    fn claim_due(
        &self,
        limit: i64,
        now: SystemTime,
        lease_until: SystemTime,
    ) -> impl Future<Output = Result<Vec<QueueMessage>, StoreError>> + Send;
    /// Puts queued logs back to pending (their messages never reached the queue).
    fn release(&self, ids: &[LogId], now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Applies receipts (writes an executor could not make) while their leases hold,
    /// and records every one; returns how many were applied.
    fn apply_receipts(
        &self,
        receipts: &[Receipt],
        now: SystemTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// One claimed instance, as the ledger loads it.
#[derive(Debug, Clone)]
pub struct LoadedFlow {
    /// The definition of the version the instance runs, or why it cannot be read.
    pub(crate) definition: Result<Arc<Document>, String>,
    pub(crate) instance: Instance,
    /// The subject's data as templates and conditions see it, read fresh.
    pub(crate) data: Result<Json, ContextError>,
    /// The event that started the instance, which templates and conditions see as `herald`.
    pub(crate) event: Json,
    /// What a manual start gave the instance, seen as `payload`.
    pub(crate) payload: Option<Json>,
    /// What the ledger knows of the step the instance is at, from an earlier invocation.
    pub(crate) resumed: Resumed,
    /// How its automation tries again an effect that failed transiently (`jitter` unused:
    /// each decision draws its own).
    pub(crate) retry: TransientRetry,
    /// Its automation, and the version it runs (for logs and metrics).
    pub(crate) automation_id: Option<i64>,
    pub(crate) version: Option<i32>,
}

/// The step an instance is at, as an earlier invocation left it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Resumed {
    /// Not started: run it.
    #[default]
    Fresh,
    /// Its effect ended and was recorded, but the instance did not move on: go on from
    /// that result without performing it again.
    Ended(Performed),
    /// Its effect started and no end was recorded: it may or may not have happened.
    InDoubt,
}

#[derive(Debug, Clone)]
pub enum FlowStarted {
    Claimed {
        lease: Lease,
        flow: Box<LoadedFlow>,
    },
    /// Not queued under the message's lease (a redelivery or a stale message).
    NotClaimable {
        status: String,
    },
    /// Failed by the ledger at its claim, for this reason: it has no version to run (its
    /// automation was deleted).
    Failed(String),
    Unknown,
}

/// An effect about to be performed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStart {
    pub lease: Lease,
    pub step: String,
    /// The step's type, as definitions write it.
    pub kind: &'static str,
    pub attempt: u32,
    pub effect: Effect,
    /// The instance's place as the effect starts, kept with it: the checkpoint an instance
    /// resumes from.
    pub place: Instance,
}

/// How a performed effect ended: its output, or the failure.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEnd {
    pub lease: Lease,
    pub step: String,
    pub kind: &'static str,
    pub attempt: u32,
    pub result: Result<Json, Failure>,
}

/// Where an instance stops in this invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    Park(Park),
    /// A step's effect started in an earlier invocation that ended before recording how it
    /// went, and resending it could repeat it: an operator decides.
    Unknown(String),
    /// Out of time: the instance waits for the scheduler, at its next step.
    Later,
    /// Paused or cancelled by an operator (the instance or its automation): the ledger
    /// parked it in this status at its step boundary.
    Held(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub lease: Lease,
    pub instance: Instance,
    pub stop: Stop,
}

/// One write of the ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowWrite {
    pub ended: Vec<StepEnd>,
    pub decided: Vec<(Lease, Decided)>,
    pub started: Vec<StepStart>,
    pub parked: Vec<Parked>,
}

impl FlowWrite {
    pub(crate) fn is_empty(&self) -> bool {
        self.ended.is_empty() && self.decided.is_empty() && self.started.is_empty() && self.parked.is_empty()
    }
}

/// How the ledger took an effect about to start, or a stop.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    Yes,
    /// A change to this database (`Effect::is_local`), made by the write itself in the
    /// transaction that recorded it: how it went.
    Performed(Result<Json, Failure>),
    /// The lease was no longer the instance's.
    Lost,
    /// The instance is paused or to be cancelled: the ledger parked it in this status
    /// instead (an effect about to start did not start).
    Held(String),
}

/// What the ledger took, entry by entry (ended: false when the lease was no longer the
/// instance's), and the fresh data of the instances asked for, read after the write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowWritten {
    pub ended: Vec<bool>,
    pub started: Vec<Taken>,
    pub parked: Vec<Taken>,
    pub data: HashMap<LogId, Result<Json, ContextError>>,
}

/// The executor's view of the ledger for workflow instances.
pub trait FlowLedger: Sync {
    /// Claims every message's instance under a new lease and loads it; one answer per
    /// message, in order.
    fn start(
        &self,
        messages: &[QueueMessage],
        now: SystemTime,
        lease_until: SystemTime,
    ) -> impl Future<Output = Result<Vec<FlowStarted>, StoreError>> + Send;
    /// Writes `write`, then reads the data of `fresh_for`.
    fn write(
        &self,
        write: &FlowWrite,
        fresh_for: &[Lease],
        now: SystemTime,
    ) -> impl Future<Output = Result<FlowWritten, StoreError>> + Send;
}
