//! One actor per live lease: runs the pure transition, persists it in one compare-and-set
//! commit, and only then takes the new state. Messages to one lease are handled one at a time
//! (AtomicResponse); leases proceed in parallel.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{DomainError, Lease, LeasePatch, Step, TerminationReason, Timer, TimerAction};
use crate::engine::{EngineError, Shared};
use crate::entity::{self, persist, settle, Persisted};
use crate::pool::{Allocate, LeaseClosed};

pub struct LeaseActor {
    shared: Arc<Shared>,
    lease: Lease,
}

impl LeaseActor {
    pub fn new(shared: Arc<Shared>, lease: Lease) -> Self {
        Self { shared, lease }
    }
}

impl Actor for LeaseActor {
    type Context = Context<Self>;
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Lease, EngineError>")]
pub enum LeaseCommand {
    Review {
        approve: bool,
        by: String,
    },
    Freeze {
        by: String,
        reason: String,
    },
    Unfreeze {
        by: String,
        reason: String,
    },
    Terminate {
        reason: TerminationReason,
        by: String,
    },
    Patch {
        patch: LeasePatch,
        by: String,
    },
    /// A durable timer or intent for this lease.
    Fire(Timer),
    /// Spend seen by a monitoring sweep.
    Spend {
        total: f64,
    },
}

impl LeaseCommand {
    pub fn action(&self) -> &'static str {
        match self {
            Self::Review { .. } => "review",
            Self::Freeze { .. } => "freeze",
            Self::Unfreeze { .. } => "unfreeze",
            Self::Terminate { .. } => "terminate",
            Self::Patch { .. } => "update",
            Self::Fire(_) => "fire a timer",
            Self::Spend { .. } => "record spend",
        }
    }

    /// Commands from the daemon itself treat "already there" as done; API commands report it.
    fn is_internal(&self) -> bool {
        matches!(self, Self::Fire(_) | Self::Spend { .. })
    }
}

/// A newer snapshot written elsewhere (the pool's allocation).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdoptLease(pub Lease);

impl Handler<AdoptLease> for LeaseActor {
    type Result = ();

    fn handle(&mut self, message: AdoptLease, context: &mut Self::Context) {
        if message.0.version > self.lease.version {
            self.lease = message.0;
            self.stop_if_terminal(context);
        }
    }
}

impl LeaseActor {
    fn stop_if_terminal(&self, context: &mut Context<Self>) {
        if self.lease.status.is_terminal() {
            self.shared
                .pool
                .do_send(LeaseClosed(self.lease.uuid.clone()));
            context.stop();
        }
    }
}

impl Handler<LeaseCommand> for LeaseActor {
    type Result = AtomicResponse<Self, Result<Lease, EngineError>>;

    fn handle(&mut self, command: LeaseCommand, _context: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let current = self.lease.clone();
        AtomicResponse::new(Box::pin(
            run(shared, current, command).into_actor(self).map(
                |(result, fresh), actor, context| {
                    if let Some(lease) = fresh {
                        if lease.version >= actor.lease.version {
                            actor.lease = lease;
                        }
                        actor.stop_if_terminal(context);
                    }
                    result
                },
            ),
        ))
    }
}

/// What a command asks of the lease: a step to persist, or nothing.
fn decide(
    shared: &Shared,
    lease: &Lease,
    command: &LeaseCommand,
) -> Result<Option<Step<Lease>>, DomainError> {
    let now = shared.clock.now();
    let config = &shared.config;
    match command {
        LeaseCommand::Review { approve: false, by } => lease.deny(by, config, now).map(Some),
        LeaseCommand::Review { approve: true, .. } => Err(DomainError::invalid(
            "action",
            "approval goes through the pool supervisor",
        )),
        LeaseCommand::Freeze { by, reason } => lease.freeze(by, reason, now).map(Some),
        LeaseCommand::Unfreeze { by, reason } => lease.unfreeze(by, reason, now).map(Some),
        LeaseCommand::Terminate { reason, by } => {
            lease.terminate(*reason, by, config, now).map(Some)
        }
        LeaseCommand::Patch { patch, by } => lease.patch(patch.clone(), by, config, now).map(Some),
        LeaseCommand::Spend { total } => Ok(lease.record_spend(*total, config, now)),
        LeaseCommand::Fire(timer) => Ok(match &timer.action {
            TimerAction::LeaseExpiry => lease.expire_if_due(config, now),
            TimerAction::LeaseAccountLost { account_id, reason } => {
                let bound = lease.aws_account_id.as_deref() == Some(account_id.as_str());
                if bound && lease.status.is_monitored() {
                    lease.terminate(*reason, "system", config, now).ok()
                } else {
                    None
                }
            }
            other => {
                tracing::warn!(timer = %timer.id, action = ?other, "timer action not for a lease; dropped");
                None
            }
        }),
    }
}

