//! The pool account: its statuses (ISB's OUs plus a distinct BillingHold), the cleanup
//! context, and its transitions as pure functions.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::config::CleanupPolicy;
use super::effects::{Step, Target, Timer, TimerAction};
use super::events::{CleanRequestReason, Event};
use super::history::HistoryEntry;
use super::lease::TerminationReason;
use super::{DomainError, Meta};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountStatus {
    Entry,
    CleanUp,
    Available,
    Active,
    Frozen,
    Quarantine,
    Exit,
    /// Cleaned but waiting for the last lease's bill before it is Available again. Not a
    /// Quarantine: nothing is wrong with the account.
    BillingHold,
}

impl AccountStatus {
    pub const ALL: [AccountStatus; 8] = [
        Self::Entry,
        Self::CleanUp,
        Self::Available,
        Self::Active,
        Self::Frozen,
        Self::Quarantine,
        Self::Exit,
        Self::BillingHold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "Entry",
            Self::CleanUp => "CleanUp",
            Self::Available => "Available",
            Self::Active => "Active",
            Self::Frozen => "Frozen",
            Self::Quarantine => "Quarantine",
            Self::Exit => "Exit",
            Self::BillingHold => "BillingHold",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Part of the managed pool (Exit accounts have left it).
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Exit | Self::Entry)
    }
}

impl std::fmt::Display for AccountStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

pub type CleanReason = CleanRequestReason;

/// Where a cleanup of this account stands. Survives restarts with the snapshot, so a restarted
/// daemon re-attaches to the run in flight instead of starting another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupContext {
    pub reason: CleanReason,
    pub started_at: DateTime<Utc>,
    pub successes: u32,
    pub failures: u32,
    /// The run in flight, if any.
    pub run_id: Option<String>,
    pub run_started_at: Option<DateTime<Utc>>,
    /// Every run started for this cleanup, for the operator.
    #[serde(default)]
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub aws_account_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub status: AccountStatus,
    /// The lease bound to this account (Active or Frozen only).
    pub lease_uuid: Option<String>,
    pub lease_user_email: Option<String>,
    /// The version of the bound lease this account last followed (freeze/unfreeze intents
    /// older than this are stale).
    #[serde(default)]
    pub lease_version: Option<u64>,
    pub last_cleaned_at: Option<DateTime<Utc>>,
    pub cleanup_execution_context: Option<CleanupContext>,
    pub quarantine_reason: Option<String>,
    #[serde(default)]
    pub drift_at_last_scan: bool,
    pub meta: Meta,
    pub version: u64,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

pub fn cleanup_timer_id(account_id: &str) -> String {
    format!("account:{account_id}:cleanup")
}

pub fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|byte| byte.is_ascii_digit())
}

impl Account {
    fn wrong_state(&self, action: &'static str) -> DomainError {
        DomainError::WrongState {
            entity: "account",
            status: self.status.to_string(),
            action,
        }
    }

    fn moved(&self, to: AccountStatus, by: &str, reason: &str, now: DateTime<Utc>) -> Account {
        let mut next = self.clone();
        next.history.push(HistoryEntry {
            from: Some(self.status.to_string()),
            to: to.to_string(),
            at: now,
            by: by.to_string(),
            reason: reason.to_string(),
        });
        next.status = to;
        next.meta.last_edit_time = now;
        next.version = self.version + 1;
        next
    }

    /// Start (or restart) cleanup: CleanUp status, a fresh context, CleanAccountRequest and the
    /// first cleanup step due now.
    fn to_cleanup(&self, reason: CleanReason, by: &str, now: DateTime<Utc>) -> Step<Account> {
        let mut next = self.moved(AccountStatus::CleanUp, by, reason_text(reason), now);
        next.lease_uuid = None;
        next.lease_user_email = None;
        next.lease_version = None;
        next.cleanup_execution_context = Some(CleanupContext {
            reason,
            started_at: now,
            successes: 0,
            failures: 0,
            run_id: None,
            run_started_at: None,
            runs: Vec::new(),
        });
        let account_id = next.aws_account_id.clone();
        Step::new(next)
            .publish(Event::CleanAccountRequest {
                account_id: account_id.clone(),
                reason,
            })
            .arm(cleanup_step(&account_id, now))
    }

