//! `WanCausalConv3d` and the frame cache that lets the VAE run a clip chunk by chunk.
//!
//! A causal conv pads time on the past side only (`2 * padding_t` zero frames, none after), so an
//! output frame never sees later input frames. When a clip is processed in chunks, the last input
//! frames of the previous chunk replace that zero padding; [`FeatureCache`] carries them, one slot
//! per causal conv in execution order (the reference's `feat_cache` list and `feat_idx` cursor).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::checkpoint::TensorWriter;
use crate::error::ModelError;
use crate::init::Weights;
use crate::layers::Conv3d;

/// Frames each causal conv keeps for the next chunk (the reference's `CACHE_T`).
pub const CACHE_T: usize = 2;

/// Cached frames of every causal conv of one encoder or decoder pass over a clip.
pub struct FeatureCache<B: Backend> {
    slots: Vec<Option<Tensor<B, 5>>>,
    cursor: usize,
}

impl<B: Backend> FeatureCache<B> {
    pub fn new() -> Self {
        Self { slots: Vec::new(), cursor: 0 }
    }

    /// Rewinds the cursor: the next chunk visits the convs in the same order.
    pub fn start_chunk(&mut self) {
        self.cursor = 0;
    }

    /// The slot of the next conv in execution order (empty on the first chunk).
    pub fn next_slot(&mut self) -> &mut Option<Tensor<B, 5>> {
        if self.cursor == self.slots.len() {
            self.slots.push(None);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }
}

impl<B: Backend> Default for FeatureCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// The `n` last frames of `x` (all of them if it has fewer).
pub fn last_frames<B: Backend>(x: &Tensor<B, 5>, n: usize) -> Tensor<B, 5> {
    let frames = x.dims()[2];
    x.clone().narrow(2, frames.saturating_sub(n), frames.min(n))
}

/// What the reference caches from a conv's input `x` for the next chunk: its last `CACHE_T`
/// frames, preceded by the last previously cached frame when `x` is shorter than that.
pub fn frames_to_cache<B: Backend>(x: &Tensor<B, 5>, past: Option<&Tensor<B, 5>>) -> Tensor<B, 5> {
    let kept = last_frames(x, CACHE_T);
    match past {
        Some(past) if kept.dims()[2] < CACHE_T => Tensor::cat(vec![last_frames(past, 1), kept], 2),
        _ => kept,
    }
}

/// `WanCausalConv3d`; the weights live at `<prefix>.weight` / `<prefix>.bias`.
#[derive(Module, Debug)]
pub struct CausalConv3d<B: Backend> {
    /// The convolution proper, with the spatial padding and no time padding.
    pub conv: Conv3d<B>,
    /// Zero frames put before the input when there is no cached past.
    pub time_padding: usize,
}

impl<B: Backend> CausalConv3d<B> {
    /// `padding` is PyTorch's symmetric `(t, h, w)` padding; time becomes `2 * t` frames of past.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        weights: Weights,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let conv = weights.conv3d(prefix, c_in, c_out, kernel, stride, [0, padding[1], padding[2]], device)?;
        Ok(Self { conv, time_padding: 2 * padding[0] })
    }

    /// Kernel 3 in every axis with padding 1: the VAE's workhorse conv.
    pub fn cube3(weights: Weights, prefix: &str, c_in: usize, c_out: usize, device: &B::Device) -> Result<Self, ModelError> {
        Self::new(weights, prefix, c_in, c_out, [3; 3], [1; 3], [1; 3], device)
    }

    /// Kernel 1, no padding: a per-voxel channel mix.
    pub fn pointwise(weights: Weights, prefix: &str, c_in: usize, c_out: usize, device: &B::Device) -> Result<Self, ModelError> {
        Self::new(weights, prefix, c_in, c_out, [1; 3], [1; 3], [0; 3], device)
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.conv.save(out, prefix)
    }

    /// `WanCausalConv3d.forward(x, cache_x)`: the `past` frames stand in for as much of the zero
    /// time padding as they cover.
    pub fn forward(&self, x: Tensor<B, 5>, past: Option<Tensor<B, 5>>) -> Tensor<B, 5> {
        let (x, covered) = match past {
            Some(past) if self.time_padding > 0 => {
                let covered = past.dims()[2];
                (Tensor::cat(vec![past, x], 2), covered)
            }
            _ => (x, 0),
        };
        let zero_frames = self.time_padding.saturating_sub(covered);
        let x = if zero_frames > 0 {
            let [batch, channels, _, height, width] = x.dims();
            let zeros = Tensor::zeros([batch, channels, zero_frames, height, width], &x.device());
            Tensor::cat(vec![zeros, x], 2)
        } else {
            x
        };
        self.conv.forward(x)
    }

    /// The reference's cached call: convolve with the previous chunk's frames of this conv as
    /// the past, and leave this chunk's last frames in their place.
    pub fn forward_cached(&self, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        let slot = cache.next_slot();
        let past = slot.take();
        let kept = frames_to_cache(&x, past.as_ref());
        let out = self.forward(x, past);
        *slot = Some(kept);
        out
    }
}
