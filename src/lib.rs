//! sandboxd, the shell: configuration, the command line, the admin HTTP API, the store
//! adapters, the simulated AWS, and the daemon's wiring. The core lives in `sandboxd-actors`.

pub mod aws;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod http;
pub mod secret;
pub mod store;
pub mod telemetry;
