//! In-memory backends for the embedded single-process farm.

use crate::book::{JobBook, JobUpdate, Page, refuse_removal};
use crate::job::{JobChange, JobRecord, JobState, UpdateDetail};
use crate::task::{Lease, Queue, Task};
use crate::workers::{WorkerInfo, WorkerRegistry};
use crate::QueueError;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast};
use tokio_stream::wrappers::BroadcastStream;
use vidfarm_api::Priority;

/// Unix time in milliseconds: the clock of job records and worker heartbeats.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

struct Entry {
    task: Task,
    /// Arrival order, kept across redeliveries so a lapsed task keeps its place.
    seq: u64,
    token: u64,
    leased_until: Option<Instant>,
    ready_at: Option<Instant>,
}

#[derive(Default)]
struct QueueState {
    next_seq: u64,
    next_token: u64,
    entries: HashMap<String, Entry>,
    ready: BTreeSet<(Reverse<Priority>, u64, String)>,
}

impl QueueState {
    /// Moves due retries and lapsed leases back to the ready set.
    fn reclaim(&mut self, now: Instant) {
        for (id, e) in self.entries.iter_mut() {
            let lapsed = e.leased_until.is_some_and(|t| t <= now);
            let due = e.ready_at.is_some_and(|t| t <= now);
            if lapsed || due {
                e.leased_until = None;
                e.ready_at = None;
                self.ready.insert((Reverse(e.task.priority), e.seq, id.clone()));
            }
        }
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.entries.get(&lease.task.id()).is_some_and(|e| e.token == lease.token && e.leased_until.is_some())
    }
}

/// The task queue in memory: a priority-ordered ready set, leases with deadlines.
#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<QueueState>,
    pushed: Notify,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // matters more than stopping the farm, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn push(&self, mut task: Task) -> Result<(), QueueError> {
        let id = task.id();
        {
            let mut s = self.lock();
            if s.entries.contains_key(&id) {
                return Ok(());
            }
            task.attempt = 0;
            let seq = s.next_seq;
            s.next_seq += 1;
            s.ready.insert((Reverse(task.priority), seq, id.clone()));
            s.entries.insert(id, Entry { task, seq, token: 0, leased_until: None, ready_at: None });
        }
        self.pushed.notify_waiters();
        Ok(())
    }

    async fn pull(&self, worker: &str, lease_for: Duration, wait: Duration) -> Result<Option<Lease>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.pushed.notified();
            {
                let mut s = self.lock();
                let now = Instant::now();
                s.reclaim(now);
                if let Some(key) = s.ready.pop_first() {
                    s.next_token += 1;
                    let token = s.next_token;
                    if let Some(e) = s.entries.get_mut(&key.2) {
                        e.token = token;
                        e.leased_until = Some(now + lease_for);
                        e.task.attempt += 1;
                        return Ok(Some(Lease { task: e.task.clone(), worker: worker.to_string(), token }));
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Wake on a push, or soon enough to notice retries falling due and leases lapsing.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), notified).await;
        }
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, QueueError> {
        let mut s = self.lock();
        if !s.holds(lease) {
            return Ok(false);
        }
        if let Some(e) = s.entries.get_mut(&lease.task.id()) {
            e.leased_until = Some(Instant::now() + lease_for);
        }
        Ok(true)
    }

    async fn ack(&self, lease: &Lease) -> Result<bool, QueueError> {
        let mut s = self.lock();
        if !s.holds(lease) {
            return Ok(false);
        }
        s.entries.remove(&lease.task.id());
        Ok(true)
    }

    async fn retry(&self, lease: &Lease, delay: Duration) -> Result<bool, QueueError> {
        let mut s = self.lock();
        if !s.holds(lease) {
            return Ok(false);
        }
        if let Some(e) = s.entries.get_mut(&lease.task.id()) {
            e.leased_until = None;
            e.ready_at = Some(Instant::now() + delay);
        }
        Ok(true)
    }

    async fn discard_job(&self, job_id: &str) -> Result<usize, QueueError> {
        let mut s = self.lock();
        let queued: Vec<String> = s
            .entries
            .iter()
            .filter(|(_, e)| e.task.job_id == job_id && e.leased_until.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &queued {
            s.entries.remove(id);
        }
        s.ready.retain(|(_, _, id)| !queued.contains(id));
        Ok(queued.len())
    }

    async fn depth(&self) -> Result<usize, QueueError> {
        Ok(self.lock().entries.len())
    }
}

#[derive(Default)]
struct BookState {
    jobs: BTreeMap<String, JobRecord>,
    by_key: HashMap<String, String>,
}

/// The job book in memory, with a broadcast channel for watchers.
pub struct MemoryJobBook {
    /// Shared with watchers' streams, which read a record afresh after a lag.
    state: Arc<Mutex<BookState>>,
    updates: broadcast::Sender<JobUpdate>,
}

impl Default for MemoryJobBook {
    fn default() -> Self {
        Self { state: Arc::default(), updates: broadcast::channel(1024).0 }
    }
}

impl MemoryJobBook {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BookState> {
        lock_book(&self.state)
    }
}

