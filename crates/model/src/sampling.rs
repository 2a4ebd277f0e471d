//! The denoising loop: flow-matching sampler + DiT with classifier-free guidance, reporting each
//! step to a callback that may stop the run between steps.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::ModelError;
use crate::scheduler::FlowSampler;
use crate::transformer::{ClipSpan, WanTransformer3DModel};

/// Which flow-matching sampler to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// First order, one DiT evaluation per step (diffusers `FlowMatchEulerDiscreteScheduler`).
    Euler,
    /// Second order, `2 * steps - 1` DiT evaluations (diffusers `FlowMatchHeunDiscreteScheduler`).
    Heun,
    /// Multistep predictor-corrector, one evaluation per step (Wan's default `UniPCMultistepScheduler`).
    UniPc,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 3] = [SamplerKind::Euler, SamplerKind::Heun, SamplerKind::UniPc];

    pub fn as_str(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::Heun => "heun",
            SamplerKind::UniPc => "unipc",
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SamplerKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SamplerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| ModelError::InvalidInput(format!("unknown sampler {s:?}, expected euler, heun or unipc")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingOptions {
    pub sampler: SamplerKind,
    /// Sampler steps (Heun evaluates the DiT `2 * steps - 1` times).
    pub steps: usize,
    /// Classifier-free guidance weight; at or below 1 the unconditional pass is skipped (as
    /// diffusers does).
    pub guidance_scale: f32,
    /// Shift of the sigma schedule (Wan: 3.0 at 480p, 5.0 at 720p).
    pub flow_shift: f32,
    /// Guidance applies only at noise levels above this sigma; the steps below take the
    /// conditional prediction alone (0: every step is guided, as diffusers does). Why: guidance
    /// decides what is drawn and where, at high noise; at low noise it pushes details past
    /// what the model would draw (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
    /// Interval Improves Sample and Distribution Quality in Diffusion Models").
    pub guidance_min_sigma: f32,
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.steps == 0 {
            return Err(ModelError::InvalidInput("steps must be at least 1".into()));
        }
        if !self.guidance_scale.is_finite() {
            return Err(ModelError::InvalidInput(format!("guidance_scale {} is not finite", self.guidance_scale)));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(ModelError::InvalidInput(format!("flow_shift {} must be positive", self.flow_shift)));
        }
        if !(0.0..=1.0).contains(&self.guidance_min_sigma) {
            return Err(ModelError::InvalidInput(format!("guidance_min_sigma {} must be in [0, 1]", self.guidance_min_sigma)));
        }
        Ok(())
    }

    /// The guidance scale of a model evaluation at noise level `sigma` (1 turns guidance off).
    pub fn guidance_at(&self, sigma: f64) -> f32 {
        if sigma > f64::from(self.guidance_min_sigma) { self.guidance_scale } else { 1.0 }
    }

    /// The sampler with its schedule, ready to step.
    pub fn sampler<B: Backend, const D: usize>(&self) -> FlowSampler<B, D> {
        let shift = self.flow_shift as f64;
        match self.sampler {
            SamplerKind::Euler => FlowSampler::euler(self.steps, shift),
            SamplerKind::Heun => FlowSampler::heun(self.steps, shift),
            SamplerKind::UniPc => FlowSampler::unipc(self.steps, shift),
        }
    }

    /// Number of DiT evaluations (callback calls) a run makes.
    pub fn evaluations(&self) -> usize {
        match self.sampler {
            SamplerKind::Heun => 2 * self.steps - 1,
            SamplerKind::Euler | SamplerKind::UniPc => self.steps,
        }
    }
}

/// Reported after every completed sampler step (one DiT evaluation, or two with guidance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepProgress {
    /// 1-based index of the step just completed.
    pub step: usize,
    pub total: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    Stop,
}

