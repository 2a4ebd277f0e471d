//! Stage 1: the causal VAE. Loss: mean squared (or, with [`PixelError::Absolute`], absolute)
//! reconstruction error of a sample of the posterior plus `kl_weight` times the mean KL of the
//! posterior to N(0, 1); [`VaeRecipe::posterior_noise`] 0 decodes the posterior means instead of
//! a sample. Each checkpoint of a whole-VAE run also sets the VAE config's `latents_mean` /
//! `latents_std` from the trained encoder, since the pipeline normalises latents for the DiT with
//! them. A decoder-only run ([`VaeRecipe::decoder_only`]) decodes the encoder's posterior means
//! and trains the decoder alone, so the latents a DiT was trained on, and their statistics, stay
//! as they were. With [`VaeRecipe::object_weight`] and [`VaeRecipe::edge_weight`] the error
//! weighs more on the objects' pixels and along colour boundaries.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use vidfarm_model::Pipeline;
use vidfarm_model::vae::AutoencoderKLWan;

use crate::data::{Batch5, ClipShape, Purpose, Rng, VaeBatch, channel_statistics, pixel_weights, training_clip, vae_batch};
use crate::error::{TrainError, tensor_values};
use crate::run::{self, PixelError, TrainOptions, TrainState, VaeRecipe};
use crate::{Progress, Stage, optimizer_config, run_steps, weighted_mean};

/// Smallest `latents_std` written: a channel the encoder leaves unused must not blow up when
/// the pipeline divides by it.
const MIN_LATENT_STD: f64 = 1e-3;

/// One step's loss and its parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VaeLoss {
    pub total: f32,
    pub reconstruction: f32,
    pub kl: f32,
}

/// The loss tensors of one batch (scalars; `total` is the one to differentiate).
pub struct VaeLossTerms<B: Backend> {
    pub total: Tensor<B, 1>,
    pub reconstruction: Tensor<B, 1>,
    pub kl: Tensor<B, 1>,
}

/// The mean reconstruction error of `decoded` against `video`, each pixel's counted as `error`
/// says and weighted by `weights` (when given, `[batch, frames, H, W]`).
fn reconstruction_error<B: Backend>(decoded: Tensor<B, 5>, video: Tensor<B, 5>, error: PixelError, weights: Option<&[f32]>) -> Tensor<B, 1> {
    let difference = decoded - video;
    let per_value = match error {
        PixelError::Squared => difference.powi_scalar(2),
        PixelError::Absolute => difference.abs(),
    };
    weighted_mean(per_value, weights)
}

/// The loss of one batch: `video` `[batch, 3, frames, H, W]`, `noise` shaped like its latents,
/// `weights` (when given) `[batch, frames, H, W]` those of the pixels' errors.
pub fn vae_loss<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    video: Tensor<B, 5>,
    noise: Tensor<B, 5>,
    kl_weight: f64,
    error: PixelError,
    weights: Option<&[f32]>,
) -> Result<VaeLossTerms<B>, TrainError> {
    let (mean, logvar) = vae.encode_posterior(video.clone())?;
    let z = mean.clone() + (logvar.clone() * 0.5).exp() * noise;
    let reconstruction = reconstruction_error(vae.decode_unclamped(z)?, video, error, weights);
    let kl = ((mean.powi_scalar(2) + logvar.clone().exp() - logvar - 1.0) * 0.5).mean();
    Ok(VaeLossTerms { total: reconstruction.clone() + kl.clone() * kl_weight, reconstruction, kl })
}

/// The decoder-only loss: the reconstruction error of the encoder's posterior means, with no
/// gradient reaching the encoder.
pub fn decoder_loss<B: AutodiffBackend>(
    vae: &AutoencoderKLWan<B>,
    video: Tensor<B, 5>,
    error: PixelError,
    weights: Option<&[f32]>,
) -> Result<VaeLossTerms<B>, TrainError> {
    // The encoder runs outside autodiff: a detached graph would still be recorded, and kept
    // (memory and step time grew with every step).
    let z = Tensor::from_inner(vae.valid().encode(video.clone().inner())?);
    let reconstruction = reconstruction_error(vae.decode_unclamped(z)?, video, error, weights);
    let kl = reconstruction.zeros_like();
    Ok(VaeLossTerms { total: reconstruction.clone(), reconstruction, kl })
}

