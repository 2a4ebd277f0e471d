//! The farm's shared state, each part behind one small trait with one module per backend:
//! the task queue (leases, retries, priorities), the job book (job records, their changes
//! and a stream of updates) and the worker registry (heartbeats, drain requests). The
//! in-memory backends serve the embedded single-process farm, the Redis ones a distributed farm.

pub mod book;
pub mod job;
pub mod memory;
pub use memory::{MemoryJobBook, MemoryQueue, MemoryWorkerRegistry, now_ms};
pub mod redis;
pub use redis::{RedisJobBook, RedisNamespace, RedisQueue, RedisTls, RedisWorkerRegistry};
pub mod task;
pub mod workers;

#[cfg(test)]
#[path = "../../../tests/support/pki.rs"]
mod test_pki;

pub use book::{JobBook, JobUpdate, Page, update_and_count};
pub use job::{ChunkStatus, ClipInfo, Control, JobChange, JobRecord, JobState, Stage, UpdateDetail};
pub use task::{Lease, Queue, Task, TaskKind};
pub use workers::{WorkerInfo, WorkerRegistry, WorkerState};

/// The farm's shared state, as coordinators and workers hold it.
#[derive(Clone)]
pub struct FarmState {
    pub queue: std::sync::Arc<dyn Queue>,
    pub book: std::sync::Arc<dyn JobBook>,
    pub registry: std::sync::Arc<dyn WorkerRegistry>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("no live worker named {0}")]
    WorkerNotFound(String),
    /// The change does not apply to the job in its present state (cancel of a finished job).
    #[error("{0}")]
    Precondition(String),
    #[error("queue backend: {0}")]
    Backend(String),
    /// A stored job record this version cannot read, though well-formed: most likely a newer
    /// version's, stored during a rolling upgrade.
    #[error("{0}")]
    Incompatible(String),
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod flaky;
