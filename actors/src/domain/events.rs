//! The typed event catalog (ISB detail-types and payloads), with one `leaseId` shape
//! (`{userEmail, uuid}`), `accountId` everywhere and a `schemaVersion` in every detail.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lease::{LeaseId, TerminationReason};
use super::SCHEMA_VERSION;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CleanRequestReason {
    AccountRegistration,
    LeaseTermination,
    RetryFailedCleanup,
    LeaseReset,
}

/// Every event sandboxd publishes. Serialised as `{"detail-type": ..., "detail": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "detail-type", content = "detail")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    LeaseRequested {
        lease_id: LeaseId,
        comments: Option<String>,
        user_email: String,
        requires_manual_approval: bool,
    },
    #[serde(rename_all = "camelCase")]
    LeaseApproved {
        lease_id: LeaseId,
        approved_by: String,
        user_email: String,
        account_id: String,
    },
    #[serde(rename_all = "camelCase")]
    LeaseDenied {
        lease_id: LeaseId,
        denied_by: String,
        user_email: String,
    },
    #[serde(rename_all = "camelCase")]
    LeaseBudgetExceeded {
        lease_id: LeaseId,
        account_id: String,
        budget: f64,
        total_spend: f64,
    },
    #[serde(rename_all = "camelCase")]
    LeaseExpired {
        lease_id: LeaseId,
        account_id: String,
        lease_expiration_date: DateTime<Utc>,
    },
    #[serde(rename_all = "camelCase")]
    LeaseTerminated {
        lease_id: LeaseId,
        account_id: String,
        reason: TerminationReason,
    },
    #[serde(rename_all = "camelCase")]
    LeaseFrozen {
        lease_id: LeaseId,
        account_id: String,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    LeaseUnfrozen {
        lease_id: LeaseId,
        account_id: String,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    CleanAccountRequest {
        account_id: String,
        reason: CleanRequestReason,
    },
    #[serde(rename_all = "camelCase")]
    AccountCleanupSucceeded {
        account_id: String,
        cleanup_execution_context: Value,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    AccountCleanupFailed {
        account_id: String,
        cleanup_execution_context: Value,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    AccountQuarantined { account_id: String, reason: String },
    #[serde(rename_all = "camelCase")]
    AccountDriftDetected {
        account_id: String,
        actual_ou: Option<String>,
        expected_ou: Option<String>,
    },
}

impl Event {
    pub fn detail_type(&self) -> &'static str {
        match self {
            Self::LeaseRequested { .. } => "LeaseRequested",
            Self::LeaseApproved { .. } => "LeaseApproved",
            Self::LeaseDenied { .. } => "LeaseDenied",
            Self::LeaseBudgetExceeded { .. } => "LeaseBudgetExceeded",
            Self::LeaseExpired { .. } => "LeaseExpired",
            Self::LeaseTerminated { .. } => "LeaseTerminated",
            Self::LeaseFrozen { .. } => "LeaseFrozen",
            Self::LeaseUnfrozen { .. } => "LeaseUnfrozen",
            Self::CleanAccountRequest { .. } => "CleanAccountRequest",
            Self::AccountCleanupSucceeded { .. } => "AccountCleanupSucceeded",
            Self::AccountCleanupFailed { .. } => "AccountCleanupFailed",
            Self::AccountQuarantined { .. } => "AccountQuarantined",
            Self::AccountDriftDetected { .. } => "AccountDriftDetected",
        }
    }

    /// The `detail` object as published, with `schemaVersion` added.
    pub fn detail(&self) -> Value {
        let mut whole = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut detail = whole
            .get_mut("detail")
            .map(Value::take)
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(map) = &mut detail {
            map.insert("schemaVersion".into(), Value::from(SCHEMA_VERSION));
        }
        detail
    }

    /// Decode a published `(detail-type, detail)` pair back into the typed event.
    pub fn decode(detail_type: &str, detail: &Value) -> Result<Self, serde_json::Error> {
        let mut detail = detail.clone();
        if let Value::Object(map) = &mut detail {
            map.remove("schemaVersion");
            map.remove("eventId");
        }
        serde_json::from_value(serde_json::json!({"detail-type": detail_type, "detail": detail}))
    }
}

/// An event as it sits in the outbox: an id (the EventBridge entry's idempotency handle), the
/// time it was produced, and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub id: String,
    pub time: DateTime<Utc>,
    pub detail_type: String,
    pub detail: Value,
}

impl EventRecord {
    /// A new record. Its id also goes into the detail as `eventId`: the bus assigns its own
    /// envelope id on every publish, so `detail.eventId` is what stays the same when an entry
    /// is published again after a crash, and what consumers de-duplicate on.
    pub fn new(event: &Event, time: DateTime<Utc>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let mut detail = event.detail();
        if let Value::Object(map) = &mut detail {
            map.insert("eventId".into(), Value::String(id.clone()));
        }
        Self {
            id,
            time,
            detail_type: event.detail_type().to_string(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_carries_schema_version_and_round_trips() {
        let event = Event::LeaseFrozen {
            lease_id: LeaseId {
                user_email: "a@b.gov.uk".into(),
                uuid: "u1".into(),
            },
            account_id: "123456789012".into(),
            reason: "manual".into(),
        };
        let detail = event.detail();
        assert_eq!(detail["schemaVersion"], 1);
        assert_eq!(detail["leaseId"]["userEmail"], "a@b.gov.uk");
        assert_eq!(detail["accountId"], "123456789012");
        assert_eq!(Event::decode("LeaseFrozen", &detail).unwrap(), event);
    }
}
