//! A training run's folder: the latest checkpoint in the diffusers layout (so `vidfarm render
//! --model OUT` renders it), the optimizer state and `train_state.json`. Checkpoints are written
//! whole into `OUT/.checkpoint-partial/` and then moved into place with `train_state.json` last,
//! so a run killed at any moment resumes from one consistent checkpoint.

use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, Param, ParamId};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::data::ClipShape;
use crate::error::{TrainError, io_error};

pub const STATE_FILE: &str = "train_state.json";
/// burn's recorder adds the `.mpk` extension.
pub const OPTIMIZER_FILE: &str = "optimizer";
const PARTIAL_DIR: &str = ".checkpoint-partial";
/// Rendering needs the model's profile; training copies it from the model it starts from.
const PROFILE_FILE: &str = "vidfarm.toml";

/// Everything that decides a run's numbers. A run resumes only under the same recipe; `steps` and
/// how often to checkpoint may change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub batch: usize,
    /// Peak learning rate; [`LrSchedule`] gives each step's.
    pub lr: f64,
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    pub seed: u64,
    pub clip: ClipShape,
    pub stage: StageRecipe,
}

/// The learning rate over a run: a linear warm-up from 0 to the peak over `warmup_steps`, then
/// a cosine decay to `final_fraction` of the peak over `decay_steps` (0: no decay), then flat.
/// Every step's rate follows from the step alone, so resumed runs match uninterrupted ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub warmup_steps: usize,
    pub decay_steps: usize,
    pub final_fraction: f64,
}

