//! The spatiotemporal DiT: diffusers `WanTransformer3DModel` (Wan2.1 text-to-video), plus an
//! optional factorized attention layout (spatial attention per frame, then temporal attention per
//! position; vidfarm's extension, weights under `blocks.N.attn_temporal` / `blocks.N.norm_temporal`).
//!
//! With `position_frequencies` set (vidfarm's extension, weights `position_embedding.*`), each
//! token also gets its place in the frame and in the clip: see [`position`]. With
//! `pooled_text_modulation` the caption's mean token joins the timestep embedding (see
//! [`embeddings`]); with `input_skip` the prediction (flow or clean latents) adds the noisy input
//! through a gate of the timestep (see `WanTransformer3DModel::input_skip`); with `input_gate` the timestep scales
//! the patch tokens (`WanTransformer3DModel::patch_gate`); with `prediction_type` "sample" the
//! network predicts the clean latents and `forward` turns them into the flow ([`Prediction`]).
//!
//! Flow: Conv3d patch embedding (patch `(1, 2, 2)`) -> blocks with 6-way adaLN modulation from the
//! timestep, 3D rotary self-attention and cross-attention to the projected text -> modulated output
//! norm -> `proj_out` -> unpatchify back to `[batch, channels, frames, height, width]`.

mod attention;
mod block;
mod embeddings;
mod position;
mod rope;

pub use attention::{AttentionScope, WanAttention, scaled_dot_product};
pub use block::{BlockDims, FeedForward, WanTransformerBlock};
pub use embeddings::{ConditionDims, ConditionEmbedder, timestep_features};
pub use position::ClipSpan;
use position::PositionFeatures;
pub use rope::{RopeTables, apply_rope, rope_tables};

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{TensorSource, TensorWriter, read_config, save_component, unsupported};
use crate::error::ModelError;
use crate::layers::{Conv3d, LayerNorm, Linear};
use crate::scheduler::NUM_TRAIN_TIMESTEPS;

pub const CONFIG_CLASS_NAME: &str = "WanTransformer3DModel";
const ROPE_THETA: f64 = 10000.0;

/// How self-attention spans the video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionLayout {
    /// One attention over all tokens of all frames (Wan2.1).
    Full,
    /// Spatial attention within each frame, then temporal attention across frames.
    Factorized,
}

impl AttentionLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            AttentionLayout::Full => "full",
            AttentionLayout::Factorized => "factorized",
        }
    }
}

fn default_patch_size() -> [usize; 3] {
    [1, 2, 2]
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_qk_norm() -> Option<String> {
    Some(QK_NORM_ACROSS_HEADS.to_string())
}
fn default_rope_max_seq_len() -> usize {
    1024
}
fn default_layout() -> String {
    "full".to_string()
}
fn default_class_name() -> String {
    CONFIG_CLASS_NAME.to_string()
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// More would overflow the frequencies' powers of two and resolve nothing a patch grid holds.
const MAX_POSITION_FREQUENCIES: usize = 16;

const QK_NORM_ACROSS_HEADS: &str = "rms_norm_across_heads";

/// diffusers' `transformer/config.json` for `WanTransformer3DModel`, plus `attention_layout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WanTransformerConfig {
    #[serde(rename = "_class_name", default = "default_class_name")]
    pub class_name: String,
    #[serde(default = "default_patch_size")]
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub text_dim: usize,
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    #[serde(default = "default_true")]
    pub cross_attn_norm: bool,
    #[serde(default = "default_qk_norm")]
    pub qk_norm: Option<String>,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub image_dim: Option<usize>,
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    #[serde(default = "default_rope_max_seq_len")]
    pub rope_max_seq_len: usize,
    #[serde(default)]
    pub pos_embed_seq_len: Option<usize>,
    /// vidfarm extension: `"full"` (Wan) or `"factorized"`.
    #[serde(default = "default_layout")]
    pub attention_layout: String,
    /// vidfarm extension: Fourier frequencies per axis of the absolute position features (0: none,
    /// as Wan).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_frequencies: usize,
    /// vidfarm extension: position features also of `column -+ time` and `row -+ time` (needs
    /// `position_frequencies`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub position_oblique: bool,
    /// vidfarm extension: the mean of the prompt's token embeddings joins the timestep embedding
    /// (weights `condition_embedder.pooled_text_embedder.*`), so the caption scales every block.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pooled_text_modulation: bool,
    /// vidfarm extension: the prediction (the flow, or the clean latents of a `"sample"` model)
    /// adds the noisy input, scaled per channel by a gate of the timestep embedding (weights
    /// `input_skip.*`; needs `out_channels == in_channels`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub input_skip: bool,
    /// vidfarm extension, named as diffusers' schedulers name theirs: what the network's output
    /// is. Absent or `"flow_prediction"`: the flow (Wan). `"sample"`: the clean latents, turned
    /// into the flow `(x_t - x0) / sigma` before `forward` returns, so samplers and guidance see a
    /// flow either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_type: Option<String>,
    /// vidfarm extension: the patch tokens are scaled per channel by `1 + gate(timestep
    /// embedding)` before the position features join them (weights `patch_gate.*`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub input_gate: bool,
}

/// What the network's last layer outputs (see `WanTransformerConfig::prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Flow,
    /// Why: at sigma 1 the flow is the input noise minus the clean latents, so a flow-predicting
    /// network must carry its whole input to its output; one as wide as its patch (vidfarm-tiny:
    /// 64 = 16 channels x 2 x 2) then has no room left for what the caption says. A clean-latent
    /// prediction does not depend on the noise at sigma 1 (Li & He 2025, "Back to Basics: Let
    /// Denoising Generative Models Denoise").
    Sample,
}

