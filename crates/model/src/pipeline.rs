//! The text-to-video pipeline a worker runs, over a diffusers `WanPipeline` folder:
//! `model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `tokenizer/tokenizer.json`,
//! `scheduler/scheduler_config.json`.
//!
//! prompt -> tokenizer -> UMT5 -> (padded, zeroed past the prompt) embedding; noise -> flow-matching
//! sampler over the DiT with classifier-free guidance -> latents; latents un-normalised with the
//! VAE's `latents_mean`/`latents_std` -> VAE decode -> video in `[-1, 1]`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoint::{io_error, read_config, unsupported, write_config};
use crate::error::ModelError;
use crate::text_encoder::{UMT5Config, UMT5EncoderModel};
use crate::tokenizer::Tokenizer;
use crate::transformer::{ClipSpan, WanTransformer3DModel, WanTransformerConfig};
use crate::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};

pub use crate::sampling::{CleanPrefix, SamplerKind, SamplingOptions, StepControl, StepProgress};
pub use crate::scheduler::FlowSampler;

/// The backend a worker runs: CUDA with the `cuda` feature, else the CPU backend.
#[cfg(feature = "cuda")]
pub type DefaultBackend = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
pub type DefaultBackend = burn::backend::Flex;

/// Wan's text length: prompts are padded (with zero embeddings) or truncated to this many tokens,
/// unless `tokenizer/tokenizer_config.json` sets a smaller `model_max_length`.
pub const MAX_SEQUENCE_LENGTH: usize = 512;
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const DIFFUSERS_VERSION: &str = "0.42.1";
const PIPELINE_CLASS_NAME: &str = "WanPipeline";

/// A prompt's text embedding `[1, tokens, text_dim]` and the words the tokenizer could not
/// represent (they became the unknown token).
#[derive(Clone, Debug)]
pub struct PromptEmbedding<B: Backend> {
    pub hidden: Tensor<B, 3>,
    pub unknown_words: Vec<String>,
}

/// The geometry a caller needs to shape noise and plan chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PipelineInfo {
    pub latent_channels: usize,
    /// Video frames per latent frame after the first (4 for Wan2.1).
    pub temporal_factor: usize,
    /// Pixels per latent pixel along height and width (8 for Wan2.1).
    pub spatial_factor: usize,
    /// DiT patch `[frames, height, width]`; latent height and width must be multiples.
    pub patch_size: [usize; 3],
}

impl PipelineInfo {
    /// Pixels per DiT token side (a profile's `spatial_factor`).
    pub fn pixels_per_token(&self) -> usize {
        self.spatial_factor * self.patch_size[1]
    }
}

/// `scheduler/scheduler_config.json`: Wan's UniPC configuration. Only `flow_shift` varies; it is the
/// default for [`SamplingOptions::flow_shift`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(default = "default_flow_shift")]
    pub flow_shift: f64,
    #[serde(default)]
    pub prediction_type: Option<String>,
    #[serde(default)]
    pub use_flow_sigmas: Option<bool>,
}

fn default_flow_shift() -> f64 {
    3.0
}

