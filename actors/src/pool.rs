//! The pool supervisor: owns the entity actors (one per live lease and pool account), restarts
//! them from their snapshots with capped backoff, and owns account allocation: the only place
//! that binds an account to a lease, in one compare-and-set write of both.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::account_actor::{AccountActor, AdoptAccount};
use crate::domain::{Account, AccountStatus, Event, Lease, LeaseStatus};
use crate::engine::{live_actor, EngineError, Shared};
use crate::entity::{self, add_effects, write_of};
use crate::lease_actor::{AdoptLease, LeaseActor};
use crate::ports::{Commit, IndexQuery, Kind, StoreError};

/// Restart backoff: doubles per restart within a minute, capped.
const BACKOFF_BASE: StdDuration = StdDuration::from_millis(100);
const BACKOFF_CAP: StdDuration = StdDuration::from_secs(10);

pub struct PoolSupervisor {
    shared: Arc<Shared>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    /// Available accounts, ordered by when they were last cleaned (longest ago first).
    free: BTreeSet<(i64, String)>,
    free_snapshots: HashMap<String, Account>,
    reserved: HashSet<String>,
    restarts: HashMap<String, (u32, Instant)>,
    /// Each account's last known status and version, and the count per status (the pool
    /// gauges).
    statuses: HashMap<String, (AccountStatus, u64)>,
    per_status: HashMap<AccountStatus, usize>,
}

impl PoolSupervisor {
    pub fn new(shared: Arc<Shared>, arbiters: Vec<ArbiterHandle>) -> Self {
        Self {
            shared,
            arbiters,
            next_arbiter: 0,
            free: BTreeSet::new(),
            free_snapshots: HashMap::new(),
            reserved: HashSet::new(),
            restarts: HashMap::new(),
            statuses: HashMap::new(),
            per_status: HashMap::new(),
        }
    }

    fn arbiter(&mut self) -> ArbiterHandle {
        self.next_arbiter = (self.next_arbiter + 1) % self.arbiters.len();
        self.arbiters[self.next_arbiter].clone()
    }

    fn spawn_lease(&mut self, lease: Lease) -> Addr<LeaseActor> {
        let uuid = lease.uuid.clone();
        let shared = self.shared.clone();
        let capacity = self.shared.settings.mailbox_capacity;
        let addr = LeaseActor::start_in_arbiter(&self.arbiter(), move |context| {
            context.set_mailbox_capacity(capacity);
            LeaseActor::new(shared, lease)
        });
        self.shared
            .leases
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(uuid, addr.clone());
        addr
    }

    fn spawn_account(&mut self, account: Account) -> Addr<AccountActor> {
        let id = account.aws_account_id.clone();
        self.track_account(&account);
        let shared = self.shared.clone();
        let capacity = self.shared.settings.mailbox_capacity;
        let addr = AccountActor::start_in_arbiter(&self.arbiter(), move |context| {
            context.set_mailbox_capacity(capacity);
            AccountActor::new(shared, account)
        });
        self.shared
            .accounts
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(id, addr.clone());
        addr
    }

    /// Keep the allocation view in step with an account's latest snapshot.
    fn track_account(&mut self, account: &Account) {
        let id = &account.aws_account_id;
        // Snapshots can arrive late (an actor's refresh racing an allocation): never let an
        // older one put an account back in the free set.
        if self
            .statuses
            .get(id)
            .is_some_and(|(_, version)| *version > account.version)
        {
            return;
        }
        if let Some(previous) = self.free_snapshots.get(id) {
            let key = (cleaned_key(previous.last_cleaned_at), id.clone());
            self.free.remove(&key);
            self.free_snapshots.remove(id);
        }
        if account.status == AccountStatus::Available {
            self.free
                .insert((cleaned_key(account.last_cleaned_at), id.clone()));
            self.free_snapshots.insert(id.clone(), account.clone());
        }
        self.count_status(id, account.status, account.version);
    }

    /// Keep the per-status counts (and their gauges) in step, in O(1) per change.
    fn count_status(&mut self, id: &str, status: AccountStatus, version: u64) {
        let previous = self
            .statuses
            .insert(id.to_string(), (status, version))
            .map(|(previous, _)| previous);
        if previous == Some(status) {
            return;
        }
        if let Some(previous) = previous {
            let count = self.per_status.entry(previous).or_default();
            *count = count.saturating_sub(1);
            metrics::gauge!("sandboxd_accounts", "status" => previous.as_str()).set(*count as f64);
        }
        let count = self.per_status.entry(status).or_default();
        *count += 1;
        metrics::gauge!("sandboxd_accounts", "status" => status.as_str()).set(*count as f64);
    }

