//! How jobs are shown: one JSON object for scripts, a line or a progress bar for people.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use vidfarm_api::pb;

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Paused) => "paused",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

pub fn is_final(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

pub fn clip_json(c: &pb::Clip) -> Value {
    json!({
        "job_id": c.job_id, "object_key": c.object_key, "size_bytes": c.size_bytes, "sha256": c.sha256,
        "frames": c.frames, "fps": c.fps, "duration_seconds": c.duration_seconds,
        "width": c.width, "height": c.height, "url": c.url, "seam_ratio": c.seam_ratio,
    })
}

pub fn job_json(job: &pb::Job) -> Value {
    let spec = job.spec.clone().unwrap_or_default();
    let progress = job.progress.clone().unwrap_or_default();
    json!({
        "job_id": job.job_id,
        "state": state_name(job.state),
        "error": (!job.error.is_empty()).then_some(&job.error),
        "spec": {
            "prompt": spec.prompt, "negative_prompt": spec.negative_prompt, "frames": spec.frames, "fps": spec.fps,
            "width": spec.width, "height": spec.height, "seed": spec.seed, "sampler": spec.sampler, "steps": spec.steps,
            "guidance_scale": spec.guidance_scale, "guidance_min_sigma": spec.guidance_min_sigma, "flow_shift": spec.flow_shift,
            "chunk_latent_frames": spec.chunk_latent_frames, "overlap_latent_frames": spec.overlap_latent_frames,
            "stitch_mode": wire_name(pb::StitchMode::try_from(spec.stitch_mode).map(|m| m.as_str_name()), "STITCH_MODE_"),
            "blend_curve": wire_name(pb::BlendCurve::try_from(spec.blend_curve).map(|c| c.as_str_name()), "BLEND_CURVE_"),
            "priority": wire_name(pb::Priority::try_from(spec.priority).map(|p| p.as_str_name()), "PRIORITY_"),
            "keep_intermediates": spec.keep_intermediates, "model": spec.model,
        },
        "progress": {
            "stage": progress.stage, "fraction": progress.fraction, "chunks_done": progress.chunks_done,
            "chunks_total": progress.chunks_total, "steps_done": progress.steps_done, "steps_total": progress.steps_total,
        },
        "chunks": job.chunks.iter().map(|c| json!({
            "index": c.index, "latent_start": c.latent_start, "latent_end": c.latent_end,
            "done": c.done, "steps_done": c.steps_done, "attempts": c.attempts,
        })).collect::<Vec<_>>(),
        "clip": job.clip.as_ref().map(clip_json),
        "idempotency_key": job.idempotency_key,
        "created_at_ms": job.created_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "trace_id": (!job.trace_id.is_empty()).then_some(&job.trace_id),
    })
}

/// A wire enum as the CLI's flags spell it: `STITCH_MODE_SYNC` -> `sync`.
fn wire_name<E>(name: Result<&str, E>, prefix: &str) -> String {
    name.map_or_else(|_| "unknown".into(), |name| name.trim_start_matches(prefix).to_lowercase())
}

pub fn job_line(job: &pb::Job) -> String {
    let p = job.progress.clone().unwrap_or_default();
    let mut line = format!(
        "{}  {:<9}  {:>3.0}%  chunks {}/{}  {}",
        job.job_id,
        state_name(job.state),
        p.fraction * 100.0,
        p.chunks_done,
        p.chunks_total,
        job.spec.as_ref().map(|s| s.prompt.as_str()).unwrap_or_default()
    );
    if !job.error.is_empty() {
        line.push_str(&format!("\n  error: {}", job.error));
    }
    line
}

/// A progress bar over a job's fraction, hidden when `quiet`.
pub fn job_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn update_bar(bar: &ProgressBar, job: &pb::Job) {
    let p = job.progress.clone().unwrap_or_default();
    bar.set_position((p.fraction * 1000.0) as u64);
    bar.set_message(format!(
        "{} {} chunks {}/{} steps {}/{}",
        state_name(job.state),
        p.stage,
        p.chunks_done,
        p.chunks_total,
        p.steps_done,
        p.steps_total
    ));
}

/// Writes one line to stdout. A reader that went away (`vidfarm list | head`) is not an
/// error worth a panic: the line is dropped.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

pub fn worker_state_name(state: i32) -> &'static str {
    match pb::WorkerState::try_from(state) {
        Ok(pb::WorkerState::Idle) => "idle",
        Ok(pb::WorkerState::Busy) => "busy",
        Ok(pb::WorkerState::Draining) => "draining",
        _ => "unknown",
    }
}

pub fn worker_json(worker: &pb::Worker) -> Value {
    json!({
        "name": worker.name,
        "state": worker_state_name(worker.state),
        "task_id": (!worker.task_id.is_empty()).then_some(&worker.task_id),
        "tasks_done": worker.tasks_done,
        "started_at_ms": worker.started_at_ms,
        "heartbeat_at_ms": worker.heartbeat_at_ms,
    })
}

pub fn worker_line(worker: &pb::Worker) -> String {
    format!("{}  {:<8}  {} tasks done  {}", worker.name, worker_state_name(worker.state), worker.tasks_done, worker.task_id)
}
