//! The engine: starts the supervisors, rehydrates state, and is the one handle the shell (HTTP
//! API, demo, bench) uses. Reads go straight to the store; every change goes through the actor
//! that owns the entity.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use chrono::Duration;
use thiserror::Error;

use crate::account_actor::{AccountActor, AccountCommand};
use crate::approver::{ApproverSupervisor, RequestLease};
use crate::cleanup::CleanupSupervisor;
use crate::cost::CostSupervisor;
use crate::domain::template::TemplateInput;
use crate::domain::{
    Account, Caller, DomainError, GlobalConfig, Lease, LeasePatch, LeaseTemplate, Step,
    TerminationReason,
};
use crate::entity::{self, commit_of};
use crate::lease_actor::{LeaseActor, LeaseCommand};
use crate::outbox::OutboxDrainer;
use crate::pool::{EnsureAccount, EnsureLease, PoolSupervisor, Register, Rehydrate};
use crate::ports::{
    CleanupRunner, Clock, CostSource, EventBus, IndexQuery, StateStore, StoreError,
};
use crate::timers::TimerWheel;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum EngineError {
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A request that conflicts with the pool's state (limit reached, no account free): 409.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An actor could not be reached (stopping, mailbox closed): 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Internal: the snapshot used was stale; the caller retries with a fresh one.
    #[error("stale snapshot: {0}")]
    Stale(String),
}

impl EngineError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Domain(error) => error.kind(),
            Self::Conflict(_) => "conflict",
            Self::Forbidden(_) => "forbidden",
            Self::Store(error) => error.label(),
            Self::Unavailable(_) => "unavailable",
            Self::Stale(_) => "stale",
        }
    }
}

impl From<MailboxError> for EngineError {
    fn from(error: MailboxError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Tunables of the actor system (not ISB configuration).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Arbiters (threads) the entity actors are spread over.
    pub arbiters: usize,
    pub mailbox_capacity: usize,
    /// Real time between looks at the timer set and the outbox.
    pub timer_tick: std::time::Duration,
    pub outbox_tick: std::time::Duration,
    /// Virtual time between spend sweeps (0 disables them).
    pub spend_sweep_interval: Duration,
    /// Virtual time between polls of a running cleanup.
    pub cleanup_poll_interval: Duration,
    /// A cleanup run taking longer than this has failed.
    pub cleanup_run_timeout: Duration,
    /// Accounts cleanup must never touch: hub, org management, Identity Center, blocklist.
    pub protected_accounts: HashSet<String>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            arbiters: 2,
            mailbox_capacity: 64,
            timer_tick: std::time::Duration::from_millis(100),
            outbox_tick: std::time::Duration::from_millis(100),
            spend_sweep_interval: Duration::hours(1),
            cleanup_poll_interval: Duration::seconds(15),
            cleanup_run_timeout: Duration::minutes(60),
            protected_accounts: HashSet::new(),
        }
    }
}

/// What the engine is built from.
pub struct Deps {
    pub store: Arc<dyn StateStore>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<GlobalConfig>,
    pub bus: Arc<dyn EventBus>,
    pub runner: Arc<dyn CleanupRunner>,
    pub costs: Arc<dyn CostSource>,
    pub settings: EngineSettings,
}

/// Shared by every actor: the ports, the settings, and the registry of running entity actors.
pub struct Shared {
    pub store: Arc<dyn StateStore>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<GlobalConfig>,
    pub settings: EngineSettings,
    pub pool: Addr<PoolSupervisor>,
    pub cleanup: Addr<CleanupSupervisor>,
    pub leases: RwLock<HashMap<String, Addr<LeaseActor>>>,
    pub accounts: RwLock<HashMap<String, Addr<AccountActor>>>,
}

/// The running actor registered under `id`, if it is still alive.
pub fn live_actor<A: Actor>(
    registry: &RwLock<HashMap<String, Addr<A>>>,
    id: &str,
) -> Option<Addr<A>> {
    registry
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(id)
        .filter(|addr| addr.connected())
        .cloned()
}

