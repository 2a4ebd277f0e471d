//! Training vidfarm's own model on synthetic clips (`vidfarm-synth`), in two stages
//! (`crates/synth/TRAINING.md`):
//!
//! 1. [`vae`]: the causal VAE on short random crops, reconstruction MSE plus a small KL; each
//!    checkpoint recomputes `latents_mean` / `latents_std` from the trained encoder.
//! 2. [`dit`]: the DiT and the text encoder together with flow matching on latents pre-encoded
//!    once by the frozen VAE.
//!
//! A run writes its latest checkpoint into its folder in the diffusers layout, with the optimizer
//! state and `train_state.json` ([`run`]); the same command continues it. Every batch, noise
//! level and noise value is drawn from `(seed, step)` ([`data`]), so a run is reproducible from
//! its command, and an interrupted one continues exactly as if it had not stopped.

#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod dit;
pub mod error;
pub mod run;
pub mod vae;

#[cfg(test)]
mod test_model;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

pub use error::TrainError;
pub use run::{DitRecipe, FlowLoss, LrSchedule, PixelError, Recipe, SigmaSampling, StageRecipe, TrainOptions, TrainState, VaeRecipe};

/// The backend training runs on: autodiff over the farm's backend (CPU, or CUDA with its feature).
pub type TrainBackend = burn::backend::Autodiff<vidfarm_model::DefaultBackend>;

/// What a run reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// About to train from `step` (0 for a new run) to `steps`.
    Started { step: usize, steps: usize, resumed: bool },
    /// Clips pre-encoded by the frozen VAE so far (DiT stage).
    EncodingClips { done: usize, total: usize },
    /// The clips' latents were read from the run's cache instead (DiT stage).
    ReadCachedClips { count: usize },
    /// A step finished (1-based) with this loss.
    Step { step: usize, steps: usize, loss: f32 },
    /// A checkpoint of the model after `step` steps is in the run's folder.
    Checkpoint { step: usize },
}

/// Runs (or continues) the stage the recipe names, up to `options.steps`.
pub fn train<B: AutodiffBackend>(
    options: &TrainOptions,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<TrainState, TrainError> {
    match &options.recipe.stage {
        StageRecipe::Vae(recipe) => vae::train_vae::<B>(options, recipe, device, progress),
        StageRecipe::Dit(recipe) => dit::train_dit::<B>(options, recipe, device, progress),
    }
}

/// One stage's model and optimizer, stepped by [`run_steps`].
trait Stage {
    /// Trains on step `step`'s batch (0-based) and returns the loss.
    fn step(&mut self, step: usize) -> Result<f32, TrainError>;
    fn checkpoint(&mut self, options: &TrainOptions, state: &TrainState) -> Result<(), TrainError>;
}

/// The loop both stages share: step, record the loss, checkpoint every `checkpoint_every` steps
/// and at the end.
fn run_steps(
    options: &TrainOptions,
    mut state: TrainState,
    stage: &mut dyn Stage,
    progress: &mut dyn FnMut(Progress),
) -> Result<TrainState, TrainError> {
    while state.step < options.steps {
        let loss = stage.step(state.step)?;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step: state.step + 1, loss });
        }
        state.step += 1;
        state.losses.push(loss);
        progress(Progress::Step { step: state.step, steps: options.steps, loss });
        if state.step.is_multiple_of(options.checkpoint_every) || state.step == options.steps {
            stage.checkpoint(options, &state)?;
            progress(Progress::Checkpoint { step: state.step });
        }
    }
    Ok(state)
}

/// The mean of `errors` `[items, channels, frames, height, width]` with each value weighted by
/// `weights` `[items, frames, height, width]` (shared by the channels), divided by the mean
/// weight so that a weighted loss keeps the scale of a plain mean error.
fn weighted_mean<B: Backend>(errors: Tensor<B, 5>, weights: Option<&[f32]>) -> Tensor<B, 1> {
    let Some(weights) = weights else { return errors.mean() };
    let [items, channels, frames, height, width] = errors.dims();
    let mean_weight = weights.iter().sum::<f32>() / weights.len() as f32;
    let weights = Tensor::<B, 5>::from_data(TensorData::new(weights.to_vec(), [items, 1, frames, height, width]), &errors.device());
    (errors * weights.repeat_dim(1, channels)).mean() / mean_weight
}

