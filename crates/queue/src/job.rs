//! A job's record and the changes that move it through its life. `JobRecord::apply` is pure,
//! so every backend applies changes the same way and refuses the same invalid ones.

use crate::QueueError;
use serde::{Deserialize, Serialize};
use crate::task::{Task, TaskKind};
use vidfarm_api::{RenderSpec, StitchMode};
use vidfarm_plan::ChunkPlan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Queued,
    Denoise,
    Assemble,
    Done,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkStatus {
    pub plan: ChunkPlan,
    pub done: bool,
    pub steps_done: u32,
    /// Deliveries that started denoising (a lapsed lease counts too); in sync mode, where a
    /// delivery is one step, steps started.
    pub attempts: u32,
    /// Deliveries that ended in an error; the job fails when these reach the worker's limit.
    #[serde(default)]
    pub failures: u32,
    /// Deliveries handed back unfinished on purpose: their worker stopped while the job was
    /// paused. Neither lost nor failed.
    #[serde(default)]
    pub handed_back: u32,
    /// Fields of a newer version, kept as they were when this version rewrites the record.
    #[serde(flatten)]
    pub newer_fields: serde_json::Map<String, serde_json::Value>,
}

impl ChunkStatus {
    /// Starts that neither finished, failed cleanly nor were handed back: renders cut off
    /// because their worker died (out of memory, say) or lost its lease. `sync`: a start is one
    /// step, and each step finished counts as finished. Taken before a start, so the one in
    /// hand is not counted.
    pub fn lost_starts(&self, sync: bool) -> u32 {
        let finished = if sync { self.steps_done } else { 0 };
        self.attempts.saturating_sub(self.failures + self.handed_back + finished)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipInfo {
    pub object_key: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub frames: u32,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    /// Mean frame difference across chunk seams over the mean inside chunks (1: invisible
    /// seams); none for a one-chunk clip.
    #[serde(default)]
    pub seam_ratio: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec: RenderSpec,
    pub state: JobState,
    pub stage: Stage,
    pub chunks: Vec<ChunkStatus>,
    /// Why the job failed; while it runs, the last error of a task that will be retried.
    pub error: Option<String>,
    pub clip: Option<ClipInfo>,
    /// Failed deliveries of the assemble task.
    #[serde(default)]
    pub assemble_failures: u32,
    /// Starts of the assemble task.
    #[serde(default)]
    pub assemble_starts: u32,
    pub idempotency_key: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Number of changes applied so far.
    pub sequence: u64,
    /// The W3C trace context of the call that submitted the job, which every task's spans
    /// continue; none when traces are not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Fields of a newer version (a rolling upgrade), kept as they were when this version
    /// rewrites the record: dropped, the newer version would read its defaults back.
    #[serde(flatten)]
    pub newer_fields: serde_json::Map<String, serde_json::Value>,
}

/// A change to a job, as sent by the coordinator (control) or a worker (progress).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobChange {
    /// A worker started a delivery of a chunk.
    ChunkStarted { chunk: u32 },
    Step { chunk: u32, step: u32, steps_total: u32 },
    ChunkDone { chunk: u32 },
    /// A worker stopping handed back its delivery of a chunk, paused unfinished: not a lost
    /// start. A chunk that starts over (all but sync mode) is back at step 0.
    ChunkHandedBack { chunk: u32 },
    AssembleStarted,
    Succeeded(ClipInfo),
    Failed(String),
    /// A delivery of a task ended in an error (`chunk` None: the assemble task); counted, and
    /// the error kept, whether or not the task is retried.
    TaskFailed { chunk: Option<u32>, error: String },
    Control(Control),
    /// The job's objects were removed from the store (`DeleteJob`); it has no clip any more.
    ObjectsDeleted,
}

impl JobChange {
    /// The final state this change put its job in, given what applying it did; `None` unless
    /// it ended the job just then (a deletion's event repeats the state of a job that had ended).
    pub fn ended_job(&self, detail: Option<&UpdateDetail>) -> Option<JobState> {
        match (self, detail) {
            (Self::ObjectsDeleted, _) => None,
            (_, Some(UpdateDetail::State(state))) if state.is_final() => Some(*state),
            _ => None,
        }
    }
}

/// What a client asks of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Cancel,
    Pause,
    Resume,
}

/// What an applied change did, for watchers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UpdateDetail {
    State(JobState),
    Step { chunk: u32, step: u32, steps_total: u32 },
    ChunkFinished(u32),
    Stage(Stage),
    /// A task failed; `failures` deliveries of it have failed so far.
    TaskFailed { chunk: Option<u32>, failures: u32, error: String },
}

