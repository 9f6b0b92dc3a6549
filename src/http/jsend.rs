//! The JSend envelope every response uses, and the API's error type.
//!
//! Success: `{"status":"success","data":...}`. A client error (4xx):
//! `{"status":"fail","data":{"message":...,"field"?:...,"errors":[{"message":...,"field"?:...}]}}`
//! (`errors` is ISB's own shape; `message` and `field` are the flat form the brief's clients
//! read). A server error (5xx): `{"status":"error","message":...}` with a generic message: the
//! details go to the log, never to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use sandboxd_actors::domain::DomainError;
use sandboxd_actors::ports::StoreError;
use sandboxd_actors::EngineError;
use serde::Serialize;
use serde_json::{json, Value};

/// 200 with `data`.
pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    success(StatusCode::OK, data)
}

/// 201 with `data`.
pub fn created<T: Serialize>(data: T) -> HttpResponse {
    success(StatusCode::CREATED, data)
}

pub fn success<T: Serialize>(status: StatusCode, data: T) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "status": "success", "data": data }))
}

/// The body of a 4xx answer.
pub fn fail_body(message: &str, field: Option<&str>) -> Value {
    let mut detail = json!({ "message": message });
    if let Some(field) = field {
        detail["field"] = Value::from(field);
    }
    let mut data = detail.clone();
    data["errors"] = json!([detail]);
    json!({ "status": "fail", "data": data })
}

/// The body of a 5xx answer.
pub fn error_body(message: &str) -> Value {
    json!({ "status": "error", "message": message })
}

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed or expired token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is wrong (400), naming the field when there is one.
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Any other 4xx from the request's framing (413 payload too large, 415 content type).
    #[error("{message}")]
    Client { status: StatusCode, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A dependency of the API (not the engine) is unreachable (503). The detail is logged.
    #[error("{public}: {detail}")]
    Unavailable { public: String, detail: String },
    /// A bug or a broken invariant (500). The detail is logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest { .. } => "bad_request",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Client { .. } => "client",
            Self::Engine(error) => error.label(),
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The message and field a client sees for a 4xx; None for a 5xx.
    fn client_view(&self) -> Option<(String, Option<String>)> {
        match self {
            Self::Unauthorized(message)
            | Self::Forbidden(message)
            | Self::NotFound(message)
            | Self::MethodNotAllowed(message) => Some((message.clone(), None)),
            Self::BadRequest { message, field } => Some((message.clone(), field.clone())),
            Self::Client { message, .. } => Some((message.clone(), None)),
            Self::Engine(error) => engine_client_view(error),
            Self::Unavailable { .. } | Self::Internal(_) => None,
        }
    }

    /// The generic message of a 5xx.
    fn server_message(&self) -> &str {
        match self {
            Self::Unavailable { public, .. } => public,
            Self::Engine(EngineError::Unavailable(_)) => {
                "the service is busy or restarting; try again"
            }
            Self::Engine(EngineError::Store(_)) => "the state store is unavailable; try again",
            _ => "internal error",
        }
    }
}

fn engine_client_view(error: &EngineError) -> Option<(String, Option<String>)> {
    match error {
        EngineError::NotFound(_) | EngineError::Conflict(_) | EngineError::Forbidden(_) => {
            Some((error.to_string(), None))
        }
        EngineError::Domain(DomainError::Invalid { field, message }) => {
            Some((format!("invalid {field}: {message}"), Some(field.clone())))
        }
        EngineError::Domain(domain) => Some((domain.to_string(), None)),
        EngineError::Store(StoreError::Conflict { .. }) | EngineError::Stale(_) => Some((
            "the record changed while the request ran; try again".to_string(),
            None,
        )),
        EngineError::Store(_) | EngineError::Unavailable(_) => None,
    }
}

fn engine_status(error: &EngineError) -> StatusCode {
    match error {
        EngineError::NotFound(_) => StatusCode::NOT_FOUND,
        EngineError::Domain(DomainError::Invalid { .. }) => StatusCode::BAD_REQUEST,
        EngineError::Domain(_) => StatusCode::CONFLICT,
        EngineError::Conflict(_) => StatusCode::CONFLICT,
        EngineError::Forbidden(_) => StatusCode::FORBIDDEN,
        EngineError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
        EngineError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        EngineError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        EngineError::Stale(_) => StatusCode::CONFLICT,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Client { status, .. } => *status,
            Self::Engine(error) => engine_status(error),
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        match self.client_view() {
            Some((message, field)) if status.is_client_error() => {
                response.json(fail_body(&message, field.as_deref()))
            }
            _ => {
                tracing::error!(error = %self, kind = self.label(), status = status.as_u16(), "request failed");
                response.json(error_body(self.server_message()))
            }
        }
    }
}

/// The field a serde error names, when it names one (`missing field `x``, `unknown field `x``).
pub fn field_of_serde_message(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            return rest.find('`').map(|end| rest[..end].to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_of_serde_message("unknown field `foo`, expected one of `a`, `b` at line 1"),
            Some("foo".to_string())
        );
        assert_eq!(
            field_of_serde_message("missing field `name` at line 1 column 2"),
            Some("name".to_string())
        );
        assert_eq!(field_of_serde_message("expected value at line 1"), None);
    }

    async fn body_of(error: ApiError) -> (StatusCode, Value) {
        let response = error.error_response();
        let status = response.status();
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[actix_web::test]
    async fn internal_details_never_reach_the_client() {
        let error = ApiError::Engine(EngineError::Store(StoreError::Unavailable(
            "redis://secret-host:6379 refused".into(),
        )));
        let (status, body) = body_of(error).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"status": "error", "message": "the state store is unavailable; try again"})
        );
    }

    #[actix_web::test]
    async fn a_validation_error_names_its_field() {
        let error = ApiError::Engine(EngineError::Domain(DomainError::invalid(
            "maxSpend",
            "must be a number > 0",
        )));
        let (status, body) = body_of(error).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["status"], "fail");
        assert_eq!(body["data"]["field"], "maxSpend");
        assert_eq!(body["data"]["errors"][0]["field"], "maxSpend");
        assert_eq!(
            body["data"]["message"],
            "invalid maxSpend: must be a number > 0"
        );
    }

    #[actix_web::test]
    async fn a_version_conflict_is_409_without_store_details() {
        let error = ApiError::Engine(EngineError::Store(StoreError::Conflict {
            kind: "lease",
            id: "x".into(),
            expected: 1,
            found: 2,
        }));
        let (status, body) = body_of(error).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(!body.to_string().contains("expected"), "{body}");
        assert!(body["data"].get("field").is_none());
    }
}