/// The smallest sigma a sample prediction is divided by: below it the flow would amplify the
/// network's error without bound (the samplers' last step before 0 is far above it).
const SAMPLE_SIGMA_FLOOR: f32 = 0.05;

impl WanTransformerConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let config: Self = read_config(path)?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// The parsed `attention_layout`; `path` names the config in the error.
    pub fn layout(&self, path: &Path) -> Result<AttentionLayout, ModelError> {
        match self.attention_layout.as_str() {
            "full" => Ok(AttentionLayout::Full),
            "factorized" => Ok(AttentionLayout::Factorized),
            other => Err(unsupported(path, "attention_layout", other, "expected \"full\" or \"factorized\"")),
        }
    }

    /// Rejects values this implementation does not support, naming the field.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        self.layout(path)?;
        if let Some(image_dim) = self.image_dim {
            return Err(unsupported(path, "image_dim", image_dim, "image conditioning (I2V) is not implemented"));
        }
        if let Some(dim) = self.added_kv_proj_dim {
            return Err(unsupported(path, "added_kv_proj_dim", dim, "image conditioning (I2V) is not implemented"));
        }
        if let Some(len) = self.pos_embed_seq_len {
            return Err(unsupported(path, "pos_embed_seq_len", len, "image position embedding is not implemented"));
        }
        match self.qk_norm.as_deref() {
            // diffusers builds the across-heads RMS norm whatever this says; so do we.
            None | Some(QK_NORM_ACROSS_HEADS) => {}
            Some(other) => {
                return Err(unsupported(path, "qk_norm", other, "expected \"rms_norm_across_heads\""));
            }
        }
        let sizes = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
        ];
        for (field, value) in sizes {
            if value == 0 {
                return Err(unsupported(path, field, value, "must be positive"));
            }
        }
        if self.attention_head_dim % 2 == 1 {
            return Err(unsupported(path, "attention_head_dim", self.attention_head_dim, "rotary embedding needs an even head dim"));
        }
        if self.position_frequencies > MAX_POSITION_FREQUENCIES {
            return Err(unsupported(path, "position_frequencies", self.position_frequencies, "at most 16"));
        }
        if self.position_oblique && self.position_frequencies == 0 {
            return Err(unsupported(path, "position_oblique", true, "needs position_frequencies"));
        }
        if self.input_skip && self.out_channels() != self.in_channels {
            return Err(unsupported(path, "input_skip", true, "needs out_channels equal to in_channels"));
        }
        if self.prediction(path)? == Prediction::Sample && self.out_channels() != self.in_channels {
            return Err(unsupported(path, "prediction_type", "sample", "needs out_channels equal to in_channels"));
        }
        if self.patch_size.contains(&0) {
            return Err(unsupported(path, "patch_size", self.patch_size, "must be positive"));
        }
        Ok(())
    }

    /// The parsed `prediction_type`; `path` names the config in the error.
    pub fn prediction(&self, path: &Path) -> Result<Prediction, ModelError> {
        match self.prediction_type.as_deref() {
            None | Some("flow_prediction") => Ok(Prediction::Flow),
            Some("sample") => Ok(Prediction::Sample),
            Some(other) => Err(unsupported(path, "prediction_type", other, "expected \"flow_prediction\" or \"sample\"")),
        }
    }

    /// The absolute position features this config asks for, if any.
    fn position_features(&self) -> Option<PositionFeatures> {
        (self.position_frequencies > 0).then_some(PositionFeatures { frequencies: self.position_frequencies, oblique: self.position_oblique })
    }

    fn condition_dims(&self) -> ConditionDims {
        ConditionDims { dim: self.inner_dim(), freq_dim: self.freq_dim, text_dim: self.text_dim, pooled_text: self.pooled_text_modulation }
    }

    fn block_dims(&self, layout: AttentionLayout) -> BlockDims {
        BlockDims {
            dim: self.inner_dim(),
            ffn_dim: self.ffn_dim,
            heads: self.num_attention_heads,
            eps: self.eps,
            cross_attn_norm: self.cross_attn_norm,
            factorized: layout == AttentionLayout::Factorized,
        }
    }
}

