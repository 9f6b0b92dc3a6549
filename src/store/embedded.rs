//! The embedded file store (the default mode): one redb file, written with group commit.
//!
//! Tables:
//! - `records`: `(kind, id)` -> `(version, body, status, user)`; the stored index values let a
//!   move or delete clean up even when the caller's `old_indexes` are incomplete.
//! - `index`: multimap `"{kind}:all" | "{kind}:status:{status}" | "{kind}:user:{user}"` -> id
//!   (values are kept sorted, so listings come out ascending).
//! - `timers`: `(due_ms, id)` -> body, plus `timer_due`: id -> due_ms.
//! - `outbox`: seq -> EventRecord JSON, plus multimap `outbox_ids`: event id -> seq, and `meta`
//!   holding the next sequence number.
//! - `seen`: key -> expiry (epoch ms), plus `seen_expiry`: `(expiry, key)` for purging.
//!
//! Writes (`commit`, `ack_outbox`) go through one queue served by one dedicated writer thread.
//! The writer takes everything queued (up to [`MAX_BATCH`] jobs), opens one redb write
//! transaction and runs the jobs in order: each commit's checks see the transaction's current
//! state (so earlier commits of the same batch count), and a commit whose checks fail writes
//! nothing and gets its own error. Then one durable `commit()` (one fsync for the whole batch),
//! and only then does each caller get its own answer. If that transaction fails, no job in the
//! batch was applied and each gets `Unavailable`. Batches form naturally: while the writer waits
//! on the disk, the next commits queue up; a lone caller pays what it did before.
//!
//! Reads see committed state only; redb calls block, so they run on `spawn_blocking` with the
//! database in an `Arc`.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use redb::{
    Database, MultimapTable, MultimapTableDefinition, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use sandboxd_actors::domain::EventRecord;
use sandboxd_actors::ports::{
    Commit, IndexQuery, IndexValues, Kind, Record, StateStore, StoreError, TimerRecord,
};
use tokio::sync::oneshot;

type RecordValue = (
    u64,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const RECORDS: TableDefinition<(&str, &str), RecordValue> = TableDefinition::new("records");
const INDEX: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("index");
const TIMERS: TableDefinition<(i64, &str), &str> = TableDefinition::new("timers");
const TIMER_DUE: TableDefinition<&str, i64> = TableDefinition::new("timer_due");
const OUTBOX: TableDefinition<u64, &str> = TableDefinition::new("outbox");
const OUTBOX_IDS: MultimapTableDefinition<&str, u64> = MultimapTableDefinition::new("outbox_ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SEEN: TableDefinition<&str, i64> = TableDefinition::new("seen");
const SEEN_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("seen_expiry");

const NEXT_SEQ: &str = "outbox_next_seq";
/// The longest duplicate-key TTL honoured (every store clamps to it): 100 years.
const MAX_SEEN_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;
/// Expired duplicate keys removed per commit (keeps the table bounded without a sweeper).
const SEEN_PURGE_BATCH: usize = 64;
/// The most jobs the writer puts in one write transaction.
const MAX_BATCH: usize = 256;

/// A redb-backed [`StateStore`].
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
    path: PathBuf,
}

/// One caller's answer.
type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A write waiting for the writer thread.
enum Work {
    Commit(Commit),
    AckOutbox(Vec<String>),
}

struct Job {
    work: Work,
    reply: Reply,
}

/// The queue into the writer thread. Dropping the last handle closes the queue and waits for the
/// thread to finish (it answers what it already took, then lets go of the database file).
struct Writer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // Err: the writer panicked; its callers already saw Unavailable.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Outer error: redb failed (the store is unavailable); inner: the contract said no.
type Outcome<T> = Result<Result<T, StoreError>, redb::Error>;

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn all_key(kind: Kind) -> String {
    format!("{}:all", kind.as_str())
}

fn status_key(kind: Kind, status: &str) -> String {
    format!("{}:status:{status}", kind.as_str())
}

fn user_key(kind: Kind, user: &str) -> String {
    format!("{}:user:{user}", kind.as_str())
}

impl EmbeddedStore {
    /// Open (or create) the store file, creating its parent directory.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!("cannot create the store directory {}", parent.display())
                })?;
            }
        }
        let db = Database::create(path)
            .with_context(|| format!("cannot open the embedded store {}", path.display()))?;
        // Create every table up front, so read transactions never meet a missing one.
        let txn = db.begin_write()?;
        {
            txn.open_table(RECORDS)?;
            txn.open_multimap_table(INDEX)?;
            txn.open_table(TIMERS)?;
            txn.open_table(TIMER_DUE)?;
            txn.open_table(OUTBOX)?;
            txn.open_multimap_table(OUTBOX_IDS)?;
            txn.open_table(META)?;
            txn.open_table(SEEN)?;
            txn.open_table(SEEN_EXPIRY)?;
        }
        txn.commit()
            .with_context(|| format!("cannot initialise the embedded store {}", path.display()))?;
        let db = Arc::new(db);
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".to_string())
            .spawn({
                let db = Arc::clone(&db);
                move || writer_loop(&db, &jobs)
            })
            .context("cannot start the embedded store writer thread")?;
        Ok(Self {
            db,
            writer: Arc::new(Writer {
                queue: Some(queue),
                thread: Some(thread),
            }),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Outcome<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => Err(unavailable(error)),
            Err(join) => Err(unavailable(format!("embedded store task failed: {join}"))),
        }
    }

    /// Queue a write for the writer thread and wait for its answer, which comes only once the
    /// write is durable (or known not to be applied).
    async fn write(&self, work: Work) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let queued = match &self.writer.queue {
            Some(queue) => queue.send(Job { work, reply }).is_ok(),
            None => false,
        };
        if !queued {
            return Err(unavailable("the embedded store writer has stopped"));
        }
        answer.await.unwrap_or_else(|_| {
            Err(unavailable(
                "the embedded store writer stopped before answering",
            ))
        })
    }
}

