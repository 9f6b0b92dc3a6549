//! The lease: every ISB status, its fields, and its transitions as pure functions.

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::effects::{Step, Target, Timer, TimerAction};
use super::events::Event;
use super::history::HistoryEntry;
use super::template::{
    validate_cost_report_group, validate_thresholds, BudgetThreshold, DurationThreshold,
    LeaseTemplate,
};
use super::{config::GlobalConfig, DomainError, Meta};

/// Who approved an automatically approved lease.
pub const AUTO_APPROVED: &str = "AUTO_APPROVED";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseStatus {
    PendingApproval,
    ApprovalDenied,
    Provisioning,
    Active,
    Frozen,
    Expired,
    BudgetExceeded,
    ManuallyTerminated,
    AccountQuarantined,
    Ejected,
    ProvisioningFailed,
}

impl LeaseStatus {
    pub const ALL: [LeaseStatus; 11] = [
        Self::PendingApproval,
        Self::ApprovalDenied,
        Self::Provisioning,
        Self::Active,
        Self::Frozen,
        Self::Expired,
        Self::BudgetExceeded,
        Self::ManuallyTerminated,
        Self::AccountQuarantined,
        Self::Ejected,
        Self::ProvisioningFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "PendingApproval",
            Self::ApprovalDenied => "ApprovalDenied",
            Self::Provisioning => "Provisioning",
            Self::Active => "Active",
            Self::Frozen => "Frozen",
            Self::Expired => "Expired",
            Self::BudgetExceeded => "BudgetExceeded",
            Self::ManuallyTerminated => "ManuallyTerminated",
            Self::AccountQuarantined => "AccountQuarantined",
            Self::Ejected => "Ejected",
            Self::ProvisioningFailed => "ProvisioningFailed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Terminal statuses absorb: no transition leaves them.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::PendingApproval | Self::Provisioning | Self::Active | Self::Frozen
        )
    }

    /// Holds an account and is watched for spend and time.
    pub fn is_monitored(self) -> bool {
        matches!(self, Self::Provisioning | Self::Active | Self::Frozen)
    }

    /// Counts toward maxLeasesPerUser.
    pub fn counts_toward_limit(self) -> bool {
        !self.is_terminal()
    }
}

impl std::fmt::Display for LeaseStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why a monitored lease ended; maps one to one onto the terminal statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TerminationReason {
    Expired,
    BudgetExceeded,
    ManuallyTerminated,
    AccountQuarantined,
    Ejected,
    ProvisioningFailed,
}

impl TerminationReason {
    pub fn status(self) -> LeaseStatus {
        match self {
            Self::Expired => LeaseStatus::Expired,
            Self::BudgetExceeded => LeaseStatus::BudgetExceeded,
            Self::ManuallyTerminated => LeaseStatus::ManuallyTerminated,
            Self::AccountQuarantined => LeaseStatus::AccountQuarantined,
            Self::Ejected => LeaseStatus::Ejected,
            Self::ProvisioningFailed => LeaseStatus::ProvisioningFailed,
        }
    }
}

/// The key of a lease; the API's lease id is base64 of its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseId {
    pub user_email: String,
    pub uuid: String,
}

impl LeaseId {
    /// base64 (standard, padded) of `{"userEmail":...,"uuid":...}` with no spaces, as ISB and
    /// its clients build it.
    pub fn encode(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// Accepts standard or URL-safe base64, padded or not.
    pub fn decode(text: &str) -> Option<Self> {
        let trimmed = text.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .ok()?;
        let id: LeaseId = serde_json::from_slice(&bytes).ok()?;
        (!id.uuid.is_empty() && !id.user_email.is_empty()).then_some(id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub user_email: String,
    pub uuid: String,
    pub status: LeaseStatus,
    pub original_lease_template_uuid: String,
    pub original_lease_template_name: String,
    pub comments: Option<String>,
    pub created_by: Option<String>,
    pub blueprint_id: Option<String>,
    pub blueprint_name: Option<String>,
    pub max_spend: Option<f64>,
    pub lease_duration_in_hours: Option<f64>,
    pub budget_thresholds: Option<Vec<BudgetThreshold>>,
    pub duration_thresholds: Option<Vec<DurationThreshold>>,
    pub cost_report_group: Option<String>,
    pub aws_account_id: Option<String>,
    pub approved_by: Option<String>,
    pub start_date: Option<DateTime<Utc>>,
    pub expiration_date: Option<DateTime<Utc>>,
    pub last_checked_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub total_cost_accrued: f64,
    pub end_date: Option<DateTime<Utc>>,
    /// Epoch seconds after which a terminal lease may be purged.
    pub ttl: Option<i64>,
    pub meta: Meta,
    pub version: u64,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// A new lease request as the approver hands it to the domain.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub uuid: String,
    pub user_email: String,
    pub comments: Option<String>,
    pub created_by: String,
}

/// Tri-state field of a PATCH: absent (keep), null (clear) or a value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Patch<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            None => Patch::Clear,
            Some(value) => Patch::Set(value),
        })
    }
}

