//! A tiny random model (same architecture, a few thousand weights) with the shipped tokenizer,
//! so training tests run in seconds.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde_json::json;
use vidfarm_model::pipeline::{Pipeline, PipelineConfig};
use vidfarm_model::vae::AutoencoderKLWanConfig;

use crate::data::ClipShape;

pub type TestBackend = crate::TrainBackend;

/// 9 frames of 32x32: 3 latent frames of 4x4, 4 DiT tokens per latent frame.
pub const CLIP: ClipShape = ClipShape { frames: 9, width: 32, height: 32, fps: 8 };

pub fn shipped_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vidfarm-tiny")
}

fn tiny_config() -> PipelineConfig {
    let transformer = serde_json::from_value(json!({
        "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 4,
        "text_dim": 8, "freq_dim": 8, "ffn_dim": 16, "num_layers": 1
    }))
    .expect("transformer config");
    let text_encoder = serde_json::from_value(json!({
        "vocab_size": 34, "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 1, "num_heads": 2,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16
    }))
    .expect("text encoder config");
    let vae = AutoencoderKLWanConfig {
        base_dim: 4,
        z_dim: 4,
        dim_mult: vec![1, 1, 2, 2],
        num_res_blocks: 1,
        latents_mean: vec![0.0; 4],
        latents_std: vec![1.0; 4],
        ..AutoencoderKLWanConfig::default()
    };
    PipelineConfig {
        transformer,
        vae,
        text_encoder,
        tokenizer: shipped_model().join("tokenizer/tokenizer.json"),
        flow_shift: 3.0,
        max_sequence_length: 24,
    }
}

/// Writes the tiny model (and the shipped `vidfarm.toml`) into `dir`.
pub fn write_tiny_model(dir: &Path) {
    let device = Default::default();
    Pipeline::<<TestBackend as burn::tensor::backend::AutodiffBackend>::InnerBackend>::random(tiny_config(), 3, &device)
        .expect("random pipeline")
        .save(dir)
        .expect("save");
    std::fs::copy(shipped_model().join("vidfarm.toml"), dir.join("vidfarm.toml")).expect("profile");
}

pub fn load<B: Backend>(dir: &Path) -> Pipeline<B> {
    Pipeline::load(dir, &Default::default()).expect("load")
}

/// Every float parameter of `module`, in visiting order.
pub fn parameter_values<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.extend(param.val().into_data().convert::<f32>().into_vec::<f32>().expect("f32 values"));
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}