impl SchedulerConfig {
    pub fn wan(flow_shift: f64) -> Self {
        Self {
            class_name: "UniPCMultistepScheduler".into(),
            flow_shift,
            prediction_type: Some("flow_prediction".into()),
            use_flow_sigmas: Some(true),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        match self.class_name.as_str() {
            "UniPCMultistepScheduler" => {
                if self.prediction_type.as_deref() != Some("flow_prediction") {
                    return Err(unsupported(path, "prediction_type", &self.prediction_type, "Wan needs \"flow_prediction\""));
                }
                if self.use_flow_sigmas != Some(true) {
                    return Err(unsupported(path, "use_flow_sigmas", self.use_flow_sigmas, "Wan needs true"));
                }
                Ok(())
            }
            "FlowMatchEulerDiscreteScheduler" | "FlowMatchHeunDiscreteScheduler" => Ok(()),
            other => Err(unsupported(path, "_class_name", other, "expected a flow-matching scheduler")),
        }
    }

    /// The full diffusers config, as `WanPipeline.save_pretrained` writes it.
    fn to_diffusers_json(&self) -> serde_json::Value {
        json!({
            "_class_name": "UniPCMultistepScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
            "disable_corrector": [], "dynamic_thresholding_ratio": 0.995,
            "final_sigmas_type": "zero", "flow_shift": self.flow_shift, "lower_order_final": true,
            "num_train_timesteps": 1000, "predict_x0": true, "prediction_type": "flow_prediction",
            "rescale_betas_zero_snr": false, "sample_max_value": 1.0, "solver_order": 2,
            "solver_p": null, "solver_type": "bh2", "steps_offset": 0, "thresholding": false,
            "timestep_spacing": "linspace", "trained_betas": null, "use_beta_sigmas": false,
            "use_exponential_sigmas": false, "use_flow_sigmas": true, "use_karras_sigmas": false
        })
    }
}

/// Everything needed to build a pipeline with random weights.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub transformer: WanTransformerConfig,
    pub vae: AutoencoderKLWanConfig,
    pub text_encoder: UMT5Config,
    /// A `tokenizer.json` whose ids fit the text encoder's vocabulary.
    pub tokenizer: PathBuf,
    pub flow_shift: f64,
    pub max_sequence_length: usize,
}

pub struct Pipeline<B: Backend> {
    pub text_encoder: UMT5EncoderModel<B>,
    pub tokenizer: Tokenizer,
    /// The tokenizer file as loaded, written back verbatim by [`Pipeline::save`].
    tokenizer_json: String,
    pub transformer: WanTransformer3DModel<B>,
    pub vae: AutoencoderKLWan<B>,
    pub scheduler: SchedulerConfig,
    /// Prompt length in tokens (persisted as `model_max_length` in `tokenizer_config.json`).
    pub max_sequence_length: usize,
    device: B::Device,
}

/// A clone shares the weights (tensors are reference-counted).
impl<B: Backend> Clone for Pipeline<B> {
    fn clone(&self) -> Self {
        Self {
            text_encoder: self.text_encoder.clone(),
            tokenizer: self.tokenizer.clone(),
            tokenizer_json: self.tokenizer_json.clone(),
            transformer: self.transformer.clone(),
            vae: self.vae.clone(),
            scheduler: self.scheduler.clone(),
            max_sequence_length: self.max_sequence_length,
            device: self.device.clone(),
        }
    }
}

/// Wan's `whitespace_clean`: runs of whitespace become one space, ends trimmed.
fn clean_prompt(prompt: &str) -> String {
    prompt.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `model_max_length` of `tokenizer_config.json` when present and below [`MAX_SEQUENCE_LENGTH`]
/// (transformers writes a huge sentinel when the tokenizer has no limit).
fn read_max_sequence_length(tokenizer_dir: &Path) -> Result<usize, ModelError> {
    let path = tokenizer_dir.join(TOKENIZER_CONFIG);
    if !path.is_file() {
        return Ok(MAX_SEQUENCE_LENGTH);
    }
    let config: serde_json::Value = read_config(&path)?;
    match config.get("model_max_length").and_then(|v| v.as_f64()) {
        Some(length) if length >= 1.0 && length < MAX_SEQUENCE_LENGTH as f64 => Ok(length as usize),
        Some(length) if length < 1.0 => Err(unsupported(&path, "model_max_length", length, "must be at least 1")),
        _ => Ok(MAX_SEQUENCE_LENGTH),
    }
}

/// The transformers class that loads this `tokenizer.json`: T5's for a Unigram model (umT5),
/// the generic fast tokenizer otherwise (e.g. vidfarm's word-level one).
fn tokenizer_class(tokenizer_json: &str) -> &'static str {
    let model_type = serde_json::from_str::<serde_json::Value>(tokenizer_json)
        .ok()
        .and_then(|json| json["model"]["type"].as_str().map(str::to_owned));
    match model_type.as_deref() {
        Some("Unigram") => "T5TokenizerFast",
        _ => "PreTrainedTokenizerFast",
    }
}

