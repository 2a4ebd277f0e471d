//! The job book: every job's record, changed only through `JobChange`s, watched as a stream.

use crate::QueueError;
use crate::job::{JobChange, JobRecord, JobState, UpdateDetail};
use async_trait::async_trait;
use futures::stream::BoxStream;

/// One applied change and the record after it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobUpdate {
    pub record: JobRecord,
    pub detail: UpdateDetail,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub jobs: Vec<JobRecord>,
    /// The id to pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

#[async_trait]
pub trait JobBook: Send + Sync + 'static {
    /// Stores a new job. When its idempotency key names a stored job, returns that job and
    /// `false` instead.
    async fn insert(&self, record: JobRecord) -> Result<(JobRecord, bool), QueueError>;
    async fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError>;
    /// Jobs in id order (ids sort by creation), after the id `after`, in one of `states`
    /// (all when empty), at most `limit`.
    async fn list(&self, states: &[JobState], after: Option<&str>, limit: usize) -> Result<Page, QueueError>;
    /// Applies a change atomically; returns the record after it and what it did.
    async fn update(&self, id: &str, change: JobChange) -> Result<(JobRecord, Option<UpdateDetail>), QueueError>;
    /// The job's updates from now on. Subscribe, then `get`, to miss nothing.
    async fn subscribe(&self, id: &str) -> Result<BoxStream<'static, JobUpdate>, QueueError>;
}
