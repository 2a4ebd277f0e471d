//! Weight-owning building blocks shared by the DiT, the VAE and the text encoder. Each loads from
//! and saves to PyTorch state-dict names (`<prefix>.weight`, `<prefix>.bias`), in PyTorch layout.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

use crate::checkpoint::{TensorSource, TensorWriter, join};
use crate::error::ModelError;

fn uniform<B: Backend, const D: usize>(shape: [usize; D], fan_in: usize, device: &B::Device) -> Tensor<B, D> {
    // PyTorch's default (Kaiming-uniform) bound, so random models have sane activations.
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
}

/// `torch.nn.Linear`; the weight is kept transposed (`[in, out]`) as burn's matmul wants it.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    pub fn load(src: &TensorSource, prefix: &str, d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Result<Self, ModelError> {
        let weight = src.tensor::<B, 2>(&join(prefix, "weight"), [d_out, d_in], device)?.transpose();
        let bias = if bias { Some(Param::from_tensor(src.tensor(&join(prefix, "bias"), [d_out], device)?)) } else { None };
        Ok(Self { weight: Param::from_tensor(weight), bias })
    }

    pub fn random(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(uniform([d_in, d_out], d_in, device)),
            bias: bias.then(|| Param::from_tensor(uniform([d_out], d_in, device))),
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        out.put(&join(prefix, "weight"), &self.weight.val().transpose())?;
        if let Some(bias) = &self.bias {
            out.put(&join(prefix, "bias"), &bias.val())?;
        }
        Ok(())
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// `torch.nn.LayerNorm` over the last dimension, optionally without the affine weights
/// (Wan's `FP32LayerNorm(elementwise_affine=False)`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Option<Param<Tensor<B, 1>>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(src: &TensorSource, prefix: &str, dim: usize, affine: bool, eps: f64, device: &B::Device) -> Result<Self, ModelError> {
        if !affine {
            return Ok(Self::without_affine(eps));
        }
        Ok(Self {
            weight: Some(Param::from_tensor(src.tensor(&join(prefix, "weight"), [dim], device)?)),
            bias: Some(Param::from_tensor(src.tensor(&join(prefix, "bias"), [dim], device)?)),
            eps,
        })
    }

    pub fn without_affine(eps: f64) -> Self {
        Self { weight: None, bias: None, eps }
    }

    pub fn random(dim: usize, affine: bool, eps: f64, device: &B::Device) -> Self {
        if !affine {
            return Self::without_affine(eps);
        }
        Self {
            weight: Some(Param::from_tensor(Tensor::random([dim], Distribution::Uniform(0.5, 1.5), device))),
            bias: Some(Param::from_tensor(Tensor::random([dim], Distribution::Uniform(-0.1, 0.1), device))),
            eps,
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        if let Some(weight) = &self.weight {
            out.put(&join(prefix, "weight"), &weight.val())?;
        }
        if let Some(bias) = &self.bias {
            out.put(&join(prefix, "bias"), &bias.val())?;
        }
        Ok(())
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let mut y = (x - mean).div(var.add_scalar(self.eps).sqrt());
        if let Some(weight) = &self.weight {
            y = y.mul(weight.val().unsqueeze());
        }
        if let Some(bias) = &self.bias {
            y = y.add(bias.val().unsqueeze());
        }
        y
    }
}

/// `torch.nn.RMSNorm` over the last dimension with a learned scale.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(src: &TensorSource, prefix: &str, dim: usize, eps: f64, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self { weight: Param::from_tensor(src.tensor(&join(prefix, "weight"), [dim], device)?), eps })
    }

    pub fn random(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::random([dim], Distribution::Uniform(0.5, 1.5), device)), eps }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        out.put(&join(prefix, "weight"), &self.weight.val())
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let rms = x.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt();
        x.div(rms).mul(self.weight.val().unsqueeze())
    }
}

/// `torch.nn.Conv3d` without padding, with stride (used as the DiT patch embedding).
#[derive(Module, Debug)]
pub struct Conv3d<B: Backend> {
    /// `[out, in, kt, kh, kw]`, PyTorch layout.
    pub weight: Param<Tensor<B, 5>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

impl<B: Backend> Conv3d<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        src: &TensorSource,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let weight = src.tensor(&join(prefix, "weight"), [c_out, c_in, kernel[0], kernel[1], kernel[2]], device)?;
        let bias = src.tensor(&join(prefix, "bias"), [c_out], device)?;
        Ok(Self { weight: Param::from_tensor(weight), bias: Some(Param::from_tensor(bias)), stride, padding })
    }

    pub fn random(c_in: usize, c_out: usize, kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3], device: &B::Device) -> Self {
        // He-uniform weights and zero biases rather than PyTorch's default: with the default the
        // causal VAE (convolutions between RMS norms) decoded every input to the same frame, the
        // random biases drowning the signal, and training stalled at the clips' variance.
        let fan_in = c_in * kernel.iter().product::<usize>();
        let bound = (6.0 / fan_in.max(1) as f64).sqrt();
        let weight = Tensor::random([c_out, c_in, kernel[0], kernel[1], kernel[2]], Distribution::Uniform(-bound, bound), device);
        Self {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(Tensor::zeros([c_out], device))),
            stride,
            padding,
        }
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        out.put(&join(prefix, "weight"), &self.weight.val())?;
        if let Some(bias) = &self.bias {
            out.put(&join(prefix, "bias"), &bias.val())?;
        }
        Ok(())
    }

    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let options = ConvOptions::new(self.stride, self.padding, [1, 1, 1], 1);
        conv3d(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()), options)
    }
}

/// GELU with the tanh approximation (`gelu(approximate="tanh")`), as burn's `gelu_approximate` but
/// with the cube as two products instead of `powf`, which on CPU costs more than the rest together.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const SQRT_2_OVER_PI: f64 = core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    (x * (inner.tanh() + 1)) * 0.5
}
