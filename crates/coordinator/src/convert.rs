//! Job records as the API shows them.

use vidfarm_api::pb;
use vidfarm_queue::{JobRecord, JobState, Stage, UpdateDetail, WorkerInfo, WorkerState};
use vidfarm_store::ArtifactStore;

pub fn state_to_pb(state: JobState) -> pb::JobState {
    match state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Paused => pb::JobState::Paused,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// `None` for the unspecified value; unknown numbers are the caller's to reject.
pub fn state_from_pb(state: pb::JobState) -> Option<JobState> {
    match state {
        pb::JobState::Unspecified => None,
        pb::JobState::Queued => Some(JobState::Queued),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Paused => Some(JobState::Paused),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Queued => "queued",
        Stage::Denoise => "denoise",
        Stage::Assemble => "assemble",
        Stage::Done => "done",
    }
}

/// The clip of a finished job; `url` is where to fetch it (a presigned URL is made only for
/// `GetClip`, so job views of S3 stores leave it empty).
pub fn clip_to_pb(record: &JobRecord, url: String) -> Option<pb::Clip> {
    let clip = record.clip.as_ref()?;
    Some(pb::Clip {
        job_id: record.id.clone(),
        object_key: clip.object_key.clone(),
        size_bytes: clip.size_bytes,
        sha256: clip.sha256.clone(),
        frames: clip.frames,
        fps: clip.fps,
        duration_seconds: f64::from(clip.frames) / f64::from(clip.fps.max(1)),
        width: clip.width,
        height: clip.height,
        url,
        seam_ratio: clip.seam_ratio,
    })
}

pub fn job_to_pb(record: &JobRecord, store: &ArtifactStore) -> pb::Job {
    let steps = record.spec.steps;
    pb::Job {
        job_id: record.id.clone(),
        spec: Some(pb::ResolvedSpec::from(&record.spec)),
        state: state_to_pb(record.state) as i32,
        progress: Some(pb::Progress {
            chunks_done: record.chunks_done() as u32,
            chunks_total: record.chunks.len() as u32,
            steps_done: record.chunks.iter().map(|c| if c.done { steps } else { c.steps_done }).sum(),
            steps_total: steps * record.chunks.len() as u32,
            stage: stage_name(record.stage).to_string(),
            fraction: record.fraction(),
        }),
        chunks: record
            .chunks
            .iter()
            .map(|c| pb::Chunk {
                index: c.plan.index,
                latent_start: c.plan.start,
                latent_end: c.plan.end,
                done: c.done,
                steps_done: c.steps_done,
                attempts: c.attempts,
            })
            .collect(),
        error: record.error.clone().unwrap_or_default(),
        clip: clip_to_pb(record, record.clip.as_ref().and_then(|c| store.local_url(&c.object_key)).unwrap_or_default()),
        idempotency_key: record.idempotency_key.clone().unwrap_or_default(),
        created_at_ms: record.created_ms,
        updated_at_ms: record.updated_ms,
        trace_id: record.traceparent.as_deref().and_then(vidfarm_telemetry::traces::trace_id).unwrap_or_default().to_string(),
    }
}

pub fn detail_to_pb(detail: &UpdateDetail) -> pb::job_event::Detail {
    use pb::job_event::Detail;
    match detail {
        UpdateDetail::State(s) => Detail::StateChanged(state_to_pb(*s) as i32),
        UpdateDetail::Step { chunk, step, steps_total } => {
            Detail::Step(pb::StepProgress { chunk_index: *chunk, step: *step, steps_total: *steps_total })
        }
        UpdateDetail::ChunkFinished(c) => Detail::ChunkFinished(*c),
        UpdateDetail::Stage(s) => Detail::StageStarted(stage_name(*s).to_string()),
        UpdateDetail::TaskFailed { chunk, failures, error } => {
            Detail::TaskFailed(pb::TaskFailure { chunk_index: *chunk, failures: *failures, error: error.clone() })
        }
    }
}

pub fn worker_to_pb(worker: &WorkerInfo) -> pb::Worker {
    let state = match worker.state {
        WorkerState::Idle => pb::WorkerState::Idle,
        WorkerState::Busy => pb::WorkerState::Busy,
        WorkerState::Draining => pb::WorkerState::Draining,
    };
    pb::Worker {
        name: worker.name.clone(),
        state: state as i32,
        task_id: worker.task.clone().unwrap_or_default(),
        tasks_done: worker.tasks_done,
        started_at_ms: worker.started_ms,
        heartbeat_at_ms: worker.heartbeat_ms,
    }
}