#[derive(Module, Debug)]
pub struct WanTransformer3DModel<B: Backend> {
    pub patch_embedding: Conv3d<B>,
    pub condition_embedder: ConditionEmbedder<B>,
    pub blocks: Vec<WanTransformerBlock<B>>,
    pub norm_out: LayerNorm<B>,
    pub proj_out: Linear<B>,
    /// Present when `position_frequencies` is set.
    pub position_embedding: Option<Linear<B>>,
    /// `dim -> out_channels`, present when `input_skip` is set. Why: a network as wide as its
    /// patch (vidfarm-tiny: 64 = 16 channels x 2 x 2) has no room to carry its input through
    /// besides what the caption says. For a flow, at sigma 1 the input noise is half the answer;
    /// for clean latents, at low sigma the input nearly is the answer (EDM's `c_skip`). The gate
    /// carries the input instead, and the network adds what it changes.
    pub input_skip: Option<Linear<B>>,
    /// `dim -> dim`, present when `input_gate` is set. Why: the patch embedding of a model as
    /// wide as its patch fills the whole residual stream with the input; at sigma 1 that input is
    /// pure noise and drowns the position features, which are all a caption can place an object
    /// by. The gate lets the timestep shut the noise out (`1 + gate = 0`) and let it in as it
    /// turns into signal.
    pub patch_gate: Option<Linear<B>>,
    /// `[1, 2, dim]`: shift and scale of the output norm.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    #[module(skip)]
    pub config: WanTransformerConfig,
    #[module(skip)]
    pub prediction: Prediction,
}