/// Run one command to completion: returns the answer and the state to keep.
async fn run(
    shared: Arc<Shared>,
    mut lease: Lease,
    command: LeaseCommand,
) -> (Result<Lease, EngineError>, Option<Lease>) {
    for _attempt in 0..3 {
        if let LeaseCommand::Review { approve: true, by } = &command {
            if lease.status != crate::domain::LeaseStatus::PendingApproval {
                return (
                    Err(DomainError::WrongState {
                        entity: "lease",
                        status: lease.status.to_string(),
                        action: "approve",
                    }
                    .into()),
                    None,
                );
            }
            let allocation = shared
                .pool
                .send(Allocate {
                    lease: lease.clone(),
                    stored_version: lease.version,
                    approved_by: by.clone(),
                    pre_events: Vec::new(),
                })
                .await;
            match allocation {
                Ok(Ok(approved)) => return (Ok(approved.clone()), Some(approved)),
                Ok(Err(EngineError::Stale(_))) => match entity::reload(&shared.store, &lease).await
                {
                    Ok(fresh) => {
                        lease = fresh;
                        continue;
                    }
                    Err(error) => return (Err(error), None),
                },
                Ok(Err(error)) => return (Err(error), None),
                Err(error) => return (Err(error.into()), None),
            }
        }
        let now = shared.clock.now();
        if let LeaseCommand::Fire(timer) = &command {
            if let Some(rearm) = stale_expiry(&lease, timer, now) {
                // A PATCH moved the expiration after this timer was read: put the timer back
                // at the lease's date rather than consume the re-armed one.
                let commit = crate::ports::Commit {
                    arm_timers: vec![entity::timer_record(&rearm)],
                    ..Default::default()
                };
                return match shared.store.commit(commit).await {
                    Ok(()) => (Ok(lease.clone()), None),
                    Err(error) => (Err(error.into()), None),
                };
            }
        }
        let consumed = match &command {
            LeaseCommand::Fire(timer) => Some(timer.id.clone()),
            _ => None,
        };
        let step = match settle(decide(&shared, &lease, &command), command.is_internal()) {
            Ok(step) => step,
            Err(error) => return (Err(error.into()), None),
        };
        match persist(&shared.store, &lease, step, consumed, now).await {
            Ok(Persisted::Unchanged) => return (Ok(lease.clone()), None),
            Ok(Persisted::Committed(next)) => {
                metrics::counter!("sandboxd_lease_transitions_total", "to" => next.status.as_str())
                    .increment(1);
                return (Ok(next.clone()), Some(next));
            }
            Ok(Persisted::Stale(fresh)) => lease = fresh,
            Err(error) => return (Err(error), None),
        }
    }
    (
        Err(EngineError::Conflict(format!(
            "lease {} is changing; try again",
            lease.uuid
        ))),
        None,
    )
}

/// An expiry timer delivered before the lease's current expiration date: the timer to re-arm.
fn stale_expiry(lease: &Lease, timer: &Timer, now: chrono::DateTime<chrono::Utc>) -> Option<Timer> {
    if timer.action != TimerAction::LeaseExpiry {
        return None;
    }
    lease.expiry_timer().filter(|expiry| expiry.due > now)
}
