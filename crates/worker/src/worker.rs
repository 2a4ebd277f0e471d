//! The task loop: lease, do, report, repeat, until told to shut down.

use crate::render::{Directive, EncodedClip, Prompts, check_model_fits, chunk_start, denoise_chunk, denoise_step, encode_clip};
use burn::tensor::backend::Backend;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;
use vidfarm_model::pipeline::Pipeline;
use vidfarm_api::StitchMode;
use vidfarm_plan::{BlendCurve, ChunkPlan, FrameSpan, Latents, fuse_chunk, seam_frames, shared_frames, stitch};
use vidfarm_queue::{
    ClipInfo, FarmState, JobBook, JobChange, JobRecord, JobState, Lease, Queue, QueueError, TaskKind, UpdateDetail, WorkerInfo, WorkerRegistry,
    WorkerState, now_ms, update_and_count,
};
use vidfarm_store::{ArtifactStore, StoreError, SyncPart};

/// Starts of a chunk's render or of a clip's assembly cut off (their worker died or lost its
/// lease), per `max_attempts`, before the job fails: workers are lost for reasons of their own
/// too (a node drained, a spot instance taken back), so this allows more than clean failures.
pub const LOST_STARTS_PER_ATTEMPT: u32 = 3;

/// Waits before a worker stopped by an error starts again: doubling from the first to the
/// last, back to the first after a run that lasted longer than the last.
const FIRST_RESTART_WAIT: Duration = Duration::from_millis(500);
const LAST_RESTART_WAIT: Duration = Duration::from_secs(10);

/// The longest wait before a failed task's next attempt, however many attempts are allowed.
pub const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(300);

