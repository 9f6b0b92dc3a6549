//! The outbox's EventBridge sink: PutEvents, at most 10 entries a call, with a result per
//! entry so the drainer removes only what EventBridge accepted and retries the rest.

use async_trait::async_trait;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use sandboxd_actors::domain::EventRecord;
use sandboxd_actors::ports::EventBus;

/// PutEvents takes at most 10 entries.
const ENTRIES_PER_CALL: usize = 10;

pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus_name: String,
    source: String,
}

impl EventBridgeBus {
    pub fn new(config: &aws_config::SdkConfig, bus_name: &str, source: &str) -> Self {
        Self {
            client: aws_sdk_eventbridge::Client::new(config),
            bus_name: bus_name.to_string(),
            source: source.to_string(),
        }
    }

    fn entry(&self, record: &EventRecord) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(&self.source)
            .detail_type(&record.detail_type)
            .detail(record.detail.to_string())
            .time(DateTime::from_millis(record.time.timestamp_millis()))
            .build()
    }

    async fn put(&self, chunk: &[EventRecord]) -> Vec<Result<(), String>> {
        let entries: Vec<PutEventsRequestEntry> =
            chunk.iter().map(|record| self.entry(record)).collect();
        let output = match self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                let message = aws_sdk_eventbridge::error::DisplayErrorContext(&error).to_string();
                metrics::counter!("sandboxd_eventbridge_calls_total", "outcome" => "error")
                    .increment(1);
                return chunk.iter().map(|_| Err(message.clone())).collect();
            }
        };
        metrics::counter!("sandboxd_eventbridge_calls_total", "outcome" => "ok").increment(1);
        let results = output.entries();
        chunk
            .iter()
            .enumerate()
            .map(|(index, _)| match results.get(index) {
                Some(result) if result.error_code().is_none() && result.event_id().is_some() => {
                    Ok(())
                }
                Some(result) => Err(format!(
                    "{}: {}",
                    result.error_code().unwrap_or("no event id"),
                    result.error_message().unwrap_or("")
                )),
                None => Err("PutEvents returned fewer results than entries".into()),
            })
            .collect()
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>> {
        let mut results = Vec::with_capacity(events.len());
        for chunk in events.chunks(ENTRIES_PER_CALL) {
            results.extend(self.put(chunk).await);
        }
        results
    }
}
