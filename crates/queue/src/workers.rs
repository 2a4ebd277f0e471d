//! The worker registry: each worker's heartbeat, what it is doing, and the request to drain
//! it (finish the task in hand, take no more), which is how a farm scales down gently.

use crate::QueueError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Waiting for a task.
    Idle,
    /// Running a task.
    Busy,
    /// Finishing its task in hand, then stopping.
    Draining,
}

/// What a worker reports with each heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Unique in the farm (a Kubernetes pod name with the process id, by default).
    pub name: String,
    pub state: WorkerState,
    /// The id of the task in hand (`<job>/denoise/<chunk>`, `<job>/assemble`).
    pub task: Option<String>,
    pub tasks_done: u64,
    /// Unix milliseconds, by the worker's clock.
    pub started_ms: i64,
    pub heartbeat_ms: i64,
}

/// Where workers announce themselves. A worker that stops sending heartbeats drops out of the
/// list once its time to live passes.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + 'static {
    /// Records a heartbeat, listed for `ttl`; answers whether the worker was asked to drain.
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<bool, QueueError>;
    /// The live workers, by name.
    async fn list(&self) -> Result<Vec<WorkerInfo>, QueueError>;
    /// Asks a live worker to drain; its next heartbeat learns it. `WorkerNotFound` when none
    /// by that name is live.
    async fn drain(&self, name: &str) -> Result<WorkerInfo, QueueError>;
    /// Takes a worker that stopped off the list at once.
    async fn remove(&self, name: &str) -> Result<(), QueueError>;
}
