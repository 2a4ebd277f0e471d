//! `WanEncoder3d` (Wan2.1 layout, `is_residual=False`): causal conv in, residual blocks with
//! 2x spatial (and, where configured, 2x temporal) downsampling, mid block, RMS norm, SiLU, conv out
//! to `2 * z_dim` channels (mean and log-variance).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;

use super::AutoencoderKLWanConfig;
use super::causal_conv::{CausalConv3d, FeatureCache};
use super::mid_block::MidBlock;
use super::norm::ChannelRmsNorm;
use super::resample::{Resample, ResampleMode};
use super::resnet::ResidualBlock;
use crate::checkpoint::{TensorWriter, join};
use crate::error::ModelError;
use crate::init::Weights;

/// One entry of the encoder's flat `down_blocks` list.
// A handful of these per model: the variants' size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum DownLayer<B: Backend> {
    Residual(ResidualBlock<B>),
    Resample(Resample<B>),
}

#[derive(Module, Debug)]
pub struct Encoder3d<B: Backend> {
    pub conv_in: CausalConv3d<B>,
    pub down_blocks: Vec<DownLayer<B>>,
    pub mid_block: MidBlock<B>,
    pub norm_out: ChannelRmsNorm<B>,
    pub conv_out: CausalConv3d<B>,
}

impl<B: Backend> Encoder3d<B> {
    pub fn new(weights: Weights, prefix: &str, config: &AutoencoderKLWanConfig, device: &B::Device) -> Result<Self, ModelError> {
        let name = |part: &str| join(prefix, part);
        let base = config.base_dim;
        let dims: Vec<usize> = std::iter::once(1).chain(config.dim_mult.iter().copied()).map(|m| m * base).collect();
        let conv_in = CausalConv3d::cube3(weights, &name("conv_in"), config.in_channels, dims[0], device)?;

        let mut down_blocks = Vec::new();
        let levels = config.dim_mult.len();
        for level in 0..levels {
            let (mut in_dim, out_dim) = (dims[level], dims[level + 1]);
            for _ in 0..config.num_res_blocks {
                let layer_prefix = name(&format!("down_blocks.{}", down_blocks.len()));
                down_blocks.push(DownLayer::Residual(ResidualBlock::new(weights, &layer_prefix, in_dim, out_dim, device)?));
                in_dim = out_dim;
            }
            if level != levels - 1 {
                let temporal = config.temperal_downsample[level];
                let layer_prefix = name(&format!("down_blocks.{}", down_blocks.len()));
                let mode = ResampleMode::Downsample { temporal };
                down_blocks.push(DownLayer::Resample(Resample::new(weights, &layer_prefix, out_dim, out_dim, mode, device)?));
            }
        }
        let out_dim = dims[levels];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(weights, &name("mid_block"), out_dim, device)?,
            norm_out: ChannelRmsNorm::video(weights, &name("norm_out"), out_dim, device)?,
            conv_out: CausalConv3d::cube3(weights, &name("conv_out"), out_dim, config.z_dim * 2, device)?,
        })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        let name = |part: &str| join(prefix, part);
        self.conv_in.save(out, &name("conv_in"))?;
        for (i, layer) in self.down_blocks.iter().enumerate() {
            let layer_prefix = name(&format!("down_blocks.{i}"));
            match layer {
                DownLayer::Residual(block) => block.save(out, &layer_prefix)?,
                DownLayer::Resample(block) => block.save(out, &layer_prefix)?,
            }
        }
        self.mid_block.save(out, &name("mid_block"))?;
        self.norm_out.save(out, &name("norm_out"))?;
        self.conv_out.save(out, &name("conv_out"))
    }

    /// Encodes one chunk of frames, continuing from the chunks before it through `cache`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        cache.start_chunk();
        let mut x = self.conv_in.forward_cached(x, cache);
        for layer in &self.down_blocks {
            x = match layer {
                DownLayer::Residual(block) => block.forward(x, cache),
                DownLayer::Resample(block) => block.forward(x, cache),
            };
        }
        let x = self.mid_block.forward(x, cache);
        self.conv_out.forward_cached(silu(self.norm_out.forward(x)), cache)
    }
}