/// The classifier-free-guided flow prediction at timestep `t` (one sampler step's model work):
/// `uncond + scale * (cond - uncond)`, or just the conditional prediction when `guidance_scale`
/// is at most 1. Both passes run as one batch when the embeddings have the same shape. Every item
/// sits at `span` of its clip.
pub fn guided_flow<B: Backend>(
    transformer: &WanTransformer3DModel<B>,
    latents: Tensor<B, 5>,
    t: f64,
    cond: Tensor<B, 3>,
    uncond: Tensor<B, 3>,
    guidance_scale: f32,
    span: ClipSpan,
) -> Result<Tensor<B, 5>, ModelError> {
    let batch = latents.dims()[0];
    if guidance_scale <= 1.0 {
        return transformer.forward_in(latents, &vec![t as f32; batch], cond, &vec![span; batch]);
    }
    let (cond_flow, uncond_flow) = if cond.dims() == uncond.dims() {
        let both = transformer.forward_in(
            Tensor::cat(vec![latents.clone(), latents], 0),
            &vec![t as f32; 2 * batch],
            Tensor::cat(vec![cond, uncond], 0),
            &vec![span; 2 * batch],
        )?;
        (both.clone().narrow(0, 0, batch), both.narrow(0, batch, batch))
    } else {
        let timesteps = vec![t as f32; batch];
        (
            transformer.forward_in(latents.clone(), &timesteps, cond, &vec![span; batch])?,
            transformer.forward_in(latents, &timesteps, uncond, &vec![span; batch])?,
        )
    };
    Ok(uncond_flow.clone() + (cond_flow - uncond_flow) * guidance_scale)
}

/// Clean latent frames that a sampling run continues from (a chain of chunks): before every model
/// evaluation the run's first frames are replaced by these latents noised to the current level
/// with `noise`, so the rest is denoised as a continuation of them; they come out clean.
pub struct CleanPrefix<B: Backend> {
    /// `[batch, channels, prefix frames, height, width]`.
    pub latents: Tensor<B, 5>,
    /// The same shape: the noise those frames started from.
    pub noise: Tensor<B, 5>,
}

impl<B: Backend> CleanPrefix<B> {
    /// `latents` with its first frames set to the prefix at noise level `sigma`.
    fn hold(&self, latents: Tensor<B, 5>, sigma: f64) -> Tensor<B, 5> {
        let [_, _, frames, _, _] = latents.dims();
        let held = self.latents.dims()[2];
        let prefix = self.latents.clone() * (1.0 - sigma) + self.noise.clone() * sigma;
        Tensor::cat(vec![prefix, latents.narrow(2, held, frames - held)], 2)
    }
}

/// Runs the sampler from `noise` (`[batch, channels, frames, height, width]`, sigma 1) to sigma 0,
/// guiding the flow prediction with `cond`/`uncond` text embeddings (`[batch, tokens, text_dim]`).
/// With a `prefix`, its frames are held (see [`CleanPrefix`]). The sample is `span` of its clip.
/// Returns `Err(ModelError::Cancelled)` as soon as `on_step` answers [`StepControl::Stop`].
#[allow(clippy::too_many_arguments)]
pub fn denoise<B: Backend>(
    transformer: &WanTransformer3DModel<B>,
    noise: Tensor<B, 5>,
    cond: Tensor<B, 3>,
    uncond: Tensor<B, 3>,
    prefix: Option<&CleanPrefix<B>>,
    span: ClipSpan,
    opts: &SamplingOptions,
    on_step: &mut dyn FnMut(StepProgress) -> StepControl,
) -> Result<Tensor<B, 5>, ModelError> {
    opts.validate()?;
    if let Some(prefix) = prefix {
        let (held, sample) = (prefix.latents.dims(), noise.dims());
        let fits = held == prefix.noise.dims() && held[2] < sample[2] && (0..5).all(|d| d == 2 || held[d] == sample[d]);
        if !fits {
            return Err(ModelError::InvalidInput(format!("a clean prefix of {held:?} does not fit a sample of {sample:?} (same batch, channels and size, fewer frames)")));
        }
    }
    let mut sampler = opts.sampler::<B, 5>();
    let total = sampler.remaining();
    let mut latents = noise;
    for step in 1..=total {
        let (Some(t), Some(sigma)) = (sampler.next_timestep(), sampler.next_sigma()) else { break };
        if let Some(prefix) = prefix {
            latents = prefix.hold(latents, sigma);
        }
        let flow = guided_flow(transformer, latents.clone(), t, cond.clone(), uncond.clone(), opts.guidance_at(sigma), span)?;
        latents = sampler.step(flow, latents);
        if on_step(StepProgress { step, total }) == StepControl::Stop {
            return Err(ModelError::Cancelled);
        }
    }
    Ok(match prefix {
        Some(prefix) => prefix.hold(latents, 0.0),
        None => latents,
    })
}