impl<T> Patch<T> {
    fn apply(self, field: &mut Option<T>) {
        match self {
            Patch::Keep => {}
            Patch::Clear => *field = None,
            Patch::Set(value) => *field = Some(value),
        }
    }

    fn as_set(&self) -> Option<&T> {
        match self {
            Patch::Set(value) => Some(value),
            _ => None,
        }
    }
}

/// PATCH /leases/{id}: only these fields; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeasePatch {
    #[serde(default)]
    pub max_spend: Patch<f64>,
    #[serde(default)]
    pub budget_thresholds: Patch<Vec<BudgetThreshold>>,
    #[serde(default)]
    pub expiration_date: Patch<DateTime<Utc>>,
    #[serde(default)]
    pub duration_thresholds: Patch<Vec<DurationThreshold>>,
    #[serde(default)]
    pub cost_report_group: Patch<String>,
}

pub fn expiry_timer_id(uuid: &str) -> String {
    format!("lease:{uuid}:expiry")
}

impl Lease {
    pub fn id(&self) -> LeaseId {
        LeaseId {
            user_email: self.user_email.clone(),
            uuid: self.uuid.clone(),
        }
    }

    /// A new lease from a template, PendingApproval until the approver decides.
    pub fn requested(
        request: LeaseRequest,
        template: &LeaseTemplate,
        now: DateTime<Utc>,
    ) -> Result<Lease, DomainError> {
        if request
            .comments
            .as_ref()
            .is_some_and(|text| text.chars().count() > 1000)
        {
            return Err(DomainError::invalid("comments", "at most 1000 characters"));
        }
        if !request.user_email.contains('@') {
            return Err(DomainError::invalid(
                "userEmail",
                "must be an email address",
            ));
        }
        Ok(Lease {
            user_email: request.user_email,
            uuid: request.uuid,
            status: LeaseStatus::PendingApproval,
            original_lease_template_uuid: template.uuid.clone(),
            original_lease_template_name: template.name.clone(),
            comments: request.comments,
            created_by: Some(request.created_by.clone()),
            blueprint_id: template.blueprint_id.clone(),
            blueprint_name: template.blueprint_name.clone(),
            max_spend: template.max_spend,
            lease_duration_in_hours: template.lease_duration_in_hours,
            budget_thresholds: template.budget_thresholds.clone(),
            duration_thresholds: template.duration_thresholds.clone(),
            cost_report_group: template.cost_report_group.clone(),
            aws_account_id: None,
            approved_by: None,
            start_date: None,
            expiration_date: None,
            last_checked_date: None,
            total_cost_accrued: 0.0,
            end_date: None,
            ttl: None,
            meta: Meta::new(now),
            version: 1,
            history: vec![HistoryEntry {
                from: None,
                to: LeaseStatus::PendingApproval.to_string(),
                at: now,
                by: request.created_by,
                reason: "requested".into(),
            }],
        })
    }

    /// The `LeaseRequested` event for a freshly requested lease.
    pub fn requested_event(&self, requires_manual_approval: bool) -> Event {
        Event::LeaseRequested {
            lease_id: self.id(),
            comments: self.comments.clone(),
            user_email: self.user_email.clone(),
            requires_manual_approval,
        }
    }

    fn wrong_state(&self, action: &'static str) -> DomainError {
        DomainError::WrongState {
            entity: "lease",
            status: self.status.to_string(),
            action,
        }
    }

