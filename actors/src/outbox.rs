//! The outbox drainer: publishes what transitions wrote to the outbox, in order, and removes an
//! entry only once the bus accepted it. A crash before the removal means a second publish of
//! the same entry id, which consumers de-duplicate.

use std::sync::Arc;

use actix::prelude::*;

use crate::engine::{EngineError, Shared};
use crate::ports::EventBus;

const BATCH: usize = 100;

pub struct OutboxDrainer {
    shared: Arc<Shared>,
    bus: Arc<dyn EventBus>,
    draining: bool,
    /// Held by whoever drains (the tick or a Flush), so an entry is never published twice at
    /// once.
    exclusive: Arc<tokio::sync::Mutex<()>>,
}

impl OutboxDrainer {
    pub fn new(shared: Arc<Shared>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            shared,
            bus,
            draining: false,
            exclusive: Arc::default(),
        }
    }
}

impl Actor for OutboxDrainer {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let tick = self.shared.settings.outbox_tick;
        context.run_interval(tick, |actor, context| {
            if actor.draining {
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
                    if let Err(error) = result {
                        tracing::warn!(%error, "outbox drain failed; will retry");
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
            drain(&shared, bus.as_ref()).await
        })
    }
}

async fn drain(shared: &Shared, bus: &dyn EventBus) -> Result<usize, EngineError> {
    let mut published = 0;
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
    Ok(published)
}
