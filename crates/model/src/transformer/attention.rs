//! `WanAttention`: q/k/v projections, RMS norm on q and k across all heads, optional rotary
//! positions, scaled dot-product attention, output projection (`to_out.0`).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::rope::{RopeTables, apply_rope};
use crate::checkpoint::{TensorSource, TensorWriter, join};
use crate::error::ModelError;
use crate::layers::{Linear, RmsNorm};

/// Which tokens a self-attention lets attend to each other. Tokens are ordered (frame, position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionScope {
    /// Every token with every token (Wan).
    Full,
    /// Within each frame (spatial attention of the factorized layout).
    WithinFrame { frames: usize },
    /// Across frames at each spatial position (temporal attention of the factorized layout).
    AcrossFrames { frames: usize },
}

/// Scaled dot-product attention over `[batch, tokens, heads, head_dim]` inputs, returning
/// `[batch, tokens, heads * head_dim]`. Uses burn's fused op so GPU backends can use flash kernels.
pub fn scaled_dot_product<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, tokens, heads, head_dim] = q.dims();
    let out = attention(
        q.swap_dims(1, 2),
        k.swap_dims(1, 2),
        v.swap_dims(1, 2),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    out.swap_dims(1, 2).reshape([batch, tokens, heads * head_dim])
}

/// Regroups `[batch, frames * positions, heads, head_dim]` into independent sequences for `scope`.
fn group<B: Backend>(x: Tensor<B, 4>, scope: AttentionScope) -> Tensor<B, 4> {
    let [batch, tokens, heads, head_dim] = x.dims();
    match scope {
        AttentionScope::Full => x,
        AttentionScope::WithinFrame { frames } => x.reshape([batch * frames, tokens / frames, heads, head_dim]),
        AttentionScope::AcrossFrames { frames } => x
            .reshape([batch, frames, tokens / frames, heads * head_dim])
            .swap_dims(1, 2)
            .reshape([batch * (tokens / frames), frames, heads, head_dim]),
    }
}

/// Inverse of [`group`] on the attention output `[sequences, length, channels]`.
fn ungroup<B: Backend>(x: Tensor<B, 3>, scope: AttentionScope, batch: usize) -> Tensor<B, 3> {
    let [sequences, length, channels] = x.dims();
    match scope {
        AttentionScope::Full => x,
        AttentionScope::WithinFrame { .. } => x.reshape([batch, sequences / batch * length, channels]),
        AttentionScope::AcrossFrames { frames } => x
            .reshape([batch, sequences / batch, frames, channels])
            .swap_dims(1, 2)
            .reshape([batch, frames * (sequences / batch), channels]),
    }
}

#[derive(Module, Debug)]
pub struct WanAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0` in the checkpoint (`to_out.1` is a dropout).
    pub to_out: Linear<B>,
    pub norm_q: RmsNorm<B>,
    pub norm_k: RmsNorm<B>,
    pub heads: usize,
}

impl<B: Backend> WanAttention<B> {
    pub fn load(src: &TensorSource, prefix: &str, dim: usize, heads: usize, eps: f64, device: &B::Device) -> Result<Self, ModelError> {
        let linear = |name: &str| Linear::load(src, &join(prefix, name), dim, dim, true, device);
        Ok(Self {
            to_q: linear("to_q")?,
            to_k: linear("to_k")?,
            to_v: linear("to_v")?,
            to_out: linear("to_out.0")?,
            norm_q: RmsNorm::load(src, &join(prefix, "norm_q"), dim, eps, device)?,
            norm_k: RmsNorm::load(src, &join(prefix, "norm_k"), dim, eps, device)?,
            heads,
        })
    }

    pub fn random(dim: usize, heads: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            to_q: Linear::random(dim, dim, true, device),
            to_k: Linear::random(dim, dim, true, device),
            to_v: Linear::random(dim, dim, true, device),
            to_out: Linear::random(dim, dim, true, device),
            norm_q: RmsNorm::random(dim, eps, device),
            norm_k: RmsNorm::random(dim, eps, device),
            heads,
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.to_q.save(out, &join(prefix, "to_q"))?;
        self.to_k.save(out, &join(prefix, "to_k"))?;
        self.to_v.save(out, &join(prefix, "to_v"))?;
        self.to_out.save(out, &join(prefix, "to_out.0"))?;
        self.norm_q.save(out, &join(prefix, "norm_q"))?;
        self.norm_k.save(out, &join(prefix, "norm_k"))
    }

    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, tokens, dim] = x.dims();
        x.reshape([batch, tokens, self.heads, dim / self.heads])
    }

    /// Self-attention of `x: [batch, tokens, dim]` with rotary positions, restricted to `scope`.
    pub fn forward_self(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, scope: AttentionScope) -> Tensor<B, 3> {
        let batch = x.dims()[0];
        let q = self.split_heads(self.norm_q.forward(self.to_q.forward(x.clone())));
        let k = self.split_heads(self.norm_k.forward(self.to_k.forward(x.clone())));
        let v = self.split_heads(self.to_v.forward(x));
        // Rotary positions are applied on the full sequence, before regrouping, so every scope sees
        // the same absolute positions.
        let q = group(apply_rope(q, rope), scope);
        let k = group(apply_rope(k, rope), scope);
        let out = scaled_dot_product(q, k, group(v, scope));
        self.to_out.forward(ungroup(out, scope, batch))
    }

    /// Cross-attention of `x: [batch, tokens, dim]` to `context: [batch, text_tokens, dim]`.
    pub fn forward_cross(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.split_heads(self.norm_q.forward(self.to_q.forward(x)));
        let k = self.split_heads(self.norm_k.forward(self.to_k.forward(context.clone())));
        let v = self.split_heads(self.to_v.forward(context));
        self.to_out.forward(scaled_dot_product(q, k, v))
    }
}