    /// Register an account from the Entry OU: it is cleaned before it is ever Available.
    pub fn register(
        aws_account_id: &str,
        name: Option<String>,
        email: Option<String>,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Step<Account>, DomainError> {
        if !is_account_id(aws_account_id) {
            return Err(DomainError::invalid("awsAccountId", "must be 12 digits"));
        }
        if name.as_ref().is_some_and(|text| text.chars().count() > 50) {
            return Err(DomainError::invalid("name", "at most 50 characters"));
        }
        let entry = Account {
            aws_account_id: aws_account_id.to_string(),
            email,
            name,
            status: AccountStatus::Entry,
            lease_uuid: None,
            lease_user_email: None,
            lease_version: None,
            last_cleaned_at: None,
            cleanup_execution_context: None,
            quarantine_reason: None,
            drift_at_last_scan: false,
            meta: Meta::new(now),
            version: 0,
            history: Vec::new(),
        };
        Ok(entry.to_cleanup(CleanReason::AccountRegistration, by, now))
    }

    /// Available -> Active, bound to a lease. Only the pool supervisor calls this, in the same
    /// atomic write as the lease's approval.
    pub fn allocate(
        &self,
        lease_uuid: &str,
        lease_version: u64,
        user_email: &str,
        now: DateTime<Utc>,
    ) -> Result<Account, DomainError> {
        if self.status != AccountStatus::Available {
            return Err(self.wrong_state("allocate"));
        }
        let mut next = self.moved(AccountStatus::Active, user_email, "leased", now);
        next.lease_uuid = Some(lease_uuid.to_string());
        next.lease_user_email = Some(user_email.to_string());
        next.lease_version = Some(lease_version);
        Ok(next)
    }

    /// The cleanup context when a run is in flight.
    pub fn run_in_flight(&self) -> Option<&CleanupContext> {
        self.cleanup_execution_context
            .as_ref()
            .filter(|context| context.run_id.is_some())
    }

    fn bound_to(&self, lease_uuid: &str) -> bool {
        self.lease_uuid.as_deref() == Some(lease_uuid)
    }

    /// The bound lease was frozen: Active -> Frozen. Stale, repeated or out-of-order intents
    /// (older than the lease version last followed) are no-ops.
    pub fn lease_frozen(
        &self,
        lease_uuid: &str,
        lease_version: u64,
        now: DateTime<Utc>,
    ) -> Option<Account> {
        self.follow_lease(
            lease_uuid,
            lease_version,
            AccountStatus::Frozen,
            "lease frozen",
            now,
        )
    }

    /// The bound lease was unfrozen: Frozen -> Active.
    pub fn lease_unfrozen(
        &self,
        lease_uuid: &str,
        lease_version: u64,
        now: DateTime<Utc>,
    ) -> Option<Account> {
        self.follow_lease(
            lease_uuid,
            lease_version,
            AccountStatus::Active,
            "lease unfrozen",
            now,
        )
    }

    fn follow_lease(
        &self,
        lease_uuid: &str,
        lease_version: u64,
        to: AccountStatus,
        why: &str,
        now: DateTime<Utc>,
    ) -> Option<Account> {
        let holding = matches!(self.status, AccountStatus::Active | AccountStatus::Frozen);
        let newer = lease_version > self.lease_version.unwrap_or(0);
        if !(self.bound_to(lease_uuid) && holding && newer) {
            return None;
        }
        let mut next = if self.status == to {
            let mut same = self.clone();
            same.version = self.version + 1;
            same.meta.last_edit_time = now;
            same
        } else {
            self.moved(to, "system", why, now)
        };
        next.lease_version = Some(lease_version);
        Some(next)
    }

    /// The bound lease ended: to CleanUp. A stale or repeated intent is a no-op.
    pub fn lease_ended(&self, lease_uuid: &str, now: DateTime<Utc>) -> Option<Step<Account>> {
        let holding = matches!(self.status, AccountStatus::Active | AccountStatus::Frozen);
        (self.bound_to(lease_uuid) && holding)
            .then(|| self.to_cleanup(CleanReason::LeaseTermination, "system", now))
    }

    /// The cleanup step timer fired: begin a run unless one is in flight (ISB scenario 24).
    /// Returns None when there is nothing to start.
    pub fn begin_cleanup_run(&self, run_id: &str, now: DateTime<Utc>) -> Option<Account> {
        let context = self.cleanup_execution_context.as_ref()?;
        if self.status != AccountStatus::CleanUp || context.run_id.is_some() {
            return None;
        }
        let mut next = self.clone();
        next.version = self.version + 1;
        next.meta.last_edit_time = now;
        let context = next.cleanup_execution_context.as_mut()?;
        context.run_id = Some(run_id.to_string());
        context.run_started_at = Some(now);
        context.runs.push(run_id.to_string());
        Some(next)
    }

    /// A run finished. Counts consecutive successes (a failure resets them) and failures;
    /// enough successes make the account Available, too many failures quarantine it. A report
    /// for a run that is not the one in flight is stale and ignored.
    pub fn finish_cleanup_run(
        &self,
        run_id: &str,
        outcome: RunOutcome,
        detail: &str,
        policy: &CleanupPolicy,
        now: DateTime<Utc>,
    ) -> Option<Step<Account>> {
        let context = self.cleanup_execution_context.as_ref()?;
        // Exit absorbs: an ejected account's record never changes again.
        if context.run_id.as_deref() != Some(run_id) || self.status == AccountStatus::Exit {
            return None;
        }
        let mut context = context.clone();
        context.run_id = None;
        context.run_started_at = None;
        if self.status != AccountStatus::CleanUp {
            // Quarantined or ejected while the run was going: it no longer counts, but the
            // account is free for a new run.
            let mut next = self.clone();
            next.version = self.version + 1;
            next.meta.last_edit_time = now;
            next.cleanup_execution_context = Some(context);
            return Some(Step::new(next));
        }
        let account_id = self.aws_account_id.clone();
        let context_json = serde_json::to_value(&context).unwrap_or_default();
        match outcome {
            RunOutcome::Succeeded => {
                context.successes += 1;
                if context.successes >= policy.number_of_successful_attempts_to_finish_cleanup {
                    let mut next = self.moved(AccountStatus::Available, "system", "cleaned", now);
                    next.cleanup_execution_context = None;
                    next.last_cleaned_at = Some(now);
                    next.quarantine_reason = None;
                    return Some(Step::new(next).publish(Event::AccountCleanupSucceeded {
                        account_id,
                        cleanup_execution_context: context_json,
                        reason: format!("{} consecutive successful runs", context.successes),
                    }));
                }
                let wait =
                    Duration::seconds(policy.wait_before_rerun_successful_attempt_seconds as i64);
                let mut next = self.clone();
                next.version = self.version + 1;
                next.meta.last_edit_time = now;
                next.cleanup_execution_context = Some(context);
                Some(Step::new(next).arm(cleanup_step(&account_id, now + wait)))
            }
            RunOutcome::Failed => {
                context.failures += 1;
                context.successes = 0;
                if context.failures >= policy.number_of_failed_attempts_to_cancel_cleanup {
                    let reason = format!(
                        "cleanup failed {} times; runs {}; last: {detail}",
                        context.failures,
                        context.runs.join(", ")
                    );
                    let mut next = self.moved(AccountStatus::Quarantine, "system", &reason, now);
                    next.quarantine_reason = Some(reason.clone());
                    next.cleanup_execution_context = Some(context);
                    return Some(
                        Step::new(next)
                            .publish(Event::AccountCleanupFailed {
                                account_id: account_id.clone(),
                                cleanup_execution_context: context_json,
                                reason: reason.clone(),
                            })
                            .publish(Event::AccountQuarantined { account_id, reason }),
                    );
                }
                let wait =
                    Duration::seconds(policy.wait_before_retry_failed_attempt_seconds as i64);
                let mut next = self.clone();
                next.version = self.version + 1;
                next.meta.last_edit_time = now;
                next.cleanup_execution_context = Some(context);
                Some(Step::new(next).arm(cleanup_step(&account_id, now + wait)))
            }
        }
    }

    /// Operator: retry cleanup from Quarantine (back to CleanUp) or CleanUp (a new request
    /// unless a run is in flight). Anything else is 409.
    pub fn retry_cleanup(
        &self,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Step<Account>, DomainError> {
        match self.status {
            AccountStatus::Quarantine => {
                let mut step = self.to_cleanup(CleanReason::RetryFailedCleanup, by, now);
                step.state.quarantine_reason = None;
                if let Some(in_flight) = self.run_in_flight() {
                    // The fresh cleanup waits for that run's report instead of starting one.
                    if let Some(context) = step.state.cleanup_execution_context.as_mut() {
                        context.run_id = in_flight.run_id.clone();
                        context.run_started_at = in_flight.run_started_at;
                        context.runs = in_flight.runs.clone();
                    }
                    let step_timer = cleanup_timer_id(&self.aws_account_id);
                    step.effects.retain(|effect| {
                        !matches!(effect, crate::domain::Effect::ArmTimer(timer) if timer.id == step_timer)
                    });
                }
                Ok(step)
            }
            AccountStatus::CleanUp => {
                let running = self
                    .cleanup_execution_context
                    .as_ref()
                    .is_some_and(|context| context.run_id.is_some());
                let mut next = self.clone();
                next.version = self.version + 1;
                next.meta.last_edit_time = now;
                next.history.push(HistoryEntry {
                    from: Some(self.status.to_string()),
                    to: self.status.to_string(),
                    at: now,
                    by: by.to_string(),
                    reason: "cleanup retry requested".into(),
                });
                let mut step = Step::new(next).publish(Event::CleanAccountRequest {
                    account_id: self.aws_account_id.clone(),
                    reason: CleanReason::RetryFailedCleanup,
                });
                if !running {
                    step = step.arm(cleanup_step(&self.aws_account_id, now));
                }
                Ok(step)
            }
            _ => Err(self.wrong_state("retry cleanup")),
        }
    }

    /// Operator: eject to Exit, uncleaned. 409 while in CleanUp. A bound lease ends as Ejected
    /// through an intent.
    pub fn eject(&self, by: &str, now: DateTime<Utc>) -> Result<Step<Account>, DomainError> {
        match self.status {
            AccountStatus::CleanUp => return Err(self.wrong_state("eject")),
            AccountStatus::Exit => {
                return Err(DomainError::AlreadyInState {
                    entity: "account",
                    status: self.status.to_string(),
                })
            }
            _ => {}
        }
        Ok(self.lose(
            AccountStatus::Exit,
            TerminationReason::Ejected,
            by,
            "ejected",
            now,
        ))
    }

    /// Operator or cleanup: quarantine with a reason; a bound lease ends as AccountQuarantined.
    pub fn quarantine(
        &self,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Step<Account>, DomainError> {
        match self.status {
            AccountStatus::Quarantine => Err(DomainError::AlreadyInState {
                entity: "account",
                status: self.status.to_string(),
            }),
            AccountStatus::Exit | AccountStatus::Entry => Err(self.wrong_state("quarantine")),
            _ => {
                let mut step = self.lose(
                    AccountStatus::Quarantine,
                    TerminationReason::AccountQuarantined,
                    by,
                    reason,
                    now,
                );
                step.state.quarantine_reason = Some(reason.to_string());
                step = step.publish(Event::AccountQuarantined {
                    account_id: self.aws_account_id.clone(),
                    reason: reason.to_string(),
                });
                Ok(step)
            }
        }
    }

    fn lose(
        &self,
        to: AccountStatus,
        lease_reason: TerminationReason,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Step<Account> {
        let mut next = self.moved(to, by, why, now);
        next.lease_uuid = None;
        next.lease_user_email = None;
        next.lease_version = None;
        // A run in flight keeps running in the runner: remember it so nothing starts a second
        // one on this account before it reports (ISB scenario 24).
        next.cleanup_execution_context = self
            .cleanup_execution_context
            .as_ref()
            .filter(|context| context.run_id.is_some())
            .cloned();
        let mut step = Step::new(next).cancel(cleanup_timer_id(&self.aws_account_id));
        if let Some(lease_uuid) = &self.lease_uuid {
            step = step.arm(Timer {
                id: format!("account:{}:v{}:lost", self.aws_account_id, self.version + 1),
                due: now,
                target: Target::Lease(lease_uuid.clone()),
                action: TimerAction::LeaseAccountLost {
                    account_id: self.aws_account_id.clone(),
                    reason: lease_reason,
                },
            });
        }
        step
    }
}

fn cleanup_step(account_id: &str, due: DateTime<Utc>) -> Timer {
    Timer {
        id: cleanup_timer_id(account_id),
        due,
        target: Target::Account(account_id.to_string()),
        action: TimerAction::CleanupStep,
    }
}

fn reason_text(reason: CleanReason) -> &'static str {
    match reason {
        CleanReason::AccountRegistration => "registered",
        CleanReason::LeaseTermination => "lease ended",
        CleanReason::RetryFailedCleanup => "cleanup retried",
        CleanReason::LeaseReset => "lease reset",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(now: DateTime<Utc>) -> Account {
        let registered = Account::register("123456789012", None, None, "admin", now)
            .unwrap()
            .state;
        let policy = CleanupPolicy {
            number_of_successful_attempts_to_finish_cleanup: 1,
            ..CleanupPolicy::default()
        };
        let running = registered.begin_cleanup_run("run-1", now).unwrap();
        let available = running
            .finish_cleanup_run("run-1", RunOutcome::Succeeded, "ok", &policy, now)
            .unwrap()
            .state;
        assert_eq!(available.status, AccountStatus::Available);
        available.allocate("lease-1", 2, "a@b.gov.uk", now).unwrap()
    }

    #[test]
    fn freeze_and_unfreeze_intents_delivered_out_of_order_leave_the_newest_state() {
        let now = Utc::now();
        let account = leased(now);
        // The lease was frozen at v3 and unfrozen at v4; the unfreeze arrives first.
        let after_unfreeze = account.lease_unfrozen("lease-1", 4, now).unwrap();
        assert_eq!(after_unfreeze.status, AccountStatus::Active);
        assert_eq!(after_unfreeze.lease_version, Some(4));
        assert!(
            after_unfreeze.lease_frozen("lease-1", 3, now).is_none(),
            "a stale freeze is ignored"
        );
    }

    #[test]
    fn intents_for_another_lease_are_ignored() {
        let account = leased(Utc::now());
        assert!(account.lease_frozen("lease-2", 9, Utc::now()).is_none());
        assert!(account.lease_ended("lease-2", Utc::now()).is_none());
    }

    #[test]
    fn lease_ended_moves_to_cleanup_and_asks_for_a_clean() {
        let account = leased(Utc::now());
        let step = account.lease_ended("lease-1", Utc::now()).unwrap();
        assert_eq!(step.state.status, AccountStatus::CleanUp);
        assert_eq!(step.state.lease_uuid, None);
        assert!(step.events().any(|event| matches!(
            event,
            Event::CleanAccountRequest {
                reason: CleanReason::LeaseTermination,
                ..
            }
        )));
        assert_eq!(step.timers().count(), 1);
    }
}
