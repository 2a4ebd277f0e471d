//! `condition_embedder`: sinusoidal timestep features -> `time_embedder` -> 6-way `time_proj`
//! modulation, and the text projection `text_embedder` (diffusers `WanTimeTextImageEmbedding`).

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

impl<B: Backend> ConditionEmbedder<B> {
    pub fn load(src: &TensorSource, prefix: &str, dim: usize, freq_dim: usize, text_dim: usize, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self {
            time_embedder: TwoLayerMlp::load(src, &join(prefix, "time_embedder"), freq_dim, dim, device)?,
            time_proj: Linear::load(src, &join(prefix, "time_proj"), dim, 6 * dim, true, device)?,
            text_embedder: TwoLayerMlp::load(src, &join(prefix, "text_embedder"), text_dim, dim, device)?,
            freq_dim,
        })
    }

    pub fn random(dim: usize, freq_dim: usize, text_dim: usize, device: &B::Device) -> Self {
        Self {
            time_embedder: TwoLayerMlp::random(freq_dim, dim, device),
            time_proj: Linear::random(dim, 6 * dim, true, device),
            text_embedder: TwoLayerMlp::random(text_dim, dim, device),
            freq_dim,
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.time_embedder.save(out, &join(prefix, "time_embedder"))?;
        self.time_proj.save(out, &join(prefix, "time_proj"))?;
        self.text_embedder.save(out, &join(prefix, "text_embedder"))
    }

    pub fn forward(&self, timesteps: &[f32], text: Tensor<B, 3>) -> Conditioning<B> {
        let features = timestep_features::<B>(timesteps, self.freq_dim, &text.device());
        let temb = self.time_embedder.linear_2.forward(silu(self.time_embedder.linear_1.forward(features)));
        let [batch, dim] = temb.dims();
        let timestep_proj = self.time_proj.forward(silu(temb.clone())).reshape([batch, 6, dim]);
        let text = self.text_embedder.linear_2.forward(gelu_approximate(self.text_embedder.linear_1.forward(text)));
        Conditioning { temb, timestep_proj, text }
    }
}
