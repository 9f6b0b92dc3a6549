//! /leases: list, request, read, PATCH, review, freeze, unfreeze, terminate.
//!
//! A lease is addressed by ISB's lease id, base64 of `{"userEmail","uuid"}` (possibly
//! URL-encoded in the path). Every lease returned carries that id as `leaseId`.

use actix_web::{web, HttpResponse};
use sandboxd_actors::approver::RequestLease;
use sandboxd_actors::domain::{Caller, Lease, LeaseId, LeasePatch, LeaseStatus};
use sandboxd_actors::ports::{IndexQuery, Kind};
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Authenticated, RequireManager};
use super::jsend::{self, ApiError};
use super::pagination::{paginate, PageQuery, PageRequest};
use super::{percent_decode, ApiState};

/// A lease as the API shows it: every stored field plus `leaseId`.
pub fn lease_json(lease: &Lease) -> Value {
    let mut value =
        serde_json::to_value(lease).unwrap_or_else(|_| Value::Object(Default::default()));
    if let Value::Object(fields) = &mut value {
        fields.insert("leaseId".into(), Value::String(lease.id().encode()));
    }
    value
}

/// Decode a lease id from a path segment: percent-decoding first (clients encode `+`, `/` and
/// `=`), then base64 JSON.
pub fn parse_lease_id(raw: &str) -> Result<LeaseId, ApiError> {
    let decoded = percent_decode(raw.trim())
        .ok_or_else(|| ApiError::invalid("leaseId", "malformed lease id"))?;
    LeaseId::decode(&decoded).ok_or_else(|| {
        ApiError::invalid(
            "leaseId",
            "malformed lease id: expected base64 of {\"userEmail\",\"uuid\"}",
        )
    })
}

