//! In-memory fakes of every port, for tests and the simulator (feature "testkit").

pub mod clock;
pub mod memory_store;
pub mod sim;

pub use clock::ManualClock;
pub use memory_store::MemoryStore;
