//! `WanResidualBlock`: two (RMS norm, SiLU, causal 3x3x3 conv) stages plus a shortcut.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;

use super::causal_conv::{CausalConv3d, FeatureCache};
use super::norm::ChannelRmsNorm;
use crate::checkpoint::{TensorWriter, join};
use crate::error::ModelError;
use crate::init::Weights;

#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    pub norm1: ChannelRmsNorm<B>,
    pub conv1: CausalConv3d<B>,
    pub norm2: ChannelRmsNorm<B>,
    pub conv2: CausalConv3d<B>,
    /// A 1x1x1 conv when the channel count changes, identity otherwise.
    pub conv_shortcut: Option<CausalConv3d<B>>,
}

impl<B: Backend> ResidualBlock<B> {
    pub fn new(weights: Weights, prefix: &str, in_dim: usize, out_dim: usize, device: &B::Device) -> Result<Self, ModelError> {
        let name = |part: &str| join(prefix, part);
        let conv_shortcut = if in_dim != out_dim {
            Some(CausalConv3d::pointwise(weights, &name("conv_shortcut"), in_dim, out_dim, device)?)
        } else {
            None
        };
        Ok(Self {
            norm1: ChannelRmsNorm::video(weights, &name("norm1"), in_dim, device)?,
            conv1: CausalConv3d::cube3(weights, &name("conv1"), in_dim, out_dim, device)?,
            norm2: ChannelRmsNorm::video(weights, &name("norm2"), out_dim, device)?,
            conv2: CausalConv3d::cube3(weights, &name("conv2"), out_dim, out_dim, device)?,
            conv_shortcut,
        })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        let name = |part: &str| join(prefix, part);
        self.norm1.save(out, &name("norm1"))?;
        self.conv1.save(out, &name("conv1"))?;
        self.norm2.save(out, &name("norm2"))?;
        self.conv2.save(out, &name("conv2"))?;
        if let Some(shortcut) = &self.conv_shortcut {
            shortcut.save(out, &name("conv_shortcut"))?;
        }
        Ok(())
    }

    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x.clone(), None),
            None => x.clone(),
        };
        let x = self.conv1.forward_cached(silu(self.norm1.forward(x)), cache);
        // Dropout is the identity at inference.
        let x = self.conv2.forward_cached(silu(self.norm2.forward(x)), cache);
        x + shortcut
    }
}