/// The shape of the latents of a `[batch, 3, frames, H, W]` video.
pub fn latent_shape<B: Backend>(vae: &AutoencoderKLWan<B>, video: [usize; 5]) -> [usize; 5] {
    let [batch, _, frames, height, width] = video;
    let (time, space) = (vae.temporal_factor(), vae.spatial_factor());
    [batch, vae.config().z_dim, 1 + (frames - 1) / time, height / space, width / space]
}

pub struct VaeTrainer<B: AutodiffBackend> {
    /// The whole pipeline, so checkpoints are complete model folders; only its VAE trains.
    pub pipeline: Pipeline<B>,
    optim: OptimizerAdaptor<Adam, AutoencoderKLWan<B>, B>,
    /// The loss's settings: `kl_weight`, `decoder_only`, `object_weight`, `edge_weight`, `posterior_noise`.
    recipe: VaeRecipe,
}

impl<B: AutodiffBackend> VaeTrainer<B> {
    pub fn new(mut pipeline: Pipeline<B>, recipe: VaeRecipe) -> Self {
        pipeline.vae = run::canonical_params(pipeline.vae);
        Self { pipeline, optim: optimizer_config().init(), recipe }
    }

    /// One optimizer step at learning rate `lr` on `batch`, with the posterior sampled through
    /// `noise` times the recipe's `posterior_noise` (unused when decoder-only).
    pub fn step(&mut self, batch: &VaeBatch, noise: &[f32], lr: f64) -> Result<VaeLoss, TrainError> {
        let device = self.pipeline.device().clone();
        let video = &batch.video;
        let latent_shape = latent_shape(&self.pipeline.vae, video.shape);
        let video = Tensor::<B, 5>::from_data(TensorData::new(video.values.clone(), video.shape), &device);
        let noise = Tensor::<B, 5>::from_data(TensorData::new(noise.to_vec(), latent_shape), &device) * self.recipe.posterior_noise;
        let weighted = self.recipe.object_weight > 0.0 || self.recipe.edge_weight > 0.0;
        let weights = weighted.then(|| pixel_weights(batch, self.recipe.object_weight, self.recipe.edge_weight));
        let terms = if self.recipe.decoder_only {
            decoder_loss(&self.pipeline.vae, video, self.recipe.pixel_error, weights.as_deref())?
        } else {
            vae_loss(&self.pipeline.vae, video, noise, self.recipe.kl_weight, self.recipe.pixel_error, weights.as_deref())?
        };
        let loss = VaeLoss {
            total: terms.total.clone().into_scalar().elem(),
            reconstruction: terms.reconstruction.into_scalar().elem(),
            kl: terms.kl.into_scalar().elem(),
        };
        let grads = GradientsParams::from_grads(terms.total.backward(), &self.pipeline.vae);
        self.pipeline.vae = self.optim.step(lr, self.pipeline.vae.clone(), grads);
        Ok(loss)
    }
}

/// Per-channel mean and standard deviation of the encoder's latents (posterior means) of
/// `count` training clips: the VAE config's `latents_mean` / `latents_std`.
pub fn latent_statistics<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    seed: u64,
    clip: ClipShape,
    count: usize,
    device: &B::Device,
) -> Result<(Vec<f64>, Vec<f64>), TrainError> {
    let shape = [1, 3, clip.frames, clip.height, clip.width];
    let latent_shape = latent_shape(vae, shape);
    let mut values = Vec::with_capacity(count * latent_shape.iter().product::<usize>());
    for index in 0..count {
        let pixels = training_clip(&mut Rng::for_item(seed, Purpose::StatisticsClip, 0, index), clip)?.pixels;
        let video = Tensor::<B, 5>::from_data(TensorData::new(pixels, shape), device);
        values.extend(tensor_values(vae.encode(video)?)?);
    }
    let [_, channels, frames, height, width] = latent_shape;
    Ok(channel_statistics(&Batch5 { values, shape: [count, channels, frames, height, width] }))
}

