//! `WanAttentionBlock`: single-head self-attention over the pixels of each frame (no attention
//! across time), with 1x1 conv projections and a residual connection.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

use super::norm::ChannelRmsNorm;
use crate::checkpoint::{TensorWriter, join};
use crate::error::ModelError;
use crate::init::Weights;
use crate::layers::Linear;

/// A 1x1 `nn.Conv2d`, i.e. a linear map over channels; the checkpoint stores its weight as
/// `[out, in, 1, 1]`.
#[derive(Module, Debug)]
pub struct PointwiseConv2d<B: Backend> {
    pub linear: Linear<B>,
}

impl<B: Backend> PointwiseConv2d<B> {
    pub fn new(weights: Weights, prefix: &str, c_in: usize, c_out: usize, device: &B::Device) -> Result<Self, ModelError> {
        let linear = match weights {
            Weights::Random => Linear::random(c_in, c_out, true, device),
            Weights::Checkpoint(src) => {
                let weight = src.tensor::<B, 4>(&join(prefix, "weight"), [c_out, c_in, 1, 1], device)?;
                let bias = src.tensor::<B, 1>(&join(prefix, "bias"), [c_out], device)?;
                Linear {
                    weight: Param::from_tensor(weight.reshape([c_out, c_in]).transpose()),
                    bias: Some(Param::from_tensor(bias)),
                }
            }
        };
        Ok(Self { linear })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        let [c_in, c_out] = self.linear.weight.val().dims();
        out.put(&join(prefix, "weight"), &self.linear.weight.val().transpose().reshape([c_out, c_in, 1, 1]))?;
        if let Some(bias) = &self.linear.bias {
            out.put(&join(prefix, "bias"), &bias.val())?;
        }
        Ok(())
    }

    /// `tokens: [.., C_in]` channel-last.
    pub fn forward<const D: usize>(&self, tokens: Tensor<B, D>) -> Tensor<B, D> {
        self.linear.forward(tokens)
    }
}

#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    pub norm: ChannelRmsNorm<B>,
    pub to_qkv: PointwiseConv2d<B>,
    pub proj: PointwiseConv2d<B>,
}

impl<B: Backend> AttentionBlock<B> {
    pub fn new(weights: Weights, prefix: &str, dim: usize, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self {
            norm: ChannelRmsNorm::image(weights, &join(prefix, "norm"), dim, device)?,
            to_qkv: PointwiseConv2d::new(weights, &join(prefix, "to_qkv"), dim, dim * 3, device)?,
            proj: PointwiseConv2d::new(weights, &join(prefix, "proj"), dim, dim, device)?,
        })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.norm.save(out, &join(prefix, "norm"))?;
        self.to_qkv.save(out, &join(prefix, "to_qkv"))?;
        self.proj.save(out, &join(prefix, "proj"))
    }

    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [batch, channels, frames, height, width] = x.dims();
        let images = batch * frames;
        let pixels = height * width;
        let identity = x.clone();
        let x = x.permute([0, 2, 1, 3, 4]).reshape([images, channels, height, width]);
        let x = self.norm.forward(x);
        let tokens = x.reshape([images, channels, pixels]).swap_dims(1, 2);
        let qkv = self.to_qkv.forward(tokens);
        let q = qkv.clone().narrow(2, 0, channels);
        let k = qkv.clone().narrow(2, channels, channels);
        let v = qkv.narrow(2, 2 * channels, channels);
        let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar(1.0 / (channels as f64).sqrt());
        let attended = softmax(scores, 2).matmul(v);
        let out = self.proj.forward(attended);
        let out = out.swap_dims(1, 2).reshape([batch, frames, channels, height, width]).permute([0, 2, 1, 3, 4]);
        out + identity
    }
}
