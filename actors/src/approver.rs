//! The approver supervisor: owns the request-to-decision flow. In this issue it validates the
//! request (template, target user, per-user limit) and approves per the template's
//! requiresApproval, or holds the lease for review. Requests for one user are decided one at a
//! time so the per-user limit holds; different users proceed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::domain::lease::{LeaseRequest, AUTO_APPROVED};
use crate::domain::{Caller, Lease, LeaseTemplate, Step, Visibility};
use crate::engine::{EngineError, Shared};
use crate::entity::{self, commit_of};
use crate::pool::{AdoptNewLease, Allocate};
use crate::ports::{IndexQuery, Kind};

/// How long a cached template is trusted. Edits through this daemon invalidate it at once;
/// the bound only matters for edits made by another replica.
const TEMPLATE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

type TemplateCache = Arc<Mutex<HashMap<String, (std::time::Instant, LeaseTemplate)>>>;

pub struct ApproverSupervisor {
    shared: Arc<Shared>,
    user_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    templates: TemplateCache,
}

impl ApproverSupervisor {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            user_locks: Arc::default(),
            templates: Arc::default(),
        }
    }
}

/// A template changed or was deleted: drop it from the cache.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetTemplate(pub String);

impl Handler<ForgetTemplate> for ApproverSupervisor {
    type Result = ();

    fn handle(&mut self, message: ForgetTemplate, _context: &mut Self::Context) {
        self.templates
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&message.0);
    }
}

async fn template(
    shared: &Shared,
    cache: &TemplateCache,
    uuid: &str,
) -> Result<Option<LeaseTemplate>, EngineError> {
    let cached = cache
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(uuid)
        .filter(|(loaded, _)| loaded.elapsed() < TEMPLATE_CACHE_TTL)
        .map(|(_, template)| template.clone());
    if cached.is_some() {
        return Ok(cached);
    }
    let loaded = entity::load::<LeaseTemplate>(&shared.store, uuid).await?;
    if let Some(template) = &loaded {
        cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(
                uuid.to_string(),
                (std::time::Instant::now(), template.clone()),
            );
    }
    Ok(loaded)
}

impl Actor for ApproverSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        context.set_mailbox_capacity(1024);
    }
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Lease, EngineError>")]
pub struct RequestLease {
    pub template_uuid: String,
    pub caller: Caller,
    /// Set by a Manager or Admin assigning the lease to someone (auto-approved).
    pub user_email: Option<String>,
    pub comments: Option<String>,
}

impl Handler<RequestLease> for ApproverSupervisor {
    type Result = ResponseFuture<Result<Lease, EngineError>>;

    fn handle(&mut self, request: RequestLease, _context: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let locks = self.user_locks.clone();
        let templates = self.templates.clone();
        Box::pin(async move {
            let target = request
                .user_email
                .clone()
                .unwrap_or_else(|| request.caller.email.clone());
            let lock = {
                let mut table = locks.lock().unwrap_or_else(|poison| poison.into_inner());
                table.entry(target.clone()).or_default().clone()
            };
            let decided = {
                let _guard = lock.lock().await;
                decide(&shared, &templates, request, &target).await
            };
            {
                let mut table = locks.lock().unwrap_or_else(|poison| poison.into_inner());
                if table
                    .get(&target)
                    .is_some_and(|entry| Arc::strong_count(entry) <= 2)
                {
                    table.remove(&target);
                }
            }
            let outcome = match &decided {
                Ok(lease) => lease.status.as_str(),
                Err(error) => error.label(),
            };
            metrics::counter!("sandboxd_lease_decisions_total", "outcome" => outcome).increment(1);
            decided
        })
    }
}

async fn decide(
    shared: &Shared,
    templates: &TemplateCache,
    request: RequestLease,
    target: &str,
) -> Result<Lease, EngineError> {
    let template = template(shared, templates, &request.template_uuid)
        .await?
        .filter(|template| template.visibility == Visibility::Public || request.caller.is_manager())
        .ok_or_else(|| {
            EngineError::NotFound(format!("lease template {}", request.template_uuid))
        })?;
    let assigning = request.user_email.is_some();
    if target != request.caller.email && !request.caller.is_manager() {
        return Err(EngineError::Forbidden(
            "only a Manager or Admin can request a lease for another user".into(),
        ));
    }
    let limit = shared.config.leases.max_leases_per_user;
    let ids = shared
        .store
        .ids(IndexQuery::by_user(Kind::Lease, target))
        .await?;
    let live = entity::load_many::<Lease>(&shared.store, &ids)
        .await?
        .iter()
        .filter(|lease| lease.status.counts_toward_limit())
        .count();
    if live >= limit as usize {
        return Err(EngineError::Conflict(format!(
            "{target} already has {live} leases; the maximum per user is {limit}"
        )));
    }
    let now = shared.clock.now();
    let lease = Lease::requested(
        LeaseRequest {
            uuid: uuid::Uuid::new_v4().to_string(),
            user_email: target.to_string(),
            comments: request.comments,
            created_by: request.caller.email.clone(),
        },
        &template,
        now,
    )?;
    let auto_approved = assigning && request.caller.is_manager();
    if template.requires_approval && !auto_approved {
        let step = Step::new(lease.clone()).publish(lease.requested_event(true));
        shared.store.commit(commit_of(None, &step, now)).await?;
        shared.pool.do_send(AdoptNewLease(lease.clone()));
        return Ok(lease);
    }
    let approved_by = if auto_approved {
        request.caller.email.clone()
    } else {
        AUTO_APPROVED.to_string()
    };
    let requested_event = lease.requested_event(false);
    for _attempt in 0..5 {
        let allocation = shared
            .pool
            .send(Allocate {
                lease: lease.clone(),
                stored_version: 0,
                approved_by: approved_by.clone(),
                pre_events: vec![requested_event.clone()],
            })
            .await?;
        match allocation {
            Err(EngineError::Stale(_)) => continue,
            other => return other,
        }
    }
    Err(EngineError::Conflict("the pool is busy; try again".into()))
}