/// The lease a path names, visible to `caller`. A lease of another user is "not found" to a
/// User, so ids cannot be probed.
async fn visible_lease(state: &ApiState, raw_id: &str, caller: &Caller) -> Result<Lease, ApiError> {
    let id = parse_lease_id(raw_id)?;
    let not_found = || ApiError::NotFound("lease not found".into());
    let lease = state
        .engine
        .get_lease(&id.uuid)
        .await?
        .ok_or_else(not_found)?;
    if lease.user_email != id.user_email {
        return Err(not_found());
    }
    if !caller.is_manager() && lease.user_email != caller.email {
        return Err(not_found());
    }
    Ok(lease)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseListQuery {
    pub user_email: Option<String>,
    /// One status or a comma-separated list.
    pub status: Option<String>,
    pub page_identifier: Option<String>,
    pub page_size: Option<String>,
}

fn parse_statuses(text: Option<&str>) -> Result<Vec<LeaseStatus>, ApiError> {
    let Some(text) = text.map(str::trim).filter(|text| !text.is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|name| {
            LeaseStatus::parse(name.trim()).ok_or_else(|| {
                ApiError::invalid("status", format!("unknown lease status '{}'", name.trim()))
            })
        })
        .collect()
}

/// GET /leases[?userEmail][&status][&pageIdentifier][&pageSize]
pub async fn list(
    state: web::Data<ApiState>,
    Authenticated(caller): Authenticated,
    query: web::Query<LeaseListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = PageRequest::parse(&PageQuery {
        page_identifier: query.page_identifier.clone(),
        page_size: query.page_size.clone(),
    })?;
    let requested_user = query
        .user_email
        .as_deref()
        .map(str::trim)
        .filter(|email| !email.is_empty())
        .map(str::to_string);
    let user = if caller.is_manager() {
        requested_user
    } else {
        match requested_user {
            Some(email) if email != caller.email => {
                return Err(ApiError::Forbidden(
                    "a User may only list their own leases".into(),
                ))
            }
            _ => Some(caller.email.clone()),
        }
    };
    let statuses = parse_statuses(query.status.as_deref())?;
    let mut ids = Vec::new();
    if statuses.is_empty() {
        ids = state
            .engine
            .ids(IndexQuery {
                kind: Kind::Lease,
                status: None,
                user: user.clone(),
            })
            .await?;
    }
    for status in statuses {
        ids.extend(
            state
                .engine
                .ids(IndexQuery {
                    kind: Kind::Lease,
                    status: Some(status.as_str().to_string()),
                    user: user.clone(),
                })
                .await?,
        );
    }
    let engine = &state.engine;
    let listed = paginate(
        ids,
        &page,
        |chunk| async move { engine.leases_of(&chunk).await },
        |_| true,
        |lease: &Lease| lease.uuid.clone(),
    )
    .await?;
    Ok(jsend::ok(listed.map(|lease| lease_json(&lease))))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRequestBody {
    pub lease_template_uuid: String,
    pub comments: Option<String>,
    pub user_email: Option<String>,
}

/// POST /leases {leaseTemplateUuid, comments?, userEmail?}: 201 with the lease.
pub async fn request(
    state: web::Data<ApiState>,
    Authenticated(caller): Authenticated,
    body: web::Json<LeaseRequestBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let template_uuid = body.lease_template_uuid.trim().to_string();
    if template_uuid.is_empty() {
        return Err(ApiError::invalid(
            "leaseTemplateUuid",
            "leaseTemplateUuid must not be empty",
        ));
    }
    // Naming yourself is a plain request, not an assignment.
    let assignee = body
        .user_email
        .map(|email| email.trim().to_string())
        .filter(|email| !email.is_empty() && *email != caller.email);
    if assignee.is_some() && !caller.is_manager() {
        return Err(ApiError::Forbidden(
            "only a Manager or Admin can request a lease for another user".into(),
        ));
    }
    let lease = state
        .engine
        .request_lease(RequestLease {
            template_uuid,
            caller,
            user_email: assignee,
            comments: body.comments,
        })
        .await?;
    Ok(jsend::created(lease_json(&lease)))
}

/// GET /leases/{leaseId}
pub async fn get(
    state: web::Data<ApiState>,
    Authenticated(caller): Authenticated,
    lease_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let lease = visible_lease(&state, &lease_id, &caller).await?;
    Ok(jsend::ok(lease_json(&lease)))
}

/// PATCH /leases/{leaseId}: monitored leases only; null clears a field.
pub async fn patch(
    state: web::Data<ApiState>,
    RequireManager(caller): RequireManager,
    lease_id: web::Path<String>,
    body: web::Json<LeasePatch>,
) -> Result<HttpResponse, ApiError> {
    let lease = visible_lease(&state, &lease_id, &caller).await?;
    let patched = state
        .engine
        .patch_lease(&lease.uuid, body.into_inner(), &caller)
        .await?;
    Ok(jsend::ok(lease_json(&patched)))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    pub action: String,
}

/// POST /leases/{leaseId}/review {"action": "Approve" | "Deny"}
pub async fn review(
    state: web::Data<ApiState>,
    RequireManager(caller): RequireManager,
    lease_id: web::Path<String>,
    body: web::Json<ReviewBody>,
) -> Result<HttpResponse, ApiError> {
    let approve = match body.action.as_str() {
        "Approve" => true,
        "Deny" => false,
        other => {
            return Err(ApiError::invalid(
                "action",
                format!("action must be \"Approve\" or \"Deny\", not \"{other}\""),
            ))
        }
    };
    let lease = visible_lease(&state, &lease_id, &caller).await?;
    let reviewed = state.engine.review(&lease.uuid, approve, &caller).await?;
    Ok(jsend::ok(lease_json(&reviewed)))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

/// An optional `{"reason": "..."}` body (ISB sends none).
fn optional_reason(body: &[u8], default: &str) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(default.to_string());
    }
    let parsed: ReasonBody = serde_json::from_slice(body).map_err(|error| {
        let message = error.to_string();
        ApiError::BadRequest {
            field: jsend::field_of_serde_message(&message),
            message: format!("invalid request body: {message}"),
        }
    })?;
    Ok(parsed
        .reason
        .map(|reason| reason.trim().to_string())
        .filter(|reason| !reason.is_empty())
        .unwrap_or_else(|| default.to_string()))
}

/// POST /leases/{leaseId}/freeze [{"reason"}]
pub async fn freeze(
    state: web::Data<ApiState>,
    RequireManager(caller): RequireManager,
    lease_id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let reason = optional_reason(&body, "frozen by an operator")?;
    let lease = visible_lease(&state, &lease_id, &caller).await?;
    let frozen = state.engine.freeze(&lease.uuid, &caller, &reason).await?;
    Ok(jsend::ok(lease_json(&frozen)))
}

/// POST /leases/{leaseId}/unfreeze [{"reason"}]
pub async fn unfreeze(
    state: web::Data<ApiState>,
    RequireManager(caller): RequireManager,
    lease_id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let reason = optional_reason(&body, "unfrozen by an operator")?;
    let lease = visible_lease(&state, &lease_id, &caller).await?;
    let unfrozen = state.engine.unfreeze(&lease.uuid, &caller, &reason).await?;
    Ok(jsend::ok(lease_json(&unfrozen)))
}

/// POST /leases/{leaseId}/terminate: 200 with the terminated lease.
pub async fn terminate(
    state: web::Data<ApiState>,
    RequireManager(caller): RequireManager,
    lease_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let lease = visible_lease(&state, &lease_id, &caller).await?;
    let terminated = state.engine.terminate(&lease.uuid, &caller).await?;
    Ok(jsend::ok(lease_json(&terminated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoded_and_plain_ids_decode_alike() {
        let id = LeaseId {
            user_email: "ada+test@example.com".into(),
            uuid: "0b7c8e5e-2f7d-4c1e-9d59-3d4e5f6a7b8c".into(),
        };
        let encoded = id.encode();
        let url_encoded = encoded
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        assert_eq!(parse_lease_id(&encoded).unwrap(), id);
        assert_eq!(parse_lease_id(&url_encoded).unwrap(), id);
        assert!(parse_lease_id("not base64 at all").is_err());
    }
}
