//! The text encoder: transformers `UMT5EncoderModel` (Wan2.1 uses umT5-XXL's encoder).
//!
//! T5 layout (pre-norm residual blocks of self-attention then feed-forward, RMS layer norms without
//! mean or bias, no `1/sqrt(d)` attention scaling, final layer norm) with UMT5's difference: every
//! layer has its own relative-position bias table, not just the first. Tensor names follow the
//! checkpoint (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, gelu_approximate, relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{TensorSource, TensorWriter, join, read_config, save_component, unsupported};
use crate::error::ModelError;
use crate::init::Weights;
use crate::layers::{Linear, RmsNorm};

pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Added to the attention scores of padded keys; large enough that softmax gives them zero weight.
const MASKED_SCORE: f32 = -1e9;

fn default_model_type() -> String {
    "umt5".to_string()
}
fn default_architectures() -> Vec<String> {
    vec!["UMT5EncoderModel".to_string()]
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_feed_forward_proj() -> String {
    "gated-gelu".to_string()
}

/// transformers' `text_encoder/config.json` for UMT5 (the fields the encoder uses; others are
/// ignored on load).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UMT5Config {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `"gated-gelu"` (umT5), `"gated-<act>"` or `"<act>"` with act `relu`, `gelu` or `gelu_new`.
    #[serde(default = "default_feed_forward_proj")]
    pub feed_forward_proj: String,
}

/// The feed-forward activation named by `feed_forward_proj`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// transformers' `gelu_new`: the tanh approximation.
    GeluTanh,
}

impl Activation {
    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Relu => relu(x),
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_approximate(x),
        }
    }
}

impl UMT5Config {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let config: Self = read_config(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// `(gated, activation)` parsed from `feed_forward_proj` as transformers does
    /// (`"gated-gelu"` means the tanh GELU).
    pub fn feed_forward(&self, path: &Path) -> Result<(bool, Activation), ModelError> {
        let (gated, name) = match self.feed_forward_proj.split_once('-') {
            Some(("gated", name)) => (true, name),
            Some(_) => {
                let reason = "expected \"<act>\" or \"gated-<act>\"";
                return Err(unsupported(path, "feed_forward_proj", &self.feed_forward_proj, reason));
            }
            None => (false, self.feed_forward_proj.as_str()),
        };
        let activation = match (gated, name) {
            (true, "gelu") | (_, "gelu_new") => Activation::GeluTanh,
            (false, "gelu") => Activation::Gelu,
            (_, "relu") => Activation::Relu,
            _ => {
                let reason = "supported activations: relu, gelu, gelu_new";
                return Err(unsupported(path, "feed_forward_proj", &self.feed_forward_proj, reason));
            }
        };
        Ok((gated, activation))
    }

    /// Rejects values this implementation does not support, naming the field.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        if self.model_type != "umt5" {
            return Err(unsupported(path, "model_type", &self.model_type, "expected \"umt5\""));
        }
        self.feed_forward(path)?;
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
        ];
        for (field, value) in sizes {
            if value == 0 {
                return Err(unsupported(path, field, value, "must be positive"));
            }
        }
        // Half the buckets per direction, half of those exact: needs at least 4.
        if self.relative_attention_num_buckets < 4 {
            return Err(unsupported(path, "relative_attention_num_buckets", self.relative_attention_num_buckets, "must be at least 4"));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            let reason = "must exceed a quarter of relative_attention_num_buckets";
            return Err(unsupported(path, "relative_attention_max_distance", self.relative_attention_max_distance, reason));
        }
        Ok(())
    }

    fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// The bidirectional relative-position bucket of `memory_position - query_position`
