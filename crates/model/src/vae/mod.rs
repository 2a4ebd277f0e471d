//! The causal video VAE: diffusers `AutoencoderKLWan` (Wan2.1, `is_residual=False`).
//!
//! 4x temporal and 8x spatial compression into `z_dim` (16) latent channels: `1 + 4k` frames of
//! `H x W` pixels become `1 + k` latent frames of `H/8 x W/8`. Every time convolution is causal,
//! so the clip is processed in chunks exactly as the reference does it (encoder: the first frame,
//! then 4 frames at a time; decoder: one latent frame at a time), each causal conv carrying its
//! last input frames to the next chunk; memory does not grow with clip length.
//!
//! Parts: [`causal_conv`] (the conv and its frame cache), [`norm`] (channel RMS norm),
//! [`resnet`], [`attention`] (per-frame single-head attention), [`resample`] (2x up/down in space
//! and optionally time), [`mid_block`], [`encoder`], [`decoder`].

pub mod attention;
pub mod causal_conv;
pub mod decoder;
pub mod encoder;
pub mod mid_block;
pub mod norm;
pub mod resample;
pub mod resnet;

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{TensorSource, TensorWriter, read_config, save_component, unsupported};
use crate::error::ModelError;
use crate::init::Weights;
use causal_conv::{CausalConv3d, FeatureCache};
use decoder::Decoder3d;
use encoder::Encoder3d;

pub const CONFIG_CLASS_NAME: &str = "AutoencoderKLWan";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// Frames per encoder chunk after the first frame (hard-coded in the reference).
const ENCODER_CHUNK_FRAMES: usize = 4;

/// diffusers' `vae/config.json` for `AutoencoderKLWan`; missing fields take diffusers' defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLWanConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub base_dim: usize,
    pub decoder_base_dim: Option<usize>,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Resolution scales of extra encoder attention; must be empty (see `validate`).
    pub attn_scales: Vec<f64>,
    /// Per downsampling level, whether it also halves time (the reference's spelling).
    pub temperal_downsample: Vec<bool>,
    pub dropout: f64,
    /// Per-channel statistics used to normalise latents for the DiT (not applied by encode/decode).
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    pub is_residual: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    pub patch_size: Option<usize>,
    pub scale_factor_temporal: Option<usize>,
    pub scale_factor_spatial: Option<usize>,
}