    /// The next version with a new status and one more history entry.
    fn moved(&self, to: LeaseStatus, by: &str, reason: &str, now: DateTime<Utc>) -> Lease {
        debug_assert!(!self.status.is_terminal(), "terminal leases never move");
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

    fn account_id(&self) -> String {
        self.aws_account_id.clone().unwrap_or_default()
    }

    /// PendingApproval -> Active on the given account.
    pub fn approve(
        &self,
        account_id: &str,
        approved_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Step<Lease>, DomainError> {
        if self.status != LeaseStatus::PendingApproval {
            return Err(self.wrong_state("approve"));
        }
        let mut next = self.moved(LeaseStatus::Active, approved_by, "approved", now);
        next.aws_account_id = Some(account_id.to_string());
        next.approved_by = Some(approved_by.to_string());
        next.start_date = Some(now);
        next.last_checked_date = Some(now);
        next.expiration_date = self
            .lease_duration_in_hours
            .map(|hours| now + Duration::milliseconds((hours * 3_600_000.0) as i64));
        let event = Event::LeaseApproved {
            lease_id: next.id(),
            approved_by: approved_by.to_string(),
            user_email: next.user_email.clone(),
            account_id: account_id.to_string(),
        };
        let mut step = Step::new(next).publish(event);
        if let Some(timer) = step.state.expiry_timer() {
            step = step.arm(timer);
        }
        Ok(step)
    }

    /// PendingApproval -> ApprovalDenied (terminal, with a ttl).
    pub fn deny(
        &self,
        denied_by: &str,
        config: &GlobalConfig,
        now: DateTime<Utc>,
    ) -> Result<Step<Lease>, DomainError> {
        if self.status != LeaseStatus::PendingApproval {
            return Err(self.wrong_state("deny"));
        }
        let mut next = self.moved(LeaseStatus::ApprovalDenied, denied_by, "denied", now);
        next.approved_by = Some(denied_by.to_string());
        next.ttl = Some((now + config.lease_ttl()).timestamp());
        let event = Event::LeaseDenied {
            lease_id: next.id(),
            denied_by: denied_by.to_string(),
            user_email: next.user_email.clone(),
        };
        Ok(Step::new(next).publish(event))
    }

    /// Active -> Frozen. The account follows through a durable intent.
    pub fn freeze(
        &self,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Step<Lease>, DomainError> {
        match self.status {
            LeaseStatus::Active => {}
            LeaseStatus::Frozen => {
                return Err(DomainError::AlreadyInState {
                    entity: "lease",
                    status: self.status.to_string(),
                })
            }
            _ => return Err(self.wrong_state("freeze")),
        }
        let next = self.moved(LeaseStatus::Frozen, by, reason, now);
        let event = Event::LeaseFrozen {
            lease_id: next.id(),
            account_id: next.account_id(),
            reason: reason.to_string(),
        };
        let intent = self.account_intent(
            "frozen",
            TimerAction::AccountLeaseFrozen {
                lease_uuid: self.uuid.clone(),
                lease_version: next.version,
            },
            now,
        );
        Ok(Step::new(next).publish(event).arm(intent))
    }

    /// Frozen -> Active.
    pub fn unfreeze(
        &self,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Step<Lease>, DomainError> {
        match self.status {
            LeaseStatus::Frozen => {}
            LeaseStatus::Active => {
                return Err(DomainError::AlreadyInState {
                    entity: "lease",
                    status: self.status.to_string(),
                })
            }
            _ => return Err(self.wrong_state("unfreeze")),
        }
        let next = self.moved(LeaseStatus::Active, by, reason, now);
        let event = Event::LeaseUnfrozen {
            lease_id: next.id(),
            account_id: next.account_id(),
            reason: reason.to_string(),
        };
        let intent = self.account_intent(
            "unfrozen",
            TimerAction::AccountLeaseUnfrozen {
                lease_uuid: self.uuid.clone(),
                lease_version: next.version,
            },
            now,
        );
        Ok(Step::new(next).publish(event).arm(intent))
    }

    /// A monitored lease ends: terminal status, endDate, ttl, LeaseTerminated, the expiry
    /// timer cancelled, and (unless the account itself is what went away) an intent telling
    /// the account to go to CleanUp.
    pub fn terminate(
        &self,
        reason: TerminationReason,
        by: &str,
        config: &GlobalConfig,
        now: DateTime<Utc>,
    ) -> Result<Step<Lease>, DomainError> {
        if self.status.is_terminal() {
            return Err(DomainError::AlreadyInState {
                entity: "lease",
                status: self.status.to_string(),
            });
        }
        if !self.status.is_monitored() {
            return Err(self.wrong_state("terminate"));
        }
        let status = reason.status();
        let mut next = self.moved(status, by, status.as_str(), now);
        next.end_date = Some(now);
        next.ttl = Some((now + config.lease_ttl()).timestamp());
        let mut step = Step::new(next).cancel(expiry_timer_id(&self.uuid));
        match reason {
            TerminationReason::Expired => {
                step = step.publish(Event::LeaseExpired {
                    lease_id: self.id(),
                    account_id: self.account_id(),
                    lease_expiration_date: self.expiration_date.unwrap_or(now),
                });
            }
            TerminationReason::BudgetExceeded => {
                step = step.publish(Event::LeaseBudgetExceeded {
                    lease_id: self.id(),
                    account_id: self.account_id(),
                    budget: self.max_spend.unwrap_or_default(),
                    total_spend: self.total_cost_accrued,
                });
            }
            _ => {}
        }
        step = step.publish(Event::LeaseTerminated {
            lease_id: self.id(),
            account_id: self.account_id(),
            reason,
        });
        // Always tell the account, even when the account side started this (eject,
        // quarantine): an account no longer bound to this lease ignores the intent, and one that
        // still is must not be stranded.
        if self.aws_account_id.is_some() {
            let intent = self.account_intent(
                "ended",
                TimerAction::AccountLeaseEnded {
                    lease_uuid: self.uuid.clone(),
                    lease_status: status,
                },
                now,
            );
            step = step.arm(intent);
        }
        Ok(step)
    }

    /// The expiry timer fired: terminate as Expired if the lease is still monitored and its
    /// expiration (which a PATCH may have moved) has passed. Anything else is a no-op.
    pub fn expire_if_due(&self, config: &GlobalConfig, now: DateTime<Utc>) -> Option<Step<Lease>> {
        let due = self.expiration_date?;
        if !self.status.is_monitored() || due > now {
            return None;
        }
        self.terminate(TerminationReason::Expired, "system", config, now)
            .ok()
    }

    /// The expiry timer this lease should have armed: monitored, with an expiration date.
    pub fn expiry_timer(&self) -> Option<Timer> {
        if !self.status.is_monitored() {
            return None;
        }
        Some(Timer {
            id: expiry_timer_id(&self.uuid),
            due: self.expiration_date?,
            target: Target::Lease(self.uuid.clone()),
            action: TimerAction::LeaseExpiry,
        })
    }

    /// Record the spend seen by a monitoring sweep; past maxSpend the lease ends as
    /// BudgetExceeded.
    pub fn record_spend(
        &self,
        total_cost: f64,
        config: &GlobalConfig,
        now: DateTime<Utc>,
    ) -> Option<Step<Lease>> {
        if !self.status.is_monitored() {
            return None;
        }
        let mut next = self.clone();
        next.total_cost_accrued = total_cost;
        next.last_checked_date = Some(now);
        next.meta.last_edit_time = now;
        next.version = self.version + 1;
        if self.max_spend.is_some_and(|budget| total_cost >= budget) {
            return next
                .terminate(TerminationReason::BudgetExceeded, "system", config, now)
                .ok();
        }
        Some(Step::new(next))
    }

    /// PATCH: monitored leases only (ISB answers 400 otherwise); null clears a field.
    pub fn patch(
        &self,
        patch: LeasePatch,
        by: &str,
        config: &GlobalConfig,
        now: DateTime<Utc>,
    ) -> Result<Step<Lease>, DomainError> {
        if !self.status.is_monitored() {
            return Err(DomainError::invalid(
                "status",
                format!(
                    "only monitored leases can be updated; this lease is {}",
                    self.status
                ),
            ));
        }
        if let Some(spend) = patch.max_spend.as_set() {
            if !(spend.is_finite() && *spend > 0.0) {
                return Err(DomainError::invalid("maxSpend", "must be a number > 0"));
            }
        }
        validate_thresholds(
            patch.budget_thresholds.as_set().map(Vec::as_slice),
            patch.duration_thresholds.as_set().map(Vec::as_slice),
        )?;
        if let Some(group) = patch.cost_report_group.as_set() {
            validate_cost_report_group(Some(group), config)?;
        }
        let expiry_changed = patch.expiration_date != Patch::Keep;
        let mut next = self.clone();
        next.version = self.version + 1;
        patch.max_spend.apply(&mut next.max_spend);
        patch.budget_thresholds.apply(&mut next.budget_thresholds);
        patch.expiration_date.apply(&mut next.expiration_date);
        patch
            .duration_thresholds
            .apply(&mut next.duration_thresholds);
        patch.cost_report_group.apply(&mut next.cost_report_group);
        next.meta.last_edit_time = now;
        next.history.push(HistoryEntry {
            from: Some(self.status.to_string()),
            to: self.status.to_string(),
            at: now,
            by: by.to_string(),
            reason: "updated".into(),
        });
        let mut step = Step::new(next);
        if expiry_changed {
            step = match step.state.expiry_timer() {
                Some(timer) => step.arm(timer),
                None => step.cancel(expiry_timer_id(&self.uuid)),
            };
        }
        Ok(step)
    }

    /// A durable message for this lease's account, due now. The id is derived from the lease
    /// version so a retried transition arms the same intent, never a second one.
    fn account_intent(&self, what: &str, action: TimerAction, now: DateTime<Utc>) -> Timer {
        Timer {
            id: format!("lease:{}:v{}:{what}", self.uuid, self.version + 1),
            due: now,
            target: Target::Account(self.account_id()),
            action,
        }
    }
}
