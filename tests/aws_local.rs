//! Against the local AWS endpoint (moto's server, started by deploy/local/up through
//! scripts/test): the outbox's EventBridge sink over real HTTP with the AWS SDK for Rust.
//!
//! Each test makes its own event bus, rule and queue (unique names), so tests never read each
//! other's events. Needs SANDBOXD_TEST_AWS_ENDPOINT (scripts/test sets it); without it the tests
//! say so and pass.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sandboxd::config::AwsSettings;
use sandboxd_actors::domain::{Event, EventRecord, LeaseId};
use sandboxd_actors::ports::EventBus;
use serde_json::{json, Value};

fn endpoint() -> Option<String> {
    match std::env::var("SANDBOXD_TEST_AWS_ENDPOINT") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SANDBOXD_TEST_AWS_ENDPOINT is not set: skipping (scripts/test sets it)");
            None
        }
    }
}

fn local_credentials() {
    // moto accepts any credentials; the SDK's default chain reads these.
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
}

async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    local_credentials();
    sandboxd::aws::sdk_config(&AwsSettings {
        mode: sandboxd::config::AwsMode::Simulated,
        region: "us-east-1".into(),
        endpoint_url: endpoint.to_string(),
    })
    .await
}

/// A bus of its own, with a rule sending every event from `source` to a queue of its own.
struct Wiring {
    bus: String,
    queue_url: String,
    sqs: aws_sdk_sqs::Client,
}

async fn wire(config: &aws_config::SdkConfig, source: &str) -> Wiring {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let bus = format!("sandboxd-test-{unique}");
    let events = aws_sdk_eventbridge::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .expect("create_event_bus");
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("sandboxd-test-{unique}"))
        .send()
        .await
        .expect("create_queue")
        .queue_url
        .expect("queue url");
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("get_queue_attributes");
    let queue_arn = attributes
        .attributes()
        .and_then(|map| map.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .expect("queue arn")
        .clone();
    events
        .put_rule()
        .name("to-test-queue")
        .event_bus_name(&bus)
        .event_pattern(json!({"source": [source]}).to_string())
        .send()
        .await
        .expect("put_rule");
    events
        .put_targets()
        .rule("to-test-queue")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("put_targets");
    Wiring {
        bus,
        queue_url,
        sqs,
    }
}

impl Wiring {
    /// Receive (and delete) EventBridge envelopes until `done` says so or the time is up.
    async fn receive_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut envelopes = Vec::new();
        while Instant::now() < deadline && !done(&envelopes) {
            let output = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive_message");
            for message in output.messages() {
                let body: Value = serde_json::from_str(message.body().unwrap_or("null")).unwrap();
                envelopes.push(body);
                if let Some(handle) = message.receipt_handle() {
                    let _ = self
                        .sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await;
                }
            }
        }
        envelopes
    }
}

