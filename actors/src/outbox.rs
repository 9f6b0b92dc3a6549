//! The outbox drainer: publishes what transitions wrote to the outbox, in order, and removes an
//! entry only once the bus accepted it. A crash before the removal means a second publish of
//! the same entry id, which consumers de-duplicate.

use std::sync::Arc;

use actix::prelude::*;

use crate::engine::{EngineError, Shared};
use crate::ports::EventBus;

const BATCH: usize = 100;
const BACKOFF_BASE: std::time::Duration = std::time::Duration::from_millis(100);
const BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(30);

/// What one drain did.
pub struct Drained {
    pub published: usize,
    /// Entries the bus refused this time (left in the outbox).
    pub failed: usize,
}

pub struct OutboxDrainer {
    shared: Arc<Shared>,
    bus: Arc<dyn EventBus>,
    draining: bool,
    /// Held by whoever drains (the tick or a Flush), so an entry is never published twice at
    /// once.
    exclusive: Arc<tokio::sync::Mutex<()>>,
    /// Consecutive drains that left entries unpublished, and when to try again: a failing bus
    /// is retried with capped exponential backoff, not every tick.
    failures: u32,
    resume_at: Option<std::time::Instant>,
}

impl OutboxDrainer {
    pub fn new(shared: Arc<Shared>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            shared,
            bus,
            draining: false,
            exclusive: Arc::default(),
            failures: 0,
            resume_at: None,
        }
    }
}

impl Actor for OutboxDrainer {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let tick = self.shared.settings.outbox_tick;
        context.run_interval(tick, |actor, context| {
            if actor.draining
                || actor
                    .resume_at
                    .is_some_and(|at| std::time::Instant::now() < at)
            {
                return;
            }
            actor.draining = true;
            let shared = actor.shared.clone();
            let bus = actor.bus.clone();
            let exclusive = actor.exclusive.clone();
            context.spawn(
                async move {
                    let _guard = exclusive.lock().await;
                    drain(&shared, bus.as_ref()).await
                }
                .into_actor(actor)
                .map(|result, actor, _| {
                    actor.draining = false;
                    let failed = match result {
                        Ok(drained) => drained.failed > 0,
                        Err(error) => {
                            tracing::warn!(%error, "outbox drain failed; will retry");
                            true
                        }
                    };
                    if failed {
                        actor.failures = actor.failures.saturating_add(1);
                        let delay = (BACKOFF_BASE * 2u32.saturating_pow(actor.failures.min(16)))
                            .min(BACKOFF_CAP);
                        actor.resume_at = Some(std::time::Instant::now() + delay);
                    } else {
                        actor.failures = 0;
                        actor.resume_at = None;
                    }
                }),
            );
        });
    }
}

/// Publish everything now; answers how many entries were published.
#[derive(Message)]
#[rtype(result = "Result<usize, EngineError>")]
pub struct Flush;

impl Handler<Flush> for OutboxDrainer {
    type Result = ResponseFuture<Result<usize, EngineError>>;

    fn handle(&mut self, _message: Flush, _context: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let bus = self.bus.clone();
        let exclusive = self.exclusive.clone();
        Box::pin(async move {
            let _guard = exclusive.lock().await;
            drain(&shared, bus.as_ref())
                .await
                .map(|drained| drained.published)
        })
    }
}

async fn drain(shared: &Shared, bus: &dyn EventBus) -> Result<Drained, EngineError> {
    let mut published = 0;
    let mut refused = 0;
    loop {
        let batch = shared.store.outbox(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        let results = bus.publish(&batch).await;
        let accepted: Vec<String> = batch
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(record, _)| record.id.clone())
            .collect();
        let failed = batch.len() - accepted.len();
        shared.store.ack_outbox(&accepted).await?;
        published += accepted.len();
        metrics::counter!("sandboxd_events_published_total").increment(accepted.len() as u64);
        if failed > 0 {
            refused += failed;
            if let Some((record, Err(reason))) = batch
                .iter()
                .zip(&results)
                .find(|(_, result)| result.is_err())
            {
                tracing::warn!(event_id = %record.id, %reason, failed, "the bus refused events; they stay in the outbox");
            }
            metrics::counter!("sandboxd_event_publish_failures_total").increment(failed as u64);
            // Leave the rest for the next tick rather than spin on a failing bus.
            break;
        }
        if batch.len() < BATCH {
            break;
        }
    }
    if let Ok(length) = shared.store.outbox_len().await {
        metrics::gauge!("sandboxd_outbox_length").set(length as f64);
    }
    // Lag: how long the oldest unpublished event has waited.
    let lag = match shared.store.outbox(1).await {
        Ok(oldest) => oldest.first().map_or(0.0, |record| {
            (shared.clock.now() - record.time).num_milliseconds().max(0) as f64 / 1000.0
        }),
        Err(_) => 0.0,
    };
    metrics::gauge!("sandboxd_outbox_lag_seconds").set(lag);
    Ok(Drained {
        published,
        failed: refused,
    })
}