impl JobRecord {
    pub fn new(id: String, spec: RenderSpec, plan: Vec<ChunkPlan>, idempotency_key: Option<String>, now_ms: i64) -> Self {
        Self {
            id,
            spec,
            state: JobState::Queued,
            stage: Stage::Queued,
            chunks: plan.into_iter().map(|plan| ChunkStatus { plan, done: false, steps_done: 0, attempts: 0, failures: 0, handed_back: 0, newer_fields: Default::default() }).collect(),
            error: None,
            clip: None,
            assemble_failures: 0,
            assemble_starts: 0,
            idempotency_key,
            created_ms: now_ms,
            updated_ms: now_ms,
            sequence: 0,
            traceparent: None,
            newer_fields: Default::default(),
        }
    }

    pub fn chunks_done(&self) -> usize {
        self.chunks.iter().filter(|c| c.done).count()
    }

    pub fn all_chunks_done(&self) -> bool {
        self.chunks.iter().all(|c| c.done)
    }

    /// The tasks the job needs from here: its chunks not yet denoised (in chain mode only the
    /// first of them, which continues from the one before; in sync mode the next step of the
    /// chunks that are behind, so no chunk starts a step before all finished the one before),
    /// or, once all are, assembling.
    pub fn pending_tasks(&self) -> Vec<Task> {
        let task = |kind| Task::new(&self.id, kind, self.spec.priority);
        if self.state.is_final() {
            return Vec::new();
        }
        if self.all_chunks_done() {
            return vec![task(TaskKind::Assemble)];
        }
        let undone = self.chunks.iter().filter(|c| !c.done);
        match self.spec.stitch_mode {
            StitchMode::Chain => undone.take(1).map(|c| task(TaskKind::Denoise { chunk: c.plan.index })).collect(),
            StitchMode::Blend => undone.map(|c| task(TaskKind::Denoise { chunk: c.plan.index })).collect(),
            StitchMode::Sync => {
                let step = self.sync_step();
                undone
                    .filter(|c| c.steps_done == step)
                    .map(|c| task(TaskKind::SyncStep { chunk: c.plan.index, step }))
                    .collect()
            }
        }
    }

    /// Starts of the assemble task that neither finished nor failed cleanly (as
    /// `ChunkStatus::lost_starts`). Taken before a start, so the one in hand is not counted.
    pub fn lost_assemble_starts(&self) -> u32 {
        self.assemble_starts.saturating_sub(self.assemble_failures)
    }

    /// Sync mode's barrier: the step every chunk has finished (the one all are at or past).
    pub fn sync_step(&self) -> u32 {
        self.chunks.iter().map(|c| c.steps_done).min().unwrap_or(0)
    }

    /// Progress from 0 to 1: denoising steps count for 90%, assembling for the rest.
    pub fn fraction(&self) -> f64 {
        match self.stage {
            Stage::Done => return 1.0,
            Stage::Assemble => return 0.9,
            _ => {}
        }
        let total = self.chunks.len() as f64 * f64::from(self.spec.steps);
        let done: f64 = self.chunks.iter().map(|c| if c.done { f64::from(self.spec.steps) } else { f64::from(c.steps_done) }).sum();
        if total == 0.0 { 0.0 } else { 0.9 * done / total }
    }

