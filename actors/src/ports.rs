//! The traits the shell implements. Actors only ever reach the outside world through these.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::domain::EventRecord;

/// Which kind of entity a stored record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Lease,
    Account,
    Template,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Account => "account",
            Self::Template => "template",
        }
    }
}

/// A stored snapshot: its version and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub version: u64,
    pub body: String,
}

/// The secondary-index values of a record (the store keeps sets by status and by user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexValues {
    pub status: Option<String>,
    pub user: Option<String>,
}

/// One compare-and-set entity write inside a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityWrite {
    pub kind: Kind,
    pub id: String,
    /// The version the store must hold now; 0 means the record must not exist.
    pub expected_version: u64,
    /// The version written; must be greater than `expected_version`. Ignored for deletes.
    pub new_version: u64,
    /// The new body, or None to delete the record (and its index entries).
    pub body: Option<String>,
    pub indexes: IndexValues,
    /// The index values the record had, so the store can move it between sets.
    pub old_indexes: IndexValues,
}

/// A durable timer as stored: due time in epoch milliseconds and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRecord {
    pub id: String,
    pub due_ms: i64,
    pub body: String,
}

/// Everything one transition persists, applied atomically or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub writes: Vec<EntityWrite>,
    pub outbox: Vec<EventRecord>,
    /// Armed (or re-armed: same id replaces) timers.
    pub arm_timers: Vec<TimerRecord>,
    /// Timers this transition consumes: each must still exist, else the commit fails with
    /// `TimerGone` (it already fired to effect).
    pub consume_timers: Vec<String>,
    /// Timers removed if present.
    pub cancel_timers: Vec<String>,
    /// A duplicate-event key set in the same write; if already present the commit fails with
    /// `Duplicate`.
    pub seen_event: Option<(String, std::time::Duration)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.outbox.is_empty()
            && self.arm_timers.is_empty()
            && self.consume_timers.is_empty()
            && self.cancel_timers.is_empty()
            && self.seen_event.is_none()
    }
}

/// Which ids to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexQuery {
    pub kind: Kind,
    pub status: Option<String>,
    pub user: Option<String>,
}

impl IndexQuery {
    pub fn all(kind: Kind) -> Self {
        Self {
            kind,
            status: None,
            user: None,
        }
    }

    pub fn by_status(kind: Kind, status: &str) -> Self {
        Self {
            kind,
            status: Some(status.to_string()),
            user: None,
        }
    }

    pub fn by_user(kind: Kind, user: &str) -> Self {
        Self {
            kind,
            status: None,
            user: Some(user.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("version conflict on {kind} {id}: expected {expected}, found {found}")]
    Conflict {
        kind: &'static str,
        id: String,
        expected: u64,
        found: u64,
    },
    #[error("timer {0} is gone (already fired)")]
    TimerGone(String),
    #[error("event {0} was already applied")]
    Duplicate(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Unavailable(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "conflict",
            Self::TimerGone(_) => "timer_gone",
            Self::Duplicate(_) => "duplicate",
            Self::Unavailable(_) => "unavailable",
            Self::Corrupt(_) => "corrupt",
        }
    }
}

/// Durable state: snapshots with compare-and-set, indexes, timers, outbox, duplicate keys.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Apply every part of the commit atomically, or none of it.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    async fn load(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError>;
    /// Records for the ids that exist, in the order given.
    async fn load_many(&self, kind: Kind, ids: &[String]) -> Result<Vec<Record>, StoreError>;
    /// Ids matching the query, sorted ascending.
    async fn ids(&self, query: IndexQuery) -> Result<Vec<String>, StoreError>;
    /// Timers due at or before `until`, earliest first.
    async fn due_timers(&self, until_ms: i64, limit: usize)
        -> Result<Vec<TimerRecord>, StoreError>;
    /// Count of armed timers (for metrics and tests).
    async fn timer_count(&self) -> Result<u64, StoreError>;
    /// The oldest outbox entries, in order.
    async fn outbox(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    async fn ack_outbox(&self, ids: &[String]) -> Result<(), StoreError>;
    async fn outbox_len(&self) -> Result<u64, StoreError>;
}

/// Publishes events; returns per entry whether it was accepted.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>>;
}

/// A cleanup run in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHandle {
    pub account_id: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    Succeeded,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RunnerError {
    #[error("cleanup runner unavailable: {0}")]
    Unavailable(String),
    #[error("cleanup refused: {0}")]
    Refused(String),
}

/// Runs one cleanup attempt (aws-nuke in CodeBuild, or a simulation).
#[async_trait]
pub trait CleanupRunner: Send + Sync + 'static {
    /// Start a run; `run_id` is unique per attempt and is the idempotency handle.
    async fn start(&self, handle: &RunHandle) -> Result<(), RunnerError>;
    /// Where a run stands. Must work for runs started before a restart.
    async fn poll(&self, handle: &RunHandle) -> Result<RunState, RunnerError>;
}

/// Spend per account since a given time (simulated, or Cost Explorer in a later issue).
#[async_trait]
pub trait CostSource: Send + Sync + 'static {
    async fn spend_since(
        &self,
        accounts: &[(String, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, f64)>, String>;
}

/// Time is an input: actors read it here so tests and the simulator can run days in seconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// How long to really wait for `virtual_time` to pass on this clock.
    fn real_duration(&self, virtual_time: chrono::Duration) -> std::time::Duration;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn real_duration(&self, virtual_time: chrono::Duration) -> std::time::Duration {
        virtual_time.to_std().unwrap_or_default()
    }
}

/// A clock that runs `factor` times faster than the wall clock from its creation (the demo and
/// the simulator).
#[derive(Debug, Clone, Copy)]
pub struct AcceleratedClock {
    origin_real: DateTime<Utc>,
    origin_virtual: DateTime<Utc>,
    factor: f64,
}

impl AcceleratedClock {
    pub fn new(factor: f64) -> Self {
        let now = Utc::now();
        Self {
            origin_real: now,
            origin_virtual: now,
            factor: factor.max(1.0),
        }
    }
}

impl Clock for AcceleratedClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Utc::now() - self.origin_real;
        let scaled_ms =
            (elapsed.num_microseconds().unwrap_or(0) as f64 * self.factor / 1000.0) as i64;
        self.origin_virtual + chrono::Duration::milliseconds(scaled_ms)
    }

    fn real_duration(&self, virtual_time: chrono::Duration) -> std::time::Duration {
        let micros = virtual_time.num_microseconds().unwrap_or(0).max(0) as f64 / self.factor;
        std::time::Duration::from_micros(micros as u64)
    }
}

/// An account waiting in the Entry OU to be registered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryAccount {
    pub aws_account_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// The organization's view of accounts not yet in the pool (Organizations' Entry OU, or the
/// simulator's list).
#[async_trait]
pub trait AccountDirectory: Send + Sync + 'static {
    async fn entry_accounts(&self) -> Result<Vec<EntryAccount>, String>;
}