/// (transformers' `_relative_position_bucket` for an encoder), with its float32 rounding.
pub fn relative_position_bucket(relative_position: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let direction = if relative_position > 0 { half } else { 0 };
    let distance = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if distance < max_exact {
        return direction + distance;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln() / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
    direction + large.min(half - 1)
}

/// Buckets of every (query, key) pair of a `len`-token sequence, row-major `[len * len]`; the
/// same for every layer, each of which looks them up in its own bias table.
fn relative_position_buckets<B: Backend>(len: usize, num_buckets: usize, max_distance: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    let buckets: Vec<i64> = (0..len as i64)
        .flat_map(|query| (0..len as i64).map(move |key| relative_position_bucket(key - query, num_buckets, max_distance) as i64))
        .collect();
    Tensor::from_data(TensorData::new(buckets, [len * len]), device)
}

/// `UMT5Attention` (encoder self-attention with its own relative-position bias).
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    /// `[num_buckets, num_heads]`.
    pub relative_attention_bias: Param<Tensor<B, 2>>,
    pub num_heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    fn new(weights: Weights, prefix: &str, config: &UMT5Config, device: &B::Device) -> Result<Self, ModelError> {
        let (d_model, inner) = (config.d_model, config.inner_dim());
        let linear = |part: &str, d_in, d_out| weights.linear(&join(prefix, part), d_in, d_out, false, device);
        let bias_shape = [config.relative_attention_num_buckets, config.num_heads];
        let relative_attention_bias = match weights {
            Weights::Checkpoint(src) => src.tensor(&join(prefix, "relative_attention_bias.weight"), bias_shape, device)?,
            // nn.Embedding's default init.
            Weights::Random => Tensor::random(bias_shape, Distribution::Normal(0.0, 1.0), device),
        };
        Ok(Self {
            q: linear("q", d_model, inner)?,
            k: linear("k", d_model, inner)?,
            v: linear("v", d_model, inner)?,
            o: linear("o", inner, d_model)?,
            relative_attention_bias: Param::from_tensor(relative_attention_bias),
            num_heads: config.num_heads,
        })
    }

    fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.q.save(out, &join(prefix, "q"))?;
        self.k.save(out, &join(prefix, "k"))?;
        self.v.save(out, &join(prefix, "v"))?;
        self.o.save(out, &join(prefix, "o"))?;
        out.put(&join(prefix, "relative_attention_bias.weight"), &self.relative_attention_bias.val())
    }

    /// `[1, heads, len, len]` bias added to the attention scores, from this layer's table.
    fn position_bias(&self, buckets: Tensor<B, 1, Int>, len: usize) -> Tensor<B, 4> {
        let bias = self.relative_attention_bias.val().select(0, buckets); // [len * len, heads]
        bias.reshape([len, len, self.num_heads]).permute([2, 0, 1]).unsqueeze_dim(0)
    }

    /// `x: [batch, len, d_model]`; `key_mask: [batch, 1, 1, len]` additive (0 or `MASKED_SCORE`);
    /// `buckets: [len * len]` from [`relative_position_buckets`].
    fn forward(&self, x: Tensor<B, 3>, key_mask: Tensor<B, 4>, buckets: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        let heads = self.num_heads;
        let split = |t: Tensor<B, 3>| {
            let head_dim = t.dims()[2] / heads;
            t.reshape([batch, len, heads, head_dim]).swap_dims(1, 2)
        };
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        // T5 folds the scale into the weights: no 1/sqrt(d) here.
        let scores = q.matmul(k.swap_dims(2, 3)) + self.position_bias(buckets, len) + key_mask;
        let attended = softmax(scores, 3).matmul(v);
        let [_, _, _, head_dim] = attended.dims();
        self.o.forward(attended.swap_dims(1, 2).reshape([batch, len, heads * head_dim]))
    }
}