    /// Applies a change. `Ok(None)` means it changed nothing (a late duplicate from a stale
    /// worker, progress on a finished job); control changes that cannot apply are errors.
    pub fn apply(&mut self, change: &JobChange, now_ms: i64) -> Result<Option<UpdateDetail>, QueueError> {
        let detail = match change {
            JobChange::Control(control) => self.apply_control(*control)?,
            JobChange::ObjectsDeleted => {
                if !self.state.is_final() {
                    return Err(QueueError::Precondition(format!("cannot delete job {}: it is {}", self.id, self.state.name())));
                }
                // The state stays; the event tells watchers the job changed (its clip is gone).
                self.clip.take().map(|_| UpdateDetail::State(self.state))
            }
            _ if self.state.is_final() => None,
            JobChange::ChunkStarted { chunk } => {
                let sync = self.spec.stitch_mode == StitchMode::Sync;
                let status = self.chunk_mut(*chunk)?;
                // A stale holder (it read the record before the chunk was done): its start
                // would take the done chunk's steps back to 0.
                if status.done {
                    return Ok(None);
                }
                status.attempts += 1;
                // A sync chunk goes on from its last finished step; others start over.
                if !sync {
                    status.steps_done = 0;
                }
                if self.state == JobState::Queued {
                    self.state = JobState::Running;
                    self.stage = Stage::Denoise;
                    Some(UpdateDetail::State(JobState::Running))
                } else {
                    Some(UpdateDetail::Stage(self.stage))
                }
            }
            JobChange::Step { chunk, step, steps_total } => {
                let sync = self.spec.stitch_mode == StitchMode::Sync;
                let status = self.chunk_mut(*chunk)?;
                // A sync chunk's steps are the barrier's record: they never go back.
                if status.done || (sync && *step <= status.steps_done) {
                    return Ok(None);
                }
                status.steps_done = *step;
                Some(UpdateDetail::Step { chunk: *chunk, step: *step, steps_total: *steps_total })
            }
            JobChange::ChunkDone { chunk } => {
                let steps = self.spec.steps;
                let status = self.chunk_mut(*chunk)?;
                if status.done {
                    return Ok(None);
                }
                status.done = true;
                status.steps_done = steps;
                Some(UpdateDetail::ChunkFinished(*chunk))
            }
            JobChange::ChunkHandedBack { chunk } => {
                let (sync, steps_total) = (self.spec.stitch_mode == StitchMode::Sync, self.spec.steps);
                let status = self.chunk_mut(*chunk)?;
                if status.done {
                    return Ok(None);
                }
                status.handed_back += 1;
                if !sync {
                    status.steps_done = 0;
                }
                Some(UpdateDetail::Step { chunk: *chunk, step: status.steps_done, steps_total })
            }
            JobChange::AssembleStarted => {
                // Each start is counted: one cut off (its worker killed decoding a clip too big
                // for it) fails nothing cleanly.
                self.assemble_starts += 1;
                self.stage = Stage::Assemble;
                Some(UpdateDetail::Stage(Stage::Assemble))
            }
            JobChange::Succeeded(clip) => {
                self.clip = Some(clip.clone());
                self.state = JobState::Succeeded;
                self.stage = Stage::Done;
                Some(UpdateDetail::State(JobState::Succeeded))
            }
            JobChange::TaskFailed { chunk, error } => {
                let failures = match chunk {
                    Some(chunk) => {
                        let status = self.chunk_mut(*chunk)?;
                        status.failures += 1;
                        status.failures
                    }
                    None => {
                        self.assemble_failures += 1;
                        self.assemble_failures
                    }
                };
                self.error = Some(error.clone());
                Some(UpdateDetail::TaskFailed { chunk: *chunk, failures, error: error.clone() })
            }
            JobChange::Failed(error) => {
                self.error = Some(error.clone());
                self.state = JobState::Failed;
                Some(UpdateDetail::State(JobState::Failed))
            }
        };
        if detail.is_some() {
            self.sequence += 1;
            self.updated_ms = now_ms;
        }
        Ok(detail)
    }

    fn apply_control(&mut self, control: Control) -> Result<Option<UpdateDetail>, QueueError> {
        if self.state.is_final() {
            let verb = format!("{control:?}").to_lowercase();
            return Err(QueueError::Precondition(format!("cannot {verb} job {}: it is already {}", self.id, self.state.name())));
        }
        let next = match (control, self.state) {
            (Control::Cancel, _) => JobState::Cancelled,
            (Control::Pause, JobState::Paused) | (Control::Resume, JobState::Queued | JobState::Running) => return Ok(None),
            (Control::Pause, _) => JobState::Paused,
            (Control::Resume, _) if self.chunks.iter().any(|c| c.attempts > 0) => JobState::Running,
            (Control::Resume, _) => JobState::Queued,
        };
        self.state = next;
        Ok(Some(UpdateDetail::State(next)))
    }

