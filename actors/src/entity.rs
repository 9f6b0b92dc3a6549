//! How snapshots become store writes: one `Commit` per transition holding the new snapshot
//! (compare-and-set on the old version), its events, and its timers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};

use crate::domain::{Account, Effect, EventRecord, Lease, LeaseTemplate, Step, Timer};
use crate::ports::{
    Commit, EntityWrite, IndexValues, Kind, Record, StateStore, StoreError, TimerRecord,
};

pub trait Entity: Serialize + DeserializeOwned + Clone + Send + Unpin + 'static {
    const KIND: Kind;
    fn entity_id(&self) -> String;
    fn version(&self) -> u64;
    fn index_values(&self) -> IndexValues;
}

impl Entity for Lease {
    const KIND: Kind = Kind::Lease;
    fn entity_id(&self) -> String {
        self.uuid.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn index_values(&self) -> IndexValues {
        IndexValues {
            status: Some(self.status.to_string()),
            user: Some(self.user_email.clone()),
        }
    }
}

impl Entity for Account {
    const KIND: Kind = Kind::Account;
    fn entity_id(&self) -> String {
        self.aws_account_id.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn index_values(&self) -> IndexValues {
        IndexValues {
            status: Some(self.status.to_string()),
            user: None,
        }
    }
}

impl Entity for LeaseTemplate {
    const KIND: Kind = Kind::Template;
    fn entity_id(&self) -> String {
        self.uuid.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn index_values(&self) -> IndexValues {
        IndexValues::default()
    }
}

/// A compare-and-set write from `old` (None: create) to `new`.
pub fn write_of<T: Entity>(old: Option<&T>, new: &T) -> EntityWrite {
    debug_assert!(
        old.is_none_or(|old| new.version() > old.version()),
        "versions strictly increase"
    );
    EntityWrite {
        kind: T::KIND,
        id: new.entity_id(),
        expected_version: old.map_or(0, Entity::version),
        new_version: new.version(),
        body: Some(serde_json::to_string(new).unwrap_or_default()),
        indexes: new.index_values(),
        old_indexes: old.map(Entity::index_values).unwrap_or_default(),
    }
}

pub fn timer_record(timer: &Timer) -> TimerRecord {
    TimerRecord {
        id: timer.id.clone(),
        due_ms: timer.due.timestamp_millis(),
        body: serde_json::to_string(timer).unwrap_or_default(),
    }
}

/// Add a step's effects (events, timers) to a commit.
pub fn add_effects<T>(commit: &mut Commit, step: &Step<T>, now: DateTime<Utc>) {
    for effect in &step.effects {
        match effect {
            Effect::Publish(event) => commit.outbox.push(EventRecord::new(event, now)),
            Effect::ArmTimer(timer) => commit.arm_timers.push(timer_record(timer)),
            Effect::CancelTimer(id) => commit.cancel_timers.push(id.clone()),
        }
    }
}

/// The whole commit of one entity's transition.
pub fn commit_of<T: Entity>(old: Option<&T>, step: &Step<T>, now: DateTime<Utc>) -> Commit {
    let mut commit = Commit {
        writes: vec![write_of(old, &step.state)],
        ..Commit::default()
    };
    add_effects(&mut commit, step, now);
    commit
}

pub fn decode<T: Entity>(record: &Record) -> Result<T, StoreError> {
    serde_json::from_str(&record.body).map_err(|error| {
        StoreError::Corrupt(format!("{} {}: {error}", T::KIND.as_str(), record.id))
    })
}

pub async fn load<T: Entity>(
    store: &Arc<dyn StateStore>,
    id: &str,
) -> Result<Option<T>, StoreError> {
    match store.load(T::KIND, id).await? {
        Some(record) => decode(&record).map(Some),
        None => Ok(None),
    }
}

/// Load many, in chunks, skipping (and logging) records that do not decode.
pub async fn load_many<T: Entity>(
    store: &Arc<dyn StateStore>,
    ids: &[String],
) -> Result<Vec<T>, StoreError> {
    let mut entities = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        for record in store.load_many(T::KIND, chunk).await? {
            match decode::<T>(&record) {
                Ok(entity) => entities.push(entity),
                Err(error) => {
                    tracing::error!(%error, "skipping a record that does not decode");
                    metrics::counter!("sandboxd_corrupt_records_total", "kind" => T::KIND.as_str())
                        .increment(1);
                }
            }
        }
    }
    Ok(entities)
}

/// What persisting one transition came to.
pub enum Persisted<T> {
    /// Nothing to write (a no-op).
    Unchanged,
    /// Written: the new state.
    Committed(T),
    /// Our snapshot was stale: here is the stored one; decide again on it.
    Stale(T),
}

/// Turn a decision into what to persist. Internal commands (timers, run reports, spend) treat
/// "already in that state" and refusals as no-ops; API commands get the error. A consumed
/// timer is persisted even when the decision is a no-op, so it never fires again.
pub fn settle<T>(
    decided: Result<Option<Step<T>>, crate::domain::DomainError>,
    internal: bool,
) -> Result<Option<Step<T>>, crate::domain::DomainError> {
    match decided {
        Ok(step) => Ok(step),
        Err(_) if internal => Ok(None),
        Err(error) => Err(error),
    }
}

/// Persist one transition of `current` (or just consume a timer) in one commit.
pub async fn persist<T: Entity>(
    store: &Arc<dyn StateStore>,
    current: &T,
    step: Option<Step<T>>,
    consumed_timer: Option<String>,
    now: DateTime<Utc>,
) -> Result<Persisted<T>, crate::engine::EngineError> {
    let mut commit = match &step {
        Some(step) => commit_of(Some(current), step, now),
        None => Commit::default(),
    };
    commit.consume_timers.extend(consumed_timer);
    if commit.is_empty() {
        return Ok(Persisted::Unchanged);
    }
    match store.commit(commit).await {
        Ok(()) => Ok(match step {
            Some(step) => Persisted::Committed(step.state),
            None => Persisted::Unchanged,
        }),
        Err(StoreError::Conflict { .. }) => Ok(Persisted::Stale(reload(store, current).await?)),
        // The timer already fired to effect (a redelivery): hold the stored state.
        Err(StoreError::TimerGone(_)) => Ok(Persisted::Committed(reload(store, current).await?)),
        Err(error) => {
            metrics::counter!("sandboxd_commit_errors_total", "kind" => T::KIND.as_str(), "error" => error.label())
                .increment(1);
            Err(error.into())
        }
    }
}

pub async fn reload<T: Entity>(
    store: &Arc<dyn StateStore>,
    current: &T,
) -> Result<T, crate::engine::EngineError> {
    let id = current.entity_id();
    load::<T>(store, &id)
        .await?
        .ok_or_else(|| crate::engine::EngineError::NotFound(format!("{} {id}", T::KIND.as_str())))
}
