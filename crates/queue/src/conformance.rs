//! The behaviour every backend must show, as async checks over the traits. Each backend's
//! tests call these (the in-memory ones below; the Redis ones against a real server).

use crate::book::JobBook;
use crate::job::{ClipInfo, Control, JobChange, JobRecord, JobState, UpdateDetail};
use crate::task::{Queue, Task, TaskKind};
use crate::workers::{WorkerInfo, WorkerRegistry, WorkerState};
use crate::QueueError;
use futures::StreamExt;
use std::time::Duration;
use vidfarm_api::{Priority, RenderSpec, Sampler, StitchMode};
use vidfarm_plan::plan_chunks;

const NO_WAIT: Duration = Duration::ZERO;
const LONG: Duration = Duration::from_secs(30);

fn denoise(job: &str, chunk: u32, priority: Priority) -> Task {
    Task::new(job, TaskKind::Denoise { chunk }, priority)
}

/// Ack, priorities, arrival order inside a priority, duplicate pushes, depth.
pub async fn queue_orders_and_acks(q: &dyn Queue) {
    q.push(denoise("a", 0, Priority::Low)).await.unwrap();
    q.push(denoise("b", 0, Priority::Normal)).await.unwrap();
    q.push(denoise("c", 0, Priority::High)).await.unwrap();
    q.push(denoise("b", 1, Priority::Normal)).await.unwrap();
    q.push(denoise("b", 0, Priority::Normal)).await.unwrap(); // duplicate: ignored
    assert_eq!(q.depth().await.unwrap(), 4);
    let mut order = Vec::new();
    while let Some(lease) = q.pull("w", LONG, NO_WAIT).await.unwrap() {
        assert_eq!(lease.task.attempt, 1);
        order.push(lease.task.id());
        assert!(q.ack(&lease).await.unwrap());
        assert!(!q.ack(&lease).await.unwrap(), "a second ack is refused");
    }
    assert_eq!(order, ["c/denoise/0", "b/denoise/0", "b/denoise/1", "a/denoise/0"]);
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// A lapsed lease is redelivered to another worker; the stale holder can neither renew nor ack.
pub async fn queue_redelivers_lapsed_leases(q: &dyn Queue) {
    q.push(denoise("lapse", 0, Priority::Normal)).await.unwrap();
    let short = Duration::from_millis(100);
    let first = q.pull("w1", short, NO_WAIT).await.unwrap().expect("a task");
    assert!(q.renew(&first, short).await.unwrap(), "a live lease renews");
    assert!(q.pull("w2", short, NO_WAIT).await.unwrap().is_none(), "a leased task is not handed out twice");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = q.pull("w2", LONG, Duration::from_secs(2)).await.unwrap().expect("redelivered");
    assert_eq!(second.task.id(), first.task.id());
    assert_eq!(second.task.attempt, 2);
    assert!(!q.renew(&first, LONG).await.unwrap(), "the stale holder lost its lease");
    assert!(!q.ack(&first).await.unwrap(), "the stale holder cannot finish the task");
    assert!(q.ack(&second).await.unwrap());
}

/// A retried task comes back after its delay, not before; discarding a job drops its queued tasks.
pub async fn queue_retries_and_discards(q: &dyn Queue) {
    q.push(denoise("retry", 0, Priority::Normal)).await.unwrap();
    let lease = q.pull("w", LONG, NO_WAIT).await.unwrap().expect("a task");
    assert!(q.retry(&lease, Duration::from_millis(300)).await.unwrap());
    assert!(q.pull("w", LONG, NO_WAIT).await.unwrap().is_none(), "not ready before its delay");
    let again = q.pull("w", LONG, Duration::from_secs(3)).await.unwrap().expect("ready after its delay");
    assert_eq!(again.task.attempt, 2);
    assert!(q.ack(&again).await.unwrap());

    for chunk in 0..3 {
        q.push(denoise("gone", chunk, Priority::Normal)).await.unwrap();
    }
    q.push(denoise("kept", 0, Priority::Normal)).await.unwrap();
    assert_eq!(q.discard_job("gone").await.unwrap(), 3);
    let left = q.pull("w", LONG, NO_WAIT).await.unwrap().expect("the other job's task");
    assert_eq!(left.task.job_id, "kept");
    assert!(q.ack(&left).await.unwrap());
}

/// A two-chunk job with the shape of the shipped model's defaults.
pub fn sample_record(id: &str, key: Option<&str>) -> JobRecord {
    let spec = RenderSpec {
        prompt: "a red circle".into(),
        negative_prompt: String::new(),
        frames: 33,
        fps: 8,
        width: 64,
        height: 64,
        seed: 1,
        sampler: Sampler::Euler,
        steps: 4,
        guidance_scale: 1.0,
        guidance_min_sigma: 0.0,
        flow_shift: 3.0,
        chunk_latent_frames: 6,
        overlap_latent_frames: 2,
        stitch_mode: StitchMode::Blend,
        blend_curve: vidfarm_plan::BlendCurve::Linear,
        priority: Priority::Normal,
        model: "tiny".into(),
        temporal_factor: 4,
        spatial_factor: 8,
        keep_intermediates: false,
    };
    let plan = plan_chunks(spec.latent_frames(), 6, 2).unwrap();
    JobRecord::new(id.to_string(), spec, plan, key.map(str::to_string), 0)
}

/// Idempotency keys, paging and filters.
pub async fn book_stores_and_lists(book: &dyn JobBook) {
    // The trace context travels with the record, to every worker.
    let traced = JobRecord { traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()), ..sample_record("job-01", Some("key-1")) };
    let (first, created) = book.insert(traced.clone()).await.unwrap();
    assert!(created);
    assert_eq!(first.traceparent, traced.traceparent);
    assert_eq!(book.get("job-01").await.unwrap().as_ref(), Some(&first));
    let (again, created) = book.insert(sample_record("job-02", Some("key-1"))).await.unwrap();
    assert!(!created, "the same idempotency key never makes a second job");
    assert_eq!(again.id, first.id);
    assert!(book.get("job-02").await.unwrap().is_none());
    for i in 3..=7 {
        book.insert(sample_record(&format!("job-0{i}"), None)).await.unwrap();
    }
    book.update("job-05", JobChange::Control(Control::Cancel)).await.unwrap();

    let page = book.list(&[], None, 4).await.unwrap();
    let ids: Vec<&str> = page.jobs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["job-01", "job-03", "job-04", "job-05"]);
    let rest = book.list(&[], page.next.as_deref(), 4).await.unwrap();
    let ids: Vec<&str> = rest.jobs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["job-06", "job-07"]);
    assert!(rest.next.is_none());
    let cancelled = book.list(&[JobState::Cancelled], None, 10).await.unwrap();
    assert_eq!(cancelled.jobs.len(), 1);
    assert_eq!(cancelled.jobs[0].id, "job-05");
    // Only unfinished states (the requeue sweep's listing), paged.
    let unfinished = [JobState::Queued, JobState::Running, JobState::Paused];
    let page = book.list(&unfinished, None, 3).await.unwrap();
    assert_eq!(page.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-01", "job-03", "job-04"]);
    let rest = book.list(&unfinished, page.next.as_deref(), 3).await.unwrap();
    assert_eq!(rest.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-06", "job-07"]);
    assert!(rest.next.is_none());
}

/// Changes apply once, invalid control is refused, and watchers see each change.
pub async fn book_applies_changes_and_streams_them(book: &dyn JobBook) {
    book.insert(sample_record("watched", None)).await.unwrap();
    let mut updates = book.subscribe("watched").await.unwrap();
    book.insert(sample_record("other", None)).await.unwrap();
    book.update("other", JobChange::ChunkStarted { chunk: 0 }).await.unwrap();

    let (r, d) = book.update("watched", JobChange::ChunkStarted { chunk: 0 }).await.unwrap();
    assert_eq!((r.state, d), (JobState::Running, Some(UpdateDetail::State(JobState::Running))));
    book.update("watched", JobChange::Step { chunk: 0, step: 1, steps_total: 4 }).await.unwrap();
    let (_, d) = book.update("watched", JobChange::ChunkDone { chunk: 0 }).await.unwrap();
    assert_eq!(d, Some(UpdateDetail::ChunkFinished(0)));
    let (r, d) = book.update("watched", JobChange::ChunkDone { chunk: 0 }).await.unwrap();
    assert_eq!(d, None, "a chunk counts as done once");
    assert_eq!(r.chunks_done(), 1);
    assert!(matches!(
        book.update("watched", JobChange::ChunkDone { chunk: 9 }).await,
        Err(QueueError::Precondition(_))
    ));
    let clip = ClipInfo { object_key: "k".into(), size_bytes: 1, sha256: "00".into(), frames: 33, fps: 8, width: 64, height: 64, seam_ratio: Some(1.0) };
    book.update("watched", JobChange::Succeeded(clip)).await.unwrap();
    let err = book.update("watched", JobChange::Control(Control::Cancel)).await.unwrap_err();
    assert!(matches!(err, QueueError::Precondition(ref m) if m.contains("succeeded")), "{err}");
    assert!(matches!(book.update("nope", JobChange::Control(Control::Pause)).await, Err(QueueError::JobNotFound(_))));

    let mut seen = Vec::new();
    while let Ok(Some(u)) = tokio::time::timeout(Duration::from_secs(1), updates.next()).await {
        assert_eq!(u.record.id, "watched");
        seen.push(u.detail);
        if seen.len() == 4 {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            UpdateDetail::State(JobState::Running),
            UpdateDetail::Step { chunk: 0, step: 1, steps_total: 4 },
            UpdateDetail::ChunkFinished(0),
            UpdateDetail::State(JobState::Succeeded),
        ]
    );
}

/// Pause and resume move between states; paused jobs stay paused on repeat.
pub async fn book_pauses_and_resumes(book: &dyn JobBook) {
    book.insert(sample_record("p", None)).await.unwrap();
    let (r, _) = book.update("p", JobChange::Control(Control::Pause)).await.unwrap();
    assert_eq!(r.state, JobState::Paused);
    let (_, d) = book.update("p", JobChange::Control(Control::Pause)).await.unwrap();
    assert_eq!(d, None);
    let (r, _) = book.update("p", JobChange::Control(Control::Resume)).await.unwrap();
    assert_eq!(r.state, JobState::Queued, "a job that never started resumes as queued");
    let (r, _) = book.update("p", JobChange::Control(Control::Cancel)).await.unwrap();
    assert_eq!(r.state, JobState::Cancelled);
}

/// A finished job is forgotten with its idempotency key; one in flight is kept.
pub async fn book_removes_finished_jobs(book: &dyn JobBook) {
    book.insert(sample_record("job-r1", Some("key-r"))).await.unwrap();
    book.insert(sample_record("job-r2", None)).await.unwrap();
    let err = book.remove("job-r1").await.unwrap_err();
    assert!(matches!(err, QueueError::Precondition(ref m) if m.contains("queued")), "{err}");
    assert!(book.get("job-r1").await.unwrap().is_some(), "a refused removal keeps the job");

    book.update("job-r1", JobChange::Control(Control::Cancel)).await.unwrap();
    assert!(book.remove("job-r1").await.unwrap());
    assert!(book.get("job-r1").await.unwrap().is_none());
    assert!(!book.remove("job-r1").await.unwrap(), "a job removed is not found again");
    assert!(!book.remove("job-none").await.unwrap());
    let ids: Vec<String> = book.list(&[], None, 10).await.unwrap().jobs.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["job-r2"]);
    let cancelled = book.list(&[JobState::Cancelled], None, 10).await.unwrap();
    assert!(cancelled.jobs.is_empty());

    let (record, created) = book.insert(sample_record("job-r3", Some("key-r"))).await.unwrap();
    assert!(created, "the removed job's idempotency key makes a new job");
    assert_eq!(record.id, "job-r3");
}