/// The writer thread: one write transaction and one durable commit per batch of queued jobs.
/// Returns when every store handle is gone (the queue is closed and empty).
fn writer_loop(db: &Database, jobs: &mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = match run_batch(db, &batch) {
            Ok(results) => results,
            Err(error) => {
                let error = unavailable(error);
                vec![Err(error); batch.len()]
            }
        };
        for (job, result) in batch.drain(..).zip(results) {
            // Err: the caller stopped waiting; the outcome stands either way.
            let _ = job.reply.send(result);
        }
    }
}

/// Every table, opened once per batch.
struct Tables<'txn> {
    records: Table<'txn, (&'static str, &'static str), RecordValue>,
    index: MultimapTable<'txn, &'static str, &'static str>,
    timers: Table<'txn, (i64, &'static str), &'static str>,
    timer_due: Table<'txn, &'static str, i64>,
    outbox: Table<'txn, u64, &'static str>,
    outbox_ids: MultimapTable<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, u64>,
    seen: Table<'txn, &'static str, i64>,
    seen_expiry: Table<'txn, (i64, &'static str), ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            records: txn.open_table(RECORDS)?,
            index: txn.open_multimap_table(INDEX)?,
            timers: txn.open_table(TIMERS)?,
            timer_due: txn.open_table(TIMER_DUE)?,
            outbox: txn.open_table(OUTBOX)?,
            outbox_ids: txn.open_multimap_table(OUTBOX_IDS)?,
            meta: txn.open_table(META)?,
            seen: txn.open_table(SEEN)?,
            seen_expiry: txn.open_table(SEEN_EXPIRY)?,
        })
    }
}

/// Run a batch in one write transaction: each job's own result, or (outer error) nothing at all
/// was applied. Only returns `Ok` once the transaction is durably committed.
fn run_batch(db: &Database, batch: &[Job]) -> Result<Vec<Result<(), StoreError>>, redb::Error> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tables = Tables::open(&txn)?;
        for job in batch {
            // An outer error drops the transaction, which aborts the whole batch.
            let result = match &job.work {
                Work::Commit(commit) => apply_commit(&mut tables, commit)?,
                Work::AckOutbox(ids) => apply_ack(&mut tables, ids)?,
            };
            results.push(result);
        }
    }
    txn.commit()?;
    Ok(results)
}

fn apply_ack(tables: &mut Tables<'_>, ids: &[String]) -> Outcome<()> {
    for id in ids {
        let mut seqs = Vec::new();
        for seq in tables.outbox_ids.remove_all(id.as_str())? {
            seqs.push(seq?.value());
        }
        for seq in seqs {
            tables.outbox.remove(seq)?;
        }
    }
    Ok(Ok(()))
}

