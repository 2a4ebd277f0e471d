//! `WanDecoder3d` (Wan2.1 layout, `is_residual=False`): causal conv in from `z_dim` channels, mid
//! block, up blocks with 2x spatial (and, where configured, 2x temporal) upsampling, RMS norm,
//! SiLU, causal conv out to RGB.

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

/// `WanUpBlock`: `num_res_blocks + 1` residual blocks, then an optional upsampler that halves
/// the channel count.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    pub resnets: Vec<ResidualBlock<B>>,
    /// Zero or one entry (`upsamplers.0`).
    pub upsamplers: Vec<Resample<B>>,
}

impl<B: Backend> UpBlock<B> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        weights: Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        upsample: Option<ResampleMode>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let resnets = (0..=num_res_blocks)
            .map(|i| {
                let block_in = if i == 0 { in_dim } else { out_dim };
                ResidualBlock::new(weights, &format!("{prefix}.resnets.{i}"), block_in, out_dim, device)
            })
            .collect::<Result<_, _>>()?;
        let upsamplers = upsample
            .map(|mode| Resample::new(weights, &format!("{prefix}.upsamplers.0"), out_dim, out_dim / 2, mode, device))
            .transpose()?
            .into_iter()
            .collect();
        Ok(Self { resnets, upsamplers })
    }

    fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            resnet.save(out, &format!("{prefix}.resnets.{i}"))?;
        }
        for (i, upsampler) in self.upsamplers.iter().enumerate() {
            upsampler.save(out, &format!("{prefix}.upsamplers.{i}"))?;
        }
        Ok(())
    }

    fn forward(&self, mut x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        for resnet in &self.resnets {
            x = resnet.forward(x, cache);
        }
        for upsampler in &self.upsamplers {
            x = upsampler.forward(x, cache);
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct Decoder3d<B: Backend> {
    pub conv_in: CausalConv3d<B>,
    pub mid_block: MidBlock<B>,
    pub up_blocks: Vec<UpBlock<B>>,
    pub norm_out: ChannelRmsNorm<B>,
    pub conv_out: CausalConv3d<B>,
}

impl<B: Backend> Decoder3d<B> {
    pub fn new(weights: Weights, prefix: &str, config: &AutoencoderKLWanConfig, device: &B::Device) -> Result<Self, ModelError> {
        let name = |part: &str| join(prefix, part);
        let base = config.decoder_base_dim.unwrap_or(config.base_dim);
        let levels = config.dim_mult.len();
        let last_mult = config.dim_mult[levels - 1];
        let dims: Vec<usize> =
            std::iter::once(last_mult).chain(config.dim_mult.iter().rev().copied()).map(|m| m * base).collect();
        let temperal_upsample: Vec<bool> = config.temperal_downsample.iter().rev().copied().collect();

        let mut up_blocks = Vec::with_capacity(levels);
        for level in 0..levels {
            // Every upsampler before this level halved the channels (Wan2.1).
            let in_dim = if level > 0 { dims[level] / 2 } else { dims[level] };
            let upsample = (level != levels - 1).then(|| ResampleMode::Upsample { temporal: temperal_upsample[level] });
            let block_prefix = name(&format!("up_blocks.{level}"));
            up_blocks.push(UpBlock::new(weights, &block_prefix, in_dim, dims[level + 1], config.num_res_blocks, upsample, device)?);
        }
        let out_dim = dims[levels];
        Ok(Self {
            conv_in: CausalConv3d::cube3(weights, &name("conv_in"), config.z_dim, dims[0], device)?,
            mid_block: MidBlock::new(weights, &name("mid_block"), dims[0], device)?,
            up_blocks,
            norm_out: ChannelRmsNorm::video(weights, &name("norm_out"), out_dim, device)?,
            conv_out: CausalConv3d::cube3(weights, &name("conv_out"), out_dim, config.out_channels, device)?,
        })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        let name = |part: &str| join(prefix, part);
        self.conv_in.save(out, &name("conv_in"))?;
        self.mid_block.save(out, &name("mid_block"))?;
        for (i, block) in self.up_blocks.iter().enumerate() {
            block.save(out, &name(&format!("up_blocks.{i}")))?;
        }
        self.norm_out.save(out, &name("norm_out"))?;
        self.conv_out.save(out, &name("conv_out"))
    }

    /// Decodes one latent frame chunk, continuing from the chunks before it through `cache`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        cache.start_chunk();
        let mut x = self.conv_in.forward_cached(x, cache);
        x = self.mid_block.forward(x, cache);
        for block in &self.up_blocks {
            x = block.forward(x, cache);
        }
        self.conv_out.forward_cached(silu(self.norm_out.forward(x)), cache)
    }
}