impl Shared {
    /// The actor of a live lease, started from its snapshot if need be; None for an unknown
    /// or terminal lease.
    pub async fn lease_actor(&self, uuid: &str) -> Result<Option<Addr<LeaseActor>>, EngineError> {
        let known = live_actor(&self.leases, uuid);
        if known.is_some() {
            return Ok(known);
        }
        self.pool.send(EnsureLease(uuid.to_string())).await?
    }

    pub async fn account_actor(&self, id: &str) -> Result<Option<Addr<AccountActor>>, EngineError> {
        let known = live_actor(&self.accounts, id);
        if known.is_some() {
            return Ok(known);
        }
        self.pool.send(EnsureAccount(id.to_string())).await?
    }
}

/// The handle to a running engine. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    approver: Addr<ApproverSupervisor>,
    outbox: Addr<OutboxDrainer>,
    _timers: Addr<TimerWheel>,
    _cost: Addr<CostSupervisor>,
}

impl Engine {
    /// Start every supervisor and rehydrate state from the store. Must run inside an actix
    /// System.
    pub async fn start(deps: Deps) -> Result<Engine, EngineError> {
        let arbiters: Vec<ArbiterHandle> = (0..deps.settings.arbiters.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        let pool_context = Context::<PoolSupervisor>::new();
        let pool_addr = pool_context.address();
        let cleanup_context = Context::<CleanupSupervisor>::new();
        let cleanup_addr = cleanup_context.address();
        let shared = Arc::new(Shared {
            store: deps.store.clone(),
            clock: deps.clock.clone(),
            config: deps.config.clone(),
            settings: deps.settings.clone(),
            pool: pool_addr.clone(),
            cleanup: cleanup_addr,
            leases: RwLock::new(HashMap::new()),
            accounts: RwLock::new(HashMap::new()),
        });
        pool_context.run(PoolSupervisor::new(shared.clone(), arbiters));
        cleanup_context.run(CleanupSupervisor::new(shared.clone(), deps.runner.clone()));
        let started = std::time::Instant::now();
        let rehydrated = pool_addr.send(Rehydrate).await??;
        tracing::info!(
            leases = rehydrated.leases,
            accounts = rehydrated.accounts,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rehydrated live entities"
        );
        metrics::gauge!("sandboxd_rehydration_seconds").set(started.elapsed().as_secs_f64());
        let approver = ApproverSupervisor::new(shared.clone()).start();
        let outbox = OutboxDrainer::new(shared.clone(), deps.bus.clone()).start();
        let timers = TimerWheel::new(shared.clone()).start();
        let cost = CostSupervisor::new(shared.clone(), deps.costs.clone()).start();
        Ok(Engine {
            shared,
            approver,
            outbox,
            _timers: timers,
            _cost: cost,
        })
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.shared.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    pub fn config(&self) -> &GlobalConfig {
        &self.shared.config
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    // ---- leases ----

    pub async fn request_lease(&self, request: RequestLease) -> Result<Lease, EngineError> {
        let started = std::time::Instant::now();
        let result = self.approver.send(request).await?;
        metrics::histogram!("sandboxd_lease_request_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    pub async fn get_lease(&self, uuid: &str) -> Result<Option<Lease>, EngineError> {
        Ok(entity::load::<Lease>(&self.shared.store, uuid).await?)
    }

    /// Send a command to a live lease; a terminal or unknown lease answers as the domain would.
    pub async fn lease_command(
        &self,
        uuid: &str,
        command: LeaseCommand,
    ) -> Result<Lease, EngineError> {
        for _attempt in 0..3 {
            let Some(actor) = self.shared.lease_actor(uuid).await? else {
                let lease = self
                    .get_lease(uuid)
                    .await?
                    .ok_or_else(|| EngineError::NotFound(format!("lease {uuid}")))?;
                return Err(refusal_for_terminal(&lease, &command).into());
            };
            match actor.send(command.clone()).await {
                Ok(result) => return result,
                // The actor stopped between lookup and send (it went terminal): look again.
                Err(MailboxError::Closed) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(EngineError::Unavailable(format!(
            "lease {uuid} is restarting"
        )))
    }

    pub async fn review(
        &self,
        uuid: &str,
        approve: bool,
        by: &Caller,
    ) -> Result<Lease, EngineError> {
        self.lease_command(
            uuid,
            LeaseCommand::Review {
                approve,
                by: by.email.clone(),
            },
        )
        .await
    }

    pub async fn freeze(
        &self,
        uuid: &str,
        by: &Caller,
        reason: &str,
    ) -> Result<Lease, EngineError> {
        self.lease_command(
            uuid,
            LeaseCommand::Freeze {
                by: by.email.clone(),
                reason: reason.into(),
            },
        )
        .await
    }

    pub async fn unfreeze(
        &self,
        uuid: &str,
        by: &Caller,
        reason: &str,
    ) -> Result<Lease, EngineError> {
        self.lease_command(
            uuid,
            LeaseCommand::Unfreeze {
                by: by.email.clone(),
                reason: reason.into(),
            },
        )
        .await
    }

    pub async fn terminate(&self, uuid: &str, by: &Caller) -> Result<Lease, EngineError> {
        self.lease_command(
            uuid,
            LeaseCommand::Terminate {
                reason: TerminationReason::ManuallyTerminated,
                by: by.email.clone(),
            },
        )
        .await
    }

    pub async fn patch_lease(
        &self,
        uuid: &str,
        patch: LeasePatch,
        by: &Caller,
    ) -> Result<Lease, EngineError> {
        self.lease_command(
            uuid,
            LeaseCommand::Patch {
                patch,
                by: by.email.clone(),
            },
        )
        .await
    }

    // ---- templates (no actor: rare writes, compare-and-set straight to the store) ----

    pub async fn create_template(
        &self,
        input: TemplateInput,
        by: &Caller,
    ) -> Result<LeaseTemplate, EngineError> {
        input.validate(&self.shared.config)?;
        let now = self.shared.clock.now();
        let mut template =
            input.into_template(uuid::Uuid::new_v4().to_string(), by.email.clone(), now);
        template.version = 1;
        self.shared
            .store
            .commit(commit_of(None, &Step::new(template.clone()), now))
            .await?;
        Ok(template)
    }

    pub async fn replace_template(
        &self,
        uuid: &str,
        input: TemplateInput,
    ) -> Result<LeaseTemplate, EngineError> {
        input.validate(&self.shared.config)?;
        let now = self.shared.clock.now();
        let current = self
            .get_template(uuid)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("lease template {uuid}")))?;
        let mut next = current.replaced(input, now);
        next.version = current.version + 1;
        self.shared
            .store
            .commit(commit_of(Some(&current), &Step::new(next.clone()), now))
            .await?;
        self.approver
            .do_send(crate::approver::ForgetTemplate(uuid.to_string()));
        Ok(next)
    }

    pub async fn delete_template(&self, uuid: &str) -> Result<(), EngineError> {
        let current = self
            .get_template(uuid)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("lease template {uuid}")))?;
        let mut write = entity::write_of(None, &current);
        write.expected_version = current.version;
        write.body = None;
        let commit = crate::ports::Commit {
            writes: vec![write],
            ..Default::default()
        };
        self.shared.store.commit(commit).await?;
        self.approver
            .do_send(crate::approver::ForgetTemplate(uuid.to_string()));
        Ok(())
    }

    pub async fn get_template(&self, uuid: &str) -> Result<Option<LeaseTemplate>, EngineError> {
        Ok(entity::load::<LeaseTemplate>(&self.shared.store, uuid).await?)
    }

    // ---- accounts ----

    pub async fn register_account(
        &self,
        aws_account_id: &str,
        name: Option<String>,
        email: Option<String>,
        by: &Caller,
    ) -> Result<Account, EngineError> {
        if self
            .shared
            .settings
            .protected_accounts
            .contains(aws_account_id)
        {
            return Err(DomainError::invalid(
                "awsAccountId",
                format!("{aws_account_id} is a protected account (hub, org management, Identity Center or blocklisted) and cannot join the pool"),
            )
            .into());
        }
        self.shared
            .pool
            .send(Register {
                aws_account_id: aws_account_id.to_string(),
                name,
                email,
                by: by.email.clone(),
            })
            .await?
    }

    pub async fn get_account(&self, id: &str) -> Result<Option<Account>, EngineError> {
        Ok(entity::load::<Account>(&self.shared.store, id).await?)
    }

    pub async fn account_command(
        &self,
        id: &str,
        command: AccountCommand,
    ) -> Result<Account, EngineError> {
        for _attempt in 0..3 {
            let Some(actor) = self.shared.account_actor(id).await? else {
                let account = self
                    .get_account(id)
                    .await?
                    .ok_or_else(|| EngineError::NotFound(format!("account {id}")))?;
                return Err(DomainError::WrongState {
                    entity: "account",
                    status: account.status.to_string(),
                    action: command.action(),
                }
                .into());
            };
            match actor.send(command.clone()).await {
                Ok(result) => return result,
                Err(MailboxError::Closed) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(EngineError::Unavailable(format!(
            "account {id} is restarting"
        )))
    }

    pub async fn retry_cleanup(&self, id: &str, by: &Caller) -> Result<Account, EngineError> {
        self.account_command(
            id,
            AccountCommand::RetryCleanup {
                by: by.email.clone(),
            },
        )
        .await
    }

    pub async fn eject(&self, id: &str, by: &Caller) -> Result<Account, EngineError> {
        self.account_command(
            id,
            AccountCommand::Eject {
                by: by.email.clone(),
            },
        )
        .await
    }

    pub async fn quarantine(
        &self,
        id: &str,
        reason: &str,
        by: &Caller,
    ) -> Result<Account, EngineError> {
        self.account_command(
            id,
            AccountCommand::Quarantine {
                reason: reason.into(),
                by: by.email.clone(),
            },
        )
        .await
    }

    /// Ids of a kind, optionally filtered, sorted ascending.
    pub async fn ids(&self, query: IndexQuery) -> Result<Vec<String>, EngineError> {
        Ok(self.shared.store.ids(query).await?)
    }

    pub async fn leases_of(&self, ids: &[String]) -> Result<Vec<Lease>, EngineError> {
        Ok(entity::load_many(&self.shared.store, ids).await?)
    }

    pub async fn accounts_of(&self, ids: &[String]) -> Result<Vec<Account>, EngineError> {
        Ok(entity::load_many(&self.shared.store, ids).await?)
    }

    pub async fn templates_of(&self, ids: &[String]) -> Result<Vec<LeaseTemplate>, EngineError> {
        Ok(entity::load_many(&self.shared.store, ids).await?)
    }

    /// Publish whatever the outbox holds now (shutdown, tests).
    pub async fn flush_outbox(&self) -> Result<usize, EngineError> {
        self.outbox.send(crate::outbox::Flush).await?
    }
}

/// The error a command gets when its lease is already terminal.
fn refusal_for_terminal(lease: &Lease, command: &LeaseCommand) -> DomainError {
    if matches!(command, LeaseCommand::Patch { .. }) {
        return DomainError::invalid(
            "status",
            format!(
                "only monitored leases can be updated; this lease is {}",
                lease.status
            ),
        );
    }
    DomainError::WrongState {
        entity: "lease",
        status: lease.status.to_string(),
        action: command.action(),
    }
}