/// One Euler step, number `step` (0-based) of `opts`' schedule, from `latents` at that step's
/// noise level: sync mode's unit of work, which any worker can take from the latents alone.
/// Taking every step in turn gives [`denoise`]'s Euler result bit for bit.
pub fn euler_step<B: Backend>(
    transformer: &WanTransformer3DModel<B>,
    latents: Tensor<B, 5>,
    step: usize,
    cond: Tensor<B, 3>,
    uncond: Tensor<B, 3>,
    span: ClipSpan,
    opts: &SamplingOptions,
) -> Result<Tensor<B, 5>, ModelError> {
    opts.validate()?;
    if opts.sampler != SamplerKind::Euler {
        return Err(ModelError::InvalidInput(format!("a single step needs the euler sampler, not {}", opts.sampler)));
    }
    let mut sampler = FlowSampler::<B, 5>::euler_from(opts.steps, f64::from(opts.flow_shift), step);
    let (Some(t), Some(sigma)) = (sampler.next_timestep(), sampler.next_sigma()) else {
        return Err(ModelError::InvalidInput(format!("step {step} is past the last of {} steps", opts.steps)));
    };
    let flow = guided_flow(transformer, latents.clone(), t, cond, uncond, opts.guidance_at(sigma), span)?;
    Ok(sampler.step(flow, latents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};
    use crate::transformer::WanTransformerConfig;
    use burn::tensor::Distribution;

    type B = TestBackend;

    fn tiny_transformer() -> WanTransformer3DModel<B> {
        let config: WanTransformerConfig = serde_json::from_value(serde_json::json!({
            "num_attention_heads": 2, "attention_head_dim": 6, "in_channels": 2, "out_channels": 2,
            "text_dim": 4, "freq_dim": 8, "ffn_dim": 8, "num_layers": 1
        }))
        .expect("config");
        let device = Default::default();
        B::seed(&device, 5);
        WanTransformer3DModel::random(config, &device).expect("random")
    }

    fn inputs() -> (Tensor<B, 5>, Tensor<B, 3>, Tensor<B, 3>) {
        let device = Default::default();
        (
            Tensor::random([1, 2, 2, 2, 4], Distribution::Normal(0.0, 1.0), &device),
            Tensor::random([1, 3, 4], Distribution::Normal(0.0, 1.0), &device),
            Tensor::random([1, 3, 4], Distribution::Normal(0.0, 1.0), &device),
        )
    }

    #[test]
    fn sampler_names_parse_and_print() {
        for kind in SamplerKind::ALL {
            assert_eq!(kind.to_string().parse::<SamplerKind>().expect("parse"), kind);
        }
        assert!("ddim".parse::<SamplerKind>().is_err());
    }

    #[test]
    fn reports_every_step_and_stops_on_request() {
        let model = tiny_transformer();
        for sampler in SamplerKind::ALL {
            let opts = SamplingOptions { sampler, steps: 3, guidance_scale: 4.0, flow_shift: 3.0, guidance_min_sigma: 0.0 };
            let (noise, cond, uncond) = inputs();
            let mut seen = Vec::new();
            let out = denoise(&model, noise.clone(), cond.clone(), uncond.clone(), None, ClipSpan::whole(2), &opts, &mut |p| {
                seen.push(p);
                StepControl::Continue
            })
            .expect("denoise");
            assert_eq!(out.dims(), noise.dims());
            let total = opts.evaluations();
            assert_eq!(seen, (1..=total).map(|step| StepProgress { step, total }).collect::<Vec<_>>());

            let mut calls = 0;
            let stopped = denoise(&model, noise, cond, uncond, None, ClipSpan::whole(2), &opts, &mut |_| {
                calls += 1;
                if calls == 2 { StepControl::Stop } else { StepControl::Continue }
            });
            assert!(matches!(stopped, Err(ModelError::Cancelled)));
            assert_eq!(calls, 2);
        }
    }

    #[test]
    fn guidance_one_ignores_the_negative_prompt() {
        let model = tiny_transformer();
        let opts = SamplingOptions { sampler: SamplerKind::Euler, steps: 2, guidance_scale: 1.0, flow_shift: 1.0, guidance_min_sigma: 0.0 };
        let (noise, cond, uncond) = inputs();
        let a = denoise(&model, noise.clone(), cond.clone(), uncond, None, ClipSpan::whole(2), &opts, &mut |_| StepControl::Continue).expect("a");
        let b = denoise(&model, noise, cond.clone(), cond.zeros_like(), None, ClipSpan::whole(2), &opts, &mut |_| StepControl::Continue).expect("b");
        assert_eq!(max_abs_diff(a, b), 0.0);
    }

    /// Guided steps only above `guidance_min_sigma`: at 1 none is (as with guidance 1), in
    /// between the first steps are and the last are not.
    #[test]
    fn guidance_stops_below_its_min_sigma() {
        let model = tiny_transformer();
        let (noise, cond, uncond) = inputs();
        let run = |guidance_scale, guidance_min_sigma| {
            let opts = SamplingOptions { sampler: SamplerKind::Euler, steps: 4, guidance_scale, flow_shift: 3.0, guidance_min_sigma };
            denoise(&model, noise.clone(), cond.clone(), uncond.clone(), None, ClipSpan::whole(2), &opts, &mut |_| StepControl::Continue).expect("denoise")
        };
        let unguided = run(1.0, 0.0);
        assert_eq!(max_abs_diff(run(4.0, 1.0), unguided.clone()), 0.0);
        let (guided, part) = (run(4.0, 0.0), run(4.0, 0.5));
        assert!(max_abs_diff(part.clone(), guided) > 1e-5 && max_abs_diff(part, unguided) > 1e-5);
        let bad = SamplingOptions { sampler: SamplerKind::Euler, steps: 4, guidance_scale: 4.0, flow_shift: 3.0, guidance_min_sigma: 1.5 };
        let result = denoise(&model, noise.clone(), cond.clone(), uncond.clone(), None, ClipSpan::whole(2), &bad, &mut |_| StepControl::Continue);
        assert!(matches!(result, Err(ModelError::InvalidInput(m)) if m.contains("guidance_min_sigma")));
    }

    #[test]
    fn a_clean_prefix_comes_out_as_it_went_in_and_steers_the_rest() {
        let model = tiny_transformer();
        let (noise, cond, uncond) = inputs();
        let [b, c, f, h, w] = noise.dims();
        let held = f - 1;
        let device = noise.device();
        let prefix = CleanPrefix {
            latents: Tensor::random([b, c, held, h, w], Distribution::Normal(0.0, 1.0), &device),
            noise: noise.clone().narrow(2, 0, held),
        };
        for sampler in SamplerKind::ALL {
            let opts = SamplingOptions { sampler, steps: 3, guidance_scale: 4.0, flow_shift: 3.0, guidance_min_sigma: 0.0 };
            let run = |prefix| denoise(&model, noise.clone(), cond.clone(), uncond.clone(), prefix, ClipSpan::whole(f), &opts, &mut |_| StepControl::Continue);
            let (free, held_run) = (run(None).expect("free"), run(Some(&prefix)).expect("held"));
            assert_eq!(max_abs_diff(held_run.clone().narrow(2, 0, held), prefix.latents.clone()), 0.0, "{sampler}");
            let rest = |x: Tensor<B, 5>| x.narrow(2, held, f - held);
            assert!(max_abs_diff(rest(held_run), rest(free)) > 1e-4, "{sampler}: the prefix changes the frames after it");
        }
        let longer = Tensor::random([b, c, f + 1, h, w], Distribution::Normal(0.0, 1.0), &device);
        let misfit = CleanPrefix { latents: longer.clone(), noise: longer };
        let opts = SamplingOptions { sampler: SamplerKind::Euler, steps: 2, guidance_scale: 1.0, flow_shift: 1.0, guidance_min_sigma: 0.0 };
        let result = denoise(&model, noise, cond, uncond, Some(&misfit), ClipSpan::whole(f), &opts, &mut |_| StepControl::Continue);
        assert!(matches!(result, Err(ModelError::InvalidInput(m)) if m.contains("prefix")));
    }

    #[test]
    fn euler_steps_one_at_a_time_match_a_whole_run() {
        let model = tiny_transformer();
        let opts = SamplingOptions { sampler: SamplerKind::Euler, steps: 4, guidance_scale: 3.0, flow_shift: 3.0, guidance_min_sigma: 0.0 };
        let (noise, cond, uncond) = inputs();
        let whole = denoise(&model, noise.clone(), cond.clone(), uncond.clone(), None, ClipSpan::whole(2), &opts, &mut |_| StepControl::Continue).expect("whole");
        let mut latents = noise;
        for step in 0..opts.steps {
            latents = euler_step(&model, latents, step, cond.clone(), uncond.clone(), ClipSpan::whole(2), &opts).expect("step");
        }
        assert_eq!(max_abs_diff(latents.clone(), whole), 0.0);
        assert!(euler_step(&model, latents.clone(), 4, cond.clone(), uncond.clone(), ClipSpan::whole(2), &opts).is_err(), "past the end");
        let unipc = SamplingOptions { sampler: SamplerKind::UniPc, ..opts };
        assert!(matches!(euler_step(&model, latents, 0, cond, uncond, ClipSpan::whole(2), &unipc), Err(ModelError::InvalidInput(m)) if m.contains("euler")));
    }

    #[test]
    fn invalid_options_are_errors() {
        let model = tiny_transformer();
        let (noise, cond, uncond) = inputs();
        let opts = SamplingOptions { sampler: SamplerKind::Euler, steps: 0, guidance_scale: 1.0, flow_shift: 1.0, guidance_min_sigma: 0.0 };
        let result = denoise(&model, noise, cond, uncond, None, ClipSpan::whole(2), &opts, &mut |_| StepControl::Continue);
        assert!(matches!(result, Err(ModelError::InvalidInput(_))));
    }

    #[test]
    fn batched_guidance_matches_separate_passes() {
        let model = tiny_transformer();
        let (noise, cond, uncond) = inputs();
        let batched = guided_flow(&model, noise.clone(), 700.0, cond.clone(), uncond.clone(), 5.0, ClipSpan::whole(2)).expect("batched");
        let timesteps = [700.0f32];
        let c = model.forward(noise.clone(), &timesteps, cond).expect("cond");
        let u = model.forward(noise, &timesteps, uncond).expect("uncond");
        let separate = u.clone() + (c - u) * 5.0;
        assert!(max_abs_diff(batched, separate) < 1e-5);
    }
}
