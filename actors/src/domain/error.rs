use thiserror::Error;

/// Why a transition or a validation refused its input. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// The entity is not in a state that allows the action (API: 409).
    #[error("{entity} is {status}: cannot {action}")]
    WrongState {
        entity: &'static str,
        status: String,
        action: &'static str,
    },
    /// The entity is already where the action would take it. Event handlers treat this as a
    /// no-op; the API answers 409 as ISB does.
    #[error("{entity} is already {status}")]
    AlreadyInState {
        entity: &'static str,
        status: String,
    },
    /// A field failed validation (API: 400 naming the field).
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WrongState { .. } => "wrong_state",
            Self::AlreadyInState { .. } => "already_in_state",
            Self::Invalid { .. } => "invalid",
        }
    }
}
