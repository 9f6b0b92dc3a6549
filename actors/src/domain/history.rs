use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One append-only entry of an entity's transition history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub from: Option<String>,
    pub to: String,
    pub at: DateTime<Utc>,
    pub by: String,
    pub reason: String,
}
