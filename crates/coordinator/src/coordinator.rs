//! Job intake and control over the job book and the queue.

use std::sync::Arc;
use vidfarm_api::{FieldError, ModelProfile, RenderSpec, pb};
use vidfarm_plan::plan_chunks;
use vidfarm_queue::{
    Control, FarmState, JobBook, JobChange, JobRecord, JobState, Page, Queue, QueueError, WorkerInfo, WorkerRegistry,
    WorkerState, now_ms, update_and_count,
};
use vidfarm_store::{ArtifactStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("job {job_id} has no clip: it is {state}")]
    NoClip { job_id: String, state: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Coordinator {
    book: Arc<dyn JobBook>,
    queue: Arc<dyn Queue>,
    registry: Arc<dyn WorkerRegistry>,
    store: ArtifactStore,
    models: Vec<ModelProfile>,
}

/// Most jobs one `list` page holds.
pub const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 50;

impl Coordinator {
    /// `models` are the models the farm's workers serve; the first is the default.
    pub fn new(farm: FarmState, store: ArtifactStore, models: Vec<ModelProfile>) -> Self {
        let FarmState { queue, book, registry } = farm;
        Self { book, queue, registry, store, models }
    }

    pub fn book(&self) -> &Arc<dyn JobBook> {
        &self.book
    }

    pub fn store(&self) -> &ArtifactStore {
        &self.store
    }

    /// Tasks queued or leased, over all jobs.
    pub async fn queue_depth(&self) -> Result<usize, CoordinatorError> {
        Ok(self.queue.depth().await?)
    }

    /// Validates, plans and queues a job. Returns the job and whether it is new (an
    /// idempotency key seen before returns the job it made).
    pub async fn submit(&self, spec: &pb::JobSpec, idempotency_key: &str) -> Result<(JobRecord, bool), CoordinatorError> {
        if idempotency_key.len() > 256 {
            return Err(FieldError::new("idempotency_key", "at most 256 bytes").into());
        }
        let random = uuid::Uuid::new_v4().as_u128();
        let spec = RenderSpec::resolve(spec, &self.models, (random >> 64) as u64 & (i64::MAX as u64))?;
        let plan = plan_chunks(spec.latent_frames(), spec.chunk_latent_frames, spec.overlap_latent_frames)
            .map_err(|e| FieldError::new("spec.chunk_latent_frames", e.to_string()))?;
        let now = now_ms();
        // Ids sort by creation time, which is the order `list` pages in.
        let id = format!("job-{now:013}-{:08x}", random as u32);
        let key = (!idempotency_key.is_empty()).then(|| idempotency_key.to_string());
        let mut record = JobRecord::new(id, spec, plan, key, now);
        // The workers' spans join the submitting call's trace through the record.
        record.traceparent = vidfarm_telemetry::traces::traceparent(&tracing::Span::current());
        let (record, created) = self.book.insert(record).await?;
        if created {
            // The job is accepted once stored: a failed push must not answer UNAVAILABLE, which
            // a client would retry into a second job. The requeue sweep (`requeue_unfinished`)
            // queues what did not get pushed.
            for task in record.pending_tasks() {
                if let Err(error) = self.queue.push(task).await {
                    tracing::warn!(job_id = %record.id, %error, "job stored but not all its tasks queued: the requeue sweep will queue them");
                    break;
                }
            }
            vidfarm_telemetry::metrics().job_accepted();
            tracing::info!(job_id = %record.id, chunks = record.chunks.len(), frames = record.spec.frames, "job accepted");
        }
        Ok((record, created))
    }

    pub async fn get(&self, job_id: &str) -> Result<JobRecord, CoordinatorError> {
        check_job_id(job_id)?;
        self.book.get(job_id).await?.ok_or_else(|| QueueError::JobNotFound(job_id.to_string()).into())
    }

    pub async fn list(&self, states: &[JobState], page_token: &str, page_size: u32) -> Result<Page, CoordinatorError> {
        if page_size > MAX_PAGE_SIZE {
            return Err(FieldError::new("page_size", format!("at most {MAX_PAGE_SIZE}, got {page_size}")).into());
        }
        if !page_token.is_empty() && !looks_like_job_id(page_token) {
            return Err(FieldError::new("page_token", "not a token from a previous page").into());
        }
        let size = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size };
        let after = (!page_token.is_empty()).then_some(page_token);
        Ok(self.book.list(states, after, size as usize).await?)
    }

    /// Applies cancel, pause or resume. A cancelled job's queued tasks are dropped (or, when
    /// that fails, by the workers that take them); its running chunk stops at its next
    /// denoising step.
    pub async fn control(&self, job_id: &str, control: Control) -> Result<JobRecord, CoordinatorError> {
        check_job_id(job_id)?;
        let (record, _) = update_and_count(self.book.as_ref(), job_id, JobChange::Control(control)).await?;
        // The cancel is stored: the call succeeded. Tasks left queued are dropped by the
        // workers that take them (their job is over), so failing to discard them costs only time.
        if control == Control::Cancel
            && let Err(error) = self.queue.discard_job(job_id).await
        {
            tracing::warn!(job_id, %error, "cancelled job's queued tasks left for the workers to drop");
        }
        tracing::info!(job_id, ?control, "job control");
        Ok(record)
    }

    /// Queues again the tasks every unfinished job still needs. Pushing work that is queued or
    /// leased changes nothing, so this is safe at any time, from any replica; it recovers the
    /// tasks of a coordinator that died between storing a job and queueing it, and the assemble
    /// task of a worker that died between finishing the last chunk and queueing it. Returns
    /// how many pushes it made, most of them no-ops.
    pub async fn requeue_unfinished(&self) -> Result<usize, CoordinatorError> {
        let unfinished = [JobState::Queued, JobState::Running, JobState::Paused];
        let (mut pushed, mut after) = (0, None);
        loop {
            let page = self.book.list(&unfinished, after.as_deref(), MAX_PAGE_SIZE as usize).await?;
            for record in &page.jobs {
                for task in record.pending_tasks() {
                    self.queue.push(task).await?;
                    pushed += 1;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(pushed),
            }
        }
    }

    /// Forgets at most `at_most` of the jobs whose last change (their end, or a `DeleteJob`)
    /// is more than `retention` before `now_ms`: their objects, then their records and
    /// idempotency keys. Safe from any replica at any time; a job whose objects went but whose
    /// record stayed (a crash in between) goes on the next sweep, and one that cannot be
    /// removed (its objects refuse deletion, say) is logged and passed over, so it holds up
    /// no other. Ids sort by creation and a job ends after it begins, so the scan stops at the
    /// first job created since the cutoff: it reads the expired jobs and the older ones still
    /// in flight, not the whole history. Returns how many jobs it removed.
    pub async fn expire_finished(&self, retention: std::time::Duration, now_ms: i64, at_most: usize) -> Result<usize, CoordinatorError> {
        let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let (mut removed, mut after) = (0, None);
        loop {
            let page = self.book.list(&[], after.as_deref(), MAX_PAGE_SIZE as usize).await?;
            for record in &page.jobs {
                if record.created_ms > cutoff || removed == at_most {
                    return Ok(removed);
                }
                if !record.state.is_final() || record.updated_ms > cutoff {
                    continue;
                }
                match self.remove_job(record).await {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(error) => tracing::warn!(job_id = %record.id, %error, "job past its retention not removed; passed over"),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(removed),
            }
        }
    }

    /// Deletes an ended job's objects, then its record; `false` when another replica removed
    /// it first.
    async fn remove_job(&self, record: &JobRecord) -> Result<bool, CoordinatorError> {
        let objects = self.delete_objects(&record.id).await?;
        if !self.book.remove(&record.id).await? {
            return Ok(false);
        }
        vidfarm_telemetry::metrics().job_removed();
        tracing::info!(job_id = %record.id, objects, state = record.state.name(), "job removed after its retention");
        Ok(true)
    }

    /// The finished clip and a URL to fetch it.
    pub async fn clip(&self, job_id: &str) -> Result<(JobRecord, String), CoordinatorError> {
        let record = self.get(job_id).await?;
        let Some(clip) = &record.clip else {
            return Err(CoordinatorError::NoClip {
                job_id: job_id.to_string(),
                state: record.state.name().to_string(),
            });
        };
        let url = self.store.fetch_url(&clip.object_key).await?;
        Ok((record, url))
    }

    /// Deletes a finished job's objects (clip and any intermediates); the record stays, without
    /// its clip. A job still in flight must be cancelled first.
    pub async fn delete(&self, job_id: &str) -> Result<JobRecord, CoordinatorError> {
        let record = self.get(job_id).await?;
        if !record.state.is_final() {
            let state = record.state.name();
            return Err(QueueError::Precondition(format!("cannot delete job {job_id}: it is {state}; cancel it first")).into());
        }
        let count = self.delete_objects(job_id).await?;
        let (record, _) = self.book.update(job_id, JobChange::ObjectsDeleted).await?;
        tracing::info!(job_id, objects = count, "job objects deleted");
        Ok(record)
    }

    /// Deletes every object of a job (clip and intermediates); returns how many.
    async fn delete_objects(&self, job_id: &str) -> Result<usize, CoordinatorError> {
        Ok(self.store.delete_under(&ArtifactStore::job_prefix(job_id)).await?)
    }

    /// The live workers, by name.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, CoordinatorError> {
        Ok(self.registry.list().await?)
    }

    /// Asks a worker to finish its task in hand and take no more.
    pub async fn drain_worker(&self, name: &str) -> Result<WorkerInfo, CoordinatorError> {
        vidfarm_api::check_worker_name("name", name)?;
        let mut worker = self.registry.drain(name).await?;
        worker.state = WorkerState::Draining;
        tracing::info!(worker = name, "drain requested");
        Ok(worker)
    }
}

fn looks_like_job_id(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("job-") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn check_job_id(job_id: &str) -> Result<(), FieldError> {
    if job_id.is_empty() {
        return Err(FieldError::new("job_id", "must not be empty"));
    }
    if !looks_like_job_id(job_id) {
        return Err(FieldError::new("job_id", format!("{} is not a job id", vidfarm_api::quoted(job_id))));
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vidfarm_queue::conformance::sample_record;
    use vidfarm_queue::flaky::FlakyQueue;
    use vidfarm_queue::{MemoryJobBook, MemoryQueue, MemoryWorkerRegistry};

    /// Once stored, a job is accepted even when its tasks could not be queued (an UNAVAILABLE
    /// answer would be retried into a second job); the requeue sweep queues them.
    #[tokio::test]
    async fn a_stored_job_whose_push_failed_is_accepted_and_the_sweep_queues_it() {
        // Redis lost between storing the job and queueing its tasks.
        let queue = Arc::new(FlakyQueue::new());
        queue.fail("push", u32::MAX);
        let coordinator = coordinator_on(queue.clone());
        let spec = pb::JobSpec { prompt: "a red circle moving up on a white background".into(), ..Default::default() };

        let (record, created) = coordinator.submit(&spec, "").await.expect("a stored job is accepted");
        assert!(created);
        assert_eq!(queue.depth().await.unwrap(), 0);
        queue.fail("push", 0);
        coordinator.requeue_unfinished().await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), record.pending_tasks().len());
        assert!(queue.depth().await.unwrap() > 0);
    }

    /// A coordinator for the shipped model over `queue`, an in-memory book and a local store.
    fn coordinator_on(queue: Arc<FlakyQueue>) -> Coordinator {
        let store = ArtifactStore::local(&std::env::temp_dir()).unwrap();
        let farm = FarmState { queue, book: Arc::new(MemoryJobBook::new()), registry: Arc::new(MemoryWorkerRegistry::new()) };
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vidfarm-tiny");
        Coordinator::new(farm, store, vec![ModelProfile::load(&model).unwrap()])
    }

    /// A stored cancel is answered as done even when the job's queued tasks could not be
    /// dropped (Redis lost just then): an UNAVAILABLE answer would be retried into "already
    /// cancelled". The workers drop the tasks of an ended job.
    #[tokio::test]
    async fn a_stored_cancel_is_answered_even_when_its_tasks_stay_queued() {
        let queue = Arc::new(FlakyQueue::new());
        let coordinator = coordinator_on(queue.clone());
        let spec = pb::JobSpec { prompt: "a red circle moving up on a white background".into(), ..Default::default() };
        let (record, _) = coordinator.submit(&spec, "").await.unwrap();

        queue.fail("discard_job", 1);
        let cancelled = coordinator.control(&record.id, Control::Cancel).await.expect("the cancel is answered");
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert_eq!(queue.calls("discard_job"), 1, "the discard was tried");
        assert!(queue.depth().await.unwrap() > 0, "the tasks stayed queued");
    }

    #[tokio::test]
    async fn requeue_restores_the_tasks_unfinished_jobs_need_and_only_those() {
        let (book, queue) = (Arc::new(MemoryJobBook::new()), Arc::new(MemoryQueue::new()));
        let store = ArtifactStore::local(&std::env::temp_dir()).unwrap();
        let farm = FarmState { queue: queue.clone(), book: book.clone(), registry: Arc::new(MemoryWorkerRegistry::new()) };
        let coordinator = Coordinator::new(farm, store, Vec::new());
        // Stored but never queued (the coordinator died in between); half denoised; fully
        // denoised but never assembled; cancelled.
        for id in ["job-a", "job-b", "job-c", "job-d"] {
            book.insert(sample_record(id, None)).await.unwrap();
        }
        book.update("job-b", JobChange::ChunkDone { chunk: 0 }).await.unwrap();
        for chunk in 0..2 {
            book.update("job-c", JobChange::ChunkDone { chunk }).await.unwrap();
        }
        book.update("job-d", JobChange::Control(Control::Cancel)).await.unwrap();

        assert_eq!(coordinator.requeue_unfinished().await.unwrap(), 4);
        let mut ids = Vec::new();
        while let Some(lease) = queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap() {
            ids.push(lease.task.id());
        }
        ids.sort();
        assert_eq!(ids, ["job-a/denoise/0", "job-a/denoise/1", "job-b/denoise/1", "job-c/assemble"]);
        coordinator.requeue_unfinished().await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 4, "leased tasks are not queued twice");
    }

    #[tokio::test]
    async fn jobs_past_their_retention_are_removed_with_their_objects() {
        let root = std::env::temp_dir().join(format!("vidfarm-retention-{}", std::process::id()));
        // A failed run leaves its folder, symlink and all.
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let store = ArtifactStore::local(&root).unwrap();
        let book = Arc::new(MemoryJobBook::new());
        let farm = FarmState { queue: Arc::new(MemoryQueue::new()), book: book.clone(), registry: Arc::new(MemoryWorkerRegistry::new()) };
        let coordinator = Coordinator::new(farm, store.clone(), Vec::new());
        let (hour, now) = (Duration::from_secs(3600), 10 * 3_600_000);
        let old = now - 2 * 3_600_000;
        let job = |id: &str, key: Option<&str>, state: JobState, created_ms: i64, updated_ms: i64| JobRecord { state, created_ms, updated_ms, ..sample_record(id, key) };
        let jobs = [
            // Its objects cannot be listed (below): passed over, holding up no other.
            job("job-0", None, JobState::Succeeded, old - 1, old),
            job("job-a", Some("key-a"), JobState::Cancelled, old, old + 1),
            job("job-b", None, JobState::Succeeded, old + 2, old + 3),
            // Ended within the hour; in flight; ended within the hour.
            job("job-c", None, JobState::Failed, old + 4, now - 60_000),
            job("job-d", None, JobState::Running, old + 5, old + 6),
            job("job-e", None, JobState::Failed, now - 60_000, now - 50_000),
            // Created within the hour: the scan has stopped before it (no real job ends before
            // it begins).
            job("job-f", None, JobState::Failed, now - 40_000, old),
        ];
        let file = root.join("clip.mp4");
        std::fs::write(&file, b"not really a clip").unwrap();
        for record in jobs {
            if record.id != "job-0" {
                store.put_file(&ArtifactStore::clip_key(&record.id), &file, "video/mp4").await.unwrap();
            }
            book.insert(record).await.unwrap();
        }
        std::os::unix::fs::symlink("job-0", root.join("jobs/job-0")).unwrap();
        assert!(store.delete_under(&ArtifactStore::job_prefix("job-0")).await.is_err(), "a folder that is a symlink loop cannot be listed");

        assert_eq!(coordinator.expire_finished(hour, now, 1).await.unwrap(), 1, "one job a sweep, as asked");
        assert!(book.get("job-a").await.unwrap().is_none() && book.get("job-b").await.unwrap().is_some());
        assert_eq!(coordinator.expire_finished(hour, now, 1000).await.unwrap(), 1);
        let ids: Vec<String> = book.list(&[], None, 10).await.unwrap().jobs.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["job-0", "job-c", "job-d", "job-e", "job-f"]);
        for (id, kept) in [("job-a", false), ("job-b", false), ("job-c", true), ("job-d", true), ("job-e", true), ("job-f", true)] {
            assert_eq!(store.exists(&ArtifactStore::clip_key(id)).await.unwrap(), kept, "{id}'s clip");
        }
        let (again, created) = book.insert(sample_record("job-g", Some("key-a"))).await.unwrap();
        assert!(created && again.id == "job-g", "a removed job's idempotency key is free again");
        assert_eq!(coordinator.expire_finished(hour, now, 1000).await.unwrap(), 0, "nothing more is due");
        assert_eq!(coordinator.expire_finished(hour, now + 3_600_000, 1000).await.unwrap(), 3, "an hour on, job-c, job-e and job-f are due");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
