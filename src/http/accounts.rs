//! /accounts (Admin only): list, register, read, retry cleanup, eject, quarantine, and the
//! accounts waiting in the Entry OU.

use std::collections::{HashMap, HashSet};

use actix_web::{web, HttpResponse};
use sandboxd_actors::domain::{Account, AccountStatus};
use sandboxd_actors::ports::{EntryAccount, IndexQuery, Kind};
use serde::Deserialize;

use super::auth::RequireAdmin;
use super::jsend::{self, ApiError};
use super::pagination::{paginate, PageQuery, PageRequest};
use super::ApiState;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountListQuery {
    pub status: Option<String>,
    pub page_identifier: Option<String>,
    pub page_size: Option<String>,
}

/// GET /accounts[?status][&pageIdentifier][&pageSize]
pub async fn list(
    state: web::Data<ApiState>,
    RequireAdmin(_caller): RequireAdmin,
    query: web::Query<AccountListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = PageRequest::parse(&PageQuery {
        page_identifier: query.page_identifier.clone(),
        page_size: query.page_size.clone(),
    })?;
    let status = match query
        .status
        .as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
    {
        None => None,
        Some(text) => Some(AccountStatus::parse(text).ok_or_else(|| {
            ApiError::invalid("status", format!("unknown account status '{text}'"))
        })?),
    };
    let ids = state
        .engine
        .ids(IndexQuery {
            kind: Kind::Account,
            status: status.map(|status| status.as_str().to_string()),
            user: None,
        })
        .await?;
    let engine = &state.engine;
    let listed = paginate(
        ids,
        &page,
        |chunk| async move { engine.accounts_of(&chunk).await },
        |_| true,
        |account: &Account| account.aws_account_id.clone(),
    )
    .await?;
    Ok(jsend::ok(listed))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterBody {
    pub aws_account_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// POST /accounts {awsAccountId, name?, email?}: 201 with the account (in CleanUp; it is
/// Available once cleaned).
pub async fn register(
    state: web::Data<ApiState>,
    RequireAdmin(caller): RequireAdmin,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let account = state
        .engine
        .register_account(body.aws_account_id.trim(), body.name, body.email, &caller)
        .await?;
    Ok(jsend::created(account))
}

/// GET /accounts/{awsAccountId}
pub async fn get(
    state: web::Data<ApiState>,
    RequireAdmin(_caller): RequireAdmin,
    account_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = state
        .engine
        .get_account(&account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("account not found".into()))?;
    Ok(jsend::ok(account))
}

/// POST /accounts/{awsAccountId}/retryCleanup: Quarantine or CleanUp only, else 409.
pub async fn retry_cleanup(
    state: web::Data<ApiState>,
    RequireAdmin(caller): RequireAdmin,
    account_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = state.engine.retry_cleanup(&account_id, &caller).await?;
    Ok(jsend::ok(account))
}

/// POST /accounts/{awsAccountId}/eject: 409 while in CleanUp.
pub async fn eject(
    state: web::Data<ApiState>,
    RequireAdmin(caller): RequireAdmin,
    account_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = state.engine.eject(&account_id, &caller).await?;
    Ok(jsend::ok(account))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineBody {
    pub reason: String,
}

/// POST /accounts/{awsAccountId}/quarantine {reason} (ISB issue #85).
pub async fn quarantine(
    state: web::Data<ApiState>,
    RequireAdmin(caller): RequireAdmin,
    account_id: web::Path<String>,
    body: web::Json<QuarantineBody>,
) -> Result<HttpResponse, ApiError> {
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::invalid("reason", "reason must not be empty"));
    }
    let account = state
        .engine
        .quarantine(&account_id, reason, &caller)
        .await?;
    Ok(jsend::ok(account))
}

/// GET /accounts/unregistered: the Entry OU minus accounts already in the pool.
pub async fn unregistered(
    state: web::Data<ApiState>,
    RequireAdmin(_caller): RequireAdmin,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = PageRequest::parse(&query)?;
    let entries =
        state
            .directory
            .entry_accounts()
            .await
            .map_err(|detail| ApiError::Unavailable {
                public: "the account directory is unavailable; try again".into(),
                detail,
            })?;
    let entry_ids: Vec<String> = entries
        .iter()
        .map(|entry| entry.aws_account_id.clone())
        .collect();
    let in_pool: HashSet<String> = state
        .engine
        .accounts_of(&entry_ids)
        .await?
        .into_iter()
        .filter(|account| account.status.is_live())
        .map(|account| account.aws_account_id)
        .collect();
    let waiting: HashMap<String, EntryAccount> = entries
        .into_iter()
        .filter(|entry| !in_pool.contains(&entry.aws_account_id))
        .map(|entry| (entry.aws_account_id.clone(), entry))
        .collect();
    let ids: Vec<String> = waiting.keys().cloned().collect();
    let waiting = &waiting;
    let listed = paginate(
        ids,
        &page,
        |chunk| async move {
            Ok::<_, ApiError>(
                chunk
                    .iter()
                    .filter_map(|id| waiting.get(id).cloned())
                    .collect::<Vec<EntryAccount>>(),
            )
        },
        |_| true,
        |entry: &EntryAccount| entry.aws_account_id.clone(),
    )
    .await?;
    Ok(jsend::ok(listed))
}