/// `UMT5DenseGatedActDense` (`wi_0`, `wi_1`, `wo`) or `UMT5DenseActDense` (`wi`, `wo`).
#[derive(Module, Debug)]
pub struct DenseReluDense<B: Backend> {
    /// `wi_0` when gated, `wi` otherwise.
    pub wi: Linear<B>,
    /// `wi_1`, the linear gate, when gated.
    pub wi_1: Option<Linear<B>>,
    pub wo: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> DenseReluDense<B> {
    fn new(weights: Weights, prefix: &str, config: &UMT5Config, gated: bool, activation: Activation, device: &B::Device) -> Result<Self, ModelError> {
        let (d_model, d_ff) = (config.d_model, config.d_ff);
        let wi_name = if gated { "wi_0" } else { "wi" };
        Ok(Self {
            wi: weights.linear(&join(prefix, wi_name), d_model, d_ff, false, device)?,
            wi_1: if gated { Some(weights.linear(&join(prefix, "wi_1"), d_model, d_ff, false, device)?) } else { None },
            wo: weights.linear(&join(prefix, "wo"), d_ff, d_model, false, device)?,
            activation,
        })
    }

    fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        match &self.wi_1 {
            Some(wi_1) => {
                self.wi.save(out, &join(prefix, "wi_0"))?;
                wi_1.save(out, &join(prefix, "wi_1"))?;
            }
            None => self.wi.save(out, &join(prefix, "wi"))?,
        }
        self.wo.save(out, &join(prefix, "wo"))
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = self.activation.apply(self.wi.forward(x.clone()));
        let hidden = match &self.wi_1 {
            Some(gate) => hidden * gate.forward(x),
            None => hidden,
        };
        self.wo.forward(hidden)
    }
}

/// `UMT5LayerSelfAttention` (`layer.0`): pre-norm self-attention with a residual connection.
#[derive(Module, Debug)]
pub struct LayerSelfAttention<B: Backend> {
    pub layer_norm: RmsNorm<B>,
    /// `SelfAttention`.
    pub self_attention: SelfAttention<B>,
}

/// `UMT5LayerFF` (`layer.1`): pre-norm feed-forward with a residual connection.
#[derive(Module, Debug)]
pub struct LayerFF<B: Backend> {
    pub layer_norm: RmsNorm<B>,
    /// `DenseReluDense`.
    pub dense_relu_dense: DenseReluDense<B>,
}

/// One `UMT5Block` of the encoder: `layer.0` then `layer.1`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub layer_0: LayerSelfAttention<B>,
    pub layer_1: LayerFF<B>,
}

impl<B: Backend> Block<B> {
    fn new(weights: Weights, prefix: &str, config: &UMT5Config, feed_forward: (bool, Activation), device: &B::Device) -> Result<Self, ModelError> {
        let (gated, activation) = feed_forward;
        Ok(Self {
            layer_0: LayerSelfAttention {
                layer_norm: rms_norm(weights, &format!("{prefix}.layer.0.layer_norm"), config, device)?,
                self_attention: SelfAttention::new(weights, &format!("{prefix}.layer.0.SelfAttention"), config, device)?,
            },
            layer_1: LayerFF {
                layer_norm: rms_norm(weights, &format!("{prefix}.layer.1.layer_norm"), config, device)?,
                dense_relu_dense: DenseReluDense::new(
                    weights,
                    &format!("{prefix}.layer.1.DenseReluDense"),
                    config,
                    gated,
                    activation,
                    device,
                )?,
            },
        })
    }

    fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.layer_0.layer_norm.save(out, &format!("{prefix}.layer.0.layer_norm"))?;
        self.layer_0.self_attention.save(out, &format!("{prefix}.layer.0.SelfAttention"))?;
        self.layer_1.layer_norm.save(out, &format!("{prefix}.layer.1.layer_norm"))?;
        self.layer_1.dense_relu_dense.save(out, &format!("{prefix}.layer.1.DenseReluDense"))
    }

    fn forward(&self, x: Tensor<B, 3>, key_mask: Tensor<B, 4>, buckets: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let attention = &self.layer_0;
        let x = x.clone() + attention.self_attention.forward(attention.layer_norm.forward(x), key_mask, buckets);
        let ff = &self.layer_1;
        x.clone() + ff.dense_relu_dense.forward(ff.layer_norm.forward(x))
    }
}