#[tokio::test]
async fn the_eventbridge_sink_delivers_every_entry_in_calls_of_ten() {
    let Some(endpoint) = endpoint() else { return };
    let config = sdk(&endpoint).await;
    let source = format!("sandboxd-test-{}", uuid::Uuid::new_v4().simple());
    let wiring = wire(&config, &source).await;
    let bus = sandboxd::aws::eventbridge::EventBridgeBus::new(&config, &wiring.bus, &source);
    let records: Vec<EventRecord> = (0..23)
        .map(|index| {
            let event = Event::LeaseFrozen {
                lease_id: LeaseId {
                    user_email: format!("user{index}@example.gov.uk"),
                    uuid: format!("lease-{index}"),
                },
                account_id: "123456789012".into(),
                reason: "test".into(),
            };
            EventRecord::new(&event, chrono::Utc::now())
        })
        .collect();
    let results = bus.publish(&records).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let wanted: HashSet<String> = records.iter().map(|record| record.id.clone()).collect();
    let envelopes = wiring
        .receive_until(Duration::from_secs(20), |seen| {
            seen.iter()
                .filter_map(|envelope| envelope["detail"]["eventId"].as_str())
                .collect::<HashSet<_>>()
                .len()
                >= wanted.len()
        })
        .await;
    let mut seen = HashSet::new();
    for envelope in &envelopes {
        assert_eq!(envelope["source"], source.as_str());
        assert_eq!(envelope["detail-type"], "LeaseFrozen");
        assert_eq!(envelope["detail"]["schemaVersion"], 1);
        assert_eq!(envelope["detail"]["accountId"], "123456789012");
        let decoded =
            Event::decode("LeaseFrozen", &envelope["detail"]).expect("the detail decodes");
        assert!(matches!(decoded, Event::LeaseFrozen { .. }));
        seen.insert(envelope["detail"]["eventId"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, wanted, "every entry arrived exactly as published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_publishes_its_lifecycle_events_to_eventbridge() {
    let Some(endpoint) = endpoint() else { return };
    let config = sdk(&endpoint).await;
    let source = format!("sandboxd-e2e-{}", uuid::Uuid::new_v4().simple());
    let wiring = wire(&config, &source).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[aws]\nendpoint_url = \"{endpoint}\"\n[events]\nsink = \"eventbridge\"\nbus_name = \"{}\"\nsource = \"{source}\"\n",
        wiring.bus
    );
    let (config_path, base) = support::write_config(dir.path(), "embedded", "unused", 2, &extra);
    let mut daemon = support::Daemon::new(config_path.clone(), base.clone());
    daemon.start().await;
    let admin = support::Api::new(
        &base,
        support::token(&config_path, "admin@example.gov.uk", "Admin"),
    );
    admin.wait_available(2).await;
    let (status, template) = admin
        .post(
            "/leaseTemplates",
            json!({"name": "Auto", "maxSpend": 50, "leaseDurationInHours": 24}),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let (status, lease) = admin
        .post("/leases", json!({"leaseTemplateUuid": template["data"]["uuid"], "userEmail": "user@example.gov.uk"}))
        .await;
    assert_eq!(status, 201, "{lease}");
    let id = support::urlencode(lease["data"]["leaseId"].as_str().unwrap());
    for action in ["freeze", "unfreeze", "terminate"] {
        let (status, body) = admin
            .post(&format!("/leases/{id}/{action}"), json!({}))
            .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    let wanted = [
        "CleanAccountRequest",
        "AccountCleanupSucceeded",
        "LeaseRequested",
        "LeaseApproved",
        "LeaseFrozen",
        "LeaseUnfrozen",
        "LeaseTerminated",
    ];
    let envelopes = wiring
        .receive_until(Duration::from_secs(30), |seen| {
            let types: HashSet<&str> = seen
                .iter()
                .filter_map(|envelope| envelope["detail-type"].as_str())
                .collect();
            wanted.iter().all(|wanted| types.contains(wanted))
                && seen
                    .iter()
                    .filter(|envelope| envelope["detail"]["reason"] == "LEASE_TERMINATION")
                    .count()
                    == 1
        })
        .await;
    let types: HashSet<&str> = envelopes
        .iter()
        .filter_map(|envelope| envelope["detail-type"].as_str())
        .collect();
    for wanted in wanted {
        assert!(
            types.contains(wanted),
            "{wanted} not published; got {types:?}"
        );
    }
    let approved = envelopes
        .iter()
        .find(|envelope| envelope["detail-type"] == "LeaseApproved")
        .unwrap();
    assert_eq!(
        approved["detail"]["leaseId"]["userEmail"],
        "user@example.gov.uk"
    );
    assert_eq!(approved["detail"]["approvedBy"], "admin@example.gov.uk");
    // No entry was published twice.
    let ids: Vec<&str> = envelopes
        .iter()
        .filter_map(|envelope| envelope["detail"]["eventId"].as_str())
        .collect();
    let unique: HashSet<&&str> = ids.iter().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "an outbox entry was published twice"
    );
    assert!(daemon.terminate().success());
}
