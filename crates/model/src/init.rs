//! Where a module's weights come from when it is built: a checkpoint, or random initialisation.
//! One constructor per module then serves both loading and random init, so the two cannot drift.

use burn::tensor::backend::Backend;

use crate::checkpoint::TensorSource;
use crate::error::ModelError;
use crate::layers::{Conv3d, Linear};

#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// Read every tensor by its checkpoint name, checking its shape.
    Checkpoint(&'a TensorSource),
    /// PyTorch-style default initialisation (seed the backend for reproducibility).
    Random,
}

impl Weights<'_> {
    pub fn linear<B: Backend>(
        self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>, ModelError> {
        match self {
            Weights::Checkpoint(src) => Linear::load(src, prefix, d_in, d_out, bias, device),
            Weights::Random => Ok(Linear::random(d_in, d_out, bias, device)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv3d<B: Backend>(
        self,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        device: &B::Device,
    ) -> Result<Conv3d<B>, ModelError> {
        match self {
            Weights::Checkpoint(src) => Conv3d::load(src, prefix, c_in, c_out, kernel, stride, padding, device),
            Weights::Random => Ok(Conv3d::random(c_in, c_out, kernel, stride, padding, device)),
        }
    }
}
