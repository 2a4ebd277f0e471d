//! What the farm knows about a model before loading it: its shape constraints and the
//! defaults a job takes when it leaves a field unset. Read from `vidfarm.toml` in the model folder.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file in a model folder that holds its profile.
pub const PROFILE_FILE: &str = "vidfarm.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    pub name: String,
    /// Video frames per latent frame after the first (the causal VAE takes 1 + 4k frames).
    pub temporal_factor: u32,
    /// Pixels per latent token side: the VAE's spatial factor times the DiT's patch size.
    pub spatial_factor: u32,
    pub defaults: ProfileDefaults,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDefaults {
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    pub seconds: f64,
    pub sampler: String,
    pub steps: u32,
    pub guidance_scale: f32,
    /// Noise level under which steps are not guided (0, the default: every step is).
    #[serde(default)]
    pub guidance_min_sigma: f32,
    pub flow_shift: f32,
    pub chunk_latent_frames: u32,
    pub overlap_latent_frames: u32,
    pub negative_prompt: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read model profile {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model profile {path} is malformed: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("model profile {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ModelProfile {
    /// Reads `vidfarm.toml` from a model folder.
    pub fn load(model_dir: &Path) -> Result<Self, ProfileError> {
        let path = model_dir.join(PROFILE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read { path: path.clone(), source })?;
        let profile: ModelProfile =
            toml::from_str(&text).map_err(|source| ProfileError::Parse { path: path.clone(), source })?;
        let invalid = |reason: &str| ProfileError::Invalid { path: path.clone(), reason: reason.to_string() };
        if profile.temporal_factor == 0 || profile.spatial_factor == 0 {
            return Err(invalid("temporal_factor and spatial_factor must be positive"));
        }
        if profile.defaults.overlap_latent_frames >= profile.defaults.chunk_latent_frames {
            return Err(invalid("defaults.overlap_latent_frames must be smaller than defaults.chunk_latent_frames"));
        }
        if profile.defaults.sampler.parse::<crate::Sampler>().is_err() {
            return Err(invalid("defaults.sampler must be euler, heun or unipc"));
        }
        Ok(profile)
    }
}
