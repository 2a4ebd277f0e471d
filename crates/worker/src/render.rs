//! The model work of a task, synchronous and CPU/GPU-bound: run it on a blocking thread.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use vidfarm_api::{RenderSpec, Sampler};
use vidfarm_model::ModelError;
use vidfarm_model::transformer::ClipSpan;
use vidfarm_model::pipeline::{CleanPrefix, Pipeline, PromptEmbedding, SamplerKind, SamplingOptions, StepControl, StepProgress};
use vidfarm_plan::{ChunkPlan, FrameSpan, Latents, fuse_chunk, noise};
use vidfarm_synth::FrameChanges;
use vidfarm_video::{Mp4Writer, RgbFrames};

use crate::worker::WorkerError;

/// What the task's control side asks of a running chunk, checked between denoising steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Directive {
    Run = 0,
    Pause = 1,
    /// Cancelled, failed elsewhere, or the lease was lost: the work is no longer ours.
    Stop = 2,
}

impl Directive {
    pub fn load(cell: &AtomicU8) -> Self {
        match cell.load(Ordering::Acquire) {
            0 => Self::Run,
            1 => Self::Pause,
            _ => Self::Stop,
        }
    }
}

fn sampler_kind(sampler: Sampler) -> SamplerKind {
    match sampler {
        Sampler::Euler => SamplerKind::Euler,
        Sampler::Heun => SamplerKind::Heun,
        Sampler::UniPc => SamplerKind::UniPc,
    }
}

/// Latent shape `[channels, frames, height, width]` of a chunk.
pub fn chunk_shape<B: Backend>(pipeline: &Pipeline<B>, spec: &RenderSpec, chunk: &ChunkPlan) -> [usize; 4] {
    let info = pipeline.info();
    [
        info.latent_channels,
        chunk.len() as usize,
        spec.height as usize / info.spatial_factor,
        spec.width as usize / info.spatial_factor,
    ]
}

/// A chunk's starting noise: the noise of its frames, which chunks overlapping it share.
pub fn chunk_start<B: Backend>(pipeline: &Pipeline<B>, spec: &RenderSpec, chunk: &ChunkPlan) -> Latents {
    let [c, _, h, w] = chunk_shape(pipeline, spec, chunk);
    noise::chunk_noise(spec.seed, chunk, c, h, w)
}

pub(crate) fn to_tensor<B: Backend>(pipeline: &Pipeline<B>, latents: Latents) -> Tensor<B, 5> {
    let [c, f, h, w] = latents.shape;
    Tensor::from_data(TensorData::new(latents.data, [1, c, f, h, w]), pipeline.device())
}

fn to_latents<B: Backend>(tensor: Tensor<B, 5>) -> Result<Latents, ModelError> {
    let [_, c, f, h, w] = tensor.dims();
    let values = tensor.into_data().to_vec::<f32>().map_err(|e| ModelError::InvalidInput(format!("latents: {e:?}")))?;
    Latents::new([c, f, h, w], values).map_err(|e| ModelError::InvalidInput(e.to_string()))
}

/// A job's prompt and negative prompt, encoded: the guidance's two conditions.
pub struct Prompts<B: Backend> {
    cond: PromptEmbedding<B>,
    uncond: PromptEmbedding<B>,
}

impl<B: Backend> Prompts<B> {
    pub fn encode(pipeline: &Pipeline<B>, spec: &RenderSpec) -> Result<Self, ModelError> {
        Ok(Self { cond: pipeline.encode_prompt(&spec.prompt)?, uncond: pipeline.encode_prompt(&spec.negative_prompt)? })
    }
}

fn sampling_options(spec: &RenderSpec) -> SamplingOptions {
    SamplingOptions {
        sampler: sampler_kind(spec.sampler),
        steps: spec.steps as usize,
        guidance_scale: spec.guidance_scale,
        guidance_min_sigma: spec.guidance_min_sigma,
        flow_shift: spec.flow_shift,
    }
}