impl<B: Backend> WanTransformer3DModel<B> {
    /// Loads a diffusers `transformer/` folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let config = WanTransformerConfig::from_file(&config_path)?;
        let src = TensorSource::open_component(dir)?;
        Self::load_from(&src, config, &config_path, device)
    }

    pub fn load_from(src: &TensorSource, config: WanTransformerConfig, config_path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        config.validate(config_path)?;
        let layout = config.layout(config_path)?;
        let prediction = config.prediction(config_path)?;
        let dim = config.inner_dim();
        let patch = config.patch_size;
        let blocks = (0..config.num_layers)
            .map(|i| WanTransformerBlock::load(src, &format!("blocks.{i}"), config.block_dims(layout), device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            patch_embedding: Conv3d::load(src, "patch_embedding", config.in_channels, dim, patch, patch, [0; 3], device)?,
            condition_embedder: ConditionEmbedder::load(src, "condition_embedder", config.condition_dims(), device)?,
            blocks,
            norm_out: LayerNorm::without_affine(config.eps),
            proj_out: Linear::load(src, "proj_out", dim, config.out_channels() * patch.iter().product::<usize>(), true, device)?,
            position_embedding: match config.position_features() {
                None => None,
                Some(features) => Some(Linear::load(src, "position_embedding", features.count(), dim, true, device)?),
            },
            input_skip: match config.input_skip {
                true => Some(Linear::load(src, "input_skip", dim, config.out_channels(), true, device)?),
                false => None,
            },
            patch_gate: match config.input_gate {
                true => Some(Linear::load(src, "patch_gate", dim, dim, true, device)?),
                false => None,
            },
            scale_shift_table: Param::from_tensor(src.tensor("scale_shift_table", [1, 2, dim], device)?),
            config,
            prediction,
        })
    }

    /// A randomly initialised model (seed the backend first for reproducibility).
    pub fn random(config: WanTransformerConfig, device: &B::Device) -> Result<Self, ModelError> {
        let config_path = Path::new("<random transformer config>");
        config.validate(config_path)?;
        let layout = config.layout(config_path)?;
        let prediction = config.prediction(config_path)?;
        let dim = config.inner_dim();
        let patch = config.patch_size;
        Ok(Self {
            patch_embedding: Conv3d::random(config.in_channels, dim, patch, patch, [0; 3], device),
            condition_embedder: ConditionEmbedder::random(config.condition_dims(), device),
            blocks: (0..config.num_layers).map(|_| WanTransformerBlock::random(config.block_dims(layout), device)).collect(),
            norm_out: LayerNorm::without_affine(config.eps),
            proj_out: Linear::random(dim, config.out_channels() * patch.iter().product::<usize>(), true, device),
            position_embedding: config.position_features().map(|features| Linear::random(features.count(), dim, true, device)),
            input_skip: config.input_skip.then(|| Linear::random(dim, config.out_channels(), true, device)),
            patch_gate: config.input_gate.then(|| Linear::random(dim, dim, true, device)),
            scale_shift_table: Param::from_tensor(Tensor::random(
                [1, 2, dim],
                Distribution::Normal(0.0, 1.0 / (dim as f64).sqrt()),
                device,
            )),
            config,
            prediction,
        })
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.config
    }

    /// All weights under their checkpoint names.
    pub fn save_tensors(&self, out: &mut TensorWriter) -> Result<(), ModelError> {
        self.patch_embedding.save(out, "patch_embedding")?;
        self.condition_embedder.save(out, "condition_embedder")?;
        for (i, block) in self.blocks.iter().enumerate() {
            block.save(out, &format!("blocks.{i}"))?;
        }
        self.proj_out.save(out, "proj_out")?;
        if let Some(position) = &self.position_embedding {
            position.save(out, "position_embedding")?;
        }
        if let Some(skip) = &self.input_skip {
            skip.save(out, "input_skip")?;
        }
        if let Some(gate) = &self.patch_gate {
            gate.save(out, "patch_gate")?;
        }
        out.put("scale_shift_table", &self.scale_shift_table.val())
    }

    /// Writes a diffusers `transformer/` folder.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let mut out = TensorWriter::new();
        self.save_tensors(&mut out)?;
        save_component(dir, self.config(), "diffusion_pytorch_model.safetensors", &out)
    }

    /// Predicts the flow for `latents: [batch, channels, frames, height, width]` at `timesteps`
    /// (one per batch item) given `text: [batch, text_tokens, text_dim]`, each item a whole clip.
    pub fn forward(&self, latents: Tensor<B, 5>, timesteps: &[f32], text: Tensor<B, 3>) -> Result<Tensor<B, 5>, ModelError> {
        let [batch, _, frames, _, _] = latents.dims();
        self.forward_in(latents, timesteps, text, &vec![ClipSpan::whole(frames); batch])
    }

    /// [`Self::forward`] for items that are parts of longer clips, at `spans` (one per item).
    pub fn forward_in(&self, latents: Tensor<B, 5>, timesteps: &[f32], text: Tensor<B, 3>, spans: &[ClipSpan]) -> Result<Tensor<B, 5>, ModelError> {
        let config = self.config();
        let [batch, channels, frames, height, width] = latents.dims();
        let [p_t, p_h, p_w] = config.patch_size;
        if channels != config.in_channels {
            return Err(ModelError::InvalidInput(format!(
                "latents have {channels} channels, the transformer expects {}",
                config.in_channels
            )));
        }
        if frames % p_t != 0 || height % p_h != 0 || width % p_w != 0 {
            return Err(ModelError::InvalidInput(format!(
                "latent size {frames}x{height}x{width} is not divisible by the patch size {:?}",
                config.patch_size
            )));
        }
        let grid = [frames / p_t, height / p_h, width / p_w];
        if grid.iter().any(|&n| n > config.rope_max_seq_len) {
            return Err(ModelError::InvalidInput(format!(
                "patch grid {grid:?} exceeds rope_max_seq_len {}",
                config.rope_max_seq_len
            )));
        }
        let [text_batch, _, text_dim] = text.dims();
        if text_batch != batch || text_dim != config.text_dim || timesteps.len() != batch || spans.len() != batch {
            return Err(ModelError::InvalidInput(format!(
                "text is {:?}, {} timesteps and {} clip spans for a batch of {batch}; expected [{batch}, _, {}] and {batch} of each",
                text.dims(),
                timesteps.len(),
                spans.len(),
                config.text_dim
            )));
        }

        let device = latents.device();
        let rope = rope_tables::<B>(config.attention_head_dim, grid, ROPE_THETA, &device);
        let input = latents.clone();
        let patches = self.patch_embedding.forward(latents);
        let dim = config.inner_dim();
        let tokens = grid.iter().product::<usize>();
        let mut x = patches.reshape([batch, dim, tokens]).swap_dims(1, 2);
        let cond = self.condition_embedder.forward(timesteps, text);
        if let Some(gate) = &self.patch_gate {
            x = x * (gate.forward(silu(cond.temb.clone())).unsqueeze_dim::<3>(1) + 1.0);
        }
        if let (Some(position), Some(features)) = (&self.position_embedding, config.position_features()) {
            let values = features.values(spans, grid, p_t);
            x = x + position.forward(Tensor::<B, 3>::from_data(TensorData::new(values, [batch, tokens, features.count()]), &device));
        }

        for block in &self.blocks {
            x = block.forward(x, cond.text.clone(), cond.timestep_proj.clone(), &rope, grid[0]);
        }

        let modulation = self.scale_shift_table.val() + cond.temb.clone().unsqueeze_dim(1);
        let shift = modulation.clone().narrow(1, 0, 1);
        let scale = modulation.narrow(1, 1, 1);
        let x = self.norm_out.forward(x) * (scale + 1.0) + shift;
        let x = self.proj_out.forward(x);

        let out_channels = config.out_channels();
        // [b, f, h, w, pt, ph, pw, c] -> [b, c, f, pt, h, ph, w, pw]
        let x: Tensor<B, 8> = x.reshape([batch, grid[0], grid[1], grid[2], p_t, p_h, p_w, out_channels]);
        let x = x.permute([0, 7, 1, 4, 2, 5, 3, 6]);
        let out = x.reshape([batch, out_channels, frames, height, width]);
        let out = match &self.input_skip {
            Some(skip) => {
                let gate = skip.forward(silu(cond.temb)).reshape([batch, out_channels, 1, 1, 1]);
                out + input.clone() * gate
            }
            None => out,
        };
        Ok(match self.prediction {
            Prediction::Sample => {
                let sigmas = timesteps.iter().map(|t| (t / NUM_TRAIN_TIMESTEPS as f32).max(SAMPLE_SIGMA_FLOOR)).collect::<Vec<f32>>();
                let sigmas = Tensor::<B, 5>::from_data(TensorData::new(sigmas, [batch, 1, 1, 1, 1]), &device);
                (input - out) / sigmas
            }
            Prediction::Flow => out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, fixture, max_abs_diff};

    type B = TestBackend;

    fn run_fixture(name: &str) -> f32 {
        let device = Default::default();
        let dir = fixture(name);
        let model = WanTransformer3DModel::<B>::load(&dir.join("transformer"), &device).expect("load");
        let io = TensorSource::open_files(&[dir.join("io.safetensors")]).expect("io");
        let latents = io.tensor_of_rank::<B, 5>("hidden_states", &device).expect("latents");
        let text = io.tensor_of_rank::<B, 3>("encoder_hidden_states", &device).expect("text");
        let timesteps: Vec<f32> =
            io.tensor_of_rank::<B, 1>("timestep", &device).expect("t").into_data().into_vec().expect("f32");
        let expected = io.tensor_of_rank::<B, 5>("sample", &device).expect("sample");
        let out = model.forward(latents, &timesteps, text).expect("forward");
        max_abs_diff(out, expected)
    }

    #[test]
    fn parity_dit_a() {
        let err = run_fixture("dit_a");
        println!("dit_a max abs error {err:e}");
        assert!(err <= 1e-4, "dit_a max abs error {err}");
    }

    #[test]
    fn parity_dit_b() {
        let err = run_fixture("dit_b");
        println!("dit_b max abs error {err:e}");
        assert!(err <= 1e-4, "dit_b max abs error {err}");
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};

    type B = TestBackend;

    fn tiny_config(layout: &str) -> WanTransformerConfig {
        serde_json::from_value(serde_json::json!({
            "num_attention_heads": 2, "attention_head_dim": 6, "in_channels": 3, "out_channels": 3,
            "text_dim": 5, "freq_dim": 8, "ffn_dim": 16, "num_layers": 1, "attention_layout": layout
        }))
        .expect("config")
    }

    #[test]
    fn unknown_config_values_name_file_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        let mut config = serde_json::to_value(tiny_config("full")).expect("json");
        config["attention_layout"] = "diagonal".into();
        std::fs::write(&path, config.to_string()).expect("write");
        let err = WanTransformerConfig::from_file(&path).expect_err("unknown layout");
        let text = err.to_string();
        assert!(text.contains("config.json") && text.contains("attention_layout") && text.contains("diagonal"), "{text}");

        config["attention_layout"] = "full".into();
        config["image_dim"] = 1280.into();
        std::fs::write(&path, config.to_string()).expect("write");
        let text = WanTransformerConfig::from_file(&path).expect_err("i2v").to_string();
        assert!(text.contains("image_dim"), "{text}");

        config["image_dim"] = serde_json::Value::Null;
        config["qk_norm"] = "layer_norm".into();
        std::fs::write(&path, config.to_string()).expect("write");
        let text = WanTransformerConfig::from_file(&path).expect_err("qk_norm").to_string();
        assert!(text.contains("qk_norm") && text.contains("layer_norm"), "{text}");

        std::fs::write(&path, "{\"num_layers\": \"two\"}").expect("write");
        let text = WanTransformerConfig::from_file(&path).expect_err("type").to_string();
        assert!(text.contains("config.json"), "{text}");
    }

    fn inputs<Bk: Backend>(frames: usize, device: &Bk::Device) -> (Tensor<Bk, 5>, Tensor<Bk, 3>) {
        (
            Tensor::random([1, 3, frames, 4, 6], Distribution::Normal(0.0, 1.0), device),
            Tensor::random([1, 4, 5], Distribution::Normal(0.0, 1.0), device),
        )
    }

    /// A random model of `config`, and that model saved into `dir` and loaded back.
    fn saved_and_loaded<Bk: Backend>(config: WanTransformerConfig, dir: &Path, device: &Bk::Device) -> (WanTransformer3DModel<Bk>, WanTransformer3DModel<Bk>) {
        let model = WanTransformer3DModel::<Bk>::random(config, device).expect("random");
        model.save(dir).expect("save");
        let loaded = WanTransformer3DModel::<Bk>::load(dir, device).expect("load");
        (model, loaded)
    }

    #[test]
    fn random_model_round_trips_through_save_and_load() {
        let device = Default::default();
        <B as Backend>::seed(&device, 7);
        for layout in ["full", "factorized"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (model, loaded) = saved_and_loaded::<B>(tiny_config(layout), dir.path(), &device);
            assert_eq!(loaded.config(), model.config());
            let (latents, text) = inputs::<B>(3, &device);
            let a = model.forward(latents.clone(), &[500.0], text.clone()).expect("forward");
            let b = loaded.forward(latents, &[500.0], text).expect("forward");
            assert_eq!(a.dims(), [1, 3, 3, 4, 6]);
            assert!(max_abs_diff(a, b) < 1e-6, "{layout}");
        }
    }

    #[test]
    fn position_features_place_a_chunk_in_its_clip_and_round_trip() {
        let device = Default::default();
        <B as Backend>::seed(&device, 5);
        let dir = tempfile::tempdir().expect("tempdir");
        let (latents, text) = inputs::<B>(3, &device);
        for oblique in [false, true] {
            let mut config = tiny_config("full");
            config.position_frequencies = 2;
            config.position_oblique = oblique;
            let (model, loaded) = saved_and_loaded::<B>(config, dir.path(), &device);
            assert_eq!(loaded.config.position_oblique, oblique);
            let whole = model.forward(latents.clone(), &[500.0], text.clone()).expect("forward");
            let again = loaded.forward_in(latents.clone(), &[500.0], text.clone(), &[ClipSpan::whole(3)]).expect("forward");
            assert!(max_abs_diff(whole.clone(), again) < 1e-6, "forward is forward_in over the whole clip");
            let tail = model.forward_in(latents.clone(), &[500.0], text.clone(), &[ClipSpan { start: 4, clip_frames: 7 }]).expect("tail");
            assert!(max_abs_diff(whole, tail) > 1e-4, "the same latents later in a clip predict differently");
        }
        let model = WanTransformer3DModel::<B>::random(tiny_config("full"), &device).expect("random");
        let err = model.forward_in(latents, &[500.0], text, &[]).expect_err("no span");
        assert!(err.to_string().contains("clip spans"), "{err}");
        // A checkpoint without the weights its config asks for names them.
        let mut plain = TensorWriter::new();
        WanTransformer3DModel::<B>::random(tiny_config("full"), &device).expect("random").save_tensors(&mut plain).expect("save");
        plain.write(&dir.path().join("diffusion_pytorch_model.safetensors")).expect("write");
        let err = WanTransformer3DModel::<B>::load(dir.path(), &device).expect_err("missing weights");
        assert!(err.to_string().contains("position_embedding"), "{err}");
    }

    /// `pooled_text_modulation`, `input_skip` and `input_gate`: weights that round trip, change
    /// the prediction, and are named when the checkpoint lacks them.
    #[test]
    fn optional_conditioning_weights_round_trip_and_are_required() {
        let device = Default::default();
        <B as Backend>::seed(&device, 6);
        let dir = tempfile::tempdir().expect("tempdir");
        let (latents, text) = inputs::<B>(3, &device);
        type Enable = fn(&mut WanTransformerConfig);
        type Remove = fn(&mut WanTransformer3DModel<B>);
        let extensions: [(&str, Enable, Remove); 3] = [
            ("pooled_text_embedder", |c| c.pooled_text_modulation = true, |m| m.condition_embedder.pooled_text_embedder = None),
            ("input_skip", |c| c.input_skip = true, |m| m.input_skip = None),
            ("patch_gate", |c| c.input_gate = true, |m| m.patch_gate = None),
        ];
        for (weights, enable, remove) in extensions {
            let mut config = tiny_config("full");
            enable(&mut config);
            let (model, loaded) = saved_and_loaded::<B>(config, dir.path(), &device);
            assert_eq!(loaded.config, model.config);
            let a = model.forward(latents.clone(), &[500.0], text.clone()).expect("forward");
            let b = loaded.forward(latents.clone(), &[500.0], text.clone()).expect("forward");
            assert!(max_abs_diff(a.clone(), b) < 1e-6, "{weights}");
            let mut without = loaded;
            remove(&mut without);
            assert!(max_abs_diff(a, without.forward(latents.clone(), &[500.0], text.clone()).expect("forward")) > 1e-4, "{weights} changes nothing");
            let mut plain = TensorWriter::new();
            without.save_tensors(&mut plain).expect("save");
            plain.write(&dir.path().join("diffusion_pytorch_model.safetensors")).expect("write");
            let err = WanTransformer3DModel::<B>::load(dir.path(), &device).expect_err("missing weights");
            assert!(err.to_string().contains(weights), "{err}");
        }
    }

    /// A `"sample"` model's flow is `(x_t - output) / sigma` of what the same weights output
    /// raw, with sigma held at its floor, the input skip included; the key round-trips and a
    /// wrong value is named.
    #[test]
    fn sample_prediction_is_turned_into_the_flow() {
        let device = Default::default();
        <B as Backend>::seed(&device, 8);
        let dir = tempfile::tempdir().expect("tempdir");
        let (latents, text) = inputs::<B>(3, &device);
        let mut config = tiny_config("full");
        config.prediction_type = Some("sample".into());
        config.input_skip = true;
        let (_, loaded) = saved_and_loaded::<B>(config, dir.path(), &device);
        assert_eq!(loaded.prediction, Prediction::Sample);
        let mut raw = loaded.clone();
        raw.prediction = Prediction::Flow;
        for (timestep, sigma) in [(500.0, 0.5), (1000.0, 1.0), (10.0, SAMPLE_SIGMA_FLOOR)] {
            let flow = loaded.forward(latents.clone(), &[timestep], text.clone()).expect("forward");
            let sample = raw.forward(latents.clone(), &[timestep], text.clone()).expect("forward");
            let expected = (latents.clone() - sample) / sigma;
            assert!(max_abs_diff(flow, expected) < 1e-4, "timestep {timestep}");
        }
        let path = dir.path().join("config.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        json["prediction_type"] = "epsilon".into();
        std::fs::write(&path, json.to_string()).expect("write");
        let text = WanTransformerConfig::from_file(&path).expect_err("epsilon").to_string();
        assert!(text.contains("prediction_type") && text.contains("epsilon"), "{text}");
    }

    #[test]
    fn factorized_layout_has_temporal_weights_and_keeps_shapes() {
        let device = Default::default();
        <B as Backend>::seed(&device, 3);
        let model = WanTransformer3DModel::<B>::random(tiny_config("factorized"), &device).expect("random");
        let mut out = TensorWriter::new();
        model.save_tensors(&mut out).expect("save");
        let dir = tempfile::tempdir().expect("tempdir");
        out.write(&dir.path().join("w.safetensors")).expect("write");
        let names = TensorSource::open_files(&[dir.path().join("w.safetensors")]).expect("open").names();
        assert!(names.iter().any(|n| n == "blocks.0.attn_temporal.to_q.weight"));
        assert!(names.iter().any(|n| n == "blocks.0.norm_temporal.weight"));
        for frames in [1, 2, 5] {
            let (latents, text) = inputs::<B>(frames, &device);
            let y = model.forward(latents, &[10.0], text).expect("forward");
            assert_eq!(y.dims(), [1, 3, frames, 4, 6]);
        }
    }

    /// With one frame, spatial-within-frame attention is full attention, and temporal attention
    /// over a single token returns `to_out(to_v(norm(x)))`; zeroing the temporal output projection
    /// must therefore give exactly the full-layout model with the same shared weights.
    #[test]
    fn factorized_with_one_frame_and_silent_temporal_attention_equals_full() {
        let device = Default::default();
        <B as Backend>::seed(&device, 11);
        let mut factorized = WanTransformer3DModel::<B>::random(tiny_config("factorized"), &device).expect("random");
        for block in factorized.blocks.iter_mut() {
            if let Some(attn) = block.attn_temporal.as_mut() {
                attn.to_out.weight = Param::from_tensor(attn.to_out.weight.val().zeros_like());
                attn.to_out.bias = attn.to_out.bias.as_ref().map(|b| Param::from_tensor(b.val().zeros_like()));
            }
        }
        let mut out = TensorWriter::new();
        factorized.save_tensors(&mut out).expect("save");
        let dir = tempfile::tempdir().expect("tempdir");
        out.write(&dir.path().join("w.safetensors")).expect("write");
        let src = TensorSource::open_files(&[dir.path().join("w.safetensors")]).expect("open");
        let full = WanTransformer3DModel::<B>::load_from(&src, tiny_config("full"), Path::new("config.json"), &device)
            .expect("full from the shared weights");
        let (latents, text) = inputs::<B>(1, &device);
        let a = factorized.forward(latents.clone(), &[300.0], text.clone()).expect("forward");
        let b = full.forward(latents.clone(), &[300.0], text.clone()).expect("forward");
        assert!(max_abs_diff(a, b) < 1e-5);
        // With several frames the layouts differ (temporal mixing is restricted differently).
        let (latents, text) = inputs::<B>(3, &device);
        let a = factorized.forward(latents.clone(), &[300.0], text.clone()).expect("forward");
        let b = full.forward(latents, &[300.0], text).expect("forward");
        assert!(max_abs_diff(a, b) > 1e-4);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let device = Default::default();
        let model = WanTransformer3DModel::<B>::random(tiny_config("full"), &device).expect("random");
        let text = Tensor::<B, 3>::zeros([1, 4, 5], &device);
        let odd = Tensor::<B, 5>::zeros([1, 3, 1, 5, 6], &device);
        assert!(matches!(model.forward(odd, &[1.0], text.clone()), Err(ModelError::InvalidInput(_))));
        let channels = Tensor::<B, 5>::zeros([1, 4, 1, 4, 6], &device);
        assert!(matches!(model.forward(channels, &[1.0], text.clone()), Err(ModelError::InvalidInput(_))));
        let ok = Tensor::<B, 5>::zeros([1, 3, 1, 4, 6], &device);
        assert!(matches!(model.forward(ok, &[1.0, 2.0], text), Err(ModelError::InvalidInput(_))));
    }
}