/// Adam with per-parameter gradient-norm clipping at 1 (a bad batch cannot throw the weights far).
fn optimizer_config() -> burn::optim::AdamConfig {
    burn::optim::AdamConfig::new().with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::{CLIP, load, parameter_values, write_tiny_model};
    use std::path::Path;
    use vidfarm_model::DefaultBackend;

    fn options(model: &Path, out: &Path, steps: usize, stage: StageRecipe) -> TrainOptions {
        TrainOptions {
            model: model.to_path_buf(),
            out: out.to_path_buf(),
            steps,
            checkpoint_every: 2,
            threads: 1,
            recipe: Recipe {
                batch: 2,
                lr: 1e-3,
                lr_schedule: LrSchedule { warmup_steps: 1, decay_steps: 2, final_fraction: 0.1 },
                seed: 5,
                clip: CLIP,
                stage,
            },
        }
    }

    /// With the object-weighted loss, pure-noise windows and a caption filter, so resuming
    /// rebuilds the masks and draws the same clips and sigmas too.
    fn dit() -> StageRecipe {
        StageRecipe::Dit(DitRecipe {
            clips: 3,
            window: 2,
            caption_dropout: 0.1,
            sigmas: SigmaSampling::LogitNormal { mean: 0.0, std: 1.0 },
            object_weight: 2.0,
            loss: FlowLoss::Sample,
            pure_noise_fraction: 0.25,
            only_captions: vec!["a blue square moving down on a yellow background".into(), "a green circle growing on a black background".into()],
            only_objects: Some(1),
        })
    }

    fn train_quietly(options: &TrainOptions) -> (TrainState, Vec<Progress>) {
        let mut events = Vec::new();
        let state = train::<TrainBackend>(options, &Default::default(), &mut |p| events.push(p)).expect("train");
        (state, events)
    }

    fn vae() -> StageRecipe {
        StageRecipe::Vae(VaeRecipe { frames: 5, crop: 16, kl_weight: 1e-4, statistics_clips: 2, decoder_only: false, object_weight: 0.0, edge_weight: 0.0, posterior_noise: 1.0, pixel_error: PixelError::Squared })
    }

    fn vae_decoder() -> StageRecipe {
        StageRecipe::Vae(VaeRecipe { frames: 5, crop: 16, kl_weight: 0.0, statistics_clips: 2, decoder_only: true, object_weight: 2.0, edge_weight: 0.0, posterior_noise: 1.0, pixel_error: PixelError::Absolute })
    }

    /// Options out of range are refused before anything loads, with the option's name.
    #[test]
    fn options_out_of_range_are_refused_by_name() {
        let base = options(Path::new("model"), Path::new("out"), 2, vae());
        assert!(base.validate().is_ok());
        let with_vae = |change: &dyn Fn(&mut VaeRecipe)| {
            let mut options = base.clone();
            let StageRecipe::Vae(recipe) = &mut options.recipe.stage else { unreachable!("a vae recipe") };
            change(recipe);
            options.validate().expect_err("out of range").to_string()
        };
        assert!(with_vae(&|r| r.crop = 12).contains("crop"));
        assert!(with_vae(&|r| r.frames = 4).contains("frames"));
        assert!(with_vae(&|r| r.posterior_noise = 1.5).contains("posterior_noise"));
        assert!(with_vae(&|r| r.posterior_noise = f64::NAN).contains("posterior_noise"));
        let mut no_lr = base.clone();
        no_lr.recipe.lr = 0.0;
        assert!(no_lr.validate().expect_err("lr 0").to_string().contains("lr"));
        // Threads split a DiT batch: at most one per item, and the VAE stage runs on one.
        let mut threads = options(Path::new("model"), Path::new("out"), 2, dit());
        threads.threads = 2;
        assert!(threads.validate().is_ok());
        for (count, stage) in [(3, dit()), (0, dit()), (2, vae())] {
            threads.threads = count;
            threads.recipe.stage = stage;
            assert!(threads.validate().expect_err("threads").to_string().contains("threads"), "{count}");
        }
    }

    /// Stopping after 2 steps and running the same command for 4 gives the run that never stopped:
    /// the same losses and the same weights, bit for bit, in both stages (across the warm-up and
    /// the decay of the learning rate), with a DiT batch split across threads too.
    #[test]
    fn a_resumed_run_matches_an_uninterrupted_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = root.path().join("model");
        write_tiny_model(&model);
        let original = load::<DefaultBackend>(&model);
        for (stage, name, threads) in [(dit(), "dit", 1), (dit(), "dit-2-threads", 2), (vae(), "vae", 1), (vae_decoder(), "vae-decoder", 1)] {
            let is_dit = name.starts_with("dit");
            let run_options = |out: &Path, steps| TrainOptions { threads, ..options(&model, out, steps, stage.clone()) };
            let whole = root.path().join(format!("{name}-whole"));
            let split = root.path().join(format!("{name}-split"));
            let (uninterrupted, _) = train_quietly(&run_options(&whole, 4));
            assert_eq!((uninterrupted.step, uninterrupted.losses.len()), (4, 4));
            let (first, _) = train_quietly(&run_options(&split, 2));
            assert_eq!(first.step, 2);
            let (resumed, events) = train_quietly(&run_options(&split, 4));
            assert!(events.contains(&Progress::Started { step: 2, steps: 4, resumed: true }), "{name}: {events:?}");
            assert!(!events.iter().any(|e| matches!(e, Progress::EncodingClips { .. })), "{name}: latents come from the cache");
            assert_eq!(events.contains(&Progress::ReadCachedClips { count: 3 }), is_dit, "{name}: {events:?}");
            assert_eq!(resumed.losses, uninterrupted.losses, "{name}");

            let (a, b) = (load::<DefaultBackend>(&whole), load::<DefaultBackend>(&split));
            let same = |x: Vec<f32>, y: Vec<f32>| x == y;
            // Bit for bit: the weights, the optimizer's moments and step count all carried over.
            assert!(same(parameter_values(&a.transformer), parameter_values(&b.transformer)), "{name}: DiT weights differ");
            assert!(same(parameter_values(&a.text_encoder), parameter_values(&b.text_encoder)), "{name}: text encoder differs");
            assert!(same(parameter_values(&a.vae), parameter_values(&b.vae)), "{name}: VAE weights differ");
            assert_eq!(a.vae.config(), b.vae.config(), "{name}: latent statistics differ");
            // Each stage trains its own parts only.
            let dit_trained = !same(parameter_values(&a.transformer), parameter_values(&original.transformer));
            let vae_trained = !same(parameter_values(&a.vae), parameter_values(&original.vae));
            assert_eq!((dit_trained, vae_trained), (is_dit, !is_dit), "{name}: what trained");
            let encoder_trained = !same(parameter_values(&a.vae.encoder), parameter_values(&original.vae.encoder));
            assert_eq!(encoder_trained, name == "vae", "{name}: the encoder trains only in a whole-VAE run");
            // The DiT normalises latents with these: only a run that changes the encoder may move them.
            assert_eq!(a.vae.config() != original.vae.config(), name == "vae", "{name}: latent statistics rewritten");
        }
    }

    /// A new DiT run reads the latents another run cached for the same seed and clip count when
    /// its VAE encodes them alike, and encodes afresh when its VAE is another.
    #[test]
    fn a_new_run_reuses_cached_latents_only_from_the_same_vae() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = root.path().join("model");
        write_tiny_model(&model);
        let first = root.path().join("first");
        train_quietly(&options(&model, &first, 1, dit()));
        let cache = std::fs::read_dir(&first)
            .expect("run folder")
            .map(|entry| entry.expect("entry").path())
            .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("latents-")))
            .expect("the run cached its latents");
        let other_vae = root.path().join("vae");
        train_quietly(&options(&model, &other_vae, 1, vae()));
        for (start, same_vae) in [(&model, true), (&other_vae, false)] {
            let out = root.path().join(format!("second-{same_vae}"));
            std::fs::create_dir_all(&out).expect("mkdir");
            std::fs::copy(&cache, out.join(cache.file_name().expect("name"))).expect("copy");
            let (_, events) = train_quietly(&options(start, &out, 1, dit()));
            let encoded = events.iter().any(|e| matches!(e, Progress::EncodingClips { .. }));
            let read = events.iter().any(|e| matches!(e, Progress::ReadCachedClips { .. }));
            assert_eq!((encoded, read), (!same_vae, same_vae), "same VAE: {same_vae}");
        }
    }

    /// A VAE run's checkpoint is a model folder the renderer loads, with the encoder's latent
    /// statistics and the profile; a finished run does nothing more; another recipe is refused.
    #[test]
    fn vae_checkpoints_load_and_runs_resume_only_with_their_recipe() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = root.path().join("model");
        let out = root.path().join("vae");
        write_tiny_model(&model);
        let (state, events) = train_quietly(&options(&model, &out, 2, vae()));
        assert_eq!((state.step, state.losses.len()), (2, 2));
        assert!(events.contains(&Progress::Checkpoint { step: 2 }));

        let trained = load::<DefaultBackend>(&out);
        let config = trained.vae.config();
        assert!(config.latents_mean.iter().any(|&m| m != 0.0) && config.latents_std.iter().all(|&s| s > 0.0 && s != 1.0));
        for file in ["vidfarm.toml", "train_state.json", "optimizer.mpk"] {
            assert!(out.join(file).is_file(), "{file}");
        }
        assert!(!out.join(".checkpoint-partial").exists());

        let (again, events) = train_quietly(&options(&model, &out, 2, vae()));
        assert_eq!(again, state);
        assert!(!events.iter().any(|e| matches!(e, Progress::Step { .. })));

        let mut other = options(&model, &out, 3, vae());
        other.recipe.lr = 1e-2;
        let err = train::<TrainBackend>(&other, &Default::default(), &mut |_| {}).expect_err("another recipe");
        assert!(matches!(err, TrainError::Resume { .. }), "{err}");
    }
}