impl LrSchedule {
    /// The rate of step `step` (0-based) for a peak of `peak`.
    pub fn lr(&self, peak: f64, step: usize) -> f64 {
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if self.decay_steps == 0 {
            return peak;
        }
        let progress = ((step - self.warmup_steps) as f64 / self.decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum StageRecipe {
    Vae(VaeRecipe),
    Dit(DitRecipe),
}

impl StageRecipe {
    pub fn name(&self) -> &'static str {
        match self {
            StageRecipe::Vae(_) => "vae",
            StageRecipe::Dit(_) => "dit",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeRecipe {
    /// Frames per training window (1 + 4k).
    pub frames: usize,
    /// Side of the random square crop (a multiple of the VAE's 8).
    pub crop: usize,
    /// Weight of the KL term (mean over latent values) against the reconstruction error (mean over pixels).
    pub kl_weight: f64,
    /// Clips encoded to recompute `latents_mean` / `latents_std` at each checkpoint (a decoder-only
    /// run keeps them).
    pub statistics_clips: usize,
    /// Train the decoder alone on the encoder's posterior means (no KL). The latents, and so a
    /// DiT trained on them, stay valid.
    #[serde(default)]
    pub decoder_only: bool,
    /// Extra weight of the error on pixels that show an object (0: a plain mean).
    #[serde(default)]
    pub object_weight: f64,
    /// Extra weight of the error on pixels next to a pixel of another colour (0: a plain mean).
    #[serde(default)]
    pub edge_weight: f64,
    /// Scale of the noise that samples the posterior in whole-VAE training: 1 samples it, 0
    /// decodes the means (as the pipeline does), a plain autoencoder.
    #[serde(default = "sampled_posterior")]
    pub posterior_noise: f64,
    /// How a pixel's reconstruction error counts (squared unless a recipe says otherwise).
    #[serde(default)]
    pub pixel_error: PixelError,
}

/// Runs saved before `posterior_noise` existed sampled the posterior.
fn sampled_posterior() -> f64 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DitRecipe {
    /// Clips pre-encoded with the frozen VAE and sampled from at every step.
    pub clips: usize,
    /// Latent frames per training window (the farm's chunk length).
    pub window: usize,
    /// Probability that an item's caption is replaced by "".
    pub caption_dropout: f64,
    #[serde(default)]
    pub sigmas: SigmaSampling,
    /// Extra weight of the squared error where the clip shows an object (0: plain MSE).
    #[serde(default)]
    pub object_weight: f64,
    #[serde(default)]
    pub loss: FlowLoss,
    /// Fraction of windows at sigma 1 exactly: pure noise, where sampling starts and the caption
    /// alone must place the objects (a shifted draw lands above 0.99 about 3% of the time, and
    /// below that the input already shows where they are).
    #[serde(default)]
    pub pure_noise_fraction: f64,
    /// Train only on clips with one of these captions (every caption when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_captions: Vec<String>,
    /// Train only on scenes of this many objects (every scene when unset): a stage of
    /// two-object scenes, whose captions are too many to list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_objects: Option<usize>,
}

/// What a DiT step's squared error is measured on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum FlowLoss {
    /// The flow (Wan, SD3): the clean latents' error weighted by `1 / sigma^2`, so low noise
    /// levels dominate.
    #[default]
    Flow,
    /// The clean latents implied by the predicted flow (`x_t - sigma v`): every noise level
    /// weighs alike, so the high ones, where the caption places the object, count as much.
    Sample,
}

/// How the VAE stage counts a pixel's reconstruction error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum PixelError {
    /// Its square (MSE, what PSNR measures): where the encoder is unsure of a boundary the
    /// decoder is pushed to the mean of the two colours, a blur.
    #[default]
    Squared,
    /// Its absolute value (L1, as Wan's VAE is trained): pushed to the median, one colour or the
    /// other, and small errors pull as hard as large ones.
    Absolute,
}

/// How a DiT step draws its noise levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SigmaSampling {
    /// Uniform in (0, 1), then shifted as the sampler shifts its schedule (the model's
    /// `flow_shift`): most steps at high noise.
    #[default]
    Shifted,
    /// Uniform in (0, 1): every noise level the sampler visits, equally often.
    Uniform,
    /// `sigmoid(N(mean, std))` (SD3's logit-normal): most steps at middle noise, where shapes
    /// and places are decided.
    LogitNormal { mean: f64, std: f64 },
}

/// What a command asks for: where to start from and write to, how far to go, and the recipe.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The model folder a new run starts from.
    pub model: PathBuf,
    /// The run's folder: checkpoint, optimizer state, `train_state.json`.
    pub out: PathBuf,
    /// Total steps; a resumed run stops there too.
    pub steps: usize,
    pub checkpoint_every: usize,
    /// DiT stage: threads each batch is split across (not part of the recipe: a run may
    /// continue with another count).
    pub threads: usize,
    pub recipe: Recipe,
}

impl TrainOptions {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |reason: String| Err(TrainError::InvalidOption(reason));
        let recipe = &self.recipe;
        if recipe.batch == 0 || self.checkpoint_every == 0 {
            return bad(format!("batch ({}) and checkpoint_every ({}) must be positive", recipe.batch, self.checkpoint_every));
        }
        let threads_fit = match recipe.stage {
            StageRecipe::Dit(_) => (1..=recipe.batch).contains(&self.threads),
            StageRecipe::Vae(_) => self.threads == 1,
        };
        if !threads_fit {
            return bad(format!("threads must be between 1 and the batch ({}) for the dit stage and 1 for the vae stage, got {}", recipe.batch, self.threads));
        }
        if !(recipe.lr > 0.0 && recipe.lr.is_finite()) {
            return bad(format!("lr must be a positive number, got {}", recipe.lr));
        }
        if !(0.0..=1.0).contains(&recipe.lr_schedule.final_fraction) {
            return bad(format!("the final lr fraction must be in [0, 1], got {}", recipe.lr_schedule.final_fraction));
        }
        let clip = recipe.clip;
        match &recipe.stage {
            StageRecipe::Vae(vae) => {
                if vae.frames == 0 || vae.frames % 4 != 1 || vae.frames > clip.frames {
                    return bad(format!("frames must be 1 + 4k and at most the clip's {}, got {}", clip.frames, vae.frames));
                }
                if vae.crop == 0 || vae.crop % 8 != 0 || vae.crop > clip.width.min(clip.height) {
                    return bad(format!("crop must be a multiple of 8 that fits the {}x{} clip, got {}", clip.width, clip.height, vae.crop));
                }
                if vae.statistics_clips == 0 {
                    return bad("statistics_clips must be positive".into());
                }
                if !(0.0..=1.0).contains(&vae.posterior_noise) {
                    return bad(format!("posterior_noise must be in [0, 1], got {}", vae.posterior_noise));
                }
            }
            StageRecipe::Dit(dit) => {
                let latent_frames = 1 + clip.frames.saturating_sub(1) / 4;
                if dit.clips == 0 || dit.window == 0 || dit.window > latent_frames {
                    return bad(format!(
                        "clips must be positive and window between 1 and the clip's {latent_frames} latent frames, got {} and {}",
                        dit.clips, dit.window
                    ));
                }
                for (name, fraction) in [("caption_dropout", dit.caption_dropout), ("pure_noise_fraction", dit.pure_noise_fraction)] {
                    if !(0.0..=1.0).contains(&fraction) {
                        return bad(format!("{name} must be in [0, 1], got {fraction}"));
                    }
                }
                if let SigmaSampling::LogitNormal { mean, std } = dit.sigmas
                    && !(mean.is_finite() && std.is_finite() && std > 0.0)
                {
                    return bad(format!("logit-normal sigmas need a finite mean and a positive std, got {mean} and {std}"));
                }
            }
        }
        Ok(())
    }
}