/// Writes `tokenizer_config.json` so transformers (and so diffusers' `WanPipeline`) can load the
/// tokenizer and pad to a fixed length: class, special tokens, and `model_max_length` (the
/// pipeline's prompt length). Fields already in the file are kept, except the length.
fn write_tokenizer_config(tokenizer_dir: &Path, tokenizer_json: &str, length: usize) -> Result<(), ModelError> {
    let path = tokenizer_dir.join(TOKENIZER_CONFIG);
    let mut config: serde_json::Value = if path.is_file() { read_config(&path)? } else { json!({}) };
    let vocabulary = tokenizers::Tokenizer::from_str(tokenizer_json).ok();
    let has_token = |token: &str| vocabulary.as_ref().is_some_and(|t| t.token_to_id(token).is_some());
    if let Some(fields) = config.as_object_mut() {
        fields.entry("tokenizer_class").or_insert_with(|| tokenizer_class(tokenizer_json).into());
        let specials = [("pad_token", ["<pad>", "[PAD]"]), ("eos_token", ["</s>", "[SEP]"]), ("unk_token", ["<unk>", "[UNK]"])];
        for (field, spellings) in specials {
            if let Some(token) = spellings.into_iter().find(|t| has_token(t)) {
                fields.entry(field).or_insert_with(|| token.into());
            }
        }
        fields.insert("model_max_length".into(), length.into());
    }
    write_config(&path, &config)
}

fn check_model_index(dir: &Path) -> Result<(), ModelError> {
    let path = dir.join("model_index.json");
    let index: serde_json::Value = read_config(&path)?;
    let class_name = index.get("_class_name").and_then(|v| v.as_str()).unwrap_or_default();
    if class_name != PIPELINE_CLASS_NAME {
        return Err(unsupported(&path, "_class_name", class_name, "expected \"WanPipeline\" (text-to-video)"));
    }
    // Wan2.2's second (low-noise) transformer and timestep expansion are not implemented.
    if let Some(second) = index.get("transformer_2")
        && second.as_array().is_some_and(|parts| parts.iter().any(|p| !p.is_null()))
    {
        return Err(unsupported(&path, "transformer_2", second, "a second transformer (Wan2.2) is not implemented"));
    }
    if let Some(ratio) = index.get("boundary_ratio").filter(|v| !v.is_null()) {
        return Err(unsupported(&path, "boundary_ratio", ratio, "Wan2.2 two-stage sampling is not implemented"));
    }
    if let Some(expand) = index.get("expand_timesteps").filter(|v| v.as_bool() == Some(true)) {
        return Err(unsupported(&path, "expand_timesteps", expand, "per-token timesteps (Wan2.2 TI2V) are not implemented"));
    }
    Ok(())
}

/// Why the three networks cannot run as one pipeline, if they cannot: the transformer reads the
/// text encoder's states and the VAE's latents, and the sampler steps those latents by its
/// output. Said from the transformer's side, as its config is what names the others' sizes.
fn parts_misfit(transformer: &WanTransformerConfig, text_encoder: &UMT5Config, vae: &AutoencoderKLWanConfig) -> Option<String> {
    if transformer.text_dim != text_encoder.d_model {
        return Some(format!("text_dim {} differs from the text encoder's d_model {}", transformer.text_dim, text_encoder.d_model));
    }
    if transformer.in_channels != vae.z_dim {
        return Some(format!("in_channels {} differs from the VAE's z_dim {}", transformer.in_channels, vae.z_dim));
    }
    if transformer.out_channels() != transformer.in_channels {
        return Some(format!(
            "out_channels {} differs from in_channels {}: the sampler steps the latents by the transformer's output",
            transformer.out_channels(),
            transformer.in_channels
        ));
    }
    None
}

