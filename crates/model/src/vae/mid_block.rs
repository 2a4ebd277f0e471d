//! `WanMidBlock`: residual block, then (attention, residual block) pairs, at the lowest resolution.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::attention::AttentionBlock;
use super::causal_conv::FeatureCache;
use super::resnet::ResidualBlock;
use crate::checkpoint::TensorWriter;
use crate::error::ModelError;
use crate::init::Weights;

#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    pub attentions: Vec<AttentionBlock<B>>,
    pub resnets: Vec<ResidualBlock<B>>,
}

impl<B: Backend> MidBlock<B> {
    /// The reference always builds one attention layer (`num_layers=1`).
    pub fn new(weights: Weights, prefix: &str, dim: usize, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Self {
            attentions: vec![AttentionBlock::new(weights, &format!("{prefix}.attentions.0"), dim, device)?],
            resnets: (0..2)
                .map(|i| ResidualBlock::new(weights, &format!("{prefix}.resnets.{i}"), dim, dim, device))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn save(&self, out: &mut TensorWriter, prefix: &str) -> Result<(), ModelError> {
        for (i, attention) in self.attentions.iter().enumerate() {
            attention.save(out, &format!("{prefix}.attentions.{i}"))?;
        }
        for (i, resnet) in self.resnets.iter().enumerate() {
            resnet.save(out, &format!("{prefix}.resnets.{i}"))?;
        }
        Ok(())
    }

    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatureCache<B>) -> Tensor<B, 5> {
        let mut resnets = self.resnets.iter();
        let mut x = match resnets.next() {
            Some(first) => first.forward(x, cache),
            None => x,
        };
        for (attention, resnet) in self.attentions.iter().zip(resnets) {
            x = resnet.forward(attention.forward(x), cache);
        }
        x
    }
}
