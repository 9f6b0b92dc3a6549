//! The timer wheel: looks at the durable timer set every tick and delivers each due timer to
//! the actor it targets. The actor consumes the timer in the same commit as its transition, so
//! a timer fires to effect at most once, and after a restart every timer still in the store
//! fires on the first tick.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;

use crate::account_actor::AccountCommand;
use crate::domain::{Target, Timer};
use crate::engine::{EngineError, Shared};
use crate::lease_actor::LeaseCommand;
use crate::ports::{Commit, StoreError, TimerRecord};

const BATCH: usize = 512;

pub struct TimerWheel {
    shared: Arc<Shared>,
    in_flight: HashSet<String>,
    polling: bool,
}

impl TimerWheel {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            in_flight: HashSet::new(),
            polling: false,
        }
    }

    fn tick(&mut self, context: &mut Context<Self>) {
        if self.polling {
            return;
        }
        self.polling = true;
        let store = self.shared.store.clone();
        let now_ms = self.shared.clock.now().timestamp_millis();
        context.spawn(
            async move { store.due_timers(now_ms, BATCH).await }
                .into_actor(self)
                .map(|due, actor, context| {
                    actor.polling = false;
                    let due = match due {
                        Ok(due) => due,
                        Err(error) => {
                            tracing::warn!(%error, "could not read due timers");
                            return;
                        }
                    };
                    for record in due {
                        if !actor.in_flight.insert(record.id.clone()) {
                            continue;
                        }
                        let shared = actor.shared.clone();
                        let id = record.id.clone();
                        context.spawn(deliver(shared, record).into_actor(actor).map(
                            move |_, actor, _| {
                                actor.in_flight.remove(&id);
                            },
                        ));
                    }
                }),
        );
    }
}

impl Actor for TimerWheel {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let tick = self.shared.settings.timer_tick;
        context.run_interval(tick, |actor, context| actor.tick(context));
    }
}

async fn deliver(shared: Arc<Shared>, record: TimerRecord) {
    let timer: Timer = match serde_json::from_str(&record.body) {
        Ok(timer) => timer,
        Err(error) => {
            tracing::error!(timer = %record.id, %error, body = %record.body, "timer does not decode; dropping it");
            metrics::counter!("sandboxd_timer_errors_total", "error" => "undecodable").increment(1);
            drop_timer(&shared, &record.id).await;
            return;
        }
    };
    let lateness = (shared.clock.now().timestamp_millis() - record.due_ms).max(0) as f64 / 1000.0;
    metrics::histogram!("sandboxd_timer_lateness_seconds").record(lateness);
    let delivered = match &timer.target {
        Target::Lease(uuid) => match shared.lease_actor(uuid).await {
            Ok(Some(actor)) => actor
                .send(LeaseCommand::Fire(timer.clone()))
                .await
                .map(|result| result.map(|_| ())),
            Ok(None) => Ok(Err(EngineError::NotFound(format!("live lease {uuid}")))),
            Err(error) => Ok(Err(error)),
        },
        Target::Account(id) => match shared.account_actor(id).await {
            Ok(Some(actor)) => actor
                .send(AccountCommand::Fire(timer.clone()))
                .await
                .map(|result| result.map(|_| ())),
            Ok(None) => Ok(Err(EngineError::NotFound(format!("live account {id}")))),
            Err(error) => Ok(Err(error)),
        },
    };
    match delivered {
        Ok(Ok(())) => metrics::counter!("sandboxd_timers_fired_total").increment(1),
        // Its entity has left the pool (terminal lease, ejected account): nothing to do.
        Ok(Err(EngineError::NotFound(what))) => {
            tracing::info!(timer = %timer.id, %what, "timer target gone; dropping the timer");
            drop_timer(&shared, &record.id).await;
        }
        // Left in the store: the next tick delivers it again.
        Ok(Err(error)) => {
            metrics::counter!("sandboxd_timer_errors_total", "error" => error.label()).increment(1);
            tracing::warn!(timer = %timer.id, %error, "timer delivery failed; will retry");
        }
        Err(error) => {
            tracing::warn!(timer = %timer.id, %error, "timer target unreachable; will retry")
        }
    }
}

async fn drop_timer(shared: &Shared, id: &str) {
    let commit = Commit {
        consume_timers: vec![id.to_string()],
        ..Commit::default()
    };
    match shared.store.commit(commit).await {
        Ok(()) | Err(StoreError::TimerGone(_)) => {}
        Err(error) => tracing::warn!(timer = %id, %error, "could not drop timer"),
    }
}
