//! `WanResample`: 2x spatial up/down sampling per frame, optionally with 2x temporal up/down
//! sampling by a causal time conv (`upsample3d` / `downsample3d`).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::causal_conv::{CACHE_T, CausalConv3d, FeatureCache, frames_to_cache, last_frames};
use crate::checkpoint::{TensorWriter, join};
use crate::error::ModelError;
use crate::init::Weights;
use crate::layers::Conv3d;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResampleMode {
    /// Nearest 2x upsampling then a 3x3 conv to `out_dim` channels, per frame.
    Upsample { temporal: bool },
    /// Zero pad right/bottom by one, then a stride-2 3x3 conv, per frame.
    Downsample { temporal: bool },
}

#[derive(Module, Debug)]
pub struct Resample<B: Backend> {
    /// The per-frame 3x3 `nn.Conv2d` (`resample.1` in the checkpoint), run as a 1x3x3 Conv3d.
    pub resample: Conv3d<B>,
    /// Temporal up (`dim -> 2 * dim` channels, split into two frames) or stride-2 down conv.
    pub time_conv: Option<CausalConv3d<B>>,
    pub upsample: bool,
}

impl<B: Backend> Resample<B> {
    /// `dim` input channels; `out_dim` output channels of the spatial conv (the downsampler keeps `dim`).
    pub fn new(weights: Weights, prefix: &str, dim: usize, out_dim: usize, mode: ResampleMode, device: &B::Device) -> Result<Self, ModelError> {
        let conv_prefix = join(prefix, "resample.1");
        let time_prefix = join(prefix, "time_conv");
        let (upsample, temporal, out_dim, stride, padding) = match mode {
            ResampleMode::Upsample { temporal } => (true, temporal, out_dim, [1, 1, 1], [0, 1, 1]),
            ResampleMode::Downsample { temporal } => (false, temporal, dim, [1, 2, 2], [0, 0, 0]),
        };
        let resample = match weights {
            Weights::Random => Conv3d::random(dim, out_dim, [1, 3, 3], stride, padding, device),
            Weights::Checkpoint(src) => Conv3d {
                weight: Param::from_tensor(src.tensor::<B, 4>(&join(&conv_prefix, "weight"), [out_dim, dim, 3, 3], device)?.unsqueeze_dim(2)),
                bias: Some(Param::from_tensor(src.tensor(&join(&conv_prefix, "bias"), [out_dim], device)?)),
                stride,
                padding,
            },
        };
        let time_conv = match (temporal, upsample) {
            (false, _) => None,
            (true, true) => Some(CausalConv3d::new(weights, &time_prefix, dim, dim * 2, [3, 1, 1], [1; 3], [1, 0, 0], device)?),
            (true, false) => Some(CausalConv3d::new(weights, &time_prefix, dim, dim, [3, 1, 1], [2, 1, 1], [0; 3], device)?),
        };
        Ok(Self { resample, time_conv, upsample })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        let conv_prefix = join(prefix, "resample.1");
        out.put(&join(&conv_prefix, "weight"), &self.resample.weight.val().squeeze_dim::<4>(2))?;
        if let Some(bias) = &self.resample.bias {
            out.put(&join(&conv_prefix, "bias"), &bias.val())?;
        }
        if let Some(time_conv) = &self.time_conv {
            time_conv.save(out, &join(prefix, "time_conv"))?;
        }
        Ok(())
    }

    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        if self.upsample {
            let x = match &self.time_conv {
                Some(time_conv) => upsample_time(time_conv, x, cache),
                None => x,
            };
            self.resample.forward(upsample_nearest_2x(x))
        } else {
            let x = self.resample.forward(pad_right_bottom(x));
            match &self.time_conv {
                Some(time_conv) => downsample_time(time_conv, x, cache),
                None => x,
            }
        }
    }
}

/// The reference's `upsample3d` time step. The first chunk is not upsampled in time (one latent
/// frame decodes to one frame); the reference marks its slot "Rep" so that the next chunk sees a
/// zero past, which is what caching `CACHE_T` zero frames here does. Later chunks double their
/// frames: the conv's two channel halves become two consecutive frames.
fn upsample_time<B: Backend>(time_conv: &CausalConv3d<B>, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
    let [batch, channels, frames, height, width] = x.dims();
    let slot = cache.next_slot();
    let Some(past) = slot.take() else {
        *slot = Some(Tensor::zeros([batch, channels, CACHE_T, height, width], &x.device()));
        return x;
    };
    let kept = frames_to_cache(&x, Some(&past));
    let doubled = time_conv.forward(x, Some(past));
    *slot = Some(kept);
    let doubled: Tensor<B, 6> = doubled.reshape([batch, 2, channels, frames, height, width]);
    doubled.permute([0, 2, 3, 1, 4, 5]).reshape([batch, channels, frames * 2, height, width])
}

/// The reference's `downsample3d` time step: the first chunk passes through (its last frame is
/// cached); later chunks are convolved with stride 2 after the previous chunk's last frame.
fn downsample_time<B: Backend>(time_conv: &CausalConv3d<B>, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
    let slot = cache.next_slot();
    let kept = last_frames(&x, 1);
    let out = match slot.take() {
        None => x,
        Some(past) => time_conv.forward(Tensor::cat(vec![last_frames(&past, 1), x], 2), None),
    };
    *slot = Some(kept);
    out
}

/// Nearest-neighbour 2x upsampling of height and width (`nearest-exact` at an integer scale).
fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [batch, channels, frames, height, width] = x.dims();
    let x: Tensor<B, 6> = x.unsqueeze_dim::<6>(4).repeat_dim(4, 2);
    let x: Tensor<B, 5> = x.reshape([batch, channels, frames, height * 2, width]);
    let x: Tensor<B, 6> = x.unsqueeze_dim::<6>(5).repeat_dim(5, 2);
    x.reshape([batch, channels, frames, height * 2, width * 2])
}

/// `nn.ZeroPad2d((0, 1, 0, 1))`: one zero column on the right and one zero row at the bottom.
fn pad_right_bottom<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [batch, channels, frames, height, width] = x.dims();
    let device = x.device();
    let x = Tensor::cat(vec![x, Tensor::zeros([batch, channels, frames, height, 1], &device)], 4);
    Tensor::cat(vec![x, Tensor::zeros([batch, channels, frames, 1, width + 1], &device)], 3)
}
