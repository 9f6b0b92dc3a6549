//! Pure domain: entities, their transitions, validation and the event catalog.
//! Every transition takes `now` as an input and returns the new state plus its effects.

pub mod account;
pub mod caller;
pub mod config;
pub mod effects;
pub mod error;
pub mod events;
pub mod history;
pub mod lease;
pub mod template;

pub use account::{Account, AccountStatus, CleanReason, CleanupContext};
pub use caller::{Caller, Role};
pub use config::GlobalConfig;
pub use effects::{Effect, Step, Target, Timer, TimerAction};
pub use error::DomainError;
pub use events::{Event, EventRecord};
pub use history::HistoryEntry;
pub use lease::{Lease, LeaseId, LeasePatch, LeaseStatus, TerminationReason};
pub use template::{LeaseTemplate, ThresholdAction, Visibility};

/// Schema version of every stored record and published event written by this build.
pub const SCHEMA_VERSION: u32 = 1;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Record metadata, as ISB keeps it on every item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub created_time: DateTime<Utc>,
    pub last_edit_time: DateTime<Utc>,
    pub schema_version: u32,
}

impl Meta {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            created_time: now,
            last_edit_time: now,
            schema_version: SCHEMA_VERSION,
        }
    }
}
