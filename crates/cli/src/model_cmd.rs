//! `vidfarm model`: inspect a model folder, run one component on given tensors (to check a
//! checkpoint against the reference, or time it), fill a folder of configs with random weights,
//! evaluate a model on held-out, training or given prompts, and train it on synthetic clips.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use vidfarm_model::pipeline::{DefaultBackend, Pipeline, PipelineConfig};
use vidfarm_model::text_encoder::UMT5Config;
use vidfarm_model::tool::{Component, model_info, run_component};
use vidfarm_model::transformer::WanTransformerConfig;
use vidfarm_model::vae::AutoencoderKLWanConfig;

mod eval;

/// `--split` of `vidfarm model eval`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SplitArg {
    HeldOut,
    Train,
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print a model folder's config, parameter count and dtype as JSON.
    Info { dir: PathBuf },
    /// Run one component on the tensors of a safetensors file and write its output.
    Forward {
        /// dit, vae-decode, vae-encode or text.
        #[arg(long)]
        component: String,
        /// The component's folder (config.json and weights), e.g. MODEL/transformer.
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Run this many more times after the first and print the timings as JSON.
        #[arg(long, default_value_t = 0)]
        repeat: usize,
    },
    /// Write random weights into a model folder that holds only configs
    /// (transformer/, vae/, text_encoder/ config.json, tokenizer/tokenizer.json, scheduler/).
    Init {
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Longest prompt in tokens.
        #[arg(long, default_value_t = 32)]
        max_sequence_length: usize,
    },
    /// Render held-out synthetic-video captions with a model and score each clip with the
    /// detector (colour, shape, motion, smoothness, seams); print a table, optionally write JSON.
    Eval {
        #[arg(long, default_value = "models/vidfarm-tiny")]
        model: PathBuf,
        /// How many prompts of the split (a fixed list; fewer are its first ones).
        #[arg(long, default_value_t = 24)]
        limit: usize,
        /// The prompt set: captions training never showed together (held-out) or training's.
        #[arg(long, value_enum, default_value_t = SplitArg::HeldOut)]
        split: SplitArg,
        /// Score this caption instead of a split's prompt set (repeatable), written as the
        /// synthetic data writes captions: "a red square moving to the right on a white background".
        #[arg(long = "prompt", value_name = "CAPTION", conflicts_with_all = ["limit", "split"])]
        prompts: Vec<String>,
        /// Seed of the first prompt's render; the next prompts take the following seeds.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Clip length; the model's default when unset.
        #[arg(long)]
        seconds: Option<f64>,
        /// Denoising steps; the model's default when unset.
        #[arg(long)]
        steps: Option<u32>,
        /// How chunks are joined; the model's default (blend) when unset.
        #[arg(long, value_enum)]
        stitch: Option<crate::spec_args::StitchArg>,
        /// Latent frames shared by neighbouring chunks; 0 renders independent chunks end to end
        /// (plain concatenation, the baseline of the seam ratio).
        #[arg(long)]
        overlap: Option<u32>,
        /// Write the table and summary as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Exit with an error when a summary metric is under a floor, as NAME=VALUE (repeatable):
        /// `--floor adherence=0.9 --floor vae_psnr_db=30`.
        #[arg(long = "floor", value_name = "NAME=VALUE")]
        floors: Vec<eval::Floor>,
        /// Diagnostic: start each chunk from the prompt's own synthetic clip, mixed with the
        /// chunk's noise at the first sampling step whose noise level is at most SIGMA, instead
        /// of from pure noise (1 starts from noise; blend stitching only). Tells at which noise
        /// level the DiT loses what the clip shows (its shapes, its motion).
        #[arg(long, value_name = "SIGMA")]
        from_clip: Option<f64>,
    },
    /// Train the model on synthetic clips: `vae` first, then `dit` from the VAE run's folder.
    /// Running the same command again continues from the last checkpoint.
    Train(vidfarm_train::cli::TrainArgs),
}

pub async fn run(command: ModelCommand) -> Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(command)).await?
}

fn run_blocking(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Info { dir } => {
            let info = model_info(&dir)?;
            crate::output::emit(serde_json::to_string_pretty(&info)?);
        }
        ModelCommand::Forward { component, checkpoint, inputs, out, repeat } => {
            let component: Component = component.parse()?;
            let timing = run_component(component, &checkpoint, &inputs, &out, repeat + 1)?;
            if repeat > 0 {
                crate::output::emit(serde_json::json!({ "load_s": timing.load_s, "run_s": timing.run_s }));
            }
        }
        ModelCommand::Init { dir, seed, max_sequence_length } => {
            let scheduler: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("scheduler/scheduler_config.json")).context("reading scheduler/scheduler_config.json")?,
            )
            .context("scheduler/scheduler_config.json")?;
            let config = PipelineConfig {
                transformer: WanTransformerConfig::from_file(&dir.join("transformer/config.json"))?,
                vae: AutoencoderKLWanConfig::from_file(&dir.join("vae/config.json"))?,
                text_encoder: UMT5Config::from_file(&dir.join("text_encoder/config.json"))?,
                tokenizer: dir.join("tokenizer/tokenizer.json"),
                flow_shift: scheduler["flow_shift"].as_f64().context("scheduler_config.json has no flow_shift")?,
                max_sequence_length,
            };
            let pipeline = Pipeline::<DefaultBackend>::random(config, seed, &Default::default())?;
            pipeline.save(&dir)?;
            crate::output::emit(format!("wrote random weights (seed {seed}) into {}", dir.display()));
        }
        ModelCommand::Eval { model, limit, split, prompts, seed, seconds, steps, stitch, overlap, out, floors, from_clip } => {
            let prompts = if prompts.is_empty() {
                let split = match split {
                    SplitArg::HeldOut => vidfarm_synth::Split::HeldOut,
                    SplitArg::Train => vidfarm_synth::Split::Train,
                };
                eval::Prompts::Split { split, limit }
            } else {
                eval::Prompts::Given(prompts)
            };
            eval::run(eval::EvalArgs { model, prompts, seed, seconds, steps, stitch, overlap, out, floors, from_clip })?;
        }
        ModelCommand::Train(args) => vidfarm_train::cli::run(args)?,
    }
    Ok(())
}