/// `train_state.json`: the recipe, the steps done and every step's loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub recipe: Recipe,
    pub step: usize,
    pub losses: Vec<f32>,
}

/// Where a run starts: a fresh run from `options.model`, or the checkpoint in `options.out`.
pub struct Start {
    pub weights: PathBuf,
    pub state: TrainState,
    pub resumed: bool,
}

/// Finishes an interrupted checkpoint move, then reads the run's state if it has one.
pub fn start(options: &TrainOptions) -> Result<Start, TrainError> {
    options.validate()?;
    finish_partial_checkpoint(&options.out)?;
    let state_path = options.out.join(STATE_FILE);
    if !state_path.is_file() {
        let state = TrainState { recipe: options.recipe.clone(), step: 0, losses: Vec::new() };
        return Ok(Start { weights: options.model.clone(), state, resumed: false });
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| io_error(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|source| TrainError::Json { path: state_path.clone(), source })?;
    if state.recipe != options.recipe {
        let reason = format!(
            "holds a run with another recipe ({}); continue it with the same options, or train into a new folder",
            serde_json::to_string(&state.recipe).unwrap_or_default()
        );
        return Err(TrainError::Resume { path: state_path, reason });
    }
    Ok(Start { weights: options.out.clone(), state, resumed: true })
}

/// Writes a checkpoint: `write_weights` fills a folder with the diffusers layout, then the
/// optimizer record and the state; all of it lands in `out` only once complete.
pub fn write_checkpoint<R, B>(
    options: &TrainOptions,
    state: &TrainState,
    optimizer: R,
    write_weights: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError>
where
    B: Backend,
    R: burn::record::Record<B>,
{
    let partial = options.out.join(PARTIAL_DIR);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| io_error(&partial, e))?;
    }
    write_weights(&partial)?;
    let profile = options.model.join(PROFILE_FILE);
    if profile.is_file() && options.model != options.out {
        std::fs::copy(&profile, partial.join(PROFILE_FILE)).map_err(|e| io_error(&profile, e))?;
    }
    let optimizer_path = partial.join(OPTIMIZER_FILE);
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(optimizer, optimizer_path.clone())
        .map_err(|e| TrainError::OptimizerState { path: optimizer_path, reason: e.to_string() })?;
    let state_path = partial.join(STATE_FILE);
    let json = serde_json::to_string_pretty(state).map_err(|source| TrainError::Json { path: state_path.clone(), source })?;
    std::fs::write(&state_path, json).map_err(|e| io_error(&state_path, e))?;
    finish_partial_checkpoint(&options.out)
}

