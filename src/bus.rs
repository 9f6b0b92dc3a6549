//! The embedded mode's event bus: every published event is one structured log line.

use async_trait::async_trait;
use sandboxd_actors::domain::EventRecord;
use sandboxd_actors::ports::EventBus;

#[derive(Debug, Default)]
pub struct LogBus;

#[async_trait]
impl EventBus for LogBus {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>> {
        for record in events {
            tracing::info!(
                target: "sandboxd::events",
                event_id = %record.id,
                detail_type = %record.detail_type,
                time = %record.time.to_rfc3339(),
                detail = %record.detail,
                "event"
            );
        }
        events.iter().map(|_| Ok(())).collect()
    }
}