impl Default for AutoencoderKLWanConfig {
    /// diffusers' defaults, i.e. the Wan2.1 VAE.
    fn default() -> Self {
        Self {
            class_name: CONFIG_CLASS_NAME.to_string(),
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: Vec::new(),
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
                -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
                1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }
}

impl AutoencoderKLWanConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let config: Self = read_config(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Frames per latent frame (after the first): 2 per temporal downsampling level.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|&&halves| halves).count()
    }

    /// Pixels per latent pixel along height and width: 2 per downsampling level.
    pub fn spatial_factor(&self) -> usize {
        1 << self.dim_mult.len().saturating_sub(1)
    }

    /// Rejects values this implementation does not support, naming the field; `path` names the config.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        if self.class_name != CONFIG_CLASS_NAME {
            return Err(unsupported(path, "_class_name", &self.class_name, "expected \"AutoencoderKLWan\""));
        }
        if self.is_residual {
            return Err(unsupported(path, "is_residual", self.is_residual, "the residual (Wan2.2) VAE is not implemented"));
        }
        if !self.attn_scales.is_empty() {
            // The reference builds such blocks but its chunked encoder cannot call them.
            let reason = "down-block attention is not supported (Wan2.1 has none)";
            return Err(unsupported(path, "attn_scales", &self.attn_scales, reason));
        }
        if let Some(patch) = self.patch_size.filter(|&p| p != 1) {
            return Err(unsupported(path, "patch_size", patch, "patchified (Wan2.2) VAEs are not implemented"));
        }
        let sizes = [
            ("base_dim", self.base_dim),
            ("decoder_base_dim", self.decoder_base_dim.unwrap_or(self.base_dim)),
            ("z_dim", self.z_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("dim_mult", self.dim_mult.len()),
        ];
        for (field, value) in sizes {
            if value == 0 {
                return Err(unsupported(path, field, value, "must be positive"));
            }
        }
        if self.dim_mult.contains(&0) {
            return Err(unsupported(path, "dim_mult", &self.dim_mult, "multipliers must be positive"));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(unsupported(
                path,
                "temperal_downsample",
                &self.temperal_downsample,
                &format!("expected one entry per downsampling level ({})", self.dim_mult.len() - 1),
            ));
        }
        for (field, values) in [("latents_mean", &self.latents_mean), ("latents_std", &self.latents_std)] {
            if values.len() != self.z_dim {
                return Err(unsupported(path, field, values.len(), &format!("expected z_dim = {} entries", self.z_dim)));
            }
        }
        if self.latents_std.iter().any(|&s| s <= 0.0) {
            return Err(unsupported(path, "latents_std", &self.latents_std, "entries must be positive"));
        }
        if let Some(factor) = self.scale_factor_temporal.filter(|&f| f != self.temporal_factor()) {
            let reason = format!("temperal_downsample gives {}", self.temporal_factor());
            return Err(unsupported(path, "scale_factor_temporal", factor, &reason));
        }
        if let Some(factor) = self.scale_factor_spatial.filter(|&f| f != self.spatial_factor()) {
            let reason = format!("dim_mult gives {}", self.spatial_factor());
            return Err(unsupported(path, "scale_factor_spatial", factor, &reason));
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub struct AutoencoderKLWan<B: Backend> {
    pub encoder: Encoder3d<B>,
    pub quant_conv: CausalConv3d<B>,
    pub post_quant_conv: CausalConv3d<B>,
    pub decoder: Decoder3d<B>,
    #[module(skip)]
    pub config: AutoencoderKLWanConfig,
}

impl<B: Backend> AutoencoderKLWan<B> {
    /// Loads a diffusers `vae/` folder (`config.json` + `diffusion_pytorch_model.safetensors`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let config = AutoencoderKLWanConfig::from_file(&config_path)?;
        let src = TensorSource::open_component(dir)?;
        Self::build(Weights::Checkpoint(&src), config, &config_path, device)
    }

    /// A randomly initialised VAE (seed the backend first for reproducibility).
    pub fn random(config: AutoencoderKLWanConfig, device: &B::Device) -> Result<Self, ModelError> {
        Self::build(Weights::Random, config, Path::new("<random vae config>"), device)
    }

    fn build(weights: Weights, config: AutoencoderKLWanConfig, config_path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        config.validate(config_path)?;
        let z = config.z_dim;
        Ok(Self {
            encoder: Encoder3d::new(weights, "encoder", &config, device)?,
            quant_conv: CausalConv3d::pointwise(weights, "quant_conv", 2 * z, 2 * z, device)?,
            post_quant_conv: CausalConv3d::pointwise(weights, "post_quant_conv", z, z, device)?,
            decoder: Decoder3d::new(weights, "decoder", &config, device)?,
            config,
        })
    }

    pub fn config(&self) -> &AutoencoderKLWanConfig {
        &self.config
    }

    pub fn temporal_factor(&self) -> usize {
        self.config.temporal_factor()
    }

    pub fn spatial_factor(&self) -> usize {
        self.config.spatial_factor()
    }

    /// All weights under their checkpoint names.
    pub fn save_tensors(&self, out: &mut TensorWriter) -> Result<(), ModelError> {
        self.encoder.save(out, "encoder")?;
        self.quant_conv.save(out, "quant_conv")?;
        self.post_quant_conv.save(out, "post_quant_conv")?;
        self.decoder.save(out, "decoder")
    }

    /// Writes a diffusers `vae/` folder.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let mut out = TensorWriter::new();
        self.save_tensors(&mut out)?;
        save_component(dir, &self.config, WEIGHTS_FILE, &out)
    }

    /// `AutoencoderKLWan.decode(z).sample`: raw (not normalised) latents
    /// `[batch, z_dim, latent_frames, h, w]` to video `[batch, out_channels, 1 + 4 * (latent_frames - 1), 8h, 8w]`
    /// in `[-1, 1]`, one latent frame at a time.
    pub fn decode(&self, z: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        Ok(self.decode_unclamped(z)?.clamp(-1.0, 1.0))
    }

    /// [`AutoencoderKLWan::decode`] without the final clamp to `[-1, 1]`, for training: the clamp
    /// would stop the gradient of every pixel the decoder overshoots.
    pub fn decode_unclamped(&self, z: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        Ok(Tensor::cat(self.decode_frames(z)?.collect(), 2))
    }

    /// [`AutoencoderKLWan::decode_unclamped`] as it goes: the video frames of each latent frame
    /// in turn (1 for the first, `temporal_factor` for each after), so that a caller can pass
    /// them on and a long clip is never whole in memory.
    pub fn decode_frames(&self, z: Tensor<B, 5>) -> Result<FrameDecoder<'_, B>, ModelError> {
        let [_, channels, latent_frames, height, width] = z.dims();
        if channels != self.config.z_dim || latent_frames == 0 || height == 0 || width == 0 {
            return Err(ModelError::InvalidInput(format!(
                "latents are {:?}, the VAE expects [batch, {}, frames >= 1, height >= 1, width >= 1]",
                z.dims(),
                self.config.z_dim
            )));
        }
        let latents = self.post_quant_conv.forward(z, None);
        Ok(FrameDecoder { decoder: &self.decoder, latents, cache: FeatureCache::new(), next: 0 })
    }

    /// `AutoencoderKLWan.encode(x).latent_dist.mean`: video `[batch, in_channels, frames, H, W]`
    /// (values in `[-1, 1]`) to raw latents `[batch, z_dim, 1 + (frames - 1) / 4, H/8, W/8]` (Wan2.1
    /// factors). As in the reference, frames beyond the last full chunk of 4 are ignored.
    pub fn encode(&self, x: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        Ok(self.moments(x)?.narrow(1, 0, self.config.z_dim))
    }

    /// The encoder's posterior `(mean, logvar)`, each `[batch, z_dim, latent_frames, H/8, W/8]`, for
    /// training (sampling `mean + exp(logvar / 2) * noise` and the KL term). The log-variance is
    /// clamped to `[-30, 20]` as diffusers' `DiagonalGaussianDistribution` does.
    pub fn encode_posterior(&self, x: Tensor<B, 5>) -> Result<(Tensor<B, 5>, Tensor<B, 5>), ModelError> {
        let moments = self.moments(x)?;
        let z = self.config.z_dim;
        Ok((moments.clone().narrow(1, 0, z), moments.narrow(1, z, z).clamp(-30.0, 20.0)))
    }

    /// `quant_conv` of the chunked encoder's output: mean and log-variance stacked on channels.
    fn moments(&self, x: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        let [_, channels, frames, height, width] = x.dims();
        let factor = self.spatial_factor();
        if channels != self.config.in_channels || frames == 0 || height % factor != 0 || width % factor != 0 || height == 0 || width == 0
        {
            return Err(ModelError::InvalidInput(format!(
                "video is {:?}, the VAE expects [batch, {}, frames >= 1, height, width] with height and width positive multiples of {factor}",
                x.dims(),
                self.config.in_channels
            )));
        }
        let chunks = 1 + (frames - 1) / ENCODER_CHUNK_FRAMES;
        let mut cache = FeatureCache::new();
        let latents: Vec<Tensor<B, 5>> = (0..chunks)
            .map(|i| {
                let chunk = if i == 0 {
                    x.clone().narrow(2, 0, 1)
                } else {
                    x.clone().narrow(2, 1 + ENCODER_CHUNK_FRAMES * (i - 1), ENCODER_CHUNK_FRAMES)
                };
                self.encoder.forward(chunk, &mut cache)
            })
            .collect();
        Ok(self.quant_conv.forward(Tensor::cat(latents, 2), None))
    }
}

