//! One actor per pool account: lease intents (frozen, unfrozen, ended), cleanup steps and run
//! results, and operator actions, each persisted in one compare-and-set commit.

use std::sync::Arc;

use actix::prelude::*;

use crate::cleanup::Watch;
use crate::domain::account::RunOutcome;
use crate::domain::{Account, DomainError, Step, Timer, TimerAction};
use crate::engine::{EngineError, Shared};
use crate::entity::{self, persist, settle, Persisted};
use crate::pool::AccountChanged;
use crate::ports::RunHandle;

pub struct AccountActor {
    shared: Arc<Shared>,
    account: Account,
}

impl AccountActor {
    pub fn new(shared: Arc<Shared>, account: Account) -> Self {
        Self { shared, account }
    }

    /// Re-attach to a cleanup run that was in flight when the daemon stopped.
    fn watch_run_in_flight(&self, start: bool) {
        let Some(context) = &self.account.cleanup_execution_context else {
            return;
        };
        let (Some(run_id), Some(started_at)) = (&context.run_id, context.run_started_at) else {
            return;
        };
        self.shared.cleanup.do_send(Watch {
            handle: RunHandle {
                account_id: self.account.aws_account_id.clone(),
                run_id: run_id.clone(),
                started_at,
            },
            start,
        });
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, _context: &mut Self::Context) {
        self.watch_run_in_flight(false);
    }
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Account, EngineError>")]
pub enum AccountCommand {
    RetryCleanup {
        by: String,
    },
    Eject {
        by: String,
    },
    Quarantine {
        reason: String,
        by: String,
    },
    Fire(Timer),
    RunFinished {
        run_id: String,
        outcome: RunOutcome,
        detail: String,
    },
}

impl AccountCommand {
    pub fn action(&self) -> &'static str {
        match self {
            Self::RetryCleanup { .. } => "retry cleanup",
            Self::Eject { .. } => "eject",
            Self::Quarantine { .. } => "quarantine",
            Self::Fire(_) => "fire a timer",
            Self::RunFinished { .. } => "finish a cleanup run",
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, Self::Fire(_) | Self::RunFinished { .. })
    }
}

/// A newer snapshot written elsewhere (the pool's allocation).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdoptAccount(pub Account);

impl Handler<AdoptAccount> for AccountActor {
    type Result = ();

    fn handle(&mut self, message: AdoptAccount, _context: &mut Self::Context) {
        if message.0.version > self.account.version {
            self.account = message.0;
        }
    }
}

/// Reload from the store (after someone found our snapshot stale).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh;

impl Handler<Refresh> for AccountActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _message: Refresh, _context: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let id = self.account.aws_account_id.clone();
        AtomicResponse::new(Box::pin(
            async move { entity::load::<Account>(&shared.store, &id).await }
                .into_actor(self)
                .map(|loaded, actor, _context| {
                    if let Ok(Some(account)) = loaded {
                        if account.version >= actor.account.version {
                            actor.account = account;
                        }
                    }
                    actor
                        .shared
                        .pool
                        .do_send(AccountChanged(actor.account.clone()));
                }),
        ))
    }
}

impl Handler<AccountCommand> for AccountActor {
    type Result = AtomicResponse<Self, Result<Account, EngineError>>;

    fn handle(&mut self, command: AccountCommand, _context: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let current = self.account.clone();
        AtomicResponse::new(Box::pin(
            run(shared, current, command).into_actor(self).map(
                |(result, fresh, run_started), actor, context| {
                    if let Some(account) = fresh {
                        if account.version >= actor.account.version {
                            actor.account = account;
                        }
                        actor
                            .shared
                            .pool
                            .do_send(AccountChanged(actor.account.clone()));
                        if run_started {
                            actor.watch_run_in_flight(true);
                        }
                        if !actor.account.status.is_live() {
                            context.stop();
                        }
                    }
                    result
                },
            ),
        ))
    }
}

fn decide(
    shared: &Shared,
    account: &Account,
    command: &AccountCommand,
) -> Result<Option<Step<Account>>, DomainError> {
    let now = shared.clock.now();
    match command {
        AccountCommand::RetryCleanup { by } => account.retry_cleanup(by, now).map(Some),
        AccountCommand::Eject { by } => account.eject(by, now).map(Some),
        AccountCommand::Quarantine { reason, by } => account.quarantine(reason, by, now).map(Some),
        AccountCommand::RunFinished {
            run_id,
            outcome,
            detail,
        } => Ok(account.finish_cleanup_run(run_id, *outcome, detail, &shared.config.cleanup, now)),
        AccountCommand::Fire(timer) => Ok(match &timer.action {
            TimerAction::AccountLeaseEnded { lease_uuid, .. } => {
                account.lease_ended(lease_uuid, now)
            }
            TimerAction::AccountLeaseFrozen {
                lease_uuid,
                lease_version,
            } => account
                .lease_frozen(lease_uuid, *lease_version, now)
                .map(Step::new),
            TimerAction::AccountLeaseUnfrozen {
                lease_uuid,
                lease_version,
            } => account
                .lease_unfrozen(lease_uuid, *lease_version, now)
                .map(Step::new),
            TimerAction::CleanupStep => {
                let run_id = format!(
                    "{}-{}",
                    account.aws_account_id,
                    uuid::Uuid::new_v4().simple()
                );
                account.begin_cleanup_run(&run_id, now).map(Step::new)
            }
            other => {
                tracing::warn!(timer = %timer.id, action = ?other, "timer action not for an account; dropped");
                None
            }
        }),
    }
}

/// Returns the answer, the state to keep, and whether a cleanup run was just started.
async fn run(
    shared: Arc<Shared>,
    mut account: Account,
    command: AccountCommand,
) -> (Result<Account, EngineError>, Option<Account>, bool) {
    for _attempt in 0..3 {
        let consumed = match &command {
            AccountCommand::Fire(timer) => Some(timer.id.clone()),
            _ => None,
        };
        let step = match settle(decide(&shared, &account, &command), command.is_internal()) {
            Ok(step) => step,
            Err(error) => return (Err(error.into()), None, false),
        };
        let starts_run = step.is_some()
            && matches!(&command, AccountCommand::Fire(timer) if timer.action == TimerAction::CleanupStep);
        match persist(&shared.store, &account, step, consumed, shared.clock.now()).await {
            Ok(Persisted::Unchanged) => return (Ok(account.clone()), None, false),
            Ok(Persisted::Committed(next)) => {
                metrics::counter!("sandboxd_account_transitions_total", "to" => next.status.as_str()).increment(1);
                return (Ok(next.clone()), Some(next), starts_run);
            }
            Ok(Persisted::Stale(fresh)) => account = fresh,
            Err(error) => return (Err(error), None, false),
        }
    }
    (
        Err(EngineError::Conflict(format!(
            "account {} is changing; try again",
            account.aws_account_id
        ))),
        None,
        false,
    )
}
