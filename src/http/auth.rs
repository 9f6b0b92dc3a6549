//! Authentication and role checks: HS256 JWTs as ISB issues them
//! (`{"user": {"email", "roles"}, "iat", "exp"}`), the extractors handlers take, and the role
//! rules of ISB's authorizer.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sandboxd_actors::domain::{Caller, Role};
use serde::{Deserialize, Serialize};

use super::jsend::ApiError;
use super::ApiState;

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_SECONDS: u64 = 5;

/// Issues and verifies session tokens with one shared HS256 secret.
#[derive(Clone)]
pub struct Auth {
    pub secret: Vec<u8>,
    /// Lifetime of an issued token (ISB's auth.sessionDurationInMinutes).
    pub session_minutes: u32,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Auth")
            .field("secret", &"<redacted>")
            .field("session_minutes", &self.session_minutes)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed authorization header: expected 'Bearer <token>'")]
    MalformedHeader,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenUser {
    email: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    user: TokenUser,
    iat: i64,
    exp: i64,
}

impl Auth {
    pub fn new(secret: impl Into<Vec<u8>>, session_minutes: u32) -> Self {
        Self {
            secret: secret.into(),
            session_minutes,
        }
    }

    /// A token for `email` with `roles`, valid for the session duration from now.
    pub fn issue(&self, email: &str, roles: &[Role]) -> String {
        let issued_at = chrono::Utc::now().timestamp();
        self.issue_at(email, roles, issued_at)
    }

    /// A token issued at `issued_at` (epoch seconds); tests use it to mint expired tokens.
    pub fn issue_at(&self, email: &str, roles: &[Role], issued_at: i64) -> String {
        let role_names = roles.iter().map(|role| format!("{role:?}")).collect();
        self.issue_raw(email, role_names, issued_at)
    }

    /// A token with arbitrary role strings (unknown ones are ignored on verify).
    pub fn issue_raw(&self, email: &str, roles: Vec<String>, issued_at: i64) -> String {
        let claims = Claims {
            user: TokenUser {
                email: email.to_string(),
                roles,
            },
            iat: issued_at,
            exp: issued_at + i64::from(self.session_minutes) * 60,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 encoding of plain claims cannot fail")
    }

    /// The caller a token names. Unknown role strings are dropped.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp"]);
        let decoded = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &validation,
        )
        .map_err(|error| match error.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let user = decoded.claims.user;
        if user.email.trim().is_empty() {
            return Err(AuthError::Invalid);
        }
        let mut roles: Vec<Role> = user
            .roles
            .iter()
            .filter_map(|name| Role::parse(name))
            .collect();
        roles.sort();
        roles.dedup();
        Ok(Caller::new(user.email, roles))
    }

    /// The caller of a request, from its `Authorization: Bearer` header.
    pub fn caller_of(&self, request: &HttpRequest) -> Result<Caller, AuthError> {
        let value = request
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::MalformedHeader)?
            .trim();
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::MalformedHeader);
        }
        self.verify(token.trim())
    }
}

fn authenticate(request: &HttpRequest, enforce_maintenance: bool) -> Result<Caller, ApiError> {
    let state = request
        .app_data::<web::Data<ApiState>>()
        .ok_or_else(|| ApiError::Internal("ApiState is not registered as app data".into()))?;
    let caller = state
        .auth
        .caller_of(request)
        .map_err(|error| ApiError::Unauthorized(error.to_string()))?;
    if caller.roles.is_empty() {
        return Err(ApiError::Forbidden(
            "the token carries no sandbox role (User, Manager or Admin)".into(),
        ));
    }
    if enforce_maintenance && state.engine.config().maintenance_mode && !caller.is_admin() {
        return Err(ApiError::Forbidden("maintenance mode".into()));
    }
    Ok(caller)
}

/// An authenticated caller with at least one role; in maintenance mode only Admins pass.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(request, true).map(Authenticated))
    }
}

/// Like [`Authenticated`] but admitted in maintenance mode (GET /configurations only).
#[derive(Debug, Clone)]
pub struct AuthenticatedInMaintenance(pub Caller);

impl FromRequest for AuthenticatedInMaintenance {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(request, false).map(AuthenticatedInMaintenance))
    }
}

/// An [`Authenticated`] Manager or Admin: review, freeze, unfreeze, terminate, PATCH and
/// template writes. Checked before the body is read, so a User gets 403, not a body error.
#[derive(Debug, Clone)]
pub struct RequireManager(pub Caller);

impl FromRequest for RequireManager {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let checked = authenticate(request, true)
            .and_then(|caller| require_manager(&caller).map(|()| RequireManager(caller)));
        ready(checked)
    }
}

/// An [`Authenticated`] Admin: everything under /accounts.
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub Caller);

impl FromRequest for RequireAdmin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let checked = authenticate(request, true)
            .and_then(|caller| require_admin(&caller).map(|()| RequireAdmin(caller)));
        ready(checked)
    }
}

/// Review, freeze, unfreeze, terminate, PATCH and template writes.
pub fn require_manager(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_manager() {
        return Ok(());
    }
    Err(ApiError::Forbidden(
        "requires the Manager or Admin role".into(),
    ))
}

/// Everything under /accounts.
pub fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(ApiError::Forbidden("requires the Admin role".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new("test-secret", 60)
    }

    #[test]
    fn an_issued_token_verifies_to_its_caller() {
        let token = auth().issue("ada@example.com", &[Role::Manager, Role::User]);
        let caller = auth().verify(&token).unwrap();
        assert_eq!(caller.email, "ada@example.com");
        assert_eq!(caller.roles, vec![Role::User, Role::Manager]);
    }

    #[test]
    fn unknown_roles_are_ignored() {
        let token = auth().issue_raw(
            "ada@example.com",
            vec!["Wizard".into(), "Admin".into()],
            chrono::Utc::now().timestamp(),
        );
        assert_eq!(auth().verify(&token).unwrap().roles, vec![Role::Admin]);
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let old = auth().issue_at("ada@example.com", &[Role::User], 1_000_000);
        assert_eq!(auth().verify(&old), Err(AuthError::Expired));
        let foreign = Auth::new("other", 60).issue("ada@example.com", &[Role::User]);
        assert_eq!(auth().verify(&foreign), Err(AuthError::Invalid));
        assert_eq!(auth().verify("not-a-jwt"), Err(AuthError::Invalid));
    }
}