/// How long a task of a job this version cannot read waits before another worker takes it.
const INCOMPATIBLE_JOB_RETRY_DELAY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Shown in leases and logs.
    pub name: String,
    /// How long a lease lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// Attempts at a task before its job fails with the task's last error.
    pub max_attempts: u32,
    /// First retry delay; doubled on each further attempt, up to `LONGEST_RETRY_DELAY`.
    pub retry_base: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { name: "worker".into(), lease: Duration::from_secs(15), max_attempts: 3, retry_base: Duration::from_secs(1) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Model(#[from] vidfarm_model::ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Video(#[from] vidfarm_video::VideoError),
    #[error("stitching: {0}")]
    Stitch(#[from] vidfarm_plan::LatentsError),
    #[error("temporary file: {0}")]
    Temp(std::io::Error),
    #[error("render thread: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// How a task ended, as far as the queue is concerned.
enum Outcome {
    Done,
    /// Not ours any more (cancelled, job over, lease lost): drop it without a result.
    Abandoned,
    /// Not now (the job is paused): hand it back.
    Later,
}

pub struct Worker<B: Backend> {
    config: WorkerConfig,
    queue: Arc<dyn Queue>,
    book: Arc<dyn JobBook>,
    registry: Arc<dyn WorkerRegistry>,
    store: ArtifactStore,
    pipeline: Arc<Pipeline<B>>,
    /// What the heartbeats report.
    status: Mutex<WorkerInfo>,
    /// Set once a drain was requested: finish the task in hand, take no more.
    draining: AtomicBool,
    /// Turns true once the worker is to stop (shut down, or drained): a render waiting in its
    /// job's pause is handed back, not waited for until the pause ends.
    stopping: watch::Sender<bool>,
    /// Poked when the worker takes or ends a task, for a heartbeat that reports it at once.
    status_changed: Notify,
}

impl<B: Backend> Worker<B>
where
    Pipeline<B>: Send + Sync,
{
    pub fn new(config: WorkerConfig, farm: FarmState, store: ArtifactStore, pipeline: Arc<Pipeline<B>>) -> Self {
        let now = now_ms();
        let status = WorkerInfo {
            name: config.name.clone(),
            state: WorkerState::Idle,
            task: None,
            tasks_done: 0,
            started_ms: now,
            heartbeat_ms: now,
        };
        let FarmState { queue, book, registry } = farm;
        let (status, draining, status_changed) = (Mutex::new(status), AtomicBool::new(false), Notify::new());
        Self { config, queue, book, registry, store, pipeline, status, draining, stopping: watch::Sender::new(false), status_changed }
    }

    /// Takes and runs tasks until `shutdown` turns true or a drain is requested; the task in
    /// hand is finished first (a chunk waiting in its job's pause is handed back instead).
    /// Heartbeats go to the registry meanwhile.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        tracing::info!(worker = %self.config.name, "worker started");
        let result = tokio::select! {
            result = self.take_tasks(shutdown) => result,
            never = self.send_heartbeats() => match never {},
        };
        // Off the list now rather than when the last heartbeat expires.
        if let Err(error) = self.registry.remove(&self.config.name).await {
            tracing::warn!(%error, "could not take this worker off the registry");
        }
        tracing::info!(worker = %self.config.name, "worker stopped");
        result
    }

    /// `run`, started again after each error (the farm's state unreachable, say) until
    /// `shutdown` turns true or a drain is requested. An error comes back only when it
    /// happened during shutdown.
    pub async fn run_with_restarts(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let mut wait = FIRST_RESTART_WAIT;
        loop {
            let started = Instant::now();
            match self.run(shutdown.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if *shutdown.borrow() => return Err(error),
                Err(error) => {
                    if started.elapsed() > LAST_RESTART_WAIT {
                        wait = FIRST_RESTART_WAIT;
                    }
                    tracing::warn!(worker = %self.config.name, %error, retry_in = ?wait, "worker interrupted; starting again");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    wait = (wait * 2).min(LAST_RESTART_WAIT);
                }
            }
        }
    }

    async fn take_tasks(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        while !*shutdown.borrow() && !self.draining.load(Ordering::Acquire) {
            let lease = tokio::select! {
                lease = self.queue.pull(&self.config.name, self.config.lease, Duration::from_secs(1)) => lease?,
                _ = shutdown.changed() => break,
            };
            if let Some(lease) = lease {
                self.set_task(Some(lease.task.id()));
                let handled = self.handle(lease);
                tokio::pin!(handled);
                let handled = loop {
                    tokio::select! {
                        handled = &mut handled => break handled,
                        // Heard while the task runs, for a render waiting in its job's pause.
                        changed = shutdown.changed(), if !*self.stopping.borrow() => {
                            if changed.is_err() || *shutdown.borrow() {
                                self.stopping.send_replace(true);
                            }
                        }
                    }
                };
                self.set_task(None);
                handled?;
            }
        }
        Ok(())
    }

    fn status(&self) -> std::sync::MutexGuard<'_, WorkerInfo> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_task(&self, task: Option<String>) {
        let mut status = self.status();
        if task.is_none() && status.task.is_some() {
            status.tasks_done += 1;
        }
        status.task = task;
        self.status_changed.notify_one();
    }

    /// Heartbeats every third of their time to live (the lease, at most 15 s) and whenever the
    /// worker takes or ends a task, until dropped.
    async fn send_heartbeats(&self) -> std::convert::Infallible {
        let ttl = self.config.lease.min(Duration::from_secs(15));
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.status_changed.notified() => {}
            }
            let info = {
                let mut status = self.status();
                status.heartbeat_ms = now_ms();
                status.state = match (self.draining.load(Ordering::Acquire), &status.task) {
                    (true, _) => WorkerState::Draining,
                    (false, Some(_)) => WorkerState::Busy,
                    (false, None) => WorkerState::Idle,
                };
                status.clone()
            };
            match self.registry.heartbeat(&info, ttl).await {
                Ok(true) if !self.draining.swap(true, Ordering::AcqRel) => {
                    self.stopping.send_replace(true);
                    tracing::info!(worker = %self.config.name, "drain requested: finishing the task in hand, taking no more");
                }
                Ok(_) => {}
                // The registry is only for operators; work goes on without it.
                Err(error) => tracing::warn!(%error, "heartbeat not recorded"),
            }
        }
    }

    /// Runs one leased task to an outcome; errors of the task itself are retried or fail the
    /// job, and only queue errors (the farm itself failing) come back.
    async fn handle(&self, lease: Lease) -> Result<(), QueueError> {
        let record = match self.book.get(&lease.task.job_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.queue.ack(&lease).await?;
                return Ok(());
            }
            // A job of a newer version (a rolling upgrade): handed back for one of its workers,
            // rather than failing this worker's run and coming back at once.
            Err(QueueError::Incompatible(reason)) => {
                tracing::warn!(task = %lease.task.id(), %reason, "task of a job this version cannot read handed back");
                self.queue.retry(&lease, INCOMPATIBLE_JOB_RETRY_DELAY).await?;
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let span = tracing::info_span!(
            "task",
            job_id = %lease.task.job_id,
            task = %lease.task.id(),
            kind = lease.task.kind.name(),
            attempt = lease.task.attempt,
            worker = %self.config.name,
        );
        // One trace per job: its tasks are children of the call that submitted it.
        if let Some(parent) = &record.traceparent {
            vidfarm_telemetry::traces::set_parent(&span, parent);
        }
        self.handle_in_span(lease, record).instrument(span).await
    }

    async fn handle_in_span(&self, lease: Lease, record: JobRecord) -> Result<(), QueueError> {
        let job_id = lease.task.job_id.clone();
        let started = Instant::now();
        let result = match record.state {
            s if s.is_final() => Ok(Outcome::Abandoned),
            JobState::Paused => Ok(Outcome::Later),
            _ => match check_model_fits(&self.pipeline, &record.spec) {
                // A failure like any other: retried, maybe by a worker with the right model.
                Err(error) => Err(error.into()),
                Ok(()) => match lease.task.kind {
                    TaskKind::Denoise { chunk } => self.denoise(&lease, &record, chunk).await,
                    TaskKind::SyncStep { chunk, step } => self.sync_step(&lease, &record, chunk, step).await,
                    TaskKind::Assemble => self.assemble(&lease, &record).await,
                },
            },
        };
        let result = match result {
            // Removed meanwhile (the retention sweep removes ended jobs): not ours any more.
            Err(WorkerError::Queue(QueueError::JobNotFound(_))) => Ok(Outcome::Abandoned),
            result => result,
        };
        let outcome = match &result {
            Ok(Outcome::Done) => "done",
            Ok(Outcome::Abandoned) => "abandoned",
            Ok(Outcome::Later) => "later",
            Err(_) => "failed",
        };
        vidfarm_telemetry::metrics().task_finished(lease.task.kind.name(), outcome, started.elapsed().as_secs_f64());
        match result {
            Ok(Outcome::Done | Outcome::Abandoned) => {
                self.queue.ack(&lease).await?;
            }
            Ok(Outcome::Later) => {
                self.queue.retry(&lease, Duration::from_millis(500)).await?;
            }
            Err(error) => {
                let (chunk, what) = match lease.task.kind {
                    TaskKind::Denoise { chunk } => (Some(chunk), format!("chunk {chunk}")),
                    TaskKind::SyncStep { chunk, step } => (Some(chunk), format!("chunk {chunk} at step {step}")),
                    TaskKind::Assemble => (None, "assembling the clip".to_string()),
                };
                // Failures are counted in the job's record, not by deliveries: a lapsed lease
                // or a paused job hands a task back without it having failed.
                let change = JobChange::TaskFailed { chunk, error: error.to_string() };
                let failures = match self.book.update(&job_id, change).await {
                    Ok((_, Some(UpdateDetail::TaskFailed { failures, .. }))) => failures,
                    // The job ended, or was removed, meanwhile: nothing to retry.
                    Ok(_) | Err(QueueError::JobNotFound(_)) => {
                        self.queue.ack(&lease).await?;
                        return Ok(());
                    }
                    Err(error) => return Err(error),
                };
                if failures >= self.config.max_attempts {
                    tracing::error!(%error, failures, "task failed for good");
                    let reason = format!("{what} failed after {failures} attempts: {error}");
                    match update_and_count(self.book.as_ref(), &job_id, JobChange::Failed(reason)).await {
                        Ok(_) | Err(QueueError::JobNotFound(_)) => {}
                        Err(error) => return Err(error),
                    }
                    self.queue.ack(&lease).await?;
                } else {
                    let delay = retry_delay(self.config.retry_base, failures);
                    tracing::warn!(%error, failures, ?delay, "task failed, retrying");
                    self.queue.retry(&lease, delay).await?;
                }
            }
        }
        Ok(())
    }

    async fn denoise(&self, lease: &Lease, record: &JobRecord, chunk: u32) -> Result<Outcome, WorkerError> {
        let key = ArtifactStore::chunk_key(&record.id, chunk);
        let Some(status) = record.chunks.get(chunk as usize) else {
            return Ok(Outcome::Abandoned);
        };
        let mut written = Vec::new();
        // A result already stored (a previous holder finished, then lost its lease) is final:
        // chunk keys are deterministic and so are their contents.
        if !status.done && !self.store.exists(&key).await? {
            // A chained chunk continues from the one before it, which is done (its task is only
            // queued then).
            let previous = match (record.spec.stitch_mode, chunk.checked_sub(1)) {
                (StitchMode::Chain, Some(before)) => {
                    let plan = record.chunks[before as usize].plan;
                    Some((plan, self.store.get_latents(&ArtifactStore::chunk_key(&record.id, before)).await?))
                }
                _ => None,
            };
            if self.fail_if_lost_too_often(record, Some(chunk)).await? {
                return Ok(Outcome::Abandoned);
            }
            self.book.update(&record.id, JobChange::ChunkStarted { chunk }).await?;
            let directive = Arc::new(AtomicU8::new(Directive::Run as u8));
            let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
            let work = {
                let (pipeline, spec, plan, directive) =
                    (self.pipeline.clone(), record.spec.clone(), status.plan, directive.clone());
                tokio::task::spawn_blocking(in_span(tracing::info_span!("denoise_chunk"), move || {
                    let previous = previous.as_ref().map(|(plan, latents)| (plan, latents));
                    denoise_chunk(&pipeline, &spec, &plan, previous, &directive, &mut |p| {
                        let step = JobChange::Step { chunk, step: p.step as u32, steps_total: p.total as u32 };
                        // The receiver outlives the work; a send can only fail after it is done.
                        let _ = progress_tx.send(step);
                    })
                }))
            };
            let latents = match self.supervise(lease, &record.id, work, &directive, &mut progress_rx, Some(self.stopping.subscribe())).await? {
                Supervised::Finished(result) => result?,
                Supervised::Stopped => return Ok(Outcome::Abandoned),
                Supervised::HandedBack => {
                    tracing::info!(job_id = %record.id, chunk, "the worker is stopping: the paused chunk is handed back");
                    self.book.update(&record.id, JobChange::ChunkHandedBack { chunk }).await?;
                    return Ok(Outcome::Later);
                }
            };
            self.store.put_latents(&key, &latents).await?;
            written.push(key);
        }
        let Some(after) = self.record_written(&record.id, JobChange::ChunkDone { chunk }, &written).await? else {
            return Ok(Outcome::Abandoned);
        };
        // What this chunk unblocked: assembling once all are done; in chain mode, the next chunk.
        if after.all_chunks_done() || after.spec.stitch_mode == StitchMode::Chain {
            for task in after.pending_tasks() {
                self.queue.push(task).await?;
            }
        }
        Ok(Outcome::Done)
    }

    /// Sync mode: one denoising step of one chunk. Fuses the chunk's latents with the frames its
    /// neighbours share after the step before (all chunks finished it: that is the barrier),
    /// takes the step, and publishes the result whole and its shared frames. The last step's
    /// result is the chunk's latents, which assembling stitches with the same weights. A worker
    /// lost mid-step costs that step only: its task comes back and starts from the stored step.
    async fn sync_step(&self, lease: &Lease, record: &JobRecord, chunk: u32, step: u32) -> Result<Outcome, WorkerError> {
        let Some(status) = record.chunks.get(chunk as usize) else {
            return Ok(Outcome::Abandoned);
        };
        if status.steps_done < step {
            // Cannot be queued before the barrier; nothing to do but drop it.
            tracing::warn!(job_id = %record.id, chunk, step, steps_done = status.steps_done, "sync step ahead of its chunk");
            return Ok(Outcome::Abandoned);
        }
        let (job_id, steps) = (record.id.as_str(), record.spec.steps);
        let mut after = record.clone();
        if !status.done && step >= steps {
            // Past its last step and not done: recorded by an older version, which took two
            // updates for the last step and was stopped between them. The chunk's latents are
            // stored (or assembling fails, saying which are missing).
            after = self.book.update(job_id, JobChange::ChunkDone { chunk }).await?.0;
        } else if !status.done && status.steps_done == step {
            // Only a chunk at this step takes it. One past it had the step taken by a holder
            // that stopped before acking (maybe before queueing what the barrier let through,
            // which the end of this function does), or the task was queued twice.
            let plan: Vec<ChunkPlan> = record.chunks.iter().map(|c| c.plan).collect();
            let last = step + 1 == steps;
            let out_key =
                if last { ArtifactStore::chunk_key(job_id, chunk) } else { ArtifactStore::sync_key(job_id, chunk, step + 1, SyncPart::Whole) };
            let mut written = Vec::new();
            // Stored already: a previous holder finished the step, then lost its lease.
            if !self.store.exists(&out_key).await? {
                if self.fail_if_lost_too_often(record, Some(chunk)).await? {
                    return Ok(Outcome::Abandoned);
                }
                // Counted per step: a step retaken after a lost worker shows as one attempt more.
                self.book.update(job_id, JobChange::ChunkStarted { chunk }).await?;
                let latents = if step == 0 {
                    chunk_start(&self.pipeline, &record.spec, &plan[chunk as usize])
                } else {
                    match self.fused_latents(job_id, &plan, chunk, step, record.spec.blend_curve).await {
                        // A stale holder: another took this step meanwhile and the barrier
                        // passed it, which deletes the step's objects.
                        Err(WorkerError::Store(error)) if error.is_not_found() && self.step_taken(job_id, chunk, step).await? => {
                            tracing::debug!(job_id, chunk, step, "step taken by another holder");
                            return Ok(Outcome::Abandoned);
                        }
                        latents => latents?,
                    }
                };
                let directive = Arc::new(AtomicU8::new(Directive::Run as u8));
                let work = {
                    let (pipeline, spec, chunk_plan) = (self.pipeline.clone(), record.spec.clone(), plan[chunk as usize]);
                    tokio::task::spawn_blocking(in_span(tracing::info_span!("denoise_step"), move || {
                        denoise_step(&pipeline, &spec, &Prompts::encode(&pipeline, &spec)?, &chunk_plan, latents, step)
                    }))
                };
                // One step reports no progress of its own.
                let (_, mut no_progress) = mpsc::unbounded_channel();
                // One step does not wait in a pause: it is never handed back.
                let latents = match self.supervise(lease, job_id, work, &directive, &mut no_progress, None).await? {
                    Supervised::Finished(result) => result?,
                    Supervised::Stopped | Supervised::HandedBack => return Ok(Outcome::Abandoned),
                };
                if !last {
                    // The shared frames first: once the whole is stored, so are they.
                    let (head, tail) = shared_frames(&plan, chunk);
                    let start = plan[chunk as usize].start;
                    for (part, frames) in [(SyncPart::Head, head), (SyncPart::Tail, tail)] {
                        if !frames.is_empty() {
                            let slice = latents.slice_frames((frames.start - start) as usize, frames.len());
                            let key = ArtifactStore::sync_key(job_id, chunk, step + 1, part);
                            self.store.put_latents(&key, &slice).await?;
                            written.push(key);
                        }
                    }
                }
                self.store.put_latents(&out_key, &latents).await?;
                written.push(out_key);
            }
            // The last step is recorded as the chunk's end, in one update: a failure between two
            // would leave a chunk past its last step and not done, which no task finishes.
            let change = if last { JobChange::ChunkDone { chunk } } else { JobChange::Step { chunk, step: step + 1, steps_total: steps } };
            let Some(updated) = self.record_written(job_id, change, &written).await? else {
                return Ok(Outcome::Abandoned);
            };
            after = updated;
        }
        // This chunk may have been the barrier's last: then the next step (or assembling) is due,
        // and no chunk reads this step's objects again.
        if after.sync_step() > step || after.all_chunks_done() {
            for task in after.pending_tasks() {
                self.queue.push(task).await?;
            }
            if step > 0 && !record.spec.keep_intermediates {
                // Left behind on failure, they go with the chunks once the clip is stored.
                match self.store.delete_under(&ArtifactStore::sync_step_prefix(job_id, step)).await {
                    Ok(count) => tracing::debug!(job_id, step, count, "sync step latents deleted"),
                    Err(error) => tracing::warn!(job_id, step, %error, "sync step latents left in the store"),
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Whether sync step `step` of `chunk` is done already (or the job is over).
    async fn step_taken(&self, job_id: &str, chunk: u32, step: u32) -> Result<bool, QueueError> {
        Ok(match self.book.get(job_id).await? {
            Some(record) => record.state.is_final() || record.chunks.get(chunk as usize).is_none_or(|c| c.done || c.steps_done > step),
            None => true,
        })
    }

    /// Chunk `chunk`'s latents after `steps` steps, fused with the frames the chunks overlapping
    /// it published after the same step.
    async fn fused_latents(&self, job_id: &str, plan: &[ChunkPlan], chunk: u32, steps: u32, curve: BlendCurve) -> Result<Latents, WorkerError> {
        let own = self.store.get_latents(&ArtifactStore::sync_key(job_id, chunk, steps, SyncPart::Whole)).await?;
        let this = plan[chunk as usize];
        let mut shared = Vec::new();
        for other in plan.iter().filter(|o| o.index != chunk && o.start < this.end && this.start < o.end) {
            let (head, tail) = shared_frames(plan, other.index);
            // An earlier chunk shares its tail with this one, a later one its head.
            let (part, frames) = if other.index < chunk { (SyncPart::Tail, tail) } else { (SyncPart::Head, head) };
            let latents = self.store.get_latents(&ArtifactStore::sync_key(job_id, other.index, steps, part)).await?;
            shared.push((other.index, FrameSpan { start: frames.start, latents }));
        }
        Ok(fuse_chunk(plan, chunk, &own, &shared, curve)?)
    }

    async fn assemble(&self, lease: &Lease, record: &JobRecord) -> Result<Outcome, WorkerError> {
        if self.fail_if_lost_too_often(record, None).await? {
            return Ok(Outcome::Abandoned);
        }
        self.book.update(&record.id, JobChange::AssembleStarted).await?;
        let dir = tempfile::tempdir().map_err(WorkerError::Temp)?;
        let path = dir.path().join("clip.mp4");
        let directive = Arc::new(AtomicU8::new(Directive::Run as u8));
        // Reading the chunks is supervised too, so the lease is renewed from the start: a long
        // clip's latents take a while to read, longer than a lease.
        let work = {
            let (pipeline, store, record, path, directive) = (self.pipeline.clone(), self.store.clone(), record.clone(), path.clone(), directive.clone());
            tokio::spawn(
                async move {
                    let mut parts = Vec::with_capacity(record.chunks.len());
                    for c in &record.chunks {
                        parts.push((c.plan, store.get_latents(&ArtifactStore::chunk_key(&record.id, c.plan.index)).await?));
                    }
                    let spec = record.spec;
                    tokio::task::spawn_blocking(in_span(tracing::Span::current(), move || -> Result<EncodedClip, WorkerError> {
                        let seams = seam_frames(&parts.iter().map(|(plan, _)| *plan).collect::<Vec<_>>(), spec.temporal_factor);
                        let latents = stitch(spec.latent_frames(), &parts, spec.blend_curve)?;
                        // A clip no longer wanted (cancelled, lease lost) stops between latent frames.
                        encode_clip(&pipeline, &spec, latents, &seams, &directive, &path)
                    }))
                    .await?
                }
                .instrument(tracing::Span::current()),
            )
        };
        // However supervision ends, reading stops (a decode under way stops at its next latent frame).
        let _stop_reading = AbortOnDrop(work.abort_handle());
        // Decoding reports no steps: a channel whose sender is gone.
        let (_, mut no_progress) = mpsc::unbounded_channel();
        // Assembling does not wait in a pause: it is never handed back.
        let Supervised::Finished(result) = self.supervise(lease, &record.id, work, &directive, &mut no_progress, None).await? else {
            return Ok(Outcome::Abandoned);
        };
        let clip = result?;
        self.store_clip(record, &path, clip.frames, clip.width, clip.height, clip.seam_ratio).await
    }

    /// Stores the encoded clip at `path` and marks the job succeeded. A job that ended
    /// otherwise meanwhile (cancelled while its clip was being decoded, maybe deleted already)
    /// gets no clip: the object just written is removed, not left in the store for good.
    async fn store_clip(
        &self,
        record: &JobRecord,
        path: &std::path::Path,
        frames: u32,
        width: u32,
        height: u32,
        seam_ratio: Option<f64>,
    ) -> Result<Outcome, WorkerError> {
        let key = ArtifactStore::clip_key(&record.id);
        // Another holder of a lapsed lease may have stored its clip meanwhile: written over, the
        // object would no longer be the bytes whose size and sha256 the record gives.
        if self.book.get(&record.id).await?.is_some_and(|current| current.clip.is_some()) {
            tracing::info!(job_id = %record.id, "the clip was stored by another worker meanwhile: this one is dropped");
            return Ok(Outcome::Abandoned);
        }
        let stored = self.store.put_file(&key, path, "video/mp4").instrument(tracing::info_span!("store_clip")).await?;
        let clip = ClipInfo {
            object_key: stored.key,
            size_bytes: stored.size_bytes,
            sha256: stored.sha256,
            frames,
            fps: record.spec.fps,
            width,
            height,
            seam_ratio,
        };
        let size_bytes = clip.size_bytes;
        let (after, detail) = match update_and_count(self.book.as_ref(), &record.id, JobChange::Succeeded(clip)).await {
            // Removed meanwhile: ended otherwise, then deleted (or swept) while the clip was made.
            Err(QueueError::JobNotFound(_)) => {
                self.remove_written(&record.id, "removed", std::slice::from_ref(&key)).await?;
                return Ok(Outcome::Abandoned);
            }
            updated => updated?,
        };
        // Refused, and the record names no clip under this key: the job ended otherwise, or
        // another holder of a lapsed lease stored the same clip and a `DeleteJob` removed it
        // since. (Refused and named: that holder's clip, the same, stays.)
        if detail.is_none() && after.clip.as_ref().is_none_or(|clip| clip.object_key != key) {
            tracing::info!(job_id = %record.id, state = after.state.name(), "the job ended while its clip was made: clip removed");
            self.store.delete(&key).await?;
            return Ok(Outcome::Abandoned);
        }
        tracing::info!(job_id = %record.id, bytes = size_bytes, frames, seam_ratio, "clip stored");
        vidfarm_telemetry::metrics().clip_assembled(record.spec.stitch_mode.name(), seam_ratio);
        if !record.spec.keep_intermediates {
            // The job is final, so no task reads its chunks again; a failure here only leaves
            // them behind.
            match self.store.delete_under(&ArtifactStore::chunks_prefix(&record.id)).await {
                Ok(count) => tracing::debug!(job_id = %record.id, count, "chunk latents deleted"),
                Err(error) => tracing::warn!(job_id = %record.id, %error, "chunk latents left in the store"),
            }
        }
        Ok(Outcome::Done)
    }

    /// Fails the job of a chunk (`None`: of the assemble task) whose renders were cut off
    /// `LOST_STARTS_PER_ATTEMPT` times `max_attempts` (a task that kills each worker that takes
    /// it, out of memory say, fails no delivery cleanly, so without this it would go round the
    /// farm for ever). `true` when it did.
    async fn fail_if_lost_too_often(&self, record: &JobRecord, chunk: Option<u32>) -> Result<bool, QueueError> {
        let (lost, what) = match chunk {
            Some(chunk) => {
                let Some(status) = record.chunks.get(chunk as usize) else { return Ok(false) };
                (status.lost_starts(record.spec.stitch_mode == StitchMode::Sync), format!("chunk {chunk}"))
            }
            None => (record.lost_assemble_starts(), "assembling the clip".to_string()),
        };
        if lost < self.config.max_attempts.saturating_mul(LOST_STARTS_PER_ATTEMPT) {
            return Ok(false);
        }
        tracing::error!(job_id = %record.id, chunk, lost, "task cut off too often");
        let reason = format!("{what} was started {lost} times without finishing: each time its worker stopped (died or lost its lease)");
        update_and_count(self.book.as_ref(), &record.id, JobChange::Failed(reason)).await?;
        Ok(true)
    }

    /// Removes the objects a task wrote (`written`) when its job ended, other than by succeeding,
    /// before they could be recorded (`after`: the record that refused them): nothing reads
    /// them, and a `DeleteJob` may have passed already. `true` when it did.
    async fn remove_if_job_ended(&self, after: &JobRecord, written: &[String]) -> Result<bool, StoreError> {
        if written.is_empty() || !after.state.is_final() || after.state == JobState::Succeeded {
            return Ok(false);
        }
        self.remove_written(&after.id, after.state.name(), written).await?;
        Ok(true)
    }

    /// Records `change`, made after the task wrote `written`. `None` when the job ended, other
    /// than by succeeding, or was removed before that: what was written is removed (as
    /// [`Self::remove_if_job_ended`] says why) and the task has nothing left to do.
    async fn record_written(&self, job_id: &str, change: JobChange, written: &[String]) -> Result<Option<JobRecord>, WorkerError> {
        let (after, detail) = match self.book.update(job_id, change).await {
            Err(QueueError::JobNotFound(_)) => {
                self.remove_written(job_id, "removed", written).await?;
                return Ok(None);
            }
            updated => updated?,
        };
        if detail.is_none() && self.remove_if_job_ended(&after, written).await? {
            return Ok(None);
        }
        Ok(Some(after))
    }

    /// Deletes the objects a task wrote for a job that is `state` now (or "removed").
    async fn remove_written(&self, job_id: &str, state: &str, written: &[String]) -> Result<(), StoreError> {
        for key in written {
            self.store.delete(key).await?;
        }
        if !written.is_empty() {
            tracing::info!(job_id, state, objects = written.len(), "the job ended while its task ran: what it wrote was removed");
        }
        Ok(())
    }

    /// Waits for blocking work while renewing the lease, forwarding progress, and turning the
    /// job's state into directives. `stopping` is given for work that waits in its job's pause
    /// (a chunk's render): when it turns true during the pause, the work is stopped and handed
    /// back.
    async fn supervise<T>(
        &self,
        lease: &Lease,
        job_id: &str,
        mut work: tokio::task::JoinHandle<T>,
        directive: &AtomicU8,
        progress: &mut mpsc::UnboundedReceiver<JobChange>,
        mut stopping: Option<watch::Receiver<bool>>,
    ) -> Result<Supervised<T>, WorkerError> {
        let _stop = StopOnExit(directive);
        let mut tick = tokio::time::interval(self.config.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let paused = Directive::load(directive) == Directive::Pause;
            tokio::select! {
                done = &mut work => {
                    let out = done?;
                    while let Ok(change) = progress.try_recv() {
                        self.book.update(job_id, change).await?;
                    }
                    return Ok(if Directive::load(directive) == Directive::Stop { Supervised::Stopped } else { Supervised::Finished(out) });
                }
                () = turned_true(&mut stopping), if paused => {
                    directive.store(Directive::Stop as u8, Ordering::Release);
                    // Out of its pause at once; what it did is given up.
                    let _ = (&mut work).await;
                    return Ok(Supervised::HandedBack);
                }
                Some(change) = progress.recv() => {
                    self.book.update(job_id, change).await?;
                    self.refresh_directive(job_id, directive).await?;
                }
                _ = tick.tick() => {
                    if !self.queue.renew(lease, self.config.lease).await? {
                        tracing::warn!(job_id, "lease lost; stopping the task");
                        directive.store(Directive::Stop as u8, Ordering::Release);
                    } else {
                        self.refresh_directive(job_id, directive).await?;
                    }
                }
            }
        }
    }

    async fn refresh_directive(&self, job_id: &str, directive: &AtomicU8) -> Result<(), QueueError> {
        if Directive::load(directive) == Directive::Stop {
            return Ok(());
        }
        let next = match self.book.get(job_id).await?.map(|r| r.state) {
            Some(JobState::Paused) => Directive::Pause,
            Some(JobState::Queued | JobState::Running) => Directive::Run,
            _ => Directive::Stop,
        };
        directive.store(next as u8, Ordering::Release);
        Ok(())
    }
}

/// How supervised work ended.
enum Supervised<T> {
    /// It ran to its end (its result may be an error).
    Finished(T),
    /// It was stopped because it is not ours any more (cancelled, job over, lease lost).
    Stopped,
    /// It waited in its job's pause when the worker was to stop, and was stopped: to be handed
    /// back.
    HandedBack,
}

/// Resolves once `flag` is true (or its sender gone); never without a flag.
async fn turned_true(flag: &mut Option<watch::Receiver<bool>>) {
    match flag {
        Some(flag) => {
            let _ = flag.wait_for(|&on| on).await;
        }
        None => std::future::pending().await,
    }
}

/// Stops the blocking work when its supervision ends, however it ends: a failed renew or job
/// read returns early, and the render must not run on beside the next task, nor sleep in a
/// pause for ever. (Work that already finished never reads the directive again.)
struct StopOnExit<'a>(&'a AtomicU8);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        self.0.store(Directive::Stop as u8, Ordering::Release);
    }
}

/// Aborts an async task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The wait before the attempt after `failures` failed ones: `base` doubled each time, capped.
fn retry_delay(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1))).min(LONGEST_RETRY_DELAY)
}