/// Denoises one chunk from its starting noise; in chain mode, continuing from the `previous`
/// chunk's latents, whose frames overlapping this chunk are held as a clean prefix. `on_step` is
/// told each finished step of the job's `steps`; `directive` is obeyed between model
/// evaluations (a pause waits there, holding the chunk's state).
pub fn denoise_chunk<B: Backend>(
    pipeline: &Pipeline<B>,
    spec: &RenderSpec,
    chunk: &ChunkPlan,
    previous: Option<(&ChunkPlan, &Latents)>,
    directive: &AtomicU8,
    on_step: &mut dyn FnMut(StepProgress),
) -> Result<Latents, ModelError> {
    let noise = to_tensor(pipeline, chunk_start(pipeline, spec, chunk));
    let [_, c, f, h, w] = noise.dims();
    let prefix = match previous {
        Some((plan, latents)) => {
            let held = plan.end.saturating_sub(chunk.start) as usize;
            let [pc, pf, ph, pw] = latents.shape;
            if held == 0 || held >= f || held > pf || [pc, ph, pw] != [c, h, w] {
                return Err(ModelError::InvalidInput(format!(
                    "chunk {} cannot continue from chunk {} (latents {:?}, {held} frames shared)",
                    chunk.index, plan.index, latents.shape
                )));
            }
            let previous = to_tensor(pipeline, latents.slice_frames(pf - held, held));
            Some(CleanPrefix { latents: previous, noise: noise.clone().narrow(2, 0, held) })
        }
        None => None,
    };
    let Prompts { cond, uncond } = Prompts::encode(pipeline, spec)?;
    let span = clip_span(spec, chunk);
    let mut step_started = Instant::now();
    let mut steps_reported = 0;
    let latents = pipeline.denoise(noise, &cond, &uncond, prefix.as_ref(), span, &sampling_options(spec), &mut |progress| {
        // On an asynchronous device (CUDA) the step's kernels may still be queued: wait for them,
        // so the step's time is its own and not partly the next one's.
        if let Err(error) = B::sync(pipeline.device()) {
            tracing::warn!(?error, "device sync after a step failed");
        }
        vidfarm_telemetry::metrics().step_finished(step_started.elapsed().as_secs_f64());
        let steps_done = job_steps_done(progress, spec.steps);
        if steps_done > steps_reported {
            steps_reported = steps_done;
            on_step(StepProgress { step: steps_done as usize, total: spec.steps as usize });
        }
        loop {
            match Directive::load(directive) {
                Directive::Run => break,
                Directive::Stop => return StepControl::Stop,
                // Done: a finished chunk is stored, not held in the pause, where a worker
                // stopping would hand it back and have it denoised again.
                Directive::Pause if steps_done >= spec.steps => break,
                Directive::Pause => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        // A pause is not the step's time.
        step_started = Instant::now();
        StepControl::Continue
    })?;
    to_latents(latents)
}

/// Whether this worker's model is the one the job was planned for, as far as its shape goes:
/// a coordinator whose profile differs from the workers' weights (one upgraded, not the other)
/// plans frames and seams the model does not make.
pub fn check_model_fits<B: Backend>(pipeline: &Pipeline<B>, spec: &RenderSpec) -> Result<(), ModelError> {
    let info = pipeline.info();
    if spec.temporal_factor as usize != info.temporal_factor || spec.spatial_factor as usize != info.pixels_per_token() {
        return Err(ModelError::InvalidInput(format!(
            "the job was planned for model {:?} with temporal_factor {} and spatial_factor {}; this worker's model has {} and {}",
            spec.model,
            spec.temporal_factor,
            spec.spatial_factor,
            info.temporal_factor,
            info.pixels_per_token()
        )));
    }
    Ok(())
}

/// How many of the job's `steps` are done after `progress`, which counts model evaluations
/// (heun makes two a step, one for the last): a job's progress counts the steps it asked for.
fn job_steps_done(progress: StepProgress, steps: u32) -> u32 {
    (progress.step * steps as usize / progress.total.max(1)) as u32
}

/// Where a chunk sits in its clip, for models that see it (`position_frequencies`).
fn clip_span(spec: &RenderSpec, chunk: &ChunkPlan) -> ClipSpan {
    ClipSpan { start: chunk.start as usize, clip_frames: spec.latent_frames() as usize }
}

/// Sync mode: denoising step `step` (0-based) of `chunk` from `latents`, its fused latents after
/// the step before (its starting noise before step 0).
pub fn denoise_step<B: Backend>(
    pipeline: &Pipeline<B>,
    spec: &RenderSpec,
    prompts: &Prompts<B>,
    chunk: &ChunkPlan,
    latents: Latents,
    step: u32,
) -> Result<Latents, ModelError> {
    let opts = sampling_options(spec);
    let started = Instant::now();
    let next = pipeline.euler_step(to_tensor(pipeline, latents), step as usize, &prompts.cond, &prompts.uncond, clip_span(spec, chunk), &opts)?;
    let next = to_latents(next);
    vidfarm_telemetry::metrics().step_finished(started.elapsed().as_secs_f64());
    next
}

/// Sync mode in one process (for `vidfarm model eval`): all chunks take a step, then each is
/// fused with the others' overlapping frames, step after step, as the farm's workers do it
/// through the store. Returns the chunks' latents after the last step, for [`stitch`].
///
/// [`stitch`]: vidfarm_plan::stitch
pub fn denoise_synced<B: Backend>(pipeline: &Pipeline<B>, spec: &RenderSpec, plan: &[ChunkPlan]) -> Result<Vec<Latents>, ModelError> {
    let prompts = Prompts::encode(pipeline, spec)?;
    let mut chunks: Vec<Latents> = plan.iter().map(|chunk| chunk_start(pipeline, spec, chunk)).collect();
    for step in 0..spec.steps {
        if step > 0 {
            let whole: Vec<(u32, FrameSpan)> =
                plan.iter().zip(&chunks).map(|(c, latents)| (c.index, FrameSpan { start: c.start, latents: latents.clone() })).collect();
            chunks = plan
                .iter()
                .map(|c| fuse_chunk(plan, c.index, &chunks[c.index as usize], &whole, spec.blend_curve))
                .collect::<Result<_, _>>()
                .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        }
        chunks = plan
            .iter()
            .zip(chunks)
            .map(|(chunk, latents)| denoise_step(pipeline, spec, &prompts, chunk, latents, step))
            .collect::<Result<_, _>>()?;
    }
    Ok(chunks)
}

/// What [`encode_clip`] wrote.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncodedClip {
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    /// Measured on the decoded frames, before H.264 (whose blocks would add their own).
    pub seam_ratio: Option<f64>,
}

/// Decodes the clip's stitched latents and encodes them as an MP4 at `path`, a latent frame at
/// a time: a long clip is never whole in memory (a minute of 720p at 24 fps would be about
/// 16 GB of floats). `seams` are the video frames where chunks meet, for the seam ratio. A
/// Stop in `directive` ends the work between latent frames.
pub fn encode_clip<B: Backend>(
    pipeline: &Pipeline<B>,
    spec: &RenderSpec,
    latents: Latents,
    seams: &[usize],
    directive: &AtomicU8,
    path: &Path,
) -> Result<EncodedClip, WorkerError> {
    // Entered in turn, a latent frame at a time: each span's busy time is its share.
    let (decoding, encoding) = (tracing::info_span!("decode"), tracing::info_span!("encode_mp4"));
    let mut writer = Mp4Writer::create(path, spec.width, spec.height, spec.fps)?;
    let mut changes = FrameChanges::default();
    let mut decoded = decoding.in_scope(|| pipeline.decode_frames(to_tensor(pipeline, latents)))?;
    loop {
        if Directive::load(directive) == Directive::Stop {
            return Err(ModelError::Cancelled.into());
        }
        let Some(rgb) = decoding.in_scope(|| {
            decoded.next().map(|video| {
                let [_, _, frames, height, width] = video.dims();
                let values = video.into_data().to_vec::<f32>().map_err(|e| ModelError::InvalidInput(format!("video: {e:?}")))?;
                Ok::<_, WorkerError>(RgbFrames::from_planar_signed(&values, frames, height, width, spec.fps)?)
            })
        }) else {
            break;
        };
        let rgb = rgb?;
        encoding.in_scope(|| {
            rgb.frames.iter().try_for_each(|frame| {
                changes.push(frame);
                writer.write_frame(frame)
            })
        })?;
    }
    let frames = writer.frames() as u32;
    encoding.in_scope(|| writer.finish())?;
    Ok(EncodedClip { frames, width: spec.width, height: spec.height, seam_ratio: changes.seam_ratio(seams, spec.temporal_factor as usize) })
}
