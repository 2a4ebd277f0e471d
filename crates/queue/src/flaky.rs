//! A queue and a job book that fail on demand, as a Redis that went away would: for tests of
//! what their callers (coordinator, workers) do then.

use crate::book::{JobBook, JobUpdate, Page};
use crate::job::{Control, JobChange, JobRecord, JobState, UpdateDetail};
use crate::memory::{MemoryJobBook, MemoryQueue};
use crate::task::{Lease, Queue, Task};
use crate::QueueError;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An in-memory queue whose operations, named as the trait's methods ("push", "pull", ...),
/// fail as many times as asked, and which counts the calls to each.
#[derive(Default)]
pub struct FlakyQueue {
    inner: MemoryQueue,
    /// Calls still to fail, per operation.
    failing: Mutex<HashMap<&'static str, u32>>,
    calls: Mutex<HashMap<&'static str, u32>>,
}

impl FlakyQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `times` calls of `operation` fail (`u32::MAX`: until told otherwise; 0:
    /// none from now on).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.failing.lock().unwrap().insert(operation, times);
    }

    /// How many times `operation` was called, failed calls included.
    pub fn calls(&self, operation: &'static str) -> u32 {
        self.calls.lock().unwrap().get(operation).copied().unwrap_or(0)
    }

    fn enter(&self, operation: &'static str) -> Result<(), QueueError> {
        *self.calls.lock().unwrap().entry(operation).or_default() += 1;
        let mut failing = self.failing.lock().unwrap();
        match failing.get_mut(operation) {
            Some(left) if *left > 0 => {
                if *left != u32::MAX {
                    *left -= 1;
                }
                Err(QueueError::Backend(format!("{operation}: connection refused (injected)")))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Queue for FlakyQueue {
    async fn push(&self, task: Task) -> Result<(), QueueError> {
        self.enter("push")?;
        self.inner.push(task).await
    }
    async fn pull(&self, worker: &str, lease_for: Duration, wait: Duration) -> Result<Option<Lease>, QueueError> {
        self.enter("pull")?;
        self.inner.pull(worker, lease_for, wait).await
    }
    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, QueueError> {
        self.enter("renew")?;
        self.inner.renew(lease, lease_for).await
    }
    async fn ack(&self, lease: &Lease) -> Result<bool, QueueError> {
        self.enter("ack")?;
        self.inner.ack(lease).await
    }
    async fn retry(&self, lease: &Lease, delay: Duration) -> Result<bool, QueueError> {
        self.enter("retry")?;
        self.inner.retry(lease, delay).await
    }
    async fn discard_job(&self, job_id: &str) -> Result<usize, QueueError> {
        self.enter("discard_job")?;
        self.inner.discard_job(job_id).await
    }
    async fn depth(&self) -> Result<usize, QueueError> {
        self.enter("depth")?;
        self.inner.depth().await
    }
}

/// Which updates a `FlakyBook` acts on.
type ChangeFilter = fn(&JobChange) -> bool;

/// An in-memory job book whose updates of one kind fail as many times as asked, whose update
/// streams can be cut (they end at once, as a Redis subscription's does when its connection
/// drops), and whose jobs can be made unreadable, as a newer version's record is to Redis.
#[derive(Default)]
pub struct FlakyBook {
    inner: MemoryJobBook,
    /// Updates still to fail, and which.
    failing_updates: Mutex<Option<(u32, ChangeFilter)>>,
    /// Updates still to be applied and then answered with an error, and which.
    losing_answers: Mutex<Option<(u32, ChangeFilter)>>,
    /// Inserts still to be applied and then answered with an error.
    losing_insert_answers: Mutex<u32>,
    streams_cut: AtomicBool,
    incompatible: Mutex<Vec<String>>,
    /// The update before which its job is interrupted (once), as by another call just then.
    interrupting_before: Mutex<Option<(ChangeFilter, Interruption)>>,
}

/// What befalls a job just before one of its updates.
#[derive(Clone, Copy, Debug)]
enum Interruption {
    /// A `CancelJob`.
    Cancel,
    /// A `CancelJob`, then a `DeleteJob` (or the retention sweep) that removes the record.
    CancelAndRemove,
}

impl FlakyBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `times` updates whose change `matching` picks fail, unapplied.
    pub fn fail_updates(&self, times: u32, matching: ChangeFilter) {
        *self.failing_updates.lock().unwrap() = Some((times, matching));
    }

    /// Applies the next `times` updates whose change `matching` picks, then fails them, as when
    /// the connection drops before the answer comes.
    pub fn lose_answers(&self, times: u32, matching: ChangeFilter) {
        *self.losing_answers.lock().unwrap() = Some((times, matching));
    }

    /// Applies the next `times` inserts, then fails them, as when the connection drops before
    /// the answer comes.
    pub fn lose_insert_answers(&self, times: u32) {
        *self.losing_insert_answers.lock().unwrap() = times;
    }

    /// Cancels the job of the next update that `matching` picks, just before applying it.
    pub fn cancel_before(&self, matching: ChangeFilter) {
        *self.interrupting_before.lock().unwrap() = Some((matching, Interruption::Cancel));
    }

    /// Cancels and removes the job of the next update that `matching` picks, just before
    /// applying it (which then fails: the job is not found).
    pub fn remove_before(&self, matching: ChangeFilter) {
        *self.interrupting_before.lock().unwrap() = Some((matching, Interruption::CancelAndRemove));
    }

    /// Makes every update stream from now on end at once.
    pub fn cut_update_streams(&self) {
        self.streams_cut.store(true, Ordering::SeqCst);
    }

    /// Makes reads and updates of job `id` fail as a record of a newer version does.
    pub fn make_incompatible(&self, id: &str) {
        self.incompatible.lock().unwrap().push(id.to_string());
    }

    fn check_readable(&self, id: &str) -> Result<(), QueueError> {
        if self.incompatible.lock().unwrap().iter().any(|i| i == id) {
            return Err(QueueError::Incompatible(format!("job {id}: its record does not fit this version (injected)")));
        }
        Ok(())
    }
}

/// Whether `change` is one of those `counter` still picks; counts it off when it is.
fn take_one(counter: &Mutex<Option<(u32, ChangeFilter)>>, change: &JobChange) -> bool {
    match counter.lock().unwrap().as_mut() {
        Some((left, matching)) if *left > 0 && matching(change) => {
            *left -= 1;
            true
        }
        _ => false,
    }
}

#[async_trait]
impl JobBook for FlakyBook {
    async fn insert(&self, record: JobRecord) -> Result<(JobRecord, bool), QueueError> {
        let id = record.id.clone();
        let inserted = self.inner.insert(record).await?;
        let mut losing = self.losing_insert_answers.lock().unwrap();
        if *losing > 0 {
            *losing -= 1;
            return Err(QueueError::Backend(format!("insert of job {id}: connection lost before the answer (injected)")));
        }
        Ok(inserted)
    }
    async fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        self.check_readable(id)?;
        self.inner.get(id).await
    }
    async fn list(&self, states: &[JobState], after: Option<&str>, limit: usize) -> Result<Page, QueueError> {
        self.inner.list(states, after, limit).await
    }
    async fn update(&self, id: &str, change: JobChange) -> Result<(JobRecord, Option<UpdateDetail>), QueueError> {
        self.check_readable(id)?;
        let interruption = self.interrupting_before.lock().unwrap().take_if(|(matching, _)| matching(&change)).map(|(_, what)| what);
        if let Some(what) = interruption {
            self.inner.update(id, JobChange::Control(Control::Cancel)).await?;
            if matches!(what, Interruption::CancelAndRemove) {
                self.inner.remove(id).await?;
            }
        }
        if take_one(&self.failing_updates, &change) {
            return Err(QueueError::Backend(format!("update of job {id}: connection refused (injected)")));
        }
        let lose_answer = take_one(&self.losing_answers, &change);
        let updated = self.inner.update(id, change).await?;
        if lose_answer {
            return Err(QueueError::Backend(format!("update of job {id}: connection lost before the answer (injected)")));
        }
        Ok(updated)
    }
    async fn subscribe(&self, id: &str) -> Result<BoxStream<'static, JobUpdate>, QueueError> {
        if self.streams_cut.load(Ordering::SeqCst) {
            return Ok(futures::stream::empty().boxed());
        }
        self.inner.subscribe(id).await
    }
    async fn remove(&self, id: &str) -> Result<bool, QueueError> {
        self.inner.remove(id).await
    }
}
