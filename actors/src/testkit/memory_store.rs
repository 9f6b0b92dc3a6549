//! An in-memory [`StateStore`] for unit tests and the simulator.
//!
//! It follows the same contract as the Redis and embedded stores (the shared contract suite in
//! the daemon crate runs against all three): a commit checks every version, every consumed timer
//! and the duplicate key first, and only then applies everything, under one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::EventRecord;
use crate::ports::{
    Commit, IndexQuery, IndexValues, Kind, Record, StateStore, StoreError, TimerRecord,
};

/// The longest duplicate-key TTL honoured (every store clamps to it): 100 years.
const MAX_SEEN_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One index set: every id of a kind, or the ids of a kind with a given status or user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IndexKey {
    All(Kind),
    Status(Kind, String),
    User(Kind, String),
}

#[derive(Debug, Clone)]
struct Stored {
    version: u64,
    body: String,
    /// The index values the record was last written with, so a delete or a move also cleans up
    /// when the caller's `old_indexes` are incomplete.
    indexes: IndexValues,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<(Kind, String), Stored>,
    indexes: HashMap<IndexKey, BTreeSet<String>>,
    timers: HashMap<String, TimerRecord>,
    timer_order: BTreeSet<(i64, String)>,
    outbox: BTreeMap<u64, EventRecord>,
    outbox_ids: HashMap<String, Vec<u64>>,
    next_seq: u64,
    seen: HashMap<String, Instant>,
    seen_order: BTreeSet<(Instant, String)>,
    fail_next_commit: Option<StoreError>,
    commits: u64,
}

