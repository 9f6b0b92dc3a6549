//! The simulated AWS: cleanup runs that finish after a delay, spend that grows with lease time,
//! an event bus that records or logs. Used by tests and by the embedded default mode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::domain::EventRecord;
use crate::ports::{CleanupRunner, Clock, CostSource, EventBus, RunHandle, RunState, RunnerError};

/// Cleanup runs succeed after `delay` (of the given clock), except a deterministic fraction
/// `failure_rate` of run ids, which fail. Stateless, so a restarted daemon can re-attach.
pub struct SimCleanupRunner {
    clock: Arc<dyn Clock>,
    delay: Duration,
    failure_rate: f64,
}

impl SimCleanupRunner {
    pub fn new(clock: Arc<dyn Clock>, delay: Duration, failure_rate: f64) -> Self {
        Self {
            clock,
            delay,
            failure_rate: failure_rate.clamp(0.0, 1.0),
        }
    }
}

fn fraction_of(text: &str) -> f64 {
    // FNV-1a: stable across runs and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % 10_000) as f64 / 10_000.0
}

#[async_trait]
impl CleanupRunner for SimCleanupRunner {
    async fn start(&self, _handle: &RunHandle) -> Result<(), RunnerError> {
        Ok(())
    }

    async fn poll(&self, handle: &RunHandle) -> Result<RunState, RunnerError> {
        if self.clock.now() < handle.started_at + self.delay {
            return Ok(RunState::Running);
        }
        if fraction_of(&handle.run_id) < self.failure_rate {
            return Ok(RunState::Failed("simulated aws-nuke failure".into()));
        }
        Ok(RunState::Succeeded)
    }
}

/// A runner whose outcomes a test scripts, per account, in order. Unscripted runs succeed.
/// `Running` forever simulates a hang; start errors simulate a lost runner.
#[derive(Default)]
pub struct ScriptedRunner {
    scripts: Mutex<HashMap<String, VecDeque<RunState>>>,
    decided: Mutex<HashMap<String, RunState>>,
    pub started: Mutex<Vec<RunHandle>>,
}

impl ScriptedRunner {
    pub fn script(&self, account_id: &str, outcomes: Vec<RunState>) {
        self.scripts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(account_id.to_string(), outcomes.into());
    }

    pub fn started_count(&self, account_id: &str) -> usize {
        self.started
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter(|handle| handle.account_id == account_id)
            .count()
    }
}

#[async_trait]
impl CleanupRunner for ScriptedRunner {
    async fn start(&self, handle: &RunHandle) -> Result<(), RunnerError> {
        self.started
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(handle.clone());
        let outcome = self
            .scripts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get_mut(&handle.account_id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(RunState::Succeeded);
        self.decided
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(handle.run_id.clone(), outcome);
        Ok(())
    }

    async fn poll(&self, handle: &RunHandle) -> Result<RunState, RunnerError> {
        Ok(self
            .decided
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&handle.run_id)
            .cloned()
            .unwrap_or(RunState::Failed("unknown run".into())))
    }
}

/// Spend grows linearly with lease time at `dollars_per_hour`, scaled per account by a stable
/// factor in [0.5, 1.5) so accounts differ.
pub struct SimCostSource {
    pub dollars_per_hour: f64,
}

#[async_trait]
impl CostSource for SimCostSource {
    async fn spend_since(
        &self,
        accounts: &[(String, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, f64)>, String> {
        Ok(accounts
            .iter()
            .map(|(account_id, since)| {
                let hours = (now - *since).num_seconds().max(0) as f64 / 3600.0;
                let factor = 0.5 + fraction_of(account_id);
                let spend = (hours * self.dollars_per_hour * factor * 100.0).round() / 100.0;
                (account_id.clone(), spend)
            })
            .collect())
    }
}

/// An event bus that keeps what it was given (tests), optionally refusing some entries.
#[derive(Default)]
pub struct RecordingBus {
    pub events: Mutex<Vec<EventRecord>>,
}

impl RecordingBus {
    pub fn detail_types(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|record| record.detail_type.clone())
            .collect()
    }
}

#[async_trait]
impl EventBus for RecordingBus {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>> {
        self.events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .extend(events.iter().cloned());
        events.iter().map(|_| Ok(())).collect()
    }
}

/// The simulator's organization: a fixed list of accounts that start in the Entry OU.
pub struct SimDirectory {
    pub accounts: Vec<crate::ports::EntryAccount>,
}

impl SimDirectory {
    /// `count` accounts with ids 1000000000NN-style (12 digits), named pool-NNN.
    pub fn with_accounts(count: usize) -> Self {
        Self {
            accounts: (1..=count)
                .map(|index| crate::ports::EntryAccount {
                    aws_account_id: format!("{:012}", 100_000_000_000u64 + index as u64),
                    name: Some(format!("pool-{index:03}")),
                    email: Some(format!("pool-{index:03}@sandbox.example")),
                })
                .collect(),
        }
    }
}

#[async_trait]
impl crate::ports::AccountDirectory for SimDirectory {
    async fn entry_accounts(&self) -> Result<Vec<crate::ports::EntryAccount>, String> {
        Ok(self.accounts.clone())
    }
}
