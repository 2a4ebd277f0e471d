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
    /// The largest frame (width x height) a job may ask for: the VAE's attention, over a whole
    /// latent frame, grows with its square. Absent: 1280 x 720.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// The most DiT tokens one chunk may hold (its latent frames x tokens a frame): the DiT's
    /// attention grows with their square. Absent: 75600, a 720p chunk of 21 latent frames at 16
    /// pixels a token side (Wan's).
    #[serde(default = "default_max_chunk_tokens")]
    pub max_chunk_tokens: u64,
    pub defaults: ProfileDefaults,
}

fn default_max_pixels() -> u64 {
    1280 * 720
}

fn default_max_chunk_tokens() -> u64 {
    21 * (720 / 16) * (1280 / 16)
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
        if profile.max_pixels == 0 || profile.max_chunk_tokens == 0 {
            return Err(invalid("max_pixels and max_chunk_tokens must be positive"));
        }
        if profile.defaults.overlap_latent_frames >= profile.defaults.chunk_latent_frames {
            return Err(invalid("defaults.overlap_latent_frames must be smaller than defaults.chunk_latent_frames"));
        }
        if profile.defaults.sampler.parse::<crate::Sampler>().is_err() {
            return Err(invalid("defaults.sampler must be euler, heun or unipc"));
        }
        // Defaults that no job could take (a width the factors do not divide, zero steps)
        // would fail every submission that leaves them unset, naming a field its client never set.
        let prompt_only = crate::pb::JobSpec { prompt: "a prompt".into(), ..Default::default() };
        if let Err(error) = crate::RenderSpec::resolve(&prompt_only, std::slice::from_ref(&profile), 0) {
            return Err(invalid(&format!("{}: {}", error.field.replacen("spec.", "defaults.", 1), error.reason)));
        }
        Ok(profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped profile loads; one whose defaults make no valid job is refused, naming the
    /// file and the default.
    #[test]
    fn defaults_that_make_no_valid_job_are_refused_at_load() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vidfarm-tiny");
        let text = std::fs::read_to_string(shipped.join(PROFILE_FILE)).unwrap();
        assert_eq!(ModelProfile::load(&shipped).unwrap().name, "vidfarm-tiny");
        let dir = tempfile::tempdir().unwrap();
        for (from, to, named) in [("width = 64", "width = 70", "defaults.width"), ("steps = 20", "steps = 0", "defaults.steps")] {
            assert!(text.contains(from), "the shipped profile has {from}");
            std::fs::write(dir.path().join(PROFILE_FILE), text.replace(from, to)).unwrap();
            let error = ModelProfile::load(dir.path()).unwrap_err().to_string();
            assert!(error.contains(PROFILE_FILE) && error.contains(named), "{error}");
        }
    }
}
