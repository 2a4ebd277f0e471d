//! `condition_embedder`: sinusoidal timestep features -> `time_embedder` -> 6-way `time_proj`
//! modulation, and the text projection `text_embedder` (diffusers `WanTimeTextImageEmbedding`).
//!
//! With `pooled_text_embedder` (vidfarm's extension, as SD3 and Flux add their pooled text vector
//! to the timestep embedding), the mean of the prompt's token embeddings joins the timestep
//! embedding, so every block's adaLN scale and shift depend on the whole caption. Why: a scale
//! multiplies each token's features, position features included, so "the object is where column
//! minus time is c, when the caption says right" is one product away; cross-attention only adds
//! the caption to a token, and the products it needs are left to the feed-forward layers.

use burn::module::Module;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::checkpoint::{TensorSource, TensorWriter, join};
use crate::error::ModelError;
use crate::layers::Linear;

/// diffusers `get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`: `[cos, sin]` of
/// `t * 10000^(-i/half)`, computed in f32 in the reference's order of operations.
pub fn timestep_features<B: Backend>(timesteps: &[f32], dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = dim / 2;
    let log_period = -(10000f64.ln() as f32);
    let frequencies: Vec<f32> = (0..half).map(|i| (log_period * i as f32 / half as f32).exp()).collect();
    let mut values = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        values.extend(frequencies.iter().map(|f| (t * f).cos()));
        values.extend(frequencies.iter().map(|f| (t * f).sin()));
        if dim % 2 == 1 {
            values.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(values, [timesteps.len(), dim]), device)
}

/// Two linear layers with an activation between (`linear_1`, `linear_2`).
#[derive(Module, Debug)]
pub struct TwoLayerMlp<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TwoLayerMlp<B> {
    pub fn load(src: &TensorSource, prefix: &str, d_in: usize, d_out: usize, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self {
            linear_1: Linear::load(src, &join(prefix, "linear_1"), d_in, d_out, true, device)?,
            linear_2: Linear::load(src, &join(prefix, "linear_2"), d_out, d_out, true, device)?,
        })
    }

    pub fn random(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        Self { linear_1: Linear::random(d_in, d_out, true, device), linear_2: Linear::random(d_out, d_out, true, device) }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.linear_1.save(out, &join(prefix, "linear_1"))?;
        self.linear_2.save(out, &join(prefix, "linear_2"))
    }
}

#[derive(Module, Debug)]
pub struct ConditionEmbedder<B: Backend> {
    pub time_embedder: TwoLayerMlp<B>,
    pub time_proj: Linear<B>,
    pub text_embedder: TwoLayerMlp<B>,
    /// `text_dim -> dim`, added to the timestep embedding; present when the config's
    /// `pooled_text_modulation` is set.
    pub pooled_text_embedder: Option<Linear<B>>,
    pub freq_dim: usize,
}

/// Outputs of the condition embedder for one batch.
pub struct Conditioning<B: Backend> {
    /// `[batch, dim]`, modulates the output norm.
    pub temb: Tensor<B, 2>,
    /// `[batch, 6, dim]`, modulates every block.
    pub timestep_proj: Tensor<B, 3>,
    /// `[batch, text_tokens, dim]`
    pub text: Tensor<B, 3>,
}

/// The widths of a condition embedder, and whether it pools the text into the modulation.
#[derive(Clone, Copy, Debug)]
pub struct ConditionDims {
    pub dim: usize,
    pub freq_dim: usize,
    pub text_dim: usize,
    pub pooled_text: bool,
}

impl<B: Backend> ConditionEmbedder<B> {
    pub fn load(src: &TensorSource, prefix: &str, dims: ConditionDims, device: &B::Device) -> Result<Self, ModelError> {
        let ConditionDims { dim, freq_dim, text_dim, pooled_text } = dims;
        Ok(Self {
            time_embedder: TwoLayerMlp::load(src, &join(prefix, "time_embedder"), freq_dim, dim, device)?,
            time_proj: Linear::load(src, &join(prefix, "time_proj"), dim, 6 * dim, true, device)?,
            text_embedder: TwoLayerMlp::load(src, &join(prefix, "text_embedder"), text_dim, dim, device)?,
            pooled_text_embedder: match pooled_text {
                true => Some(Linear::load(src, &join(prefix, "pooled_text_embedder"), text_dim, dim, true, device)?),
                false => None,
            },
            freq_dim,
        })
    }

    pub fn random(dims: ConditionDims, device: &B::Device) -> Self {
        let ConditionDims { dim, freq_dim, text_dim, pooled_text } = dims;
        Self {
            time_embedder: TwoLayerMlp::random(freq_dim, dim, device),
            time_proj: Linear::random(dim, 6 * dim, true, device),
            text_embedder: TwoLayerMlp::random(text_dim, dim, device),
            pooled_text_embedder: pooled_text.then(|| Linear::random(text_dim, dim, true, device)),
            freq_dim,
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.time_embedder.save(out, &join(prefix, "time_embedder"))?;
        self.time_proj.save(out, &join(prefix, "time_proj"))?;
        if let Some(pooled) = &self.pooled_text_embedder {
            pooled.save(out, &join(prefix, "pooled_text_embedder"))?;
        }
        self.text_embedder.save(out, &join(prefix, "text_embedder"))
    }

    pub fn forward(&self, timesteps: &[f32], text: Tensor<B, 3>) -> Conditioning<B> {
        let features = timestep_features::<B>(timesteps, self.freq_dim, &text.device());
        let mut temb = self.time_embedder.linear_2.forward(silu(self.time_embedder.linear_1.forward(features)));
        if let Some(pooled) = &self.pooled_text_embedder {
            temb = temb + pooled.forward(mean_of_tokens(text.clone()));
        }
        let [batch, dim] = temb.dims();
        let timestep_proj = self.time_proj.forward(silu(temb.clone())).reshape([batch, 6, dim]);
        let text = self.text_embedder.linear_2.forward(gelu_approximate(self.text_embedder.linear_1.forward(text)));
        Conditioning { temb, timestep_proj, text }
    }
}

/// `[batch, tokens, width]` -> `[batch, width]`: the mean over the tokens that are not padding
/// (the pipeline zeroes padded tokens; an all-zero prompt pools to zero).
fn mean_of_tokens<B: Backend>(text: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, _, width] = text.dims();
    let present = text.clone().abs().sum_dim(2).greater_elem(0.0).float();
    let count = present.sum_dim(1).clamp_min(1.0);
    (text.sum_dim(1) / count).reshape([batch, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestBackend;

    #[test]
    fn the_pooled_text_is_the_mean_of_the_tokens_that_are_not_padding() {
        let device = Default::default();
        // Two prompts: two tokens then padding, and one token.
        let values = vec![1.0, 2.0, 3.0, 6.0, 0.0, 0.0, /* */ -4.0, 8.0, 0.0, 0.0, 0.0, 0.0];
        let text = Tensor::<TestBackend, 3>::from_data(TensorData::new(values, [2, 3, 2]), &device);
        let pooled = mean_of_tokens(text).into_data().convert::<f32>().into_vec::<f32>().expect("values");
        assert_eq!(pooled, vec![2.0, 4.0, -4.0, 8.0]);
    }
}