fn worker(name: &str, state: WorkerState) -> WorkerInfo {
    WorkerInfo { name: name.into(), state, task: None, tasks_done: 0, started_ms: 1, heartbeat_ms: 2 }
}

/// Heartbeats list a worker until its time to live passes; a drain request reaches its next
/// heartbeat; unknown workers cannot be drained; a removed worker is gone at once.
pub async fn registry_lists_drains_and_forgets(r: &dyn WorkerRegistry) {
    assert!(r.list().await.unwrap().is_empty());
    assert!(!r.heartbeat(&worker("w1", WorkerState::Idle), LONG).await.unwrap());
    let mut busy = worker("w2", WorkerState::Busy);
    busy.task = Some("job/denoise/0".into());
    assert!(!r.heartbeat(&busy, LONG).await.unwrap());
    assert_eq!(r.list().await.unwrap(), [worker("w1", WorkerState::Idle), busy.clone()]);

    assert!(matches!(r.drain("w3").await, Err(QueueError::WorkerNotFound(n)) if n == "w3"));
    assert_eq!(r.drain("w2").await.unwrap(), busy);
    assert!(r.heartbeat(&busy, LONG).await.unwrap(), "the next heartbeat learns of the drain");
    assert!(r.heartbeat(&busy, LONG).await.unwrap(), "and every one after");
    assert!(!r.heartbeat(&worker("w1", WorkerState::Idle), LONG).await.unwrap(), "the other worker is not draining");

    r.remove("w2").await.unwrap();
    assert_eq!(r.list().await.unwrap(), [worker("w1", WorkerState::Idle)]);
    assert!(!r.heartbeat(&busy, LONG).await.unwrap(), "a worker starting again under a removed name is not draining");

    r.heartbeat(&worker("brief", WorkerState::Idle), Duration::from_millis(100)).await.unwrap();
    assert_eq!(r.list().await.unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let names: Vec<String> = r.list().await.unwrap().into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["w1", "w2"], "a worker without heartbeats drops out");
}

