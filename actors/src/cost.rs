//! The cost supervisor: owns spend monitoring. Every sweep it asks the CostSource for the spend
//! of every monitored lease's account since the lease started, in one batched call, and hands
//! each lease its figure; the lease ends itself when it is over budget. (Thresholds, Cost
//! Explorer and cost reports come with their own issue.)

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{Lease, LeaseStatus};
use crate::engine::Shared;
use crate::entity;
use crate::lease_actor::LeaseCommand;
use crate::ports::{CostSource, IndexQuery, Kind};

pub struct CostSupervisor {
    shared: Arc<Shared>,
    costs: Arc<dyn CostSource>,
    sweeping: bool,
}

impl CostSupervisor {
    pub fn new(shared: Arc<Shared>, costs: Arc<dyn CostSource>) -> Self {
        Self {
            shared,
            costs,
            sweeping: false,
        }
    }
}

impl Actor for CostSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let interval = self.shared.settings.spend_sweep_interval;
        if interval <= chrono::Duration::zero() {
            return;
        }
        let every = self
            .shared
            .clock
            .real_duration(interval)
            .max(std::time::Duration::from_millis(50));
        context.run_interval(every, |actor, context| {
            if actor.sweeping {
                return;
            }
            actor.sweeping = true;
            let shared = actor.shared.clone();
            let costs = actor.costs.clone();
            context.spawn(
                sweep(shared, costs)
                    .into_actor(actor)
                    .map(|_, actor, _| actor.sweeping = false),
            );
        });
    }
}

async fn sweep(shared: Arc<Shared>, costs: Arc<dyn CostSource>) {
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for status in [LeaseStatus::Active, LeaseStatus::Frozen] {
        match shared
            .store
            .ids(IndexQuery::by_status(Kind::Lease, status.as_str()))
            .await
        {
            Ok(found) => ids.extend(found),
            Err(error) => {
                tracing::warn!(%error, "spend sweep could not list leases");
                return;
            }
        }
    }
    let leases: Vec<Lease> = match entity::load_many(&shared.store, &ids).await {
        Ok(leases) => leases,
        Err(error) => {
            tracing::warn!(%error, "spend sweep could not load leases");
            return;
        }
    };
    let accounts: Vec<(String, chrono::DateTime<chrono::Utc>)> = leases
        .iter()
        .filter_map(|lease| Some((lease.aws_account_id.clone()?, lease.start_date?)))
        .collect();
    if accounts.is_empty() {
        return;
    }
    let spend = match costs.spend_since(&accounts, shared.clock.now()).await {
        Ok(spend) => spend,
        Err(error) => {
            metrics::counter!("sandboxd_cost_source_errors_total").increment(1);
            tracing::warn!(%error, "spend sweep: cost source failed; will retry next sweep");
            return;
        }
    };
    let by_account: std::collections::HashMap<String, f64> = spend.into_iter().collect();
    for lease in leases {
        let Some(total) = lease
            .aws_account_id
            .as_ref()
            .and_then(|id| by_account.get(id))
            .copied()
        else {
            continue;
        };
        if let Ok(Some(actor)) = shared.lease_actor(&lease.uuid).await {
            if let Err(error) = actor.send(LeaseCommand::Spend { total }).await {
                tracing::warn!(%error, lease = %lease.uuid, "could not deliver spend");
            }
        }
    }
    metrics::histogram!("sandboxd_spend_sweep_seconds").record(started.elapsed().as_secs_f64());
}
