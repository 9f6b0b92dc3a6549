//! The state stores behind `sandboxd_actors::ports::StateStore`: Redis (shared, scalable) and an
//! embedded redb file (the single-binary default). The in-memory store lives in the actors crate
//! testkit. `contract` is the one test suite all three must pass.

pub mod contract;
pub mod embedded;
pub mod redis;

pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;