struct VaeStage<'a, B: AutodiffBackend> {
    trainer: VaeTrainer<B>,
    options: &'a TrainOptions,
    recipe: &'a VaeRecipe,
}

impl<B: AutodiffBackend> Stage for VaeStage<'_, B> {
    fn step(&mut self, step: usize) -> Result<f32, TrainError> {
        let recipe = &self.options.recipe;
        let batch = vae_batch(recipe.seed, step, recipe.batch, recipe.clip, self.recipe.frames, self.recipe.crop)?;
        let noise_len = latent_shape(&self.trainer.pipeline.vae, batch.video.shape).iter().product();
        let noise = Rng::for_item(recipe.seed, Purpose::VaeNoise, step, 0).normals(noise_len);
        Ok(self.trainer.step(&batch, &noise, recipe.lr_schedule.lr(recipe.lr, step))?.total)
    }

    fn checkpoint(&mut self, options: &TrainOptions, state: &TrainState) -> Result<(), TrainError> {
        // A decoder-only run keeps the statistics the DiT was trained with: its encoder did not
        // change, and statistics drawn from other clips would shift every latent the DiT sees.
        if !self.recipe.decoder_only {
            let pipeline = &mut self.trainer.pipeline;
            let device = pipeline.device().clone();
            let (mean, std) =
                latent_statistics(&pipeline.vae.valid(), options.recipe.seed, options.recipe.clip, self.recipe.statistics_clips, &device)?;
            pipeline.vae.config.latents_mean = mean;
            pipeline.vae.config.latents_std = std.into_iter().map(|s| s.max(MIN_LATENT_STD)).collect();
        }
        let pipeline = &self.trainer.pipeline;
        run::write_checkpoint::<_, B>(options, state, self.trainer.optim.to_record(), |dir: &Path| Ok(pipeline.save(dir)?))
    }
}