    fn publish_all_gauges(&self) {
        for status in AccountStatus::ALL {
            let count = self.per_status.get(&status).copied().unwrap_or(0);
            metrics::gauge!("sandboxd_accounts", "status" => status.as_str()).set(count as f64);
        }
    }

    /// Backoff applies only to restarting an actor that died (it is still registered); a
    /// lookup of an entity with no actor (new, ended, unknown) is never delayed.
    fn restart_delay(&mut self, id: &str, had_actor: bool) -> StdDuration {
        if had_actor {
            self.backoff(id)
        } else {
            StdDuration::ZERO
        }
    }

    /// How long to wait before restarting this entity again (0 for the first restart).
    fn backoff(&mut self, id: &str) -> StdDuration {
        let now = Instant::now();
        let entry = self.restarts.entry(id.to_string()).or_insert((0, now));
        if now.duration_since(entry.1) > StdDuration::from_secs(60) {
            *entry = (0, now);
        }
        let delay = if entry.0 == 0 {
            StdDuration::ZERO
        } else {
            (BACKOFF_BASE * 2u32.saturating_pow(entry.0 - 1)).min(BACKOFF_CAP)
        };
        entry.0 += 1;
        entry.1 = now;
        delay
    }
}

fn cleaned_key(cleaned: Option<DateTime<Utc>>) -> i64 {
    cleaned.map_or(i64::MIN, |time| time.timestamp_millis())
}

impl Actor for PoolSupervisor {
    type Context = Context<Self>;
}

// ---- rehydration ----

pub struct Rehydrated {
    pub leases: usize,
    pub accounts: usize,
}

#[derive(Message)]
#[rtype(result = "Result<Rehydrated, EngineError>")]
pub struct Rehydrate;

impl Handler<Rehydrate> for PoolSupervisor {
    type Result = ResponseActFuture<Self, Result<Rehydrated, EngineError>>;

    fn handle(&mut self, _message: Rehydrate, _context: &mut Self::Context) -> Self::Result {
        let store = self.shared.store.clone();
        let loading = async move {
            let mut lease_ids = Vec::new();
            for status in LeaseStatus::ALL
                .into_iter()
                .filter(|status| !status.is_terminal())
            {
                lease_ids.extend(
                    store
                        .ids(IndexQuery::by_status(Kind::Lease, status.as_str()))
                        .await?,
                );
            }
            let leases: Vec<Lease> = entity::load_many(&store, &lease_ids).await?;
            let account_ids = store.ids(IndexQuery::all(Kind::Account)).await?;
            let accounts: Vec<Account> = entity::load_many(&store, &account_ids).await?;
            Ok::<_, StoreError>((leases, accounts))
        };
        Box::pin(loading.into_actor(self).map(|loaded, actor, _context| {
            let (leases, accounts) = loaded?;
            let mut counts = Rehydrated {
                leases: 0,
                accounts: 0,
            };
            for account in accounts {
                if account.status.is_live() {
                    actor.spawn_account(account);
                    counts.accounts += 1;
                } else {
                    actor.count_status(&account.aws_account_id, account.status, account.version);
                }
            }
            for lease in leases {
                actor.spawn_lease(lease);
                counts.leases += 1;
            }
            actor.publish_all_gauges();
            Ok(counts)
        }))
    }
}

// ---- finding (or restarting) entity actors ----

#[derive(Message)]
#[rtype(result = "Result<Option<Addr<LeaseActor>>, EngineError>")]
pub struct EnsureLease(pub String);

impl Handler<EnsureLease> for PoolSupervisor {
    type Result = ResponseActFuture<Self, Result<Option<Addr<LeaseActor>>, EngineError>>;

