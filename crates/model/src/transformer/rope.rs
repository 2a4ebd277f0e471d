//! 3D rotary position embedding, split over (frames, height, width) exactly as diffusers'
//! `WanRotaryPosEmbed`: `h_dim = w_dim = 2 * (head_dim / 6)`, the frame axis gets the rest.

use burn::tensor::Tensor;
use burn::tensor::TensorData;
use burn::tensor::backend::Backend;

/// Rotation tables for a patch grid, one row per token in (frame, row, column) order, laid out
/// per channel so the rotation is two element-wise products over contiguous rows.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    /// `[tokens, head_dim]`: `cos(angle_i)` at channels `2i` and `2i + 1`.
    pub cos: Tensor<B, 2>,
    /// `[tokens, head_dim]`: `-sin(angle_i)` at channel `2i`, `sin(angle_i)` at `2i + 1`.
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
    let tokens = frames * height * width;
    let mut cos = Vec::with_capacity(tokens * head_dim);
    let mut sin = Vec::with_capacity(tokens * head_dim);
    for f in 0..frames {
        for h in 0..height {
            for w in 0..width {
                for (axis, position) in axes.iter().zip([f, h, w]) {
                    for freq in axis {
                        // Angles in f64 as the reference does, rounded once.
                        let angle = position as f64 * freq;
                        let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                        cos.extend([c, c]);
                        sin.extend([-s, s]);
                    }
                }
            }
        }
    }
    RopeTables {
        cos: Tensor::from_data(TensorData::new(cos, [tokens, head_dim]), device),
        sin: Tensor::from_data(TensorData::new(sin, [tokens, head_dim]), device),
    }
}

/// Rotates interleaved channel pairs `(x[2i], x[2i+1])` of `x: [batch, tokens, heads, head_dim]`:
/// `(x[2i] cos - x[2i+1] sin, x[2i+1] cos + x[2i] sin)`, computed as `x * cos + swap(x) * sin` with
/// the signed tables (the same products and sums as the pairwise form, so the same rounding).
///
/// Works head-major (`[batch, heads, tokens * head_dim]`) so each product is one table row shared by
/// every (batch, head), which CPU backends run as a contiguous SIMD loop; the result is returned as
/// a `[batch, tokens, heads, head_dim]` view of that layout, which attention reads head-major anyway.
pub fn apply_rope<B: Backend>(x: Tensor<B, 4>, rope: &RopeTables<B>) -> Tensor<B, 4> {
    let [batch, tokens, heads, head_dim] = x.dims();
    let half = head_dim / 2;
    let x = x.swap_dims(1, 2).reshape([batch, heads, tokens * head_dim]);
    let pairs = x.clone().reshape([batch, heads, tokens * half, 2]);
    let swapped = Tensor::cat(vec![pairs.clone().narrow(3, 1, 1), pairs.narrow(3, 0, 1)], 3).reshape([batch, heads, tokens * head_dim]);
    let cos = rope.cos.clone().reshape([1, 1, tokens * head_dim]);
    let sin = rope.sin.clone().reshape([1, 1, tokens * head_dim]);
    (x * cos + swapped * sin).reshape([batch, heads, tokens, head_dim]).swap_dims(1, 2)
}
