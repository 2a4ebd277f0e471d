//! The text-to-video model a vidfarm worker runs: the Wan2.1 architecture in burn.
//!
//! Parts (one file each, module and field names mirror the diffusers checkpoint names so a
//! diffusers-layout folder loads without a renaming table): the spatiotemporal DiT
//! (`WanTransformer3DModel`), the causal video VAE (`AutoencoderKLWan`, 4x temporal and 8x spatial
//! compression, 16 latent channels), the UMT5 text encoder, and the flow-matching samplers.

pub mod checkpoint;
pub mod error;
pub mod init;
pub mod layers;
pub mod pipeline;
pub mod sampling;
pub mod scheduler;
pub mod text_encoder;
pub mod tokenizer;
pub mod tool;
pub mod transformer;
pub mod vae;

#[cfg(test)]
mod test_util;

pub use error::ModelError;
pub use pipeline::{
    DefaultBackend, Pipeline, PipelineConfig, PipelineInfo, PromptEmbedding, SamplerKind, SamplingOptions,
    StepControl, StepProgress,
};
pub use tool::{Component, ComponentTiming, model_info, run_component};