/// Reads the optimizer record of the checkpoint in `out`.
pub fn load_optimizer<R, B>(out: &Path, device: &B::Device) -> Result<R, TrainError>
where
    B: Backend,
    R: burn::record::Record<B>,
{
    let path = out.join(OPTIMIZER_FILE);
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(path.clone(), device)
        .map_err(|e| TrainError::OptimizerState { path, reason: e.to_string() })
}

/// A partial checkpoint with its state file is complete: move it into place, state last. One
/// without is a write that was cut short: drop it.
fn finish_partial_checkpoint(out: &Path) -> Result<(), TrainError> {
    let partial = out.join(PARTIAL_DIR);
    if !partial.is_dir() {
        return Ok(());
    }
    if partial.join(STATE_FILE).is_file() {
        move_files(&partial, out, Path::new(STATE_FILE))?;
        let state = partial.join(STATE_FILE);
        std::fs::rename(&state, out.join(STATE_FILE)).map_err(|e| io_error(&state, e))?;
    }
    std::fs::remove_dir_all(&partial).map_err(|e| io_error(&partial, e))
}

/// Moves every file under `from` to the same place under `to`, except `skip` (relative to `from`).
fn move_files(from: &Path, to: &Path, skip: &Path) -> Result<(), TrainError> {
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = from.join(&relative);
        let target_dir = to.join(&relative);
        std::fs::create_dir_all(&target_dir).map_err(|e| io_error(&target_dir, e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
            let entry = entry.map_err(|e| io_error(&dir, e))?;
            let name = relative.join(entry.file_name());
            if entry.path().is_dir() {
                pending.push(name);
            } else if name != skip {
                std::fs::rename(entry.path(), to.join(&name)).map_err(|e| io_error(entry.path(), e))?;
            }
        }
    }
    Ok(())
}

/// Puts a module's parameters in a canonical form: numbered 1, 2, 3... in visiting order, each
/// in a fresh contiguous buffer. Then the module a checkpoint loads back is the module that was
/// saved, bit for bit: the optimizer keys its state by parameter id (loading gives fresh random
/// ids), and the CPU kernels' summation order follows the memory layout (loading leaves some
/// weights as transposed views; the uninterrupted run holds the optimizer's contiguous outputs).
pub fn canonical_params<B: Backend, M: burn::module::Module<B>>(module: M) -> M {
    struct Canonical {
        next: u64,
    }
    impl<B: Backend> ModuleMapper<B> for Canonical {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            let mut copy = Tensor::<B, D>::from_data(tensor.to_data(), &tensor.device());
            if tensor.is_require_grad() {
                copy = copy.require_grad();
            }
            self.next += 1;
            Param::from_mapped_value(ParamId::from(self.next), copy, mapper)
        }
    }
    module.map(&mut Canonical { next: 0 })
}

#[cfg(test)]
mod tests {
    use super::LrSchedule;

    #[test]
    fn the_lr_warms_up_decays_and_stays() {
        let schedule = LrSchedule { warmup_steps: 4, decay_steps: 10, final_fraction: 0.1 };
        let lr = |step| schedule.lr(1.0, step);
        assert_eq!([lr(0), lr(1), lr(3)], [0.25, 0.5, 1.0]);
        assert!((lr(4) - 1.0).abs() < 1e-12 && (lr(9) - 0.55).abs() < 1e-12, "half way down: {}", lr(9));
        assert!((1..14).all(|s| lr(s + 4) < lr(s + 3) || s >= 10), "decreasing over the decay");
        assert!((lr(14) - 0.1).abs() < 1e-12 && lr(1000) == lr(14));
        assert_eq!(LrSchedule::default().lr(3e-4, 123), 3e-4, "the default is constant");
    }
}
