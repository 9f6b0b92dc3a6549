//! The outbox drainer against a bus that refuses some entries: only accepted entries leave the
//! outbox, refused ones are retried (with backoff) until accepted, and nothing is published
//! twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sandboxd_actors::domain::{AccountStatus, Caller, EventRecord, GlobalConfig};
use sandboxd_actors::engine::{Deps, EngineSettings};
use sandboxd_actors::ports::{EventBus, StateStore, SystemClock};
use sandboxd_actors::testkit::sim::{SimCleanupRunner, SimCostSource};
use sandboxd_actors::testkit::MemoryStore;
use sandboxd_actors::Engine;

/// Refuses every entry of `refused_type` for the first `refusals` attempts at it.
struct RefusingBus {
    refused_type: &'static str,
    refusals: usize,
    attempts: Mutex<HashMap<String, usize>>,
    accepted: Mutex<Vec<EventRecord>>,
}

#[async_trait]
impl EventBus for RefusingBus {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>> {
        let mut attempts = self.attempts.lock().unwrap();
        let mut accepted = self.accepted.lock().unwrap();
        events
            .iter()
            .map(|record| {
                let tries = attempts.entry(record.id.clone()).or_default();
                *tries += 1;
                if record.detail_type == self.refused_type && *tries <= self.refusals {
                    return Err("ThrottlingException: slow down".into());
                }
                accepted.push(record.clone());
                Ok(())
            })
            .collect()
    }
}

#[actix_rt::test]
async fn refused_entries_stay_in_the_outbox_and_are_retried_until_accepted() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(SystemClock);
    let bus = Arc::new(RefusingBus {
        refused_type: "CleanAccountRequest",
        refusals: 3,
        attempts: Mutex::default(),
        accepted: Mutex::default(),
    });
    let mut config = GlobalConfig {
        maintenance_mode: false,
        ..GlobalConfig::default()
    };
    config.cleanup.wait_before_rerun_successful_attempt_seconds = 0;
    let settings = EngineSettings {
        timer_tick: Duration::from_millis(10),
        outbox_tick: Duration::from_millis(10),
        spend_sweep_interval: chrono::Duration::zero(),
        cleanup_poll_interval: chrono::Duration::milliseconds(10),
        ..EngineSettings::default()
    };
    let engine = Engine::start(Deps {
        store: store.clone() as Arc<dyn StateStore>,
        clock: clock.clone(),
        config: Arc::new(config),
        bus: bus.clone(),
        runner: Arc::new(SimCleanupRunner::new(clock, chrono::Duration::zero(), 0.0)),
        costs: Arc::new(SimCostSource {
            dollars_per_hour: 0.0,
        }),
        settings,
    })
    .await
    .unwrap();
    engine
        .register_account("100000000001", None, None, &Caller::system())
        .await
        .unwrap();

    // Backoff after each refusal is 200 ms, 400 ms, 800 ms: all delivered within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let account = engine.get_account("100000000001").await.unwrap().unwrap();
        let published: Vec<String> = bus
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|record| record.detail_type.clone())
            .collect();
        if account.status == AccountStatus::Available
            && published.contains(&"CleanAccountRequest".to_string())
            && published.contains(&"AccountCleanupSucceeded".to_string())
            && store.outbox_len().await.unwrap() == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all events published: {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = bus.accepted.lock().unwrap().clone();
    let attempts = bus.attempts.lock().unwrap().clone();
    let request = accepted
        .iter()
        .find(|record| record.detail_type == "CleanAccountRequest")
        .unwrap();
    assert_eq!(
        attempts[&request.id], 4,
        "refused three times, accepted on the fourth"
    );
    let mut ids: Vec<&String> = accepted.iter().map(|record| &record.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), accepted.len(), "no entry was published twice");
    // Events that were never refused went out once each, without waiting for the refused one.
    let succeeded = accepted
        .iter()
        .find(|record| record.detail_type == "AccountCleanupSucceeded")
        .unwrap();
    assert_eq!(attempts[&succeeded.id], 1);
}
