//! `WanTransformerBlock`: adaLN-modulated self-attention, cross-attention to the text, GELU-tanh
//! feed-forward. In the factorized layout (our extension, no diffusers counterpart) the
//! self-attention is restricted to each frame and followed by a temporal attention across frames
//! (`attn_temporal`, pre-normed by `norm_temporal`, plain residual).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use super::attention::{AttentionScope, WanAttention};
use super::rope::RopeTables;
use crate::checkpoint::{TensorSource, TensorWriter, join};
use crate::error::ModelError;
use crate::layers::{LayerNorm, Linear, gelu_tanh};

/// diffusers `FeedForward(activation_fn="gelu-approximate")`: `net.0.proj`, GELU-tanh, `net.2`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub proj_in: Linear<B>,
    pub proj_out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    pub fn load(src: &TensorSource, prefix: &str, dim: usize, inner: usize, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self {
            proj_in: Linear::load(src, &join(prefix, "net.0.proj"), dim, inner, true, device)?,
            proj_out: Linear::load(src, &join(prefix, "net.2"), inner, dim, true, device)?,
        })
    }

    pub fn random(dim: usize, inner: usize, device: &B::Device) -> Self {
        Self { proj_in: Linear::random(dim, inner, true, device), proj_out: Linear::random(inner, dim, true, device) }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.proj_in.save(out, &join(prefix, "net.0.proj"))?;
        self.proj_out.save(out, &join(prefix, "net.2"))
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.proj_out.forward(gelu_tanh(self.proj_in.forward(x)))
    }
}

/// Sizes shared by every block of a model.
#[derive(Clone, Copy, Debug)]
pub struct BlockDims {
    pub dim: usize,
    pub ffn_dim: usize,
    pub heads: usize,
    pub eps: f64,
    pub cross_attn_norm: bool,
    pub factorized: bool,
}

#[derive(Module, Debug)]
pub struct WanTransformerBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn1: WanAttention<B>,
    pub norm_temporal: Option<LayerNorm<B>>,
    pub attn_temporal: Option<WanAttention<B>>,
    /// `None` when the config has `cross_attn_norm: false` (an identity in diffusers).
    pub norm2: Option<LayerNorm<B>>,
    pub attn2: WanAttention<B>,
    pub norm3: LayerNorm<B>,
    pub ffn: FeedForward<B>,
    /// `[1, 6, dim]`: shift, scale, gate for attention, then for the feed-forward.
    pub scale_shift_table: Param<Tensor<B, 3>>,
}

impl<B: Backend> WanTransformerBlock<B> {
    pub fn load(src: &TensorSource, prefix: &str, d: BlockDims, device: &B::Device) -> Result<Self, ModelError> {
        let attention = |name: &str| WanAttention::load(src, &join(prefix, name), d.dim, d.heads, d.eps, device);
        let (norm_temporal, attn_temporal) = if d.factorized {
            (
                Some(LayerNorm::load(src, &join(prefix, "norm_temporal"), d.dim, true, d.eps, device)?),
                Some(attention("attn_temporal")?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            norm1: LayerNorm::without_affine(d.eps),
            attn1: attention("attn1")?,
            norm_temporal,
            attn_temporal,
            norm2: if d.cross_attn_norm {
                Some(LayerNorm::load(src, &join(prefix, "norm2"), d.dim, true, d.eps, device)?)
            } else {
                None
            },
            attn2: attention("attn2")?,
            norm3: LayerNorm::without_affine(d.eps),
            ffn: FeedForward::load(src, &join(prefix, "ffn"), d.dim, d.ffn_dim, device)?,
            scale_shift_table: Param::from_tensor(src.tensor(&join(prefix, "scale_shift_table"), [1, 6, d.dim], device)?),
        })
    }

    pub fn random(d: BlockDims, device: &B::Device) -> Self {
        let attention = || WanAttention::random(d.dim, d.heads, d.eps, device);
        let table_std = 1.0 / (d.dim as f64).sqrt();
        Self {
            norm1: LayerNorm::without_affine(d.eps),
            attn1: attention(),
            norm_temporal: d.factorized.then(|| LayerNorm::random(d.dim, true, d.eps, device)),
            attn_temporal: d.factorized.then(attention),
            norm2: d.cross_attn_norm.then(|| LayerNorm::random(d.dim, true, d.eps, device)),
            attn2: attention(),
            norm3: LayerNorm::without_affine(d.eps),
            ffn: FeedForward::random(d.dim, d.ffn_dim, device),
            scale_shift_table: Param::from_tensor(Tensor::random([1, 6, d.dim], Distribution::Normal(0.0, table_std), device)),
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        self.attn1.save(out, &join(prefix, "attn1"))?;
        if let (Some(norm), Some(attn)) = (&self.norm_temporal, &self.attn_temporal) {
            norm.save(out, &join(prefix, "norm_temporal"))?;
            attn.save(out, &join(prefix, "attn_temporal"))?;
        }
        if let Some(norm2) = &self.norm2 {
            norm2.save(out, &join(prefix, "norm2"))?;
        }
        self.attn2.save(out, &join(prefix, "attn2"))?;
        self.ffn.save(out, &join(prefix, "ffn"))?;
        out.put(&join(prefix, "scale_shift_table"), &self.scale_shift_table.val())
    }

    /// `x: [batch, frames * positions, dim]`, `timestep_proj: [batch, 6, dim]`,
    /// `text: [batch, text_tokens, dim]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        text: Tensor<B, 3>,
        timestep_proj: Tensor<B, 3>,
        rope: &RopeTables<B>,
        frames: usize,
    ) -> Tensor<B, 3> {
        let modulation = self.scale_shift_table.val() + timestep_proj;
        let part = |index: usize| modulation.clone().narrow(1, index, 1);
        let (shift_msa, scale_msa, gate_msa) = (part(0), part(1), part(2));
        let (c_shift_msa, c_scale_msa, c_gate_msa) = (part(3), part(4), part(5));

        let scope = match self.attn_temporal {
            Some(_) => AttentionScope::WithinFrame { frames },
            None => AttentionScope::Full,
        };
        let normed = self.norm1.forward(x.clone()) * (scale_msa + 1.0) + shift_msa;
        let x = x + self.attn1.forward_self(normed, rope, scope) * gate_msa;

        let x = match (&self.norm_temporal, &self.attn_temporal) {
            (Some(norm), Some(attn)) => {
                x.clone() + attn.forward_self(norm.forward(x), rope, AttentionScope::AcrossFrames { frames })
            }
            _ => x,
        };

        let normed = match &self.norm2 {
            Some(norm2) => norm2.forward(x.clone()),
            None => x.clone(),
        };
        let x = x + self.attn2.forward_cross(normed, text);

        let normed = self.norm3.forward(x.clone()) * (c_scale_msa + 1.0) + c_shift_msa;
        x + self.ffn.forward(normed) * c_gate_msa
    }
}