/// The decoder's pass over a clip, one latent frame per item (see
/// [`AutoencoderKLWan::decode_frames`]); each causal conv carries its last frames to the next.
pub struct FrameDecoder<'a, B: Backend> {
    decoder: &'a Decoder3d<B>,
    latents: Tensor<B, 5>,
    cache: FeatureCache<B>,
    next: usize,
}

impl<B: Backend> Iterator for FrameDecoder<'_, B> {
    /// Video `[batch, out_channels, frames, H, W]`, unclamped.
    type Item = Tensor<B, 5>;

    fn next(&mut self) -> Option<Self::Item> {
        let latent_frames = self.latents.dims()[2];
        (self.next < latent_frames).then(|| {
            self.next += 1;
            self.decoder.forward(self.latents.clone().narrow(2, self.next - 1, 1), &mut self.cache)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.latents.dims()[2] - self.next;
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, fixture, max_abs_diff};

    type B = TestBackend;

    fn fixture_vae(name: &str) -> AutoencoderKLWan<B> {
        AutoencoderKLWan::load(&fixture(name).join("vae"), &Default::default()).expect("load the fixture VAE")
    }

    fn fixture_io(name: &str) -> TensorSource {
        TensorSource::open_files(&[fixture(name).join("io.safetensors")]).expect("open the fixture's io.safetensors")
    }

    fn check_decode(name: &str, latent_frames: usize) {
        let device = Default::default();
        let vae = fixture_vae(name);
        let io = fixture_io(name);
        let z = io.tensor_of_rank::<B, 5>(&format!("decode{latent_frames}.z"), &device).expect("z");
        let expected = io.tensor_of_rank::<B, 5>(&format!("decode{latent_frames}.sample"), &device).expect("sample");
        // A batch of two copies checks that batch items stay apart.
        let batch = Tensor::cat(vec![z.clone(), z], 0);
        let err = max_abs_diff(vae.decode(batch).expect("decode"), Tensor::cat(vec![expected.clone(), expected], 0));
        println!("{name} decode ({latent_frames} latent frames) max abs error {err:e}");
        assert!(err <= 1e-4, "{name} decode ({latent_frames} latent frames) max abs error {err}");
    }

    #[test]
    fn parity_vae_decode_one_latent_frame() {
        check_decode("vae", 1);
    }

    #[test]
    fn parity_vae_decode_three_latent_frames() {
        check_decode("vae", 3);
    }

    #[test]
    fn parity_vae_wide_decoder() {
        check_decode("vae_wide_decoder", 1);
        check_decode("vae_wide_decoder", 3);
    }

    /// The video comes a latent frame at a time, one frame then four, and matches the reference.
    #[test]
    fn decoding_as_it_goes_gives_each_latent_frames_video_in_turn() {
        let device = Default::default();
        let vae = fixture_vae("vae");
        let io = fixture_io("vae");
        let z = io.tensor_of_rank::<B, 5>("decode3.z", &device).expect("z");
        let expected = io.tensor_of_rank::<B, 5>("decode3.sample", &device).expect("sample");
        let decoder = vae.decode_frames(z).expect("decode");
        assert_eq!(decoder.size_hint(), (3, Some(3)));
        let parts: Vec<Tensor<B, 5>> = decoder.collect();
        assert_eq!(parts.iter().map(|p| p.dims()[2]).collect::<Vec<_>>(), [1, 4, 4]);
        let mut start = 0;
        for part in parts {
            let frames = part.dims()[2];
            let err = max_abs_diff(part.clamp(-1.0, 1.0), expected.clone().narrow(2, start, frames));
            assert!(err <= 1e-4, "frames {start}..{}: max abs error {err}", start + frames);
            start += frames;
        }
    }

    #[test]
    fn parity_vae_encode() {
        let device = Default::default();
        let vae = fixture_vae("vae");
        let io = fixture_io("vae");
        let x = io.tensor_of_rank::<B, 5>("encode.x", &device).expect("x");
        let expected = io.tensor_of_rank::<B, 5>("encode.mean", &device).expect("mean");
        let batch = Tensor::cat(vec![x.clone(), x], 0);
        let err = max_abs_diff(vae.encode(batch).expect("encode"), Tensor::cat(vec![expected.clone(), expected], 0));
        println!("vae encode max abs error {err:e}");
        assert!(err <= 1e-4, "vae encode max abs error {err}");
    }

    #[test]
    fn saving_writes_the_diffusers_layout_and_loads_back() {
        let device = Default::default();
        let original_dir = fixture("vae").join("vae");
        let original = TensorSource::open_component(&original_dir).expect("fixture weights");
        let vae = fixture_vae("vae");
        let dir = std::env::temp_dir().join(format!("vidfarm-vae-roundtrip-{}", std::process::id()));
        vae.save(&dir).expect("save");
        let saved = TensorSource::open_component(&dir).expect("saved weights");
        assert_eq!(saved.names(), original.names());
        for name in original.names() {
            let (shape, _) = original.info(&name).expect("info");
            assert_eq!(saved.info(&name).expect("saved info").0, shape, "{name}");
            assert_eq!(max_abs_diff(flat(&original, &name, &shape), flat(&saved, &name, &shape)), 0.0, "{name}");
        }
        let reloaded = AutoencoderKLWan::<B>::load(&dir, &device).expect("reload");
        assert_eq!(reloaded.config, vae.config);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A stored float tensor of rank 1, 3, 4 or 5, flattened.
    fn flat(src: &TensorSource, name: &str, shape: &[usize]) -> Tensor<B, 1> {
        let device = Default::default();
        let len = shape.iter().product::<usize>();
        match shape.len() {
            1 => src.tensor_of_rank::<B, 1>(name, &device).expect(name),
            3 => src.tensor_of_rank::<B, 3>(name, &device).expect(name).reshape([len]),
            4 => src.tensor_of_rank::<B, 4>(name, &device).expect(name).reshape([len]),
            5 => src.tensor_of_rank::<B, 5>(name, &device).expect(name).reshape([len]),
            rank => panic!("{name}: unexpected rank {rank}"),
        }
    }

    #[test]
    fn random_model_round_trips_through_save_and_load() {
        let device = Default::default();
        let config = AutoencoderKLWanConfig {
            base_dim: 4,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![true, true],
            scale_factor_spatial: Some(4),
            ..AutoencoderKLWanConfig::default()
        };
        let vae = AutoencoderKLWan::<B>::random(config, &device).expect("random");
        let dir = std::env::temp_dir().join(format!("vidfarm-vae-random-{}", std::process::id()));
        vae.save(&dir).expect("save");
        let reloaded = AutoencoderKLWan::<B>::load(&dir, &device).expect("reload");
        let z = Tensor::<B, 5>::random([1, 16, 2, 1, 2], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let video = vae.decode(z.clone()).expect("decode");
        assert_eq!(video.dims(), [1, 3, 5, 4, 8]);
        assert_eq!(max_abs_diff(video, reloaded.decode(z).expect("decode")), 0.0);
        let x = Tensor::<B, 5>::random([1, 3, 5, 4, 8], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
        let latents = vae.encode(x.clone()).expect("encode");
        assert_eq!(latents.dims(), [1, 16, 2, 1, 2]);
        assert_eq!(max_abs_diff(latents, reloaded.encode(x).expect("encode")), 0.0);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unsupported_config_values_name_the_field() {
        let path = Path::new("vae/config.json");
        let residual = AutoencoderKLWanConfig { is_residual: true, ..AutoencoderKLWanConfig::default() };
        let err = residual.validate(path).expect_err("residual VAE");
        assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "is_residual"), "{err}");
        let attention = AutoencoderKLWanConfig { attn_scales: vec![0.5], ..AutoencoderKLWanConfig::default() };
        let err = attention.validate(path).expect_err("down-block attention");
        assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "attn_scales"), "{err}");
        let short = AutoencoderKLWanConfig { temperal_downsample: vec![true], ..AutoencoderKLWanConfig::default() };
        let err = short.validate(path).expect_err("too few temporal flags");
        assert!(matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "temperal_downsample"), "{err}");
        let config = AutoencoderKLWanConfig::default();
        assert_eq!((config.temporal_factor(), config.spatial_factor()), (4, 8));
    }
}