/// A `Mutex`-guarded in-memory state store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the next `commit` fail with `error` without applying anything (one shot).
    pub fn set_fail_next_commit(&self, error: StoreError) {
        self.lock().fail_next_commit = Some(error);
    }

    /// How many commits were applied successfully (for tests).
    pub fn commit_count(&self) -> u64 {
        self.lock().commits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in another test thread must not poison every later call.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn index_add(&mut self, key: IndexKey, id: &str) {
        self.indexes.entry(key).or_default().insert(id.to_string());
    }

    fn index_remove(&mut self, key: IndexKey, id: &str) {
        if let Some(set) = self.indexes.get_mut(&key) {
            set.remove(id);
            if set.is_empty() {
                self.indexes.remove(&key);
            }
        }
    }

    fn index_remove_values(&mut self, kind: Kind, id: &str, values: &IndexValues) {
        if let Some(status) = &values.status {
            self.index_remove(IndexKey::Status(kind, status.clone()), id);
        }
        if let Some(user) = &values.user {
            self.index_remove(IndexKey::User(kind, user.clone()), id);
        }
    }

    fn timer_remove(&mut self, id: &str) {
        if let Some(timer) = self.timers.remove(id) {
            self.timer_order.remove(&(timer.due_ms, timer.id));
        }
    }

    fn purge_seen(&mut self, now: Instant) {
        while let Some((expires, _)) = self.seen_order.first() {
            if *expires > now {
                break;
            }
            let (_, key) = self.seen_order.pop_first().expect("checked non-empty");
            self.seen.remove(&key);
        }
    }

    fn version_of(&self, kind: Kind, id: &str) -> u64 {
        self.records
            .get(&(kind, id.to_string()))
            .map(|stored| stored.version)
            .unwrap_or(0)
    }

    fn set(&self, key: &IndexKey) -> Option<&BTreeSet<String>> {
        self.indexes.get(key)
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(error) = inner.fail_next_commit.take() {
            return Err(error);
        }
        let now = Instant::now();
        inner.purge_seen(now);

        // Checks, in the contract's order; nothing is written until all pass.
        for write in &commit.writes {
            let found = inner.version_of(write.kind, &write.id);
            if found != write.expected_version {
                return Err(StoreError::Conflict {
                    kind: write.kind.as_str(),
                    id: write.id.clone(),
                    expected: write.expected_version,
                    found,
                });
            }
        }
        for id in &commit.consume_timers {
            if !inner.timers.contains_key(id) {
                return Err(StoreError::TimerGone(id.clone()));
            }
        }
        if let Some((key, _)) = &commit.seen_event {
            if inner.seen.contains_key(key) {
                return Err(StoreError::Duplicate(key.clone()));
            }
        }

        // Apply.
        for write in commit.writes {
            let kind = write.kind;
            let id = write.id;
            let previous = inner.records.remove(&(kind, id.clone()));
            inner.index_remove_values(kind, &id, &write.old_indexes);
            if let Some(previous) = &previous {
                inner.index_remove_values(kind, &id, &previous.indexes);
            }
            match write.body {
                Some(body) => {
                    if let Some(status) = &write.indexes.status {
                        inner.index_add(IndexKey::Status(kind, status.clone()), &id);
                    }
                    if let Some(user) = &write.indexes.user {
                        inner.index_add(IndexKey::User(kind, user.clone()), &id);
                    }
                    inner.index_add(IndexKey::All(kind), &id);
                    inner.records.insert(
                        (kind, id),
                        Stored {
                            version: write.new_version,
                            body,
                            indexes: write.indexes,
                        },
                    );
                }
                None => {
                    inner.index_remove_values(kind, &id, &write.indexes);
                    inner.index_remove(IndexKey::All(kind), &id);
                }
            }
        }
        for id in commit
            .cancel_timers
            .iter()
            .chain(commit.consume_timers.iter())
        {
            inner.timer_remove(id);
        }
        for timer in commit.arm_timers {
            inner.timer_remove(&timer.id);
            inner.timer_order.insert((timer.due_ms, timer.id.clone()));
            inner.timers.insert(timer.id.clone(), timer);
        }
        for event in commit.outbox {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner
                .outbox_ids
                .entry(event.id.clone())
                .or_default()
                .push(seq);
            inner.outbox.insert(seq, event);
        }
        if let Some((key, ttl)) = commit.seen_event {
            // Clamped like the other stores (an absurd TTL must not overflow the clock).
            let expires = now.checked_add(ttl.min(MAX_SEEN_TTL)).unwrap_or(now);
            inner.seen_order.insert((expires, key.clone()));
            inner.seen.insert(key, expires);
        }
        inner.commits += 1;
        Ok(())
    }

    async fn load(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .records
            .get(&(kind, id.to_string()))
            .map(|stored| Record {
                id: id.to_string(),
                version: stored.version,
                body: stored.body.clone(),
            }))
    }

    async fn load_many(&self, kind: Kind, ids: &[String]) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| {
                inner.records.get(&(kind, id.clone())).map(|stored| Record {
                    id: id.clone(),
                    version: stored.version,
                    body: stored.body.clone(),
                })
            })
            .collect())
    }

    async fn ids(&self, query: IndexQuery) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let kind = query.kind;
        let collect = |key: IndexKey| -> Vec<String> {
            inner
                .set(&key)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default()
        };
        Ok(match (query.status, query.user) {
            (None, None) => collect(IndexKey::All(kind)),
            (Some(status), None) => collect(IndexKey::Status(kind, status)),
            (None, Some(user)) => collect(IndexKey::User(kind, user)),
            (Some(status), Some(user)) => {
                match (
                    inner.set(&IndexKey::Status(kind, status)),
                    inner.set(&IndexKey::User(kind, user)),
                ) {
                    (Some(by_status), Some(by_user)) => {
                        by_status.intersection(by_user).cloned().collect()
                    }
                    _ => Vec::new(),
                }
            }
        })
    }

    async fn due_timers(
        &self,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .timer_order
            .iter()
            .take_while(|(due, _)| *due <= until_ms)
            .take(limit)
            .filter_map(|(_, id)| inner.timers.get(id).cloned())
            .collect())
    }

    async fn timer_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().timers.len() as u64)
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner.outbox.values().take(limit).cloned().collect())
    }

    async fn ack_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let unique: HashSet<&String> = ids.iter().collect();
        for id in unique {
            if let Some(seqs) = inner.outbox_ids.remove(id) {
                for seq in seqs {
                    inner.outbox.remove(&seq);
                }
            }
        }
        Ok(())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.lock().outbox.len() as u64)
    }
}