/// Trains (or continues training) the VAE of `options.model` into `options.out`.
pub fn train_vae<B: AutodiffBackend>(
    options: &TrainOptions,
    recipe: &VaeRecipe,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<TrainState, TrainError> {
    let start = run::start(options)?;
    let pipeline = Pipeline::<B>::load(&start.weights, device)?;
    let mut trainer = VaeTrainer::new(pipeline, recipe.clone());
    if start.resumed {
        trainer.optim = trainer.optim.load_record(run::load_optimizer::<_, B>(&options.out, device)?);
    }
    progress(Progress::Started { step: start.state.step, steps: options.steps, resumed: start.resumed });
    run_steps(options, start.state, &mut VaeStage { trainer, options, recipe }, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::{CLIP, TestBackend, load, write_tiny_model};

    /// Training on one fixed batch must fit it, with either pixel error: the loss falls, so
    /// gradients reach the weights.
    #[test]
    fn steps_on_a_fixed_batch_lower_the_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_model(dir.path());
        let batch = vae_batch(0, 0, 2, CLIP, 5, 16).expect("batch");
        for pixel_error in [PixelError::Squared, PixelError::Absolute] {
            let recipe = VaeRecipe { frames: 5, crop: 16, kl_weight: 1e-4, statistics_clips: 2, decoder_only: false, object_weight: 0.0, edge_weight: 0.0, posterior_noise: 1.0, pixel_error };
            let mut trainer = VaeTrainer::new(load::<TestBackend>(dir.path()), recipe);
            let noise = Rng::for_item(0, Purpose::VaeNoise, 0, 0).normals(latent_shape(&trainer.pipeline.vae, batch.video.shape).iter().product());
            let losses: Vec<VaeLoss> = (0..12).map(|_| trainer.step(&batch, &noise, 1e-2).expect("step")).collect();
            let (first, last) = (losses[0], losses[losses.len() - 1]);
            println!("vae losses ({pixel_error:?}): {:?}", losses.iter().map(|l| l.total).collect::<Vec<_>>());
            assert!(first.kl >= 0.0 && last.kl >= 0.0 && first.reconstruction > 0.0);
            assert!(last.total < 0.5 * first.total, "{pixel_error:?}: loss {} -> {}", first.total, last.total);
        }
    }

    /// The reconstruction error is the mean of the differences' squares or absolute values.
    #[test]
    fn pixel_errors_are_squares_or_absolute_values() {
        let device = Default::default();
        let video = Tensor::<TestBackend, 5>::zeros([1, 1, 1, 2, 2], &device);
        let decoded = Tensor::<TestBackend, 5>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0], [1, 1, 1, 2, 2]), &device);
        let error = |kind| -> f32 { reconstruction_error(decoded.clone(), video.clone(), kind, None).into_scalar().elem() };
        assert!((error(PixelError::Squared) - (0.25 + 1.0 + 4.0) / 4.0).abs() < 1e-6);
        assert!((error(PixelError::Absolute) - (0.5 + 1.0 + 2.0) / 4.0).abs() < 1e-6);
    }

    /// With `posterior_noise` 0 the decoder sees the posterior means: the loss does not depend
    /// on the noise drawn; with 1 it does.
    #[test]
    fn posterior_noise_zero_decodes_the_means() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_model(dir.path());
        let batch = vae_batch(0, 0, 1, CLIP, 5, 16).expect("batch");
        let first_loss = |posterior_noise: f64, noise_seed: u64| {
            let recipe = VaeRecipe { frames: 5, crop: 16, kl_weight: 0.0, statistics_clips: 2, decoder_only: false, object_weight: 0.0, edge_weight: 0.0, posterior_noise, pixel_error: PixelError::Squared };
            let mut trainer = VaeTrainer::new(load::<TestBackend>(dir.path()), recipe);
            let noise = Rng::for_item(noise_seed, Purpose::VaeNoise, 0, 0).normals(latent_shape(&trainer.pipeline.vae, batch.video.shape).iter().product());
            trainer.step(&batch, &noise, 1e-3).expect("step").reconstruction
        };
        assert_eq!(first_loss(0.0, 1), first_loss(0.0, 2));
        assert_ne!(first_loss(1.0, 1), first_loss(1.0, 2));
    }

    /// Weights of 1 everywhere are the plain error; weight on the objects or the edges changes it.
    #[test]
    fn pixel_weights_change_the_reconstruction_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_model(dir.path());
        let vae = load::<TestBackend>(dir.path()).vae;
        let batch = vae_batch(0, 0, 2, CLIP, 5, 16).expect("batch");
        assert!(batch.objects.contains(&1.0) && batch.objects.contains(&0.0), "the crops show objects and background");
        let video = || Tensor::<TestBackend, 5>::from_data(TensorData::new(batch.video.values.clone(), batch.video.shape), &Default::default());
        let error = |weights: Option<Vec<f32>>| -> f32 { decoder_loss(&vae, video(), PixelError::Squared, weights.as_deref()).expect("loss").total.into_scalar().elem() };
        let plain = error(None);
        assert!(batch.edges.contains(&1.0) && batch.edges.contains(&0.0), "the crops show edges and flat areas");
        assert!((error(Some(pixel_weights(&batch, 0.0, 0.0))) - plain).abs() <= 1e-6 * plain);
        assert!((error(Some(pixel_weights(&batch, 4.0, 0.0))) - plain).abs() > 1e-3 * plain);
        assert!((error(Some(pixel_weights(&batch, 0.0, 4.0))) - plain).abs() > 1e-3 * plain);
    }
}
