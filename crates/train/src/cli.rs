//! The training command, `vidfarm model train vae|dit` and the standalone `vidfarm-train` (which
//! links no FFmpeg, so a CUDA build of it runs on any GPU machine): trains the model on synthetic
//! clips (crates/synth/TRAINING.md), checkpointing into `--out`; the same command continues an
//! interrupted run.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use vidfarm_api::ModelProfile;
use vidfarm_api::spec::causal_frame_count;

use crate::data::ClipShape;
use crate::{DitRecipe, FlowLoss, LrSchedule, PixelError, Progress, Recipe, SigmaSampling, StageRecipe, TrainBackend, TrainOptions, VaeRecipe};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrainStage {
    /// The causal VAE (run first): reconstruction + KL on short random crops.
    Vae,
    /// The DiT and the text encoder, with flow matching on latents of the frozen VAE.
    Dit,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    pub stage: TrainStage,
    /// The model folder a new run starts from (the VAE run's --out for the dit stage).
    #[arg(long, default_value = "models/vidfarm-tiny")]
    pub model: PathBuf,
    /// The run's folder: the latest checkpoint (a model folder), optimizer state, train_state.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Total optimizer steps (a resumed run also stops here).
    #[arg(long)]
    pub steps: usize,
    /// Clips per step [default: 1 for vae, 8 for dit].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Steps of linear warm-up from 0 to --lr.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Steps of cosine decay after the warm-up, to --final-lr-fraction of --lr (0: constant).
    #[arg(long, default_value_t = 0)]
    pub decay_steps: usize,
    #[arg(long, default_value_t = 0.1)]
    pub final_lr_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// vae: frames per training window (1 + 4k).
    #[arg(long, default_value_t = 9)]
    pub frames: usize,
    /// vae: side of the random square crop, a multiple of 8.
    #[arg(long, default_value_t = 32)]
    pub crop: usize,
    /// vae: weight of the KL term (mean per latent value) against the reconstruction error (mean per pixel).
    #[arg(long, default_value_t = 1e-6)]
    pub kl_weight: f64,
    /// vae: clips encoded at each checkpoint to set latents_mean / latents_std (not in a
    /// decoder-only run, which keeps them).
    #[arg(long, default_value_t = 16)]
    pub statistics_clips: usize,
    /// vae: train the decoder alone on the encoder's posterior means; the latents (and a DiT
    /// trained on them) stay valid.
    #[arg(long)]
    pub decoder_only: bool,
    /// vae: scale of the noise that samples the posterior when the whole VAE trains; 0 decodes
    /// the posterior means, which is what the pipeline decodes.
    #[arg(long, default_value_t = 1.0)]
    pub posterior_noise: f64,
    /// vae: extra weight of the error along colour boundaries (pixels with a neighbour of
    /// another colour), where the reconstruction blurs; 4 makes an edge pixel count 5 times.
    #[arg(long, default_value_t = 0.0)]
    pub edge_weight: f64,
    /// vae: how a pixel's reconstruction error counts: `squared` (MSE) or `absolute` (L1).
    #[arg(long, value_enum, default_value_t = PixelError::Squared)]
    pub pixel_error: PixelError,
    /// dit: threads each step's batch is split across (data parallel, at most --batch): on the
    /// CPU backend a run otherwise keeps one core busy. Other counts round differently, so a run
    /// reproduces exactly only with the same count.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// dit: clips pre-encoded once (cached in --out) and sampled from.
    #[arg(long, default_value_t = 4096)]
    pub clips: usize,
    /// dit: latent frames per training window [default: the model's chunk_latent_frames].
    #[arg(long)]
    pub window: Option<usize>,
    /// dit: fraction of captions replaced by "" (the sampler's unconditional branch).
    #[arg(long, default_value_t = 0.1)]
    pub caption_dropout: f64,
    /// dit: how noise levels are drawn: `shifted` (uniform, then the model's flow shift),
    /// `uniform`, or `logit-normal` (sigmoid of a standard normal).
    #[arg(long, value_enum, default_value_t = SigmaArg::Shifted)]
    pub sigmas: SigmaArg,
    /// Extra weight of the squared error where the clip shows an object (the renderer's mask):
    /// dit on the latent values, vae on the pixels; 4 makes an object count 5 times the background.
    #[arg(long, default_value_t = 0.0)]
    pub object_weight: f64,
    /// dit: what the squared error is measured on.
    #[arg(long, value_enum, default_value_t = FlowLoss::Flow)]
    pub loss: FlowLoss,
    /// dit: fraction of windows trained at sigma 1 (pure noise, where sampling starts and the
    /// caption alone must place the objects).
    #[arg(long, default_value_t = 0.0)]
    pub pure_noise_fraction: f64,
    /// dit: train only on clips with this caption (repeat for several; one-object training
    /// captions, as `vidfarm-synth` writes them): a probe, or a fine-tune on a few captions.
    #[arg(long = "only-caption", value_name = "CAPTION")]
    pub only_captions: Vec<String>,
    /// dit: train only on scenes of this many objects (1 or 2): a stage of two-object scenes.
    #[arg(long = "only-objects", value_name = "COUNT")]
    pub only_objects: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SigmaArg {
    Shifted,
    Uniform,
    LogitNormal,
}

impl From<SigmaArg> for SigmaSampling {
    fn from(arg: SigmaArg) -> Self {
        match arg {
            SigmaArg::Shifted => SigmaSampling::Shifted,
            SigmaArg::Uniform => SigmaSampling::Uniform,
            SigmaArg::LogitNormal => SigmaSampling::LogitNormal { mean: 0.0, std: 1.0 },
        }
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let profile = ModelProfile::load(&args.model).with_context(|| format!("reading the profile of {}", args.model.display()))?;
    let defaults = &profile.defaults;
    let frames = (defaults.seconds * f64::from(defaults.fps)).ceil().max(1.0) as u32;
    let clip = ClipShape {
        frames: causal_frame_count(frames, profile.temporal_factor) as usize,
        width: defaults.width as usize,
        height: defaults.height as usize,
        fps: defaults.fps,
    };
    let (stage, default_batch) = match args.stage {
        TrainStage::Vae => (
            StageRecipe::Vae(VaeRecipe {
                frames: args.frames,
                crop: args.crop,
                kl_weight: args.kl_weight,
                statistics_clips: args.statistics_clips,
                decoder_only: args.decoder_only,
                object_weight: args.object_weight,
                edge_weight: args.edge_weight,
                posterior_noise: args.posterior_noise,
                pixel_error: args.pixel_error,
            }),
            1,
        ),
        TrainStage::Dit => (
            StageRecipe::Dit(DitRecipe {
                clips: args.clips,
                window: args.window.unwrap_or(defaults.chunk_latent_frames as usize),
                caption_dropout: args.caption_dropout,
                sigmas: args.sigmas.into(),
                object_weight: args.object_weight,
                loss: args.loss,
                pure_noise_fraction: args.pure_noise_fraction,
                only_captions: args.only_captions,
                only_objects: args.only_objects,
            }),
            8,
        ),
    };
    let options = TrainOptions {
        model: args.model.clone(),
        out: args.out.clone(),
        steps: args.steps,
        checkpoint_every: args.checkpoint_every,
        threads: args.threads,
        recipe: Recipe {
            batch: args.batch.unwrap_or(default_batch),
            lr: args.lr,
            lr_schedule: LrSchedule { warmup_steps: args.warmup_steps, decay_steps: args.decay_steps, final_fraction: args.final_lr_fraction },
            seed: args.seed,
            clip,
            stage,
        },
    };
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // The bar is hidden when stderr is not a terminal (a log file, a pod), and so are its lines:
    // say them on stderr there.
    let say = |line: String| if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) };
    let mut last_checkpoint = None;
    // Time of the steps alone (not encoding clips or writing checkpoints), for the summary, and
    // since the last checkpoint, for its line (a GPU's first steps include compiling kernels).
    let (mut mark, mut step_seconds, mut steps_timed) = (Instant::now(), 0.0, 0usize);
    let (mut interval_seconds, mut interval_steps) = (0.0, 0usize);
    let (started, mut first_batch) = (Instant::now(), None);
    let state = crate::train::<TrainBackend>(&options, &Default::default(), &mut |event| {
        match event {
            Progress::EncodingClips { done, total } => {
                bar.set_message(format!("encoding clips {done}/{total}"));
                // The pace after the first batch leaves out loading and (on a GPU) compiling kernels.
                let first = *first_batch.get_or_insert((done, Instant::now()));
                // Without a bar, a line now and then, so a log shows the encoding is under way.
                if bar.is_hidden() && done < total && done % 256 == 0 {
                    say(format!("encoded {done}/{total} clips in {:.1} s", started.elapsed().as_secs_f64()));
                }
                if done == total {
                    let pace = match total - first.0 {
                        0 => started.elapsed().as_secs_f64() / total as f64,
                        after_first => first.1.elapsed().as_secs_f64() / after_first as f64,
                    };
                    say(format!("loaded the model and encoded {total} clips in {:.1} s, {pace:.4} s a clip", started.elapsed().as_secs_f64()));
                }
            }
            Progress::ReadCachedClips { count } => {
                say(format!("loaded the model and read {count} encoded clips from the run's cache in {:.1} s", started.elapsed().as_secs_f64()));
            }
            Progress::Started { step, resumed, .. } => {
                bar.set_position(step as u64);
                bar.reset_eta();
                if resumed {
                    say(format!("resuming {} at step {step}", args.out.display()));
                }
            }
            Progress::Step { step, loss, .. } => {
                let seconds = mark.elapsed().as_secs_f64();
                (step_seconds, steps_timed) = (step_seconds + seconds, steps_timed + 1);
                (interval_seconds, interval_steps) = (interval_seconds + seconds, interval_steps + 1);
                bar.set_position(step as u64);
                let saved = last_checkpoint.map(|s| format!(", saved at {s}")).unwrap_or_default();
                bar.set_message(format!("loss {loss:.5}{saved}"));
            }
            Progress::Checkpoint { step } => {
                last_checkpoint = Some(step);
                // A visible bar already shows "saved at" in its message.
                if bar.is_hidden() {
                    let pace = interval_seconds / interval_steps.max(1) as f64;
                    say(format!("step {step}/{}: checkpoint saved, {}, {pace:.4} s a step", args.steps, bar.message()));
                }
                (interval_seconds, interval_steps) = (0.0, 0);
            }
        }
        mark = Instant::now();
    })
    .with_context(|| format!("training the {} into {}", options.recipe.stage.name(), args.out.display()))?;
    bar.finish_and_clear();
    let tail = &state.losses[state.losses.len().saturating_sub(100)..];
    let recent = tail.iter().sum::<f32>() / tail.len().max(1) as f32;
    let pace = if steps_timed > 0 { format!(", {:.3} s a step", step_seconds / steps_timed as f64) } else { String::new() };
    println!(
        "{} stage: {} steps in {}, mean loss of the last {} steps {recent:.5}{pace}",
        options.recipe.stage.name(),
        state.step,
        args.out.display(),
        tail.len()
    );
    Ok(())
}
