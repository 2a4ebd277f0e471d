//! The job book: every job's record, changed only through `JobChange`s, watched as a stream.

use crate::job::{JobChange, JobRecord, JobState, UpdateDetail};
use crate::{QueueError, now_ms};
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
    /// The job's updates from now on. Subscribe, then `get`, to miss nothing. A stream that
    /// ends before the job does was cut off (a lost connection): subscribe again.
    async fn subscribe(&self, id: &str) -> Result<BoxStream<'static, JobUpdate>, QueueError>;
    /// Forgets a job that has ended: its record, and its idempotency key, which may then make
    /// a new job. `false` when there is no such job; a job still in flight is refused.
    async fn remove(&self, id: &str) -> Result<bool, QueueError>;
}

/// The refusal of `remove` for a job still in flight.
pub(crate) fn refuse_removal(record: &JobRecord) -> Result<(), QueueError> {
    if record.state.is_final() {
        return Ok(());
    }
    Err(QueueError::Precondition(format!("cannot remove job {}: it is {}", record.id, record.state.name())))
}

/// `book.update`, counting the job's end in this process's metrics when the change ended it:
/// how coordinators and workers apply the changes that can end a job.
pub async fn update_and_count(book: &dyn JobBook, id: &str, change: JobChange) -> Result<(JobRecord, Option<UpdateDetail>), QueueError> {
    let (record, detail) = book.update(id, change.clone()).await?;
    if let Some(state) = change.ended_job(detail.as_ref()) {
        let seconds = (now_ms() - record.created_ms).max(0) as f64 / 1000.0;
        vidfarm_telemetry::metrics().job_ended(state.name(), seconds);
    }
    Ok((record, detail))
}
