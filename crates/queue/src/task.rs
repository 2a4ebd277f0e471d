//! Units of work and the queue that hands them to workers under leases.

use crate::QueueError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use vidfarm_api::Priority;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskKind {
    /// Denoise one chunk and store its latents.
    Denoise { chunk: u32 },
    /// Sync mode: fuse one chunk's overlaps with its neighbours' after step `step` (none before
    /// step 0), take denoising step `step` and publish the result.
    SyncStep { chunk: u32, step: u32 },
    /// Stitch the chunks' latents, decode, encode the MP4 and store it.
    Assemble,
}

impl TaskKind {
    /// The kind's name, without its chunk and step (a metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Denoise { .. } => "denoise",
            Self::SyncStep { .. } => "sync_step",
            Self::Assemble => "assemble",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub job_id: String,
    pub kind: TaskKind,
    pub priority: Priority,
    /// Deliveries so far, this one included once leased.
    pub attempt: u32,
}

impl Task {
    pub fn new(job_id: &str, kind: TaskKind, priority: Priority) -> Self {
        Self { job_id: job_id.to_string(), kind, priority, attempt: 0 }
    }

    /// Deterministic per job and kind, so pushing the same work twice queues it once.
    pub fn id(&self) -> String {
        match self.kind {
            TaskKind::Denoise { chunk } => format!("{}/denoise/{chunk}", self.job_id),
            TaskKind::SyncStep { chunk, step } => format!("{}/sync/{chunk}/{step}", self.job_id),
            TaskKind::Assemble => format!("{}/assemble", self.job_id),
        }
    }
}

/// A task held by one worker until `ack`, `retry` or the lease running out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub task: Task,
    pub worker: String,
    /// Grows with every delivery of the task: a stale holder's calls are refused.
    pub token: u64,
}

/// The task queue. At-least-once: a task whose lease runs out goes back to the queue, so
/// results must be written idempotently (they are: deterministic keys, done-once chunks).
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Queues a task, unless one with the same id is already queued or leased.
    async fn push(&self, task: Task) -> Result<(), QueueError>;
    /// Leases the most urgent ready task (priority, then arrival), waiting up to `wait`.
    async fn pull(&self, worker: &str, lease_for: Duration, wait: Duration) -> Result<Option<Lease>, QueueError>;
    /// Extends a lease. `false` when it was lost (expired and handed to someone else).
    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, QueueError>;
    /// Finishes a task. `false` when the lease was lost: the caller's result may be stale.
    async fn ack(&self, lease: &Lease) -> Result<bool, QueueError>;
    /// Hands a task back, ready again after `delay`.
    async fn retry(&self, lease: &Lease, delay: Duration) -> Result<bool, QueueError>;
    /// Drops every queued task of a job (leased ones end when their holders look).
    async fn discard_job(&self, job_id: &str) -> Result<usize, QueueError>;
    /// Tasks queued or leased.
    async fn depth(&self) -> Result<usize, QueueError>;
}