    fn handle(&mut self, message: EnsureLease, _context: &mut Self::Context) -> Self::Result {
        let uuid = message.0;
        let had_actor = self
            .shared
            .leases
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains_key(&uuid);
        let delay = self.restart_delay(&uuid, had_actor);
        let store = self.shared.store.clone();
        let loading = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            entity::load::<Lease>(&store, &uuid).await
        };
        Box::pin(loading.into_actor(self).map(|loaded, actor, _context| {
            let Some(lease) = loaded? else {
                return Ok(None);
            };
            if lease.status.is_terminal() {
                return Ok(None);
            }
            let existing = live_actor(&actor.shared.leases, &lease.uuid);
            if let Some(addr) = existing {
                return Ok(Some(addr));
            }
            metrics::counter!("sandboxd_actor_restarts_total", "kind" => "lease").increment(1);
            Ok(Some(actor.spawn_lease(lease)))
        }))
    }
}

#[derive(Message)]
#[rtype(result = "Result<Option<Addr<AccountActor>>, EngineError>")]
pub struct EnsureAccount(pub String);

impl Handler<EnsureAccount> for PoolSupervisor {
    type Result = ResponseActFuture<Self, Result<Option<Addr<AccountActor>>, EngineError>>;

    fn handle(&mut self, message: EnsureAccount, _context: &mut Self::Context) -> Self::Result {
        let id = message.0;
        let had_actor = self
            .shared
            .accounts
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains_key(&id);
        let delay = self.restart_delay(&id, had_actor);
        let store = self.shared.store.clone();
        let loading = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            entity::load::<Account>(&store, &id).await
        };
        Box::pin(loading.into_actor(self).map(|loaded, actor, _context| {
            let Some(account) = loaded? else {
                return Ok(None);
            };
            if !account.status.is_live() {
                return Ok(None);
            }
            let existing = live_actor(&actor.shared.accounts, &account.aws_account_id);
            if let Some(addr) = existing {
                return Ok(Some(addr));
            }
            metrics::counter!("sandboxd_actor_restarts_total", "kind" => "account").increment(1);
            Ok(Some(actor.spawn_account(account)))
        }))
    }
}

/// A lease actor's first snapshot (a lease created elsewhere, e.g. PendingApproval).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdoptNewLease(pub Lease);

impl Handler<AdoptNewLease> for PoolSupervisor {
    type Result = ();

    fn handle(&mut self, message: AdoptNewLease, _context: &mut Self::Context) {
        self.adopt_lease(message.0);
    }
}

impl PoolSupervisor {
    fn adopt_lease(&mut self, lease: Lease) {
        let existing = live_actor(&self.shared.leases, &lease.uuid);
        match existing {
            Some(addr) => addr.do_send(AdoptLease(lease)),
            None if !lease.status.is_terminal() => {
                self.spawn_lease(lease);
            }
            None => {}
        }
    }

    fn adopt_account(&mut self, account: Account) {
        self.track_account(&account);
        let existing = live_actor(&self.shared.accounts, &account.aws_account_id);
        match existing {
            Some(addr) => addr.do_send(AdoptAccount(account)),
            None if account.status.is_live() => {
                self.spawn_account(account);
            }
            None => {}
        }
    }
}

/// An account actor reports its new snapshot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AccountChanged(pub Account);

impl Handler<AccountChanged> for PoolSupervisor {
    type Result = ();

    fn handle(&mut self, message: AccountChanged, _context: &mut Self::Context) {
        let account = message.0;
        if !account.status.is_live() {
            self.shared
                .accounts
                .write()
                .unwrap_or_else(|poison| poison.into_inner())
                .remove(&account.aws_account_id);
        }
        self.track_account(&account);
    }
}

/// A lease actor went terminal and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaseClosed(pub String);

impl Handler<LeaseClosed> for PoolSupervisor {
    type Result = ();

    fn handle(&mut self, message: LeaseClosed, _context: &mut Self::Context) {
        self.shared
            .leases
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&message.0);
        self.restarts.remove(&message.0);
    }
}

// ---- allocation ----

/// Approve a lease onto an Available account: one atomic write of both, compare-and-set on
/// both versions. `stored_version` is the lease's stored version (0: not stored yet).
#[derive(Message)]
#[rtype(result = "Result<Lease, EngineError>")]
pub struct Allocate {
    pub lease: Lease,
    pub stored_version: u64,
    pub approved_by: String,
    /// Events to publish before the approval (e.g. LeaseRequested of a new lease).
    pub pre_events: Vec<Event>,
}

impl Handler<Allocate> for PoolSupervisor {
    type Result = ResponseActFuture<Self, Result<Lease, EngineError>>;