#[cfg(test)]
mod memory_backend {
    use crate::memory::{MemoryJobBook, MemoryQueue, MemoryWorkerRegistry};

    #[tokio::test]
    async fn queue_orders_and_acks() {
        super::queue_orders_and_acks(&MemoryQueue::new()).await;
    }
    #[tokio::test]
    async fn queue_redelivers_lapsed_leases() {
        super::queue_redelivers_lapsed_leases(&MemoryQueue::new()).await;
    }
    #[tokio::test]
    async fn queue_retries_and_discards() {
        super::queue_retries_and_discards(&MemoryQueue::new()).await;
    }
    #[tokio::test]
    async fn book_stores_and_lists() {
        super::book_stores_and_lists(&MemoryJobBook::new()).await;
    }
    #[tokio::test]
    async fn book_applies_changes_and_streams_them() {
        super::book_applies_changes_and_streams_them(&MemoryJobBook::new()).await;
    }
    #[tokio::test]
    async fn book_pauses_and_resumes() {
        super::book_pauses_and_resumes(&MemoryJobBook::new()).await;
    }
    #[tokio::test]
    async fn book_removes_finished_jobs() {
        super::book_removes_finished_jobs(&MemoryJobBook::new()).await;
    }
    #[tokio::test]
    async fn registry_lists_drains_and_forgets() {
        super::registry_lists_drains_and_forgets(&MemoryWorkerRegistry::new()).await;
    }
}

#[cfg(test)]
mod redis_backend {
    use crate::redis::{RedisJobBook, RedisQueue, RedisWorkerRegistry, test_namespace};

    /// Runs each check in a namespace of its own on the local Redis, removed afterwards.
    macro_rules! on_redis {
        ($($check:ident => $backend:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $check() {
                let ns = test_namespace().await;
                super::$check(&$backend::new(ns.clone())).await;
                ns.clear().await.unwrap();
            }
        )*};
    }

    on_redis! {
        queue_orders_and_acks => RedisQueue,
        queue_redelivers_lapsed_leases => RedisQueue,
        queue_retries_and_discards => RedisQueue,
        book_stores_and_lists => RedisJobBook,
        book_applies_changes_and_streams_them => RedisJobBook,
        book_pauses_and_resumes => RedisJobBook,
        book_removes_finished_jobs => RedisJobBook,
        registry_lists_drains_and_forgets => RedisWorkerRegistry,
    }
}