impl<B: Backend> Pipeline<B> {
    /// Loads a diffusers `WanPipeline` folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        check_model_index(dir)?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler: SchedulerConfig = read_config(&scheduler_path)?;
        scheduler.validate(&scheduler_path)?;
        let tokenizer_path = dir.join("tokenizer").join("tokenizer.json");
        let tokenizer_json = std::fs::read_to_string(&tokenizer_path).map_err(|e| io_error(&tokenizer_path, e))?;
        let max_sequence_length = read_max_sequence_length(&dir.join("tokenizer"))?;
        let text_encoder = UMT5EncoderModel::load(&dir.join("text_encoder"), device)?;
        let transformer = WanTransformer3DModel::load(&dir.join("transformer"), device)?;
        let vae = AutoencoderKLWan::load(&dir.join("vae"), device)?;
        if let Some(reason) = parts_misfit(&transformer.config, &text_encoder.config, &vae.config) {
            return Err(ModelError::InvalidConfig { path: dir.join("transformer").join("config.json"), reason });
        }
        Ok(Self {
            tokenizer: Tokenizer::from_file(&tokenizer_path)?,
            tokenizer_json,
            text_encoder,
            transformer,
            vae,
            scheduler,
            max_sequence_length,
            device: device.clone(),
        })
    }

    /// A pipeline with random weights (reproducible for a given `seed` and backend).
    pub fn random(config: PipelineConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        if config.max_sequence_length == 0 {
            return Err(ModelError::InvalidInput("max_sequence_length must be at least 1".into()));
        }
        if let Some(reason) = parts_misfit(&config.transformer, &config.text_encoder, &config.vae) {
            return Err(ModelError::InvalidInput(format!("transformer {reason}")));
        }
        B::seed(device, seed);
        let tokenizer_json = std::fs::read_to_string(&config.tokenizer).map_err(|e| io_error(&config.tokenizer, e))?;
        Ok(Self {
            tokenizer: Tokenizer::from_file(&config.tokenizer)?,
            tokenizer_json,
            text_encoder: UMT5EncoderModel::random(config.text_encoder, device)?,
            transformer: WanTransformer3DModel::random(config.transformer, device)?,
            vae: AutoencoderKLWan::random(config.vae, device)?,
            scheduler: SchedulerConfig::wan(config.flow_shift),
            max_sequence_length: config.max_sequence_length,
            device: device.clone(),
        })
    }

    /// Writes the folder layout [`Pipeline::load`] reads (and diffusers' `WanPipeline` loads).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let index = json!({
            "_class_name": PIPELINE_CLASS_NAME,
            "_diffusers_version": DIFFUSERS_VERSION,
            "boundary_ratio": null,
            "expand_timesteps": false,
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", tokenizer_class(&self.tokenizer_json)],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": [null, null],
            "vae": ["diffusers", "AutoencoderKLWan"]
        });
        write_config(&dir.join("model_index.json"), &index)?;
        let scheduler_dir = dir.join("scheduler");
        std::fs::create_dir_all(&scheduler_dir).map_err(|e| io_error(&scheduler_dir, e))?;
        write_config(&scheduler_dir.join("scheduler_config.json"), &self.scheduler.to_diffusers_json())?;
        let tokenizer_dir = dir.join("tokenizer");
        std::fs::create_dir_all(&tokenizer_dir).map_err(|e| io_error(&tokenizer_dir, e))?;
        let tokenizer_path = tokenizer_dir.join("tokenizer.json");
        std::fs::write(&tokenizer_path, &self.tokenizer_json).map_err(|e| io_error(&tokenizer_path, e))?;
        write_tokenizer_config(&tokenizer_dir, &self.tokenizer_json, self.max_sequence_length)?;
        self.text_encoder.save(&dir.join("text_encoder"))?;
        self.transformer.save(&dir.join("transformer"))?;
        self.vae.save(&dir.join("vae"))
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    pub fn info(&self) -> PipelineInfo {
        PipelineInfo {
            latent_channels: self.transformer.config().in_channels,
            temporal_factor: self.vae.temporal_factor(),
            spatial_factor: self.vae.spatial_factor(),
            patch_size: self.transformer.config().patch_size,
        }
    }

    /// Sampling defaults of the Wan pipeline (UniPC, 50 steps, guidance 5) with this folder's shift.
    pub fn default_options(&self) -> SamplingOptions {
        SamplingOptions {
            sampler: SamplerKind::UniPc,
            steps: 50,
            guidance_scale: 5.0,
            flow_shift: self.scheduler.flow_shift as f32,
            guidance_min_sigma: 0.0,
        }
    }

    /// Wan's `_get_t5_prompt_embeds`: `[1, max_sequence_length, text_dim]`, the UMT5 states of the
    /// prompt's tokens followed by zeros (padding positions are zeroed, not encoded padding).
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbedding<B>, ModelError> {
        let (hidden, mut unknown) = self.encode_prompts(&[prompt])?;
        Ok(PromptEmbedding { hidden, unknown_words: unknown.pop().unwrap_or_default() })
    }

    /// [`Self::encode_prompt`] for many prompts in one text-encoder pass (training batches):
    /// `[prompts, max_sequence_length, text_dim]`, and each prompt's unknown words.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<(Tensor<B, 3>, Vec<Vec<String>>), ModelError> {
        let (max_len, batch) = (self.max_sequence_length, prompts.len());
        let (mut ids, mut mask, mut unknown) = (Vec::with_capacity(batch * max_len), Vec::with_capacity(batch * max_len), Vec::new());
        for prompt in prompts {
            let encoded = self.tokenizer.encode(&clean_prompt(prompt), max_len)?;
            for (padded, values) in [(&mut ids, &encoded.ids), (&mut mask, &encoded.mask)] {
                padded.extend(values.iter().map(|&v| i64::from(v)).chain(std::iter::repeat(0)).take(max_len));
            }
            unknown.push(encoded.unknown_words);
        }
        let keep: Vec<f32> = mask.iter().map(|&m| if m != 0 { 1.0 } else { 0.0 }).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, max_len]), &self.device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [batch, max_len]), &self.device);
        let keep = Tensor::<B, 3>::from_data(TensorData::new(keep, [batch, max_len, 1]), &self.device);
        Ok((self.text_encoder.forward(ids, mask)? * keep, unknown))
    }

    /// Denoises `noise` (`[1, latent_channels, frames, h, w]`, unit Gaussian, at `span` of its
    /// clip) into normalised latents. Returns `Err(ModelError::Cancelled)` when `on_step` answers Stop.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        noise: Tensor<B, 5>,
        cond: &PromptEmbedding<B>,
        uncond: &PromptEmbedding<B>,
        prefix: Option<&CleanPrefix<B>>,
        span: ClipSpan,
        opts: &SamplingOptions,
        on_step: &mut dyn FnMut(StepProgress) -> StepControl,
    ) -> Result<Tensor<B, 5>, ModelError> {
        crate::sampling::denoise(&self.transformer, noise, cond.hidden.clone(), uncond.hidden.clone(), prefix, span, opts, on_step)
    }

    /// One Euler step of a stepwise run (sync mode): see [`crate::sampling::euler_step`].
    pub fn euler_step(
        &self,
        latents: Tensor<B, 5>,
        step: usize,
        cond: &PromptEmbedding<B>,
        uncond: &PromptEmbedding<B>,
        span: ClipSpan,
        opts: &SamplingOptions,
    ) -> Result<Tensor<B, 5>, ModelError> {
        crate::sampling::euler_step(&self.transformer, latents, step, cond.hidden.clone(), uncond.hidden.clone(), span, opts)
    }

    /// Un-normalises latents with the VAE's `latents_mean`/`latents_std` (as `WanPipeline` does) and
    /// decodes them to video `[1, 3, 1 + 4 (F - 1), 8h, 8w]` in `[-1, 1]`.
    pub fn decode(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        Ok(Tensor::cat(self.decode_frames(latents)?.collect(), 2))
    }

    /// [`Pipeline::decode`] a latent frame at a time: the video frames of each latent frame in
    /// turn (1, then 4 each for Wan's factors), for a caller that encodes them as they come.
    pub fn decode_frames(&self, latents: Tensor<B, 5>) -> Result<impl Iterator<Item = Tensor<B, 5>> + '_, ModelError> {
        let z = self.denormalize(latents)?;
        Ok(self.vae.decode_frames(z)?.map(|frames| frames.clamp(-1.0, 1.0)))
    }

    /// `latents * latents_std + latents_mean`, per channel.
    pub fn denormalize(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        let (mean, std) = self.latent_statistics()?;
        Ok(latents * std + mean)
    }

    /// `(latents - latents_mean) / latents_std`, per channel (for encoding videos into DiT space).
    pub fn normalize(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        let (mean, std) = self.latent_statistics()?;
        Ok((latents - mean) / std)
    }

    fn latent_statistics(&self) -> Result<(Tensor<B, 5>, Tensor<B, 5>), ModelError> {
        let config = self.vae.config();
        let channels = config.z_dim;
        if config.latents_mean.len() != channels || config.latents_std.len() != channels {
            return Err(ModelError::InvalidInput(format!(
                "the VAE config has {} latents_mean and {} latents_std values for z_dim {channels}",
                config.latents_mean.len(),
                config.latents_std.len()
            )));
        }
        let to_tensor = |values: &[f64]| {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::<B, 5>::from_data(TensorData::new(values, [1, channels, 1, 1, 1]), &self.device)
        };
        Ok((to_tensor(&config.latents_mean), to_tensor(&config.latents_std)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, fixture, max_abs_diff};
    use burn::tensor::Distribution;

    type B = TestBackend;

    fn tiny_config() -> PipelineConfig {
        let transformer = serde_json::from_value(json!({
            "num_attention_heads": 2, "attention_head_dim": 6, "in_channels": 16, "out_channels": 16,
            "text_dim": 8, "freq_dim": 8, "ffn_dim": 16, "num_layers": 1
        }))
        .expect("transformer config");
        let text_encoder = serde_json::from_value(json!({
            "vocab_size": 40, "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 1, "num_heads": 2
        }))
        .expect("text config");
        let vae = AutoencoderKLWanConfig::from_file(&fixture("vae").join("vae").join("config.json")).expect("vae config");
        PipelineConfig {
            transformer,
            vae,
            text_encoder,
            tokenizer: fixture("tokenizer_words").join("tokenizer.json"),
            flow_shift: 3.0,
            max_sequence_length: 16,
        }
    }

    #[test]
    fn random_pipeline_saves_loads_and_renders() {
        let device = Default::default();
        let pipeline = Pipeline::<B>::random(tiny_config(), 1, &device).expect("random");
        let dir = tempfile::tempdir().expect("tempdir");
        pipeline.save(dir.path()).expect("save");
        let loaded = Pipeline::<B>::load(dir.path(), &device).expect("load");
        assert_eq!(loaded.max_sequence_length, 16, "kept in tokenizer_config.json");
        assert_eq!(loaded.info(), PipelineInfo { latent_channels: 16, temporal_factor: 4, spatial_factor: 8, patch_size: [1, 2, 2] });
        assert_eq!(loaded.default_options().flow_shift, 3.0);

        let cond = loaded.encode_prompt("a  red ball\n").expect("cond");
        let uncond = loaded.encode_prompt("").expect("uncond");
        assert_eq!(cond.hidden.dims(), [1, 16, 8]);
        let original = pipeline.encode_prompt("a red ball").expect("cond");
        assert!(max_abs_diff(cond.hidden.clone(), original.hidden) < 1e-6);

        let noise = Tensor::<B, 5>::random([1, 16, 2, 2, 4], Distribution::Normal(0.0, 1.0), &device);
        let opts = SamplingOptions { sampler: SamplerKind::UniPc, steps: 2, guidance_scale: 3.0, flow_shift: 3.0, guidance_min_sigma: 0.0 };
        let mut steps = Vec::new();
        let latents = loaded
            .denoise(noise.clone(), &cond, &uncond, None, ClipSpan::whole(2), &opts, &mut |p| {
                steps.push(p.step);
                StepControl::Continue
            })
            .expect("denoise");
        assert_eq!(steps, vec![1, 2]);
        let reference = pipeline.denoise(noise, &cond, &uncond, None, ClipSpan::whole(2), &opts, &mut |_| StepControl::Continue).expect("denoise");
        assert!(max_abs_diff(latents.clone(), reference) < 1e-5);

        let video = loaded.decode(latents).expect("decode");
        assert_eq!(video.dims(), [1, 3, 5, 16, 32]);
        let peak: f32 = video.abs().max().into_scalar();
        assert!(peak <= 1.0);
    }

    #[test]
    fn latent_normalisation_round_trips() {
        let device = Default::default();
        let pipeline = Pipeline::<B>::random(tiny_config(), 2, &device).expect("random");
        let latents = Tensor::<B, 5>::random([1, 16, 1, 2, 2], Distribution::Normal(0.0, 1.0), &device);
        let back = pipeline.normalize(pipeline.denormalize(latents.clone()).expect("de")).expect("norm");
        assert!(max_abs_diff(latents, back) < 1e-5);
    }

    #[test]
    fn missing_or_foreign_folders_are_errors() {
        let device = Default::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Pipeline::<B>::load(dir.path(), &device).err().expect("empty folder");
        assert!(matches!(err, ModelError::MissingFile { .. }) && err.to_string().contains("model_index.json"), "{err}");
        std::fs::write(dir.path().join("model_index.json"), r#"{"_class_name": "WanImageToVideoPipeline"}"#).expect("write");
        let err = Pipeline::<B>::load(dir.path(), &device).err().expect("i2v");
        assert!(err.to_string().contains("_class_name"), "{err}");
        let mut config = tiny_config();
        config.transformer.text_dim = 9;
        assert!(matches!(Pipeline::<B>::random(config, 0, &device), Err(ModelError::InvalidInput(_))));
    }

    /// A folder whose transformer does not fit its VAE or its own samples is refused at load,
    /// naming the transformer's config and the sizes, not failed at the first render.
    #[test]
    fn a_transformer_that_does_not_fit_the_other_parts_is_refused_at_load() {
        let device = Default::default();
        let dir = tempfile::tempdir().expect("tempdir");
        Pipeline::<B>::random(tiny_config(), 3, &device).expect("random").save(dir.path()).expect("save");
        for (in_channels, out_channels, expected) in [
            (8, 8, "in_channels 8 differs from the VAE's z_dim 16"),
            (16, 32, "out_channels 32 differs from in_channels 16"),
        ] {
            let mut config = tiny_config().transformer;
            config.in_channels = in_channels;
            config.out_channels = Some(out_channels);
            WanTransformer3DModel::<B>::random(config, &device).expect("transformer").save(&dir.path().join("transformer")).expect("save");
            let err = Pipeline::<B>::load(dir.path(), &device).err().expect("misfit").to_string();
            assert!(err.contains("transformer/config.json") && err.contains(expected), "{err}");
        }
    }

    /// The whole pipeline against diffusers' `WanPipeline` on tiny random components
    /// (`parity/pipeline.py`): prompt embeddings, UniPC + guidance latents, decoded video.
    #[test]
    fn parity_wan_pipeline() {
        let device = Default::default();
        let dir = fixture("pipeline");
        let mut pipeline = Pipeline::<B>::load(&dir.join("wan_tiny"), &device).expect("load");
        pipeline.max_sequence_length = 12;
        let io = crate::checkpoint::TensorSource::open_files(&[dir.join("io.safetensors")]).expect("io");
        let read3 = |name: &str| io.tensor_of_rank::<B, 3>(name, &device).expect(name);
        let read5 = |name: &str| io.tensor_of_rank::<B, 5>(name, &device).expect(name);

        let cond = pipeline.encode_prompt("a red circle moving to the left").expect("cond");
        let uncond = pipeline.encode_prompt("blue square").expect("uncond");
        let cond_err = max_abs_diff(cond.hidden.clone(), read3("prompt_embeds"));
        let uncond_err = max_abs_diff(uncond.hidden.clone(), read3("negative_prompt_embeds"));

        let opts = SamplingOptions { sampler: SamplerKind::UniPc, steps: 4, guidance_scale: 4.0, flow_shift: 3.0, guidance_min_sigma: 0.0 };
        let noise = read5("noise");
        let span = ClipSpan::whole(noise.dims()[2]);
        let latents = pipeline.denoise(noise, &cond, &uncond, None, span, &opts, &mut |_| StepControl::Continue).expect("denoise");
        let latents_err = max_abs_diff(latents.clone(), read5("latents"));
        let video_err = max_abs_diff(pipeline.decode(latents).expect("decode"), read5("video"));
        println!("pipeline max abs errors: prompt {cond_err:e}, negative {uncond_err:e}, latents {latents_err:e}, video {video_err:e}");
        for (what, err) in [("prompt", cond_err), ("negative", uncond_err), ("latents", latents_err), ("video", video_err)] {
            assert!(err <= 1e-4, "{what}: max abs error {err}");
        }
    }
}