fn lock_book(state: &Mutex<BookState>) -> std::sync::MutexGuard<'_, BookState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl JobBook for MemoryJobBook {
    async fn insert(&self, record: JobRecord) -> Result<(JobRecord, bool), QueueError> {
        let mut s = self.lock();
        if let Some(existing) = record.idempotency_key.as_ref().and_then(|k| s.by_key.get(k)).and_then(|id| s.jobs.get(id)) {
            return Ok((existing.clone(), false));
        }
        if let Some(key) = &record.idempotency_key {
            s.by_key.insert(key.clone(), record.id.clone());
        }
        s.jobs.insert(record.id.clone(), record.clone());
        Ok((record, true))
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    async fn list(&self, states: &[JobState], after: Option<&str>, limit: usize) -> Result<Page, QueueError> {
        let s = self.lock();
        let start = after.map_or(std::ops::Bound::Unbounded, |a| std::ops::Bound::Excluded(a.to_string()));
        let mut matching = s
            .jobs
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| states.is_empty() || states.contains(&r.state));
        let jobs: Vec<JobRecord> = matching.by_ref().take(limit).cloned().collect();
        let next = if matching.next().is_some() { jobs.last().map(|r| r.id.clone()) } else { None };
        Ok(Page { jobs, next })
    }

    async fn update(&self, id: &str, change: JobChange) -> Result<(JobRecord, Option<UpdateDetail>), QueueError> {
        let mut s = self.lock();
        let record = s.jobs.get_mut(id).ok_or_else(|| QueueError::JobNotFound(id.to_string()))?;
        let detail = record.apply(&change, now_ms())?;
        let record = record.clone();
        if let Some(detail) = &detail {
            // Sent under the lock, so watchers see the changes in the order they were made
            // (`send` does not block). No receivers is fine: nobody is watching.
            let _ = self.updates.send(JobUpdate { record: record.clone(), detail: detail.clone() });
        }
        Ok((record, detail))
    }

    async fn subscribe(&self, id: &str) -> Result<BoxStream<'static, JobUpdate>, QueueError> {
        let (id, state) = (id.to_string(), self.state.clone());
        // The channel holds the last 1024 updates of all jobs: a watcher that lags behind them
        // may have lost some of its job's, maybe the last. It is sent the record as it is now
        // instead (when newer than what it was sent), and nothing older after that.
        let mut sent = 0;
        let stream = BroadcastStream::new(self.updates.subscribe()).filter_map(move |u| {
            let keep = match u {
                Ok(u) => Some(u).filter(|u| u.record.id == id && u.record.sequence > sent),
                Err(_lagged) => lock_book(&state)
                    .jobs
                    .get(&id)
                    .filter(|record| record.sequence > sent)
                    .map(|record| JobUpdate { detail: UpdateDetail::State(record.state), record: record.clone() }),
            };
            if let Some(update) = &keep {
                sent = update.record.sequence;
            }
            std::future::ready(keep)
        });
        Ok(stream.boxed())
    }

    async fn remove(&self, id: &str) -> Result<bool, QueueError> {
        let mut s = self.lock();
        let Some(record) = s.jobs.get(id) else { return Ok(false) };
        refuse_removal(record)?;
        if let Some(key) = record.idempotency_key.clone() {
            if s.by_key.get(&key).is_some_and(|named| named == id) {
                s.by_key.remove(&key);
            }
        }
        s.jobs.remove(id);
        Ok(true)
    }
}

struct Registration {
    info: WorkerInfo,
    expires: Instant,
    drain: bool,
}

/// The worker registry in memory, for the embedded farm's workers.
#[derive(Default)]
pub struct MemoryWorkerRegistry {
    workers: Mutex<BTreeMap<String, Registration>>,
}

impl MemoryWorkerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live registrations, the expired ones dropped on the way.
    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registration>> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        workers.retain(|_, r| r.expires > now);
        workers
    }
}

#[async_trait]
impl WorkerRegistry for MemoryWorkerRegistry {
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<bool, QueueError> {
        let mut workers = self.live();
        let drain = workers.get(&info.name).is_some_and(|r| r.drain);
        workers.insert(info.name.clone(), Registration { info: info.clone(), expires: Instant::now() + ttl, drain });
        Ok(drain)
    }

    async fn list(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        Ok(self.live().values().map(|r| r.info.clone()).collect())
    }

    async fn drain(&self, name: &str) -> Result<WorkerInfo, QueueError> {
        let mut workers = self.live();
        let registration = workers.get_mut(name).ok_or_else(|| QueueError::WorkerNotFound(name.to_string()))?;
        registration.drain = true;
        Ok(registration.info.clone())
    }

    async fn remove(&self, name: &str) -> Result<(), QueueError> {
        self.live().remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_record;

    /// A watcher that falls behind by more updates than the channel holds is not left waiting
    /// for one it missed: it is sent its job's record as it is now, then nothing older.
    #[tokio::test]
    async fn a_lagging_watcher_is_sent_the_record_as_it_is_now() {
        let book = MemoryJobBook::new();
        let (watched, _) = book.insert(sample_record("job-watched", None)).await.unwrap();
        let (busy, _) = book.insert(sample_record("job-busy", None)).await.unwrap();
        let mut updates = book.subscribe(&watched.id).await.unwrap();
        book.update(&watched.id, JobChange::ChunkStarted { chunk: 0 }).await.unwrap();
        for _ in 0..1100 {
            book.update(&busy.id, JobChange::ChunkStarted { chunk: 0 }).await.unwrap();
        }
        // Still in the channel, behind the other job's updates, but already in the record sent.
        let (cancelled, _) = book.update(&watched.id, JobChange::Control(crate::Control::Cancel)).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), updates.next()).await.expect("the stream did not wait");
        let caught_up = next.expect("an update");
        assert_eq!((caught_up.record.sequence, caught_up.detail), (cancelled.sequence, UpdateDetail::State(JobState::Cancelled)));
        assert!(tokio::time::timeout(Duration::from_millis(200), updates.next()).await.is_err(), "the cancel is not sent again");
    }
}