/// `UMT5LayerNorm`: RMS norm with a learned scale, no mean subtraction, no bias.
fn rms_norm<B: Backend>(weights: Weights, prefix: &str, config: &UMT5Config, device: &B::Device) -> Result<RmsNorm<B>, ModelError> {
    let (dim, eps) = (config.d_model, config.layer_norm_epsilon);
    match weights {
        Weights::Checkpoint(src) => RmsNorm::load(src, prefix, dim, eps, device),
        // The reference initialises the scale to ones.
        Weights::Random => Ok(RmsNorm { weight: Param::from_tensor(Tensor::ones([dim], device)), eps }),
    }
}

#[derive(Module, Debug)]
pub struct UMT5EncoderModel<B: Backend> {
    /// `shared.weight`: `[vocab_size, d_model]` token embeddings.
    pub shared: Param<Tensor<B, 2>>,
    /// `encoder.block.N`.
    pub block: Vec<Block<B>>,
    pub final_layer_norm: RmsNorm<B>,
    #[module(skip)]
    pub config: UMT5Config,
}

impl<B: Backend> UMT5EncoderModel<B> {
    /// Loads a transformers `text_encoder/` folder (`config.json` + `model.safetensors`, or shards).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let config = UMT5Config::from_file(&config_path)?;
        let src = TensorSource::open_component(dir)?;
        Self::build(Weights::Checkpoint(&src), config, &config_path, device)
    }

    /// A randomly initialised encoder (seed the backend first for reproducibility).
    pub fn random(config: UMT5Config, device: &B::Device) -> Result<Self, ModelError> {
        Self::build(Weights::Random, config, Path::new("<random text encoder config>"), device)
    }

    fn build(weights: Weights, config: UMT5Config, config_path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        config.validate(config_path)?;
        let feed_forward = config.feed_forward(config_path)?;
        let embedding_shape = [config.vocab_size, config.d_model];
        let shared = match weights {
            // The embedding is tied; some exports keep only the encoder's copy.
            Weights::Checkpoint(src) if !src.contains("shared.weight") && src.contains("encoder.embed_tokens.weight") => {
                src.tensor("encoder.embed_tokens.weight", embedding_shape, device)?
            }
            Weights::Checkpoint(src) => src.tensor("shared.weight", embedding_shape, device)?,
            Weights::Random => Tensor::random(embedding_shape, Distribution::Normal(0.0, 1.0), device),
        };
        let block = (0..config.num_layers)
            .map(|i| Block::new(weights, &format!("encoder.block.{i}"), &config, feed_forward, device))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            shared: Param::from_tensor(shared),
            block,
            final_layer_norm: rms_norm(weights, "encoder.final_layer_norm", &config, device)?,
            config,
        })
    }

    pub fn config(&self) -> &UMT5Config {
        &self.config
    }

    /// All weights under their checkpoint names.
    pub fn save_tensors(&self, out: &mut TensorWriter) -> Result<(), ModelError> {
        out.put("shared.weight", &self.shared.val())?;
        for (i, block) in self.block.iter().enumerate() {
            block.save(out, &format!("encoder.block.{i}"))?;
        }
        self.final_layer_norm.save(out, "encoder.final_layer_norm")
    }

    /// Writes a transformers `text_encoder/` folder.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let mut out = TensorWriter::new();
        self.save_tensors(&mut out)?;
        save_component(dir, &self.config, WEIGHTS_FILE, &out)
    }

    /// `last_hidden_state` `[batch, len, d_model]` for token ids `[batch, len]` and an attention
    /// mask `[batch, len]` (1 for tokens, 0 for padding; padded keys get no attention weight).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        let [batch, len] = input_ids.dims();
        if attention_mask.dims() != [batch, len] || len == 0 {
            return Err(ModelError::InvalidInput(format!(
                "input_ids are {:?} and attention_mask {:?}; expected equal non-empty [batch, len]",
                input_ids.dims(),
                attention_mask.dims()
            )));
        }
        let ids = input_ids.clone().into_data().convert::<i64>();
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = ids.iter::<i64>().find(|&id| id < 0 || id >= vocab) {
            return Err(ModelError::InvalidInput(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let key_mask = attention_mask.equal_elem(0).float().mul_scalar(MASKED_SCORE).reshape([batch, 1, 1, len]);
        let config = &self.config;
        let buckets = relative_position_buckets::<B>(
            len,
            config.relative_attention_num_buckets,
            config.relative_attention_max_distance,
            &key_mask.device(),
        );
        let mut x = burn::tensor::module::embedding(self.shared.val(), input_ids);
        for block in &self.block {
            x = block.forward(x, key_mask.clone(), buckets.clone());
        }
        Ok(self.final_layer_norm.forward(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, fixture, max_abs_diff};

    type B = TestBackend;

    fn fixture_inputs(device: &burn::tensor::Device<B>) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 3>) {
        let io = TensorSource::open_files(&[fixture("text_encoder").join("io.safetensors")]).expect("io");
        (
            io.int_tensor_of_rank::<B, 2>("input_ids", device).expect("input_ids"),
            io.int_tensor_of_rank::<B, 2>("attention_mask", device).expect("attention_mask"),
            io.tensor_of_rank::<B, 3>("last_hidden_state", device).expect("last_hidden_state"),
        )
    }

    #[test]
    fn parity_umt5_encoder() {
        let device = Default::default();
        let model = UMT5EncoderModel::<B>::load(&fixture("text_encoder").join("text_encoder"), &device).expect("load");
        let (ids, mask, expected) = fixture_inputs(&device);
        let err = max_abs_diff(model.forward(ids, mask).expect("forward"), expected);
        println!("umt5 encoder max abs error {err:e}");
        assert!(err <= 1e-4, "umt5 encoder max abs error {err}");
    }

    #[test]
    fn save_then_load_gives_the_same_model() {
        let device = Default::default();
        let model = UMT5EncoderModel::<B>::load(&fixture("text_encoder").join("text_encoder"), &device).expect("load");
        let dir = std::env::temp_dir().join(format!("vidfarm-umt5-roundtrip-{}", std::process::id()));
        model.save(&dir).expect("save");
        let original = TensorSource::open_component(&fixture("text_encoder").join("text_encoder")).expect("original");
        let saved = TensorSource::open_component(&dir).expect("saved");
        assert_eq!(saved.names(), original.names());
        let reloaded = UMT5EncoderModel::<B>::load(&dir, &device).expect("reload");
        let (ids, mask, _) = fixture_inputs(&device);
        let a = model.forward(ids.clone(), mask.clone()).expect("forward");
        assert_eq!(max_abs_diff(a, reloaded.forward(ids, mask).expect("forward")), 0.0);
        std::fs::remove_dir_all(&dir).ok();

        let random = UMT5EncoderModel::<B>::random(model.config.clone(), &device).expect("random");
        let dir = std::env::temp_dir().join(format!("vidfarm-umt5-random-{}", std::process::id()));
        random.save(&dir).expect("save");
        let reloaded = UMT5EncoderModel::<B>::load(&dir, &device).expect("reload");
        let (ids, mask, _) = fixture_inputs(&device);
        let a = random.forward(ids.clone(), mask.clone()).expect("forward");
        assert_eq!(max_abs_diff(a, reloaded.forward(ids, mask).expect("forward")), 0.0);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn buckets_match_the_reference_formula() {
        // Values of transformers' _relative_position_bucket(bidirectional, 32 buckets, max 128).
        let expected = [(0, 0), (1, 17), (-1, 1), (7, 23), (8, 24), (12, 25), (-20, 10), (127, 31), (-500, 15)];
        for (relative, bucket) in expected {
            assert_eq!(relative_position_bucket(relative, 32, 128), bucket, "relative position {relative}");
        }
    }

    #[test]
    fn unknown_feed_forward_is_an_error_naming_the_field() {
        let path = Path::new("text_encoder/config.json");
        let model = UMT5EncoderModel::<B>::load(&fixture("text_encoder").join("text_encoder"), &Default::default()).expect("load");
        let config = UMT5Config { feed_forward_proj: "gated-swish".to_string(), ..model.config.clone() };
        let err = config.validate(path).expect_err("swish is not supported");
        assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "feed_forward_proj"), "{err}");
    }
}
