//! What a transition asks the world to do. The actor persists all of it in the same atomic
//! write as the new snapshot: events go to the outbox, timers (and intents for other entities,
//! which are timers due now) go to the durable timer set.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::events::Event;
use super::lease::{LeaseStatus, TerminationReason};

/// The entity a timer or intent is delivered to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id")]
pub enum Target {
    Lease(String),
    Account(String),
}

/// What happens when a timer fires (or an intent is delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum TimerAction {
    /// The lease reached its expiration date.
    LeaseExpiry,
    /// The lease bound to this account ended: move the account to CleanUp.
    #[serde(rename_all = "camelCase")]
    AccountLeaseEnded {
        lease_uuid: String,
        lease_status: LeaseStatus,
    },
    /// The lease bound to this account was frozen (at `lease_version`). Intents can arrive
    /// out of order; the account ignores one older than the last it applied.
    #[serde(rename_all = "camelCase")]
    AccountLeaseFrozen {
        lease_uuid: String,
        lease_version: u64,
    },
    /// The lease bound to this account was unfrozen (at `lease_version`).
    #[serde(rename_all = "camelCase")]
    AccountLeaseUnfrozen {
        lease_uuid: String,
        lease_version: u64,
    },
    /// The account under this lease was ejected or quarantined: end the lease.
    #[serde(rename_all = "camelCase")]
    LeaseAccountLost {
        account_id: String,
        reason: TerminationReason,
    },
    /// Run (or re-run) the next cleanup attempt of this account.
    CleanupStep,
}

/// A durable timer. Its id is deterministic so that re-running a transition arms the same
/// timer rather than a second one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    pub id: String,
    pub due: DateTime<Utc>,
    pub target: Target,
    #[serde(flatten)]
    pub action: TimerAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Publish(Event),
    ArmTimer(Timer),
    CancelTimer(String),
}

/// The result of one transition: the new state and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<T> {
    pub state: T,
    pub effects: Vec<Effect>,
}

impl<T> Step<T> {
    pub fn new(state: T) -> Self {
        Self {
            state,
            effects: Vec::new(),
        }
    }

    pub fn publish(mut self, event: Event) -> Self {
        self.effects.push(Effect::Publish(event));
        self
    }

    pub fn arm(mut self, timer: Timer) -> Self {
        self.effects.push(Effect::ArmTimer(timer));
        self
    }

    pub fn cancel(mut self, timer_id: impl Into<String>) -> Self {
        self.effects.push(Effect::CancelTimer(timer_id.into()));
        self
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.effects.iter().filter_map(|effect| match effect {
            Effect::Publish(event) => Some(event),
            _ => None,
        })
    }

    pub fn timers(&self) -> impl Iterator<Item = &Timer> {
        self.effects.iter().filter_map(|effect| match effect {
            Effect::ArmTimer(timer) => Some(timer),
            _ => None,
        })
    }
}
