//! The model work of a task, synchronous and CPU/GPU-bound: run it on a blocking thread.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use vidfarm_api::{RenderSpec, Sampler};
use vidfarm_model::ModelError;
use vidfarm_model::pipeline::{CleanPrefix, Pipeline, SamplerKind, SamplingOptions, StepControl, StepProgress};
use vidfarm_plan::{ChunkPlan, Latents, noise};
use vidfarm_video::RgbFrames;

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

/// Denoises one chunk from its seed's noise; in chain mode, continuing from the `previous`
/// chunk's latents, whose frames overlapping this chunk are held as a clean prefix. `on_step` is
/// told each finished step; `directive` is obeyed between steps (a pause waits there, holding
/// the chunk's state).
pub fn denoise_chunk<B: Backend>(
    pipeline: &Pipeline<B>,
    spec: &RenderSpec,
    chunk: &ChunkPlan,
    previous: Option<(&ChunkPlan, &Latents)>,
    directive: &AtomicU8,
    on_step: &mut dyn FnMut(StepProgress),
) -> Result<Latents, ModelError> {
    let shape = chunk_shape(pipeline, spec, chunk);
    let values = noise::gaussian(chunk.seed, shape.iter().product());
    let [c, f, h, w] = shape;
    let noise = Tensor::<B, 5>::from_data(TensorData::new(values, [1, c, f, h, w]), pipeline.device());
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
            let previous = Tensor::<B, 5>::from_data(TensorData::new(latents.data.clone(), [1, pc, pf, ph, pw]), pipeline.device());
            Some(CleanPrefix { latents: previous.narrow(2, pf - held, held), noise: noise.clone().narrow(2, 0, held) })
        }
        None => None,
    };
    let cond = pipeline.encode_prompt(&spec.prompt)?;
    let uncond = pipeline.encode_prompt(&spec.negative_prompt)?;
    let options = SamplingOptions {
        sampler: sampler_kind(spec.sampler),
        steps: spec.steps as usize,
        guidance_scale: spec.guidance_scale,
        flow_shift: spec.flow_shift,
    };
    let latents = pipeline.denoise(noise, &cond, &uncond, prefix.as_ref(), &options, &mut |progress| {
        on_step(progress);
        loop {
            match Directive::load(directive) {
                Directive::Run => return StepControl::Continue,
                Directive::Stop => return StepControl::Stop,
                Directive::Pause => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })?;
    let values = latents.into_data().to_vec::<f32>().map_err(|e| ModelError::InvalidInput(format!("latents: {e:?}")))?;
    Latents::new(shape, values).map_err(|e| ModelError::InvalidInput(e.to_string()))
}

/// Decodes the clip's stitched latents into RGB frames.
pub fn decode_clip<B: Backend>(pipeline: &Pipeline<B>, spec: &RenderSpec, latents: Latents) -> Result<RgbFrames, ModelError> {
    let [c, f, h, w] = latents.shape;
    let tensor = Tensor::<B, 5>::from_data(TensorData::new(latents.data, [1, c, f, h, w]), pipeline.device());
    let video = pipeline.decode(tensor)?;
    let [_, _, frames, height, width] = video.dims();
    let values = video.into_data().to_vec::<f32>().map_err(|e| ModelError::InvalidInput(format!("video: {e:?}")))?;
    RgbFrames::from_planar_signed(&values, frames, height, width, spec.fps).map_err(|e| ModelError::InvalidInput(e.to_string()))
}