    fn handle(&mut self, message: Allocate, _context: &mut Self::Context) -> Self::Result {
        let now = self.shared.clock.now();
        let candidate = self
            .free
            .iter()
            .find(|(_, id)| !self.reserved.contains(id))
            .and_then(|(_, id)| self.free_snapshots.get(id))
            .cloned();
        let Some(account) = candidate else {
            metrics::counter!("sandboxd_allocations_total", "outcome" => "no_account").increment(1);
            return Box::pin(fut::ready(Err(EngineError::Conflict(
                "no account is available in the pool".into(),
            ))));
        };
        let prepared = (|| {
            let step = message
                .lease
                .approve(&account.aws_account_id, &message.approved_by, now)?;
            let bound = account.allocate(
                &message.lease.uuid,
                step.state.version,
                &message.lease.user_email,
                now,
            )?;
            Ok::<_, EngineError>((step, bound))
        })();
        let (step, bound) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return Box::pin(fut::ready(Err(error))),
        };
        let mut lease_write = write_of(None, &step.state);
        lease_write.expected_version = message.stored_version;
        if message.stored_version > 0 {
            lease_write.old_indexes = crate::entity::Entity::index_values(&message.lease);
        }
        let mut commit = Commit {
            writes: vec![lease_write, write_of(Some(&account), &bound)],
            ..Commit::default()
        };
        for event in &message.pre_events {
            commit
                .outbox
                .push(crate::domain::EventRecord::new(event, now));
        }
        add_effects(&mut commit, &step, now);
        let account_id = account.aws_account_id.clone();
        self.reserved.insert(account_id.clone());
        let store = self.shared.store.clone();
        let committing = async move { store.commit(commit).await };
        Box::pin(committing.into_actor(self).map(move |result, actor, _context| {
            actor.reserved.remove(&account_id);
            match result {
                Ok(()) => {
                    metrics::counter!("sandboxd_allocations_total", "outcome" => "allocated").increment(1);
                    let lease = step.state;
                    actor.adopt_account(bound);
                    actor.adopt_lease(lease.clone());
                    Ok(lease)
                }
                Err(StoreError::Conflict { kind: "account", .. }) => {
                    // Our snapshot of the account was stale: drop it from the free set until its
                    // actor reports again, and let the caller retry with another account.
                    metrics::counter!("sandboxd_allocations_total", "outcome" => "stale_account").increment(1);
                    if let Some(stale) = actor.free_snapshots.remove(&account_id) {
                        actor.free.remove(&(cleaned_key(stale.last_cleaned_at), account_id.clone()));
                    }
                    if let Some(addr) = actor
                        .shared
                        .accounts
                        .read()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .get(&account_id)
                    {
                        addr.do_send(crate::account_actor::Refresh);
                    }
                    Err(EngineError::Stale(format!("account {account_id}")))
                }
                Err(StoreError::Conflict { id, .. }) => Err(EngineError::Stale(format!("lease {id}"))),
                Err(error) => Err(error.into()),
            }
        }))
    }
}

// ---- registration ----

#[derive(Message)]
#[rtype(result = "Result<Account, EngineError>")]
pub struct Register {
    pub aws_account_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub by: String,
}

impl Handler<Register> for PoolSupervisor {
    type Result = ResponseActFuture<Self, Result<Account, EngineError>>;

    fn handle(&mut self, message: Register, _context: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let registering = async move {
            let now = shared.clock.now();
            let existing = entity::load::<Account>(&shared.store, &message.aws_account_id).await?;
            if let Some(existing) = &existing {
                if existing.status.is_live() {
                    return Err(EngineError::Conflict(format!(
                        "account {} is already registered ({})",
                        existing.aws_account_id, existing.status
                    )));
                }
            }
            let mut step = Account::register(
                &message.aws_account_id,
                message.name,
                message.email,
                &message.by,
                now,
            )?;
            // Re-registering an ejected account continues its record (and its history).
            if let Some(previous) = &existing {
                step.state.version = previous.version + 1;
                let mut history = previous.history.clone();
                history.append(&mut step.state.history);
                step.state.history = history;
                step.state.meta.created_time = previous.meta.created_time;
            }
            let commit = crate::entity::commit_of(existing.as_ref(), &step, now);
            shared.store.commit(commit).await?;
            Ok(step.state)
        };
        Box::pin(registering.into_actor(self).map(|result, actor, _context| {
            if let Ok(account) = &result {
                actor.adopt_account(account.clone());
            }
            result
        }))
    }
}
