//! `WanRMS_norm`: the VAE's RMS norm over the channel axis.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::checkpoint::{TensorWriter, join};
use crate::error::ModelError;
use crate::init::Weights;

/// `x / max(‖x‖₂ over channels, 1e-12) * sqrt(C) * gamma` (`F.normalize` along dim 1), for
/// channel-first tensors `[B, C, ...]`. The reference has no bias here (`bias=False` everywhere).
#[derive(Module, Debug)]
pub struct ChannelRmsNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    /// Trailing singleton axes of the stored gamma: 3 (`[C, 1, 1, 1]`, video) or 2 (`[C, 1, 1]`,
    /// the attention block's per-frame images).
    pub stored_singleton_axes: usize,
}

/// `F.normalize`'s default epsilon.
const NORMALIZE_EPS: f64 = 1e-12;

impl<B: Backend> ChannelRmsNorm<B> {
    /// Video norm (gamma stored as `[C, 1, 1, 1]`).
    pub fn video(weights: Weights, prefix: &str, dim: usize, device: &B::Device) -> Result<Self, ModelError> {
        Self::new(weights, prefix, dim, 3, device)
    }

    /// Image norm (gamma stored as `[C, 1, 1]`).
    pub fn image(weights: Weights, prefix: &str, dim: usize, device: &B::Device) -> Result<Self, ModelError> {
        Self::new(weights, prefix, dim, 2, device)
    }

    fn new(weights: Weights, prefix: &str, dim: usize, singleton_axes: usize, device: &B::Device) -> Result<Self, ModelError> {
        let name = join(prefix, "gamma");
        let gamma = match weights {
            // The reference initialises gamma to ones.
            Weights::Random => Tensor::ones([dim], device),
            Weights::Checkpoint(src) if singleton_axes == 3 => src.tensor::<B, 4>(&name, [dim, 1, 1, 1], device)?.reshape([dim]),
            Weights::Checkpoint(src) => src.tensor::<B, 3>(&name, [dim, 1, 1], device)?.reshape([dim]),
        };
        Ok(Self { gamma: Param::from_tensor(gamma), stored_singleton_axes: singleton_axes })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        let gamma = self.gamma.val();
        let dim = gamma.dims()[0];
        let name = join(prefix, "gamma");
        if self.stored_singleton_axes == 3 {
            out.put(&name, &gamma.reshape([dim, 1, 1, 1]))
        } else {
            out.put(&name, &gamma.reshape([dim, 1, 1]))
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let channels = x.dims()[1];
        let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(NORMALIZE_EPS);
        let mut shape = [1usize; D];
        shape[1] = channels;
        let scale = self.gamma.val().mul_scalar((channels as f64).sqrt()).reshape(shape);
        x.div(norm).mul(scale)
    }
}
