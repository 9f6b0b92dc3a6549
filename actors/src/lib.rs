//! sandboxd-actors: the core of sandboxd.
//!
//! `domain` is pure (state, input, now) -> (state, effects) code; `ports` are the traits the shell
//! implements (store, event bus, cleanup runner, clock); the actor modules wire them together on
//! actix. Nothing here talks to AWS, Redis or HTTP directly: Cargo enforces that split.

pub mod domain;
pub mod ports;

pub mod account_actor;
pub mod approver;
pub mod cleanup;
pub mod cost;
pub mod engine;
pub mod entity;
pub mod lease_actor;
pub mod outbox;
pub mod pool;
pub mod timers;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use engine::{Engine, EngineError};