    fn chunk_mut(&mut self, chunk: u32) -> Result<&mut ChunkStatus, QueueError> {
        let id = self.id.clone();
        self.chunks
            .get_mut(chunk as usize)
            .ok_or_else(|| QueueError::Precondition(format!("job {id} has no chunk {chunk}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_record;

    #[test]
    fn task_failures_are_counted_per_task_and_keep_the_last_error() {
        let mut record = sample_record("job-f", None);
        let fail = |chunk, error: &str| JobChange::TaskFailed { chunk, error: error.to_string() };
        record.apply(&fail(Some(0), "store unreachable"), 1).unwrap();
        let detail = record.apply(&fail(Some(0), "store still unreachable"), 2).unwrap();
        assert_eq!(detail, Some(UpdateDetail::TaskFailed { chunk: Some(0), failures: 2, error: "store still unreachable".into() }));
        assert_eq!((record.chunks[0].failures, record.chunks[0].attempts), (2, 0), "failures before a start still count");
        record.apply(&fail(None, "disk full"), 3).unwrap();
        assert_eq!((record.assemble_failures, record.error.as_deref()), (1, Some("disk full")));
        assert!(matches!(record.apply(&fail(Some(99), "x"), 4), Err(QueueError::Precondition(_))));
    }

    #[test]
    fn sync_chunks_wait_for_each_other_at_every_step() {
        let mut record = sample_record("job-s", None);
        record.spec.stitch_mode = StitchMode::Sync;
        let chunks = record.chunks.len() as u32;
        assert!(chunks >= 2, "the sample has several chunks");
        let kinds = |r: &JobRecord| r.pending_tasks().into_iter().map(|t| t.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&record), (0..chunks).map(|chunk| TaskKind::SyncStep { chunk, step: 0 }).collect::<Vec<_>>());
        let step = |chunk, step| JobChange::Step { chunk, step, steps_total: 20 };
        record.apply(&JobChange::ChunkStarted { chunk: 0 }, 1).unwrap();
        record.apply(&step(0, 1), 2).unwrap();
        // Chunk 0 is ahead: only the others' step 0 is pending until they catch up.
        assert_eq!(kinds(&record), (1..chunks).map(|chunk| TaskKind::SyncStep { chunk, step: 0 }).collect::<Vec<_>>());
        for chunk in 1..chunks {
            record.apply(&step(chunk, 1), 3).unwrap();
        }
        assert_eq!(kinds(&record), (0..chunks).map(|chunk| TaskKind::SyncStep { chunk, step: 1 }).collect::<Vec<_>>());
        // A late duplicate neither moves a chunk back nor does a new start reset it.
        assert_eq!(record.apply(&step(0, 1), 4).unwrap(), None);
        record.apply(&JobChange::ChunkStarted { chunk: 0 }, 5).unwrap();
        assert_eq!((record.chunks[0].steps_done, record.sync_step()), (1, 1));
        for chunk in 0..chunks {
            record.apply(&JobChange::ChunkDone { chunk }, 6).unwrap();
        }
        assert_eq!(kinds(&record), vec![TaskKind::Assemble]);
    }

    #[test]
    fn deleting_objects_needs_a_final_job_and_drops_its_clip_once() {
        let mut record = sample_record("job-d", None);
        assert!(matches!(record.apply(&JobChange::ObjectsDeleted, 1), Err(QueueError::Precondition(_))));
        let clip = ClipInfo {
            object_key: "jobs/job-d/clip.mp4".into(),
            size_bytes: 1,
            sha256: "00".into(),
            frames: 33,
            fps: 8,
            width: 64,
            height: 64,
            seam_ratio: None,
        };
        record.apply(&JobChange::Succeeded(clip), 2).unwrap();
        let sequence = record.sequence;
        assert_eq!(record.apply(&JobChange::ObjectsDeleted, 3).unwrap(), Some(UpdateDetail::State(JobState::Succeeded)));
        assert_eq!((record.clip.as_ref(), record.sequence), (None, sequence + 1));
        assert_eq!(record.apply(&JobChange::ObjectsDeleted, 4).unwrap(), None, "a second delete changes nothing");
    }

    /// Starts cut off are those neither failed nor, in sync mode, finished as a step.
    #[test]
    fn lost_starts_count_renders_that_neither_finished_nor_failed() {
        let mut record = sample_record("job-l", None);
        for _ in 0..3 {
            record.apply(&JobChange::ChunkStarted { chunk: 0 }, 1).unwrap();
        }
        record.apply(&JobChange::TaskFailed { chunk: Some(0), error: "boom".into() }, 1).unwrap();
        assert_eq!(record.chunks[0].lost_starts(false), 2);
        record.spec.stitch_mode = StitchMode::Sync;
        record.apply(&JobChange::Step { chunk: 0, step: 1, steps_total: 4 }, 1).unwrap();
        assert_eq!(record.chunks[0].lost_starts(true), 1, "one start finished its step");
        assert_eq!(record.chunks[1].lost_starts(true), 0);

        for _ in 0..3 {
            record.apply(&JobChange::AssembleStarted, 1).unwrap().expect("each start is a change");
        }
        record.apply(&JobChange::TaskFailed { chunk: None, error: "boom".into() }, 1).unwrap();
        assert_eq!(record.lost_assemble_starts(), 2);
    }

    /// Fields a newer version added survive this version's changes to the record.
    #[test]
    fn a_newer_versions_fields_are_kept() {
        let mut stored = serde_json::to_value(sample_record("job-n", None)).unwrap();
        stored["shelf"] = serde_json::json!({"tier": "cold"});
        stored["chunks"][0]["denoised_on"] = serde_json::json!("gpu-7");
        let mut record: JobRecord = serde_json::from_value(stored).unwrap();
        record.apply(&JobChange::ChunkStarted { chunk: 0 }, 1).unwrap();
        let rewritten = serde_json::to_value(&record).unwrap();
        assert_eq!(rewritten["shelf"]["tier"], "cold");
        assert_eq!(rewritten["chunks"][0]["denoised_on"], "gpu-7");
        assert_eq!(rewritten["chunks"][0]["attempts"], 1);
        assert!(serde_json::to_value(sample_record("job-n", None)).unwrap().get("newer_fields").is_none(), "nothing of its own");
    }

    /// A start read from a stale record, of a chunk done since, changes nothing.
    #[test]
    fn a_start_of_a_done_chunk_changes_nothing() {
        let mut record = sample_record("job-d", None);
        record.apply(&JobChange::ChunkStarted { chunk: 0 }, 1).unwrap();
        record.apply(&JobChange::ChunkDone { chunk: 0 }, 2).unwrap();
        let before = record.clone();
        assert_eq!(record.apply(&JobChange::ChunkStarted { chunk: 0 }, 3).unwrap(), None);
        assert_eq!(record, before);
    }

    /// A delivery handed back by a worker stopping while the job is paused is no lost start,
    /// and the chunk's progress goes back to what the next delivery starts from.
    #[test]
    fn a_handed_back_start_is_not_lost() {
        let mut record = sample_record("job-h", None);
        record.apply(&JobChange::ChunkStarted { chunk: 0 }, 1).unwrap();
        record.apply(&JobChange::Step { chunk: 0, step: 2, steps_total: 4 }, 1).unwrap();
        record.apply(&JobChange::Control(Control::Pause), 1).unwrap();
        let sequence = record.sequence;
        let detail = record.apply(&JobChange::ChunkHandedBack { chunk: 0 }, 2).unwrap();
        assert_eq!(detail, Some(UpdateDetail::Step { chunk: 0, step: 0, steps_total: 4 }));
        assert_eq!((record.chunks[0].lost_starts(false), record.chunks[0].steps_done, record.sequence), (0, 0, sequence + 1));
        assert_eq!(record.state, JobState::Paused);

        record.spec.stitch_mode = StitchMode::Sync;
        record.apply(&JobChange::ChunkStarted { chunk: 1 }, 3).unwrap();
        record.apply(&JobChange::Step { chunk: 1, step: 1, steps_total: 4 }, 3).unwrap();
        record.apply(&JobChange::ChunkStarted { chunk: 1 }, 3).unwrap();
        record.apply(&JobChange::ChunkHandedBack { chunk: 1 }, 4).unwrap();
        assert_eq!((record.chunks[1].lost_starts(true), record.chunks[1].steps_done), (0, 1), "a sync chunk keeps its steps");

        record.apply(&JobChange::ChunkDone { chunk: 1 }, 5).unwrap();
        assert_eq!(record.apply(&JobChange::ChunkHandedBack { chunk: 1 }, 6).unwrap(), None, "a done chunk has nothing to hand back");
    }

    #[test]
    fn a_job_ends_once_and_only_by_a_final_change() {
        let mut record = sample_record("job-e", None);
        let mut ended = |change: JobChange| {
            let detail = record.apply(&change, 1).unwrap();
            change.ended_job(detail.as_ref())
        };
        assert_eq!(ended(JobChange::Control(Control::Pause)), None);
        assert_eq!(ended(JobChange::Control(Control::Resume)), None);
        assert_eq!(ended(JobChange::Failed("chunk 0 failed".into())), Some(JobState::Failed));
        assert_eq!(ended(JobChange::Failed("again".into())), None, "a job ends once");
        assert_eq!(ended(JobChange::ObjectsDeleted), None, "a deletion repeats the final state without ending the job");
        let mut record = sample_record("job-f", None);
        let detail = record.apply(&JobChange::Control(Control::Cancel), 1).unwrap();
        assert_eq!(JobChange::Control(Control::Cancel).ended_job(detail.as_ref()), Some(JobState::Cancelled));
    }
}
