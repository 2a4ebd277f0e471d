//! 3D rotary position embedding, split over (frames, height, width) exactly as diffusers'
//! `WanRotaryPosEmbed`: `h_dim = w_dim = 2 * (head_dim / 6)`, the frame axis gets the rest.

use burn::tensor::Tensor;
use burn::tensor::TensorData;
use burn::tensor::backend::Backend;

/// Rotation tables for a patch grid, one row per token in (frame, row, column) order.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    /// `[tokens, head_dim / 2]`
    pub cos: Tensor<B, 2>,
    /// `[tokens, head_dim / 2]`
    pub sin: Tensor<B, 2>,
}

/// Per-axis rotary frequencies for a `dim`-wide slice: `theta^(-2j/dim)`, j < dim/2.
fn axis_frequencies(dim: usize, theta: f64) -> Vec<f64> {
    (0..dim / 2).map(|j| 1.0 / theta.powf((2 * j) as f64 / dim as f64)).collect()
}

/// Builds the tables for a `[frames, height, width]` grid of patches.
pub fn rope_tables<B: Backend>(head_dim: usize, grid: [usize; 3], theta: f64, device: &B::Device) -> RopeTables<B> {
    let h_dim = 2 * (head_dim / 6);
    let t_dim = head_dim - 2 * h_dim;
    let axes = [axis_frequencies(t_dim, theta), axis_frequencies(h_dim, theta), axis_frequencies(h_dim, theta)];
    let [frames, height, width] = grid;
    let half = head_dim / 2;
    let tokens = frames * height * width;
    let mut cos = Vec::with_capacity(tokens * half);
    let mut sin = Vec::with_capacity(tokens * half);
    for f in 0..frames {
        for h in 0..height {
            for w in 0..width {
                for (axis, position) in axes.iter().zip([f, h, w]) {
                    for freq in axis {
                        // Angles in f64 as the reference does, rounded once.
                        let angle = position as f64 * freq;
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
    }
    RopeTables {
        cos: Tensor::from_data(TensorData::new(cos, [tokens, half]), device),
        sin: Tensor::from_data(TensorData::new(sin, [tokens, half]), device),
    }
}

/// Rotates interleaved channel pairs `(x[2i], x[2i+1])` of `x: [batch, tokens, heads, head_dim]`.
pub fn apply_rope<B: Backend>(x: Tensor<B, 4>, rope: &RopeTables<B>) -> Tensor<B, 4> {
    let [batch, tokens, heads, head_dim] = x.dims();
    let half = head_dim / 2;
    let pairs = x.reshape([batch, tokens, heads, half, 2]);
    let x1 = pairs.clone().narrow(4, 0, 1);
    let x2 = pairs.narrow(4, 1, 1);
    let cos = rope.cos.clone().reshape([1, tokens, 1, half, 1]);
    let sin = rope.sin.clone().reshape([1, tokens, 1, half, 1]);
    let out1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let out2 = x1 * sin + x2 * cos;
    Tensor::cat(vec![out1, out2], 4).reshape([batch, tokens, heads, head_dim])
}