/// Blocking work that runs inside `span` (on the blocking pool, where no span is current).
fn in_span<T>(span: tracing::Span, work: impl FnOnce() -> T) -> impl FnOnce() -> T {
    move || span.in_scope(work)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use vidfarm_model::pipeline::DefaultBackend;
    use vidfarm_queue::conformance::sample_record;
    use vidfarm_queue::flaky::{FlakyBook, FlakyQueue};
    use vidfarm_queue::{MemoryJobBook, MemoryQueue, MemoryWorkerRegistry};

    /// How long the tests' leases last.
    const LEASE: Duration = Duration::from_secs(60);

    /// A worker with the shipped model over an in-memory farm and a local store in a temporary
    /// folder (returned, to keep it), failing a job at its first failed task.
    fn test_worker() -> (Worker<DefaultBackend>, FarmState, tempfile::TempDir) {
        test_worker_with(Arc::new(MemoryQueue::new()), Arc::new(MemoryJobBook::new()), 1)
    }

    /// `test_worker` with the queue and book given, failing a job at its `max_attempts`th
    /// failed task.
    fn test_worker_with(queue: Arc<dyn Queue>, book: Arc<dyn JobBook>, max_attempts: u32) -> (Worker<DefaultBackend>, FarmState, tempfile::TempDir) {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vidfarm-tiny");
        let pipeline = Arc::new(Pipeline::<DefaultBackend>::load(&model, &Default::default()).unwrap());
        let farm = FarmState { queue, book, registry: Arc::new(MemoryWorkerRegistry::new()) };
        let store_dir = tempfile::tempdir().unwrap();
        let config = WorkerConfig { name: "w".into(), lease: LEASE, max_attempts, retry_base: Duration::from_millis(1) };
        let worker = Worker::new(config, farm.clone(), ArtifactStore::local(store_dir.path()).unwrap(), pipeline);
        (worker, farm, store_dir)
    }

    /// Stores a job and queues its tasks, as the coordinator does.
    async fn insert_and_queue(farm: &FarmState, record: JobRecord) -> JobRecord {
        let (record, _) = farm.book.insert(record).await.unwrap();
        for task in record.pending_tasks() {
            farm.queue.push(task).await.unwrap();
        }
        record
    }

    /// Heun makes two model evaluations a step (one for the last): progress counts the job's
    /// steps, so it never passes the whole (it read 1.75 of it before).
    #[test]
    fn heun_progress_counts_the_jobs_steps() {
        let (worker, _farm, _store_dir) = test_worker();
        let mut record = sample_record("job-heun", None);
        record.spec.sampler = vidfarm_api::Sampler::Heun;
        record.spec.steps = 3;
        let mut seen = Vec::new();
        let run = AtomicU8::new(Directive::Run as u8);
        denoise_chunk(&worker.pipeline, &record.spec, &record.chunks[0].plan, None, &run, &mut |p| seen.push((p.step, p.total))).unwrap();
        assert_eq!(seen, [(1, 3), (2, 3), (3, 3)]);
    }

    /// A worker told to stop while its chunk waits in the job's pause hands the chunk back at
    /// once (it waited for the pause to end, up to the grace period, before), and the start is
    /// not counted as lost.
    #[tokio::test]
    async fn a_paused_chunk_is_handed_back_when_the_worker_stops() {
        let (worker, farm, _store_dir) = test_worker();
        let mut record = sample_record("job-paused", None);
        record.spec.steps = 40;
        let record = insert_and_queue(&farm, record).await;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let book = farm.book.clone();
        let read = || async { book.get(&record.id).await.unwrap().unwrap() };
        let pause_then_stop = async {
            // Paused once a chunk is started, then stopped once a step is recorded in the pause
            // (the step that tells the render to wait).
            while !read().await.chunks.iter().any(|c| c.attempts > 0) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            book.update(&record.id, JobChange::Control(vidfarm_queue::Control::Pause)).await.unwrap();
            let sequence = read().await.sequence;
            while read().await.sequence == sequence {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            shutdown.send(true).unwrap();
        };
        let (ran, ()) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(worker.run(shutdown_rx), pause_then_stop) })
            .await
            .expect("the worker stops without waiting for the pause to end");
        ran.unwrap();
        let after = read().await;
        assert_eq!(after.state, JobState::Paused);
        let chunk = after.chunks.iter().position(|c| c.handed_back > 0).expect("a chunk handed back");
        let status = &after.chunks[chunk];
        assert_eq!((status.attempts, status.handed_back, status.lost_starts(false), status.done, status.steps_done), (1, 1, 0, false, 0));
        let mut queued = Vec::new();
        for _ in 0..2 {
            queued.push(farm.queue.pull("w2", LEASE, Duration::from_secs(5)).await.unwrap().expect("both chunks are queued").task.kind);
        }
        assert!(queued.contains(&TaskKind::Denoise { chunk: chunk as u32 }), "the chunk is queued again: {queued:?}");
    }

    /// A render past its last step does not wait in its job's pause: its chunk is stored, not
    /// held where a stopping worker would hand it back to be denoised again.
    #[test]
    fn a_finished_chunk_is_not_held_in_a_pause() {
        let (worker, _farm, _store_dir) = test_worker();
        let mut record = sample_record("job-done-paused", None);
        record.spec.steps = 1;
        let pipeline = worker.pipeline.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let paused = AtomicU8::new(Directive::Pause as u8);
            let rendered = denoise_chunk(&pipeline, &record.spec, &record.chunks[0].plan, None, &paused, &mut |_| {});
            let _ = done_tx.send(rendered.is_ok());
        });
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(60)), Ok(true), "the finished render waited in the pause");
    }

    /// A render whose supervision fails (here a progress update the book refuses; in a farm a
    /// renew or job read that loses Redis) is told to stop, not left running or paused.
    #[tokio::test]
    async fn work_is_stopped_when_its_supervision_fails() {
        let (worker, farm, _store_dir) = test_worker();
        let record = insert_and_queue(&farm, sample_record("job-stop", None)).await;
        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");

        let directive = Arc::new(AtomicU8::new(Directive::Run as u8));
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let work = {
            let directive = directive.clone();
            // A render between steps: it ends when told to stop, or gives up after 30 s.
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                while Directive::load(&directive) != Directive::Stop && started.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = stopped_tx.send(Directive::load(&directive) == Directive::Stop);
            })
        };
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
        progress_tx.send(JobChange::ChunkStarted { chunk: 99 }).unwrap();
        let supervised = worker.supervise(&lease, &record.id, work, &directive, &mut progress_rx, None).await;
        assert!(supervised.is_err(), "the book refuses a chunk the job does not have");
        assert_eq!(stopped_rx.recv_timeout(Duration::from_secs(60)), Ok(true), "the work was told to stop");
    }

    /// A clip finished for a job cancelled meanwhile (and maybe deleted) is removed, not left
    /// in the store for good; one for a running job is stored and recorded.
    #[tokio::test]
    async fn a_clip_made_for_a_job_that_ended_meanwhile_is_removed() {
        let (worker, farm, store_dir) = test_worker();
        let encoded = store_dir.path().join("encoded.mp4");
        std::fs::write(&encoded, b"an encoded clip").unwrap();

        let (cancelled, _) = farm.book.insert(sample_record("job-cancelled", None)).await.unwrap();
        farm.book.update(&cancelled.id, JobChange::Control(vidfarm_queue::Control::Cancel)).await.unwrap();
        let outcome = worker.store_clip(&cancelled, &encoded, 33, 64, 64, None).await.unwrap();
        assert!(matches!(outcome, Outcome::Abandoned));
        assert!(!worker.store.exists(&ArtifactStore::clip_key(&cancelled.id)).await.unwrap());
        let after = farm.book.get(&cancelled.id).await.unwrap().unwrap();
        assert_eq!((after.state, after.clip), (JobState::Cancelled, None));

        let (running, _) = farm.book.insert(sample_record("job-running", None)).await.unwrap();
        let outcome = worker.store_clip(&running, &encoded, 33, 64, 64, None).await.unwrap();
        assert!(matches!(outcome, Outcome::Done));
        assert_eq!(files_under(&store_dir.path().join("jobs")), ["job-running/clip.mp4"]);
        assert_eq!(farm.book.get(&running.id).await.unwrap().unwrap().state, JobState::Succeeded);
    }

    /// A chunk whose renders were cut off `LOST_STARTS_PER_ATTEMPT` x `max_attempts` times fails
    /// its job instead of going round the farm for ever; one cut off fewer times renders.
    #[tokio::test]
    async fn a_chunk_cut_off_too_often_fails_its_job() {
        let (worker, farm, _store_dir) = test_worker();
        let (record, _) = farm.book.insert(sample_record("job-lost", None)).await.unwrap();
        // Workers that died on them: chunk 0 twice, chunk 1 three times.
        for (chunk, lost) in [(0, 2), (1, LOST_STARTS_PER_ATTEMPT)] {
            for _ in 0..lost {
                farm.book.update(&record.id, JobChange::ChunkStarted { chunk }).await.unwrap();
            }
        }
        for task in record.pending_tasks() {
            farm.queue.push(task).await.unwrap();
        }
        let mut leases = Vec::new();
        while let Some(lease) = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap() {
            leases.push(lease);
        }
        leases.sort_by_key(|lease| lease.task.id());
        assert_eq!(leases.iter().map(|lease| lease.task.id()).collect::<Vec<_>>(), ["job-lost/denoise/0", "job-lost/denoise/1"]);
        for lease in leases {
            worker.handle(lease).await.unwrap();
        }
        let after = farm.book.get(&record.id).await.unwrap().unwrap();
        assert!(after.chunks[0].done, "a chunk cut off fewer times renders");
        assert_eq!(after.state, JobState::Failed);
        let error = after.error.expect("the reason");
        assert!(error.contains("chunk 1 was started 3 times without finishing"), "{error}");
        assert_eq!(after.chunks[1].attempts, LOST_STARTS_PER_ATTEMPT, "no fourth start");
    }

    /// A job planned for another model's shape (the coordinator's profile and the worker's
    /// weights out of step) fails its task with both shapes named, rendering nothing.
    #[tokio::test]
    async fn a_job_planned_for_another_models_shape_fails_its_task() {
        let (worker, farm, _store_dir) = test_worker();
        let mut record = sample_record("job-shape", None);
        record.spec.spatial_factor = 16;
        let record = insert_and_queue(&farm, record).await;
        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");
        worker.handle(lease).await.unwrap();
        let after = farm.book.get(&record.id).await.unwrap().unwrap();
        assert_eq!(after.state, JobState::Failed, "max_attempts 1");
        let error = after.error.expect("the reason");
        assert!(error.contains("spatial_factor 16") && error.contains("has 4 and 8"), "{error}");
        assert!(after.chunks.iter().all(|c| c.steps_done == 0 && !c.done), "nothing rendered");
    }

    #[test]
    fn retry_delays_double_up_to_a_cap() {
        let base = Duration::from_secs(1);
        let delays: Vec<u64> = (1..=11).map(|failures| retry_delay(base, failures).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(base, u32::MAX), LONGEST_RETRY_DELAY);
        assert_eq!(retry_delay(Duration::MAX, 2), LONGEST_RETRY_DELAY, "no overflow");
    }

    /// A second holder's clip (its lease lapsed, another assembled the same clip) stays while
    /// the record names it, and is removed once a `DeleteJob` has removed the first.
    #[tokio::test]
    async fn a_duplicate_clip_for_a_deleted_job_is_removed() {
        let (worker, farm, store_dir) = test_worker();
        let encoded = store_dir.path().join("encoded.mp4");
        std::fs::write(&encoded, b"an encoded clip").unwrap();
        let (record, _) = farm.book.insert(sample_record("job-twice", None)).await.unwrap();
        let clip_key = ArtifactStore::clip_key(&record.id);
        assert!(matches!(worker.store_clip(&record, &encoded, 33, 64, 64, None).await.unwrap(), Outcome::Done));

        worker.store_clip(&record, &encoded, 33, 64, 64, None).await.unwrap();
        assert!(worker.store.exists(&clip_key).await.unwrap(), "the clip the record names stays");

        // DeleteJob: the objects, then the record's clip.
        worker.store.delete(&clip_key).await.unwrap();
        farm.book.update(&record.id, JobChange::ObjectsDeleted).await.unwrap();
        let outcome = worker.store_clip(&record, &encoded, 33, 64, 64, None).await.unwrap();
        assert!(matches!(outcome, Outcome::Abandoned));
        assert!(!worker.store.exists(&clip_key).await.unwrap(), "a clip stored after the delete is removed");
    }

    /// The clip encoded a latent frame at a time is the one the whole decode gives, byte for
    /// byte, with the same seam ratio; a Stop ends the work before the next latent frame.
    #[test]
    fn a_clip_encoded_as_it_is_decoded_is_the_whole_clip() {
        let (worker, _farm, _store_dir) = test_worker();
        let spec = sample_record("job-stream", None).spec;
        let plan = sample_record("job-stream", None).chunks.iter().map(|c| c.plan).collect::<Vec<_>>();
        let parts: Vec<(ChunkPlan, Latents)> = plan.iter().map(|c| (*c, chunk_start(&worker.pipeline, &spec, c))).collect();
        let latents = stitch(spec.latent_frames(), &parts, spec.blend_curve).unwrap();
        let seams = seam_frames(&plan, spec.temporal_factor);
        let dir = tempfile::tempdir().unwrap();

        let video = worker.pipeline.decode(crate::render::to_tensor(&worker.pipeline, latents.clone())).unwrap();
        let [_, _, frames, height, width] = video.dims();
        let whole = vidfarm_video::RgbFrames::from_planar_signed(&video.into_data().to_vec::<f32>().unwrap(), frames, height, width, spec.fps).unwrap();
        vidfarm_video::encode_mp4(&whole, &dir.path().join("whole.mp4")).unwrap();
        let clip = vidfarm_synth::Clip::new(width, height, spec.fps, whole.frames).unwrap();
        let whole_ratio = vidfarm_synth::seam_ratio(&clip, &seams, spec.temporal_factor as usize);

        let run = AtomicU8::new(Directive::Run as u8);
        let streamed = encode_clip(&worker.pipeline, &spec, latents.clone(), &seams, &run, &dir.path().join("streamed.mp4")).unwrap();
        assert_eq!((streamed.frames, streamed.width, streamed.height), (33, 64, 64));
        assert!(whole_ratio.is_some());
        assert_eq!(streamed.seam_ratio, whole_ratio);
        let bytes = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        assert!(bytes("streamed.mp4") == bytes("whole.mp4"), "the streamed clip differs from the whole one");

        let stop = AtomicU8::new(Directive::Stop as u8);
        let stopped = encode_clip(&worker.pipeline, &spec, latents, &seams, &stop, &dir.path().join("stopped.mp4"));
        assert!(matches!(stopped, Err(WorkerError::Model(vidfarm_model::ModelError::Cancelled))), "{:?}", stopped.err());
    }

    /// A clip made by a second holder (its lease lapsed) after the first stored its own is not
    /// written over the first's: the record's size and sha256 keep naming the stored bytes.
    #[tokio::test]
    async fn a_second_clip_does_not_overwrite_the_stored_one() {
        let (worker, farm, store_dir) = test_worker();
        let (first, second) = (store_dir.path().join("first.mp4"), store_dir.path().join("second.mp4"));
        std::fs::write(&first, b"the first holder's encode").unwrap();
        std::fs::write(&second, b"the second holder's encode, other bytes").unwrap();
        let (record, _) = farm.book.insert(sample_record("job-overwrite", None)).await.unwrap();
        assert!(matches!(worker.store_clip(&record, &first, 33, 64, 64, None).await.unwrap(), Outcome::Done));
        assert!(matches!(worker.store_clip(&record, &second, 33, 64, 64, None).await.unwrap(), Outcome::Abandoned));
        let clip = farm.book.get(&record.id).await.unwrap().unwrap().clip.expect("the first clip");
        let stored = worker.store.get(&clip.object_key).await.unwrap();
        assert_eq!(stored.as_ref(), b"the first holder's encode");
        assert_eq!(clip.size_bytes, stored.len() as u64);
    }

    /// Stores a job over `book`, then has a worker take and handle its first task (a chunk);
    /// returns the worker, its farm and store folder, the job as stored, and the chunk.
    async fn denoise_one_chunk(book: Arc<FlakyBook>, id: &str) -> (Worker<DefaultBackend>, FarmState, tempfile::TempDir, JobRecord, u32) {
        let (worker, farm, store_dir) = test_worker_with(Arc::new(MemoryQueue::new()), book, 1);
        let record = insert_and_queue(&farm, sample_record(id, None)).await;
        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");
        let TaskKind::Denoise { chunk } = lease.task.kind else { panic!("{:?}", lease.task) };
        worker.handle(lease).await.unwrap();
        (worker, farm, store_dir, record, chunk)
    }

    /// A chunk rendered for a job cancelled (and maybe deleted) between its write and its
    /// record is removed, not left behind the delete.
    #[tokio::test]
    async fn a_chunk_finished_for_a_job_cancelled_meanwhile_is_removed() {
        let book = Arc::new(FlakyBook::new());
        book.cancel_before(|change| matches!(change, JobChange::ChunkDone { .. }));
        let (worker, farm, _store_dir, record, chunk) = denoise_one_chunk(book, "job-cancel-late").await;
        let after = farm.book.get(&record.id).await.unwrap().unwrap();
        assert_eq!((after.state, after.chunks[chunk as usize].done), (JobState::Cancelled, false));
        assert!(!worker.store.exists(&ArtifactStore::chunk_key(&record.id, chunk)).await.unwrap(), "the chunk was removed");
    }

    /// A chunk rendered for a job cancelled and removed (by a `DeleteJob` or the retention
    /// sweep) between its write and its record is removed too: the delete has passed already.
    #[tokio::test]
    async fn a_chunk_finished_for_a_job_removed_meanwhile_is_removed() {
        let book = Arc::new(FlakyBook::new());
        book.remove_before(|change| matches!(change, JobChange::ChunkDone { .. }));
        let (worker, farm, _store_dir, record, chunk) = denoise_one_chunk(book, "job-remove-late").await;
        assert!(farm.book.get(&record.id).await.unwrap().is_none(), "the job was removed");
        assert!(!worker.store.exists(&ArtifactStore::chunk_key(&record.id, chunk)).await.unwrap(), "the chunk was removed");
    }

    /// A clip finished for a job removed meanwhile (cancelled, then deleted) is removed.
    #[tokio::test]
    async fn a_clip_made_for_a_job_removed_meanwhile_is_removed() {
        let (worker, farm, store_dir) = test_worker();
        let encoded = store_dir.path().join("encoded.mp4");
        std::fs::write(&encoded, b"an encoded clip").unwrap();
        let (record, _) = farm.book.insert(sample_record("job-removed", None)).await.unwrap();
        farm.book.update(&record.id, JobChange::Control(vidfarm_queue::Control::Cancel)).await.unwrap();
        assert!(farm.book.remove(&record.id).await.unwrap());
        let outcome = worker.store_clip(&record, &encoded, 33, 64, 64, None).await.unwrap();
        assert!(matches!(outcome, Outcome::Abandoned));
        assert!(!worker.store.exists(&ArtifactStore::clip_key(&record.id)).await.unwrap(), "the clip was removed");
    }

    /// What a task wrote is removed when its job ended, other than by succeeding, before it
    /// could be recorded; a succeeded or running job's objects stay.
    #[tokio::test]
    async fn objects_written_for_a_job_that_ended_meanwhile_are_removed() {
        let (worker, farm, _store_dir) = test_worker();
        let (running, _) = farm.book.insert(sample_record("job-late", None)).await.unwrap();
        let key = ArtifactStore::chunk_key(&running.id, 0);
        worker.store.put_latents(&key, &Latents::zeros([16, 2, 4, 4])).await.unwrap();
        let written = [key.clone()];

        assert!(!worker.remove_if_job_ended(&running, &written).await.unwrap());
        let mut succeeded = running.clone();
        succeeded.state = JobState::Succeeded;
        assert!(!worker.remove_if_job_ended(&succeeded, &written).await.unwrap());
        assert!(worker.store.exists(&key).await.unwrap());

        let (cancelled, _) = farm.book.update(&running.id, JobChange::Control(vidfarm_queue::Control::Cancel)).await.unwrap();
        assert!(worker.remove_if_job_ended(&cancelled, &written).await.unwrap());
        assert!(!worker.store.exists(&key).await.unwrap());
    }

    /// An assemble task cut off `LOST_STARTS_PER_ATTEMPT` x `max_attempts` times (its worker
    /// killed decoding a clip too big for it, say) fails its job instead of going round the
    /// farm for ever.
    #[tokio::test]
    async fn an_assemble_cut_off_too_often_fails_its_job() {
        let (worker, farm, _store_dir) = test_worker();
        let (record, _) = farm.book.insert(sample_record("job-lost-assemble", None)).await.unwrap();
        for chunk in 0..record.chunks.len() as u32 {
            farm.book.update(&record.id, JobChange::ChunkDone { chunk }).await.unwrap();
        }
        for _ in 0..LOST_STARTS_PER_ATTEMPT {
            farm.book.update(&record.id, JobChange::AssembleStarted).await.unwrap();
        }
        for task in farm.book.get(&record.id).await.unwrap().unwrap().pending_tasks() {
            farm.queue.push(task).await.unwrap();
        }
        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");
        assert!(matches!(lease.task.kind, TaskKind::Assemble), "{:?}", lease.task);
        worker.handle(lease).await.unwrap();
        let after = farm.book.get(&record.id).await.unwrap().unwrap();
        assert_eq!(after.state, JobState::Failed);
        let error = after.error.expect("the reason");
        assert!(error.contains("assembling the clip was started 3 times without finishing"), "{error}");
        assert_eq!(after.assemble_starts, LOST_STARTS_PER_ATTEMPT, "no fourth start");
    }

    /// A task whose job was removed while it was held (its record read before; the retention
    /// sweep removes ended jobs) is dropped, not failed: the worker goes on to the next task.
    #[tokio::test]
    async fn a_task_whose_job_was_removed_is_dropped() {
        let (worker, farm, _store_dir) = test_worker();
        let record = insert_and_queue(&farm, sample_record("job-removed", None)).await;
        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");
        farm.book.update(&record.id, JobChange::Control(vidfarm_queue::Control::Cancel)).await.unwrap();
        assert!(farm.book.remove(&record.id).await.unwrap());

        worker.handle_in_span(lease.clone(), record).await.expect("the worker goes on");
        assert!(!farm.queue.renew(&lease, LEASE).await.unwrap(), "the task was acked");
    }

    /// A worker stopped by an error starts again (the embedded farm's workers too), and a
    /// shutdown still ends it cleanly.
    #[tokio::test]
    async fn a_worker_starts_again_after_an_error() {
        let queue = Arc::new(FlakyQueue::new());
        queue.fail("pull", 2);
        let (worker, _farm, _store_dir) = test_worker_with(queue.clone(), Arc::new(MemoryJobBook::new()), 1);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stop_after_restarts = async {
            // Two failed pulls, then one that waits for a task: the third run is up.
            while queue.calls("pull") < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shutdown.send(true).unwrap();
        };
        let (ran, ()) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(worker.run_with_restarts(shutdown_rx), stop_after_restarts) })
            .await
            .expect("the worker stops when told");
        ran.expect("a clean stop");
    }

    /// A sync chunk's last step is recorded with its end, in one update. Were they two, a
    /// failure between them (Redis lost, the worker killed) would leave a chunk past its last
    /// step and not done, whose next task reads a step that was never stored: the job would
    /// fail with every chunk rendered.
    #[tokio::test]
    async fn a_sync_chunk_whose_end_could_not_be_recorded_ends_on_its_retry() {
        let book = Arc::new(FlakyBook::new());
        book.fail_updates(1, |change| matches!(change, JobChange::ChunkDone { .. }));
        let (worker, farm, _store_dir) = test_worker_with(Arc::new(MemoryQueue::new()), book, 2);
        let mut record = sample_record("job-sync-end", None);
        record.spec.stitch_mode = StitchMode::Sync;
        record.spec.steps = 2;
        let record = insert_and_queue(&farm, record).await;
        while let Some(lease) = farm.queue.pull("w", LEASE, Duration::from_millis(50)).await.unwrap() {
            worker.handle(lease).await.unwrap();
        }
        let done = farm.book.get(&record.id).await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
        assert_eq!(done.chunks.iter().map(|c| c.failures).sum::<u32>(), 1, "the one injected failure");
    }

    /// A sync chunk left past its last step and not done (an older version recorded the two
    /// apart and was stopped between them) is ended by the task its record asks for, and the
    /// clip's assembly follows, instead of that task failing the job.
    #[tokio::test]
    async fn a_sync_chunk_left_past_its_last_step_is_ended() {
        let (worker, farm, _store_dir) = test_worker();
        let mut record = sample_record("job-sync-past", None);
        record.spec.stitch_mode = StitchMode::Sync;
        record.spec.steps = 2;
        let (record, _) = farm.book.insert(record).await.unwrap();
        farm.book.update(&record.id, JobChange::Step { chunk: 0, step: 2, steps_total: 2 }).await.unwrap();
        farm.book.update(&record.id, JobChange::ChunkDone { chunk: 1 }).await.unwrap();
        let stuck = farm.book.get(&record.id).await.unwrap().unwrap();
        let tasks: Vec<_> = stuck.pending_tasks().into_iter().map(|task| task.kind).collect();
        assert!(matches!(tasks[..], [TaskKind::SyncStep { chunk: 0, step: 2 }]), "{tasks:?}");
        for task in stuck.pending_tasks() {
            farm.queue.push(task).await.unwrap();
        }

        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");
        worker.handle(lease).await.unwrap();
        let after = farm.book.get(&record.id).await.unwrap().unwrap();
        assert!(after.chunks[0].done);
        assert_eq!(after.error, None);
        let next = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("the next task");
        assert!(matches!(next.task.kind, TaskKind::Assemble), "{:?}", next.task);
    }

    /// A task of a job this version cannot read (a newer version's) is handed back for later,
    /// not acked (the job would be lost) nor failed back to the worker's loop.
    #[tokio::test]
    async fn a_task_of_a_job_this_version_cannot_read_is_handed_back() {
        let book = Arc::new(FlakyBook::new());
        let (worker, farm, _store_dir) = test_worker_with(Arc::new(MemoryQueue::new()), book.clone(), 1);
        let record = insert_and_queue(&farm, sample_record("job-newer", None)).await;
        book.make_incompatible(&record.id);
        let lease = farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().expect("a task");
        worker.handle(lease.clone()).await.expect("the worker goes on");
        assert!(!farm.queue.renew(&lease, LEASE).await.unwrap(), "no longer held");
        assert_eq!(farm.queue.depth().await.unwrap(), record.pending_tasks().len(), "still queued");
        assert!(farm.queue.pull("w", LEASE, Duration::ZERO).await.unwrap().is_some_and(|l| l.task.id() != lease.task.id()), "not at once");
    }

    /// The files under a local folder, relative to it, sorted.
    fn files_under(root: &Path) -> Vec<String> {
        let mut files = Vec::new();
        let mut folders = vec![root.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    files.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        files.sort();
        files
    }

    /// The steps whose sync-mode objects a job has in a local store, ascending.
    fn stored_sync_steps(root: &Path, job_id: &str) -> Vec<u32> {
        let mut steps: Vec<u32> = files_under(&root.join("jobs").join(job_id))
            .iter()
            .filter_map(|file| file.strip_prefix("chunks/sync/")?.split('/').next()?.parse().ok())
            .collect();
        steps.dedup();
        steps
    }

    /// A sync job's step objects go as soon as every chunk has taken the step after them, not
    /// once the clip is stored; and a holder that read the job before another took its step
    /// (so the step's objects may be gone) abandons the step instead of failing the task.
    #[tokio::test]
    async fn sync_step_objects_go_at_the_barrier_and_a_stale_holder_abandons_its_step() {
        let (worker, farm, store_dir) = test_worker();

        let mut record = sample_record("job-sync", None);
        record.spec.stitch_mode = StitchMode::Sync;
        record.spec.steps = 3;
        assert_eq!(record.chunks.len(), 2);
        let record = insert_and_queue(&farm, record).await;
        let mut stale = None;
        while let Some(lease) = farm.queue.pull("w", LEASE, Duration::from_millis(10)).await.unwrap() {
            let now = farm.book.get(&record.id).await.unwrap().unwrap();
            match lease.task.kind {
                TaskKind::SyncStep { chunk: 0, step: 1 } => stale = Some(now.clone()),
                // Past the barrier of step 1: its objects are gone, step 2's are read now.
                TaskKind::SyncStep { step: 2, .. } => assert_eq!(stored_sync_steps(store_dir.path(), &record.id), vec![2]),
                TaskKind::Assemble => {
                    assert_eq!(stored_sync_steps(store_dir.path(), &record.id), Vec::<u32>::new());
                    // Chunk 0's step 1 as a holder that read the job before that step was taken.
                    let stale = stale.as_ref().expect("chunk 0's step 1 came before");
                    let outcome = worker.sync_step(&lease, stale, 0, 1).await.unwrap();
                    assert!(matches!(outcome, Outcome::Abandoned));
                }
                _ => {}
            }
            worker.handle(lease).await.unwrap();
        }
        let done = farm.book.get(&record.id).await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
        assert!(done.chunks.iter().all(|c| c.failures == 0), "{:?}", done.chunks);
        assert_eq!(files_under(&store_dir.path().join("jobs").join(&record.id)), ["clip.mp4"], "the intermediates went with the clip");
    }
}