/// One commit inside the batch transaction: every check first, against the transaction's
/// current state; a failed check (or an outbox entry that cannot be encoded) writes nothing.
fn apply_commit(tables: &mut Tables<'_>, commit: &Commit) -> Outcome<()> {
    let now = now_ms();
    let Tables {
        records,
        index,
        timers,
        timer_due,
        outbox,
        outbox_ids,
        meta,
        seen,
        seen_expiry,
    } = tables;

    // Checks first: nothing below runs unless every one passes.
    for write in &commit.writes {
        let found = records
            .get((write.kind.as_str(), write.id.as_str()))?
            .map(|guard| guard.value().0)
            .unwrap_or(0);
        if found != write.expected_version {
            return Ok(Err(StoreError::Conflict {
                kind: write.kind.as_str(),
                id: write.id.clone(),
                expected: write.expected_version,
                found,
            }));
        }
    }
    for id in &commit.consume_timers {
        if timer_due.get(id.as_str())?.is_none() {
            return Ok(Err(StoreError::TimerGone(id.clone())));
        }
    }
    if let Some((key, _)) = &commit.seen_event {
        let live = seen
            .get(key.as_str())?
            .map(|guard| guard.value() > now)
            .unwrap_or(false);
        if live {
            return Ok(Err(StoreError::Duplicate(key.clone())));
        }
    }
    // Encoded before anything is written, so a failure cannot leave half a commit in the batch.
    let mut events = Vec::with_capacity(commit.outbox.len());
    for event in &commit.outbox {
        match serde_json::to_string(event) {
            Ok(json) => events.push((event.id.as_str(), json)),
            Err(error) => {
                return Ok(Err(StoreError::Corrupt(format!(
                    "cannot encode outbox entry {}: {error}",
                    event.id
                ))))
            }
        }
    }

    // Entity writes and their index entries.
    for write in &commit.writes {
        let kind = write.kind;
        let id = write.id.as_str();
        let previous: Option<IndexValues> = records.remove((kind.as_str(), id))?.map(|guard| {
            let (_, _, status, user) = guard.value();
            IndexValues {
                status: status.map(str::to_string),
                user: user.map(str::to_string),
            }
        });
        let mut stale = vec![write.old_indexes.clone()];
        stale.extend(previous);
        if write.body.is_none() {
            stale.push(write.indexes.clone());
        }
        for values in &stale {
            if let Some(status) = &values.status {
                index.remove(status_key(kind, status).as_str(), id)?;
            }
            if let Some(user) = &values.user {
                index.remove(user_key(kind, user).as_str(), id)?;
            }
        }
        match &write.body {
            Some(body) => {
                records.insert(
                    (kind.as_str(), id),
                    (
                        write.new_version,
                        body.as_str(),
                        write.indexes.status.as_deref(),
                        write.indexes.user.as_deref(),
                    ),
                )?;
                if let Some(status) = &write.indexes.status {
                    index.insert(status_key(kind, status).as_str(), id)?;
                }
                if let Some(user) = &write.indexes.user {
                    index.insert(user_key(kind, user).as_str(), id)?;
                }
                index.insert(all_key(kind).as_str(), id)?;
            }
            None => {
                index.remove(all_key(kind).as_str(), id)?;
            }
        }
    }

    // Timers: removals first, then (re-)arming.
    let mut remove_timer = |id: &str| -> Result<(), redb::Error> {
        let due = timer_due.remove(id)?.map(|guard| guard.value());
        if let Some(due) = due {
            timers.remove((due, id))?;
        }
        Ok(())
    };
    for id in commit
        .cancel_timers
        .iter()
        .chain(commit.consume_timers.iter())
    {
        remove_timer(id)?;
    }
    for timer in &commit.arm_timers {
        remove_timer(&timer.id)?;
    }
    for timer in &commit.arm_timers {
        timers.insert((timer.due_ms, timer.id.as_str()), timer.body.as_str())?;
        timer_due.insert(timer.id.as_str(), timer.due_ms)?;
    }

    // Outbox, in order.
    if !events.is_empty() {
        let mut seq = meta.get(NEXT_SEQ)?.map(|guard| guard.value()).unwrap_or(0);
        for (id, json) in &events {
            outbox.insert(seq, json.as_str())?;
            outbox_ids.insert(*id, seq)?;
            seq += 1;
        }
        meta.insert(NEXT_SEQ, seq)?;
    }

    // Duplicate key, and a bounded purge of expired ones.
    let expired: Vec<(i64, String)> = seen_expiry
        .range::<(i64, &str)>(..(now, ""))?
        .take(SEEN_PURGE_BATCH)
        .map(|entry| {
            entry.map(|(key, _)| {
                let (at, id) = key.value();
                (at, id.to_string())
            })
        })
        .collect::<Result<_, _>>()?;
    for (at, key) in &expired {
        seen_expiry.remove((*at, key.as_str()))?;
        let current = seen.get(key.as_str())?.map(|guard| guard.value());
        if current == Some(*at) {
            seen.remove(key.as_str())?;
        }
    }
    if let Some((key, ttl)) = &commit.seen_event {
        let ttl_ms = i64::try_from(ttl.as_millis())
            .unwrap_or(i64::MAX)
            .clamp(1, MAX_SEEN_TTL_MS);
        let expires = now.saturating_add(ttl_ms);
        let previous = seen
            .insert(key.as_str(), expires)?
            .map(|guard| guard.value());
        if let Some(previous) = previous {
            seen_expiry.remove((previous, key.as_str()))?;
        }
        seen_expiry.insert((expires, key.as_str()), ())?;
    }
    Ok(Ok(()))
}

