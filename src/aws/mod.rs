//! AWS adapters: one module per service, each implementing a port of the core. Clients are
//! built from one SDK configuration (region, optional endpoint override for a local endpoint,
//! credentials from the SDK's default chain).

pub mod eventbridge;

use aws_config::{BehaviorVersion, Region};

use crate::config::AwsSettings;

pub async fn sdk_config(settings: &AwsSettings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()));
    if !settings.endpoint_url.is_empty() {
        loader = loader.endpoint_url(&settings.endpoint_url);
    }
    loader.load().await
}