fn record_from(id: &str, value: RecordValueOwned) -> Record {
    Record {
        id: id.to_string(),
        version: value.0,
        body: value.1,
    }
}

type RecordValueOwned = (u64, String);

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if commit.is_empty() {
            return Ok(());
        }
        self.write(Work::Commit(commit)).await
    }

    async fn load(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let records = txn.open_table(RECORDS)?;
            let value = records.get((kind.as_str(), id.as_str()))?.map(|guard| {
                let (version, body, _, _) = guard.value();
                (version, body.to_string())
            });
            Ok(Ok(value.map(|value| record_from(&id, value))))
        })
        .await
    }

    async fn load_many(&self, kind: Kind, ids: &[String]) -> Result<Vec<Record>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let records = txn.open_table(RECORDS)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                let value = records.get((kind.as_str(), id.as_str()))?.map(|guard| {
                    let (version, body, _, _) = guard.value();
                    (version, body.to_string())
                });
                if let Some(value) = value {
                    out.push(record_from(id, value));
                }
            }
            Ok(Ok(out))
        })
        .await
    }

    async fn ids(&self, query: IndexQuery) -> Result<Vec<String>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let index = txn.open_multimap_table(INDEX)?;
            let members = |key: &str| -> Result<Vec<String>, redb::Error> {
                let mut out = Vec::new();
                for value in index.get(key)? {
                    out.push(value?.value().to_string());
                }
                Ok(out)
            };
            let kind = query.kind;
            let mut ids = match (&query.status, &query.user) {
                (None, None) => members(&all_key(kind))?,
                (Some(status), None) => members(&status_key(kind, status))?,
                (None, Some(user)) => members(&user_key(kind, user))?,
                (Some(status), Some(user)) => {
                    let by_user: std::collections::HashSet<String> =
                        members(&user_key(kind, user))?.into_iter().collect();
                    members(&status_key(kind, status))?
                        .into_iter()
                        .filter(|id| by_user.contains(id))
                        .collect()
                }
            };
            ids.sort_unstable();
            Ok(Ok(ids))
        })
        .await
    }

    async fn due_timers(
        &self,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let timers = txn.open_table(TIMERS)?;
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(Ok(out));
            }
            for entry in timers.range::<(i64, &str)>((i64::MIN, "")..)? {
                let (key, body) = entry?;
                let (due_ms, id) = key.value();
                if due_ms > until_ms {
                    break;
                }
                out.push(TimerRecord {
                    id: id.to_string(),
                    due_ms,
                    body: body.value().to_string(),
                });
                if out.len() >= limit {
                    break;
                }
            }
            Ok(Ok(out))
        })
        .await
    }

    async fn timer_count(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            Ok(Ok(txn.open_table(TIMER_DUE)?.len()?))
        })
        .await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let outbox = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for entry in outbox.iter()?.take(limit) {
                let (seq, json) = entry?;
                match serde_json::from_str::<EventRecord>(json.value()) {
                    Ok(event) => out.push(event),
                    Err(error) => {
                        return Ok(Err(StoreError::Corrupt(format!(
                            "outbox entry {}: {error}",
                            seq.value()
                        ))))
                    }
                }
            }
            Ok(Ok(out))
        })
        .await
    }

    async fn ack_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(Work::AckOutbox(ids.to_vec())).await
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            Ok(Ok(txn.open_table(OUTBOX)?.len()?))
        })
        .await
    }
}
