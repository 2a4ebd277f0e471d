//! The resolved job spec and its validation. `RenderSpec::resolve` is the only way from a
//! client's `pb::JobSpec` to a spec the farm renders: every field checked, every default filled.

use crate::pb;
use crate::profile::ModelProfile;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
pub use vidfarm_plan::BlendCurve;

/// Longest prompt (and negative prompt) accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 2048;
/// Longest clip accepted: ten minutes.
pub const MAX_SECONDS: f64 = 600.0;
/// Most frames accepted (ten minutes at 24 fps, as 1 + 4k).
pub const MAX_FRAMES: u32 = 14_401;
pub const MAX_FPS: u32 = 120;
pub const MAX_SIDE: u32 = 4096;
pub const MAX_STEPS: u32 = 200;
pub const MAX_GUIDANCE: f32 = 50.0;
pub const MAX_FLOW_SHIFT: f32 = 100.0;
pub const MAX_CHUNK_LATENT_FRAMES: u32 = 1024;

/// A request field that failed validation, named as in the proto (`spec.fps`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.to_string(), reason: reason.into() }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// A client's value, quoted for an error message: whole when short, else its start and its
/// length. An error must not grow with what was sent: a 20 KB value would make a
/// `grpc-message` header that clients refuse, turning INVALID_ARGUMENT into a protocol error.
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.len() <= SHOWN {
        return format!("{value:?}");
    }
    let end = (0..=SHOWN).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

/// Longest worker name accepted.
pub const MAX_WORKER_NAME_BYTES: usize = 253;

/// A worker's name, as `field` gives it: what host and pod names are made of (letters, digits,
/// `.`, `_`, `-`), so that it never reaches into the farm's other keys (`worker:<name>:drain`).
pub fn check_worker_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.len() > MAX_WORKER_NAME_BYTES {
        return Err(FieldError::new(field, format!("{} bytes, at most {MAX_WORKER_NAME_BYTES}", name.len())));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(FieldError::new(field, format!("{} is not a worker name: letters, digits, '.', '_' and '-' only", quoted(name))));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    Euler,
    Heun,
    #[serde(rename = "unipc")]
    UniPc,
}

impl FromStr for Sampler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "euler" => Ok(Self::Euler),
            "heun" => Ok(Self::Heun),
            "unipc" => Ok(Self::UniPc),
            other => Err(format!("unknown sampler {}: expected euler, heun or unipc", quoted(other))),
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::UniPc => "unipc",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StitchMode {
    Blend,
    Sync,
    Chain,
}

impl StitchMode {
    /// The mode's name as the CLI and the job JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blend => "blend",
            Self::Sync => "sync",
            Self::Chain => "chain",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
}

/// A job spec with every default resolved and every constraint met.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderSpec {
    pub prompt: String,
    pub negative_prompt: String,
    /// Video frames, always 1 + temporal_factor * k.
    pub frames: u32,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub sampler: Sampler,
    pub steps: u32,
    pub guidance_scale: f32,
    /// Steps at noise levels at or under this sigma are not guided (records written before
    /// this field: 0, every step guided).
    #[serde(default)]
    pub guidance_min_sigma: f32,
    pub flow_shift: f32,
    pub chunk_latent_frames: u32,
    pub overlap_latent_frames: u32,
    pub stitch_mode: StitchMode,
    /// The overlap ramps of stitching and of sync mode's fusion (records written before this
    /// field: linear).
    #[serde(default)]
    pub blend_curve: BlendCurve,
    pub priority: Priority,
    pub model: String,
    pub temporal_factor: u32,
    pub spatial_factor: u32,
    /// Keep the chunk latents after the clip is stored (records written before this field
    /// existed read as false).
    #[serde(default)]
    pub keep_intermediates: bool,
}

/// Rounds a frame count up to the causal VAE's 1 + factor * k.
pub fn causal_frame_count(frames: u32, temporal_factor: u32) -> u32 {
    if frames <= 1 {
        return 1;
    }
    1 + (frames - 1).div_ceil(temporal_factor) * temporal_factor
}

impl RenderSpec {
    /// Validates a client's spec against the farm's models (the first is the default) and
    /// fills the defaults. `fallback_seed` is used when the client sets none.
    pub fn resolve(spec: &pb::JobSpec, models: &[ModelProfile], fallback_seed: u64) -> Result<Self, FieldError> {
        let model = if spec.model.is_empty() {
            models.first().ok_or_else(|| FieldError::new("spec.model", "the farm has no model loaded"))?
        } else {
            models.iter().find(|m| m.name == spec.model).ok_or_else(|| {
                let known: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                FieldError::new("spec.model", format!("unknown model {}: this farm serves {known:?}", quoted(&spec.model)))
            })?
        };
        let d = &model.defaults;

        let prompt = spec.prompt.trim();
        if prompt.is_empty() {
            return Err(FieldError::new("spec.prompt", "must not be empty"));
        }
        check_text("spec.prompt", &spec.prompt)?;
        check_text("spec.negative_prompt", &spec.negative_prompt)?;

        let fps = in_range("spec.fps", spec.fps.unwrap_or(d.fps), 1, MAX_FPS)?;
        let requested_frames = match spec.length {
            None => seconds_to_frames("spec.seconds", d.seconds, fps)?,
            Some(pb::job_spec::Length::Seconds(s)) => seconds_to_frames("spec.seconds", s, fps)?,
            Some(pb::job_spec::Length::Frames(f)) => in_range("spec.frames", f, 1, MAX_FRAMES)?,
        };
        let frames = causal_frame_count(requested_frames, model.temporal_factor);
        if frames > MAX_FRAMES {
            // Seconds within range can still make too many frames at a high fps: name the field
            // the client set.
            let field = if matches!(spec.length, Some(pb::job_spec::Length::Frames(_))) { "spec.frames" } else { "spec.seconds" };
            return Err(FieldError::new(field, format!("{frames} frames at {fps} fps: at most {MAX_FRAMES} frames")));
        }

        let width = side("spec.width", spec.width.unwrap_or(d.width), model)?;
        let height = side("spec.height", spec.height.unwrap_or(d.height), model)?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > model.max_pixels {
            let field = if spec.width.is_none() && spec.height.is_some() { "spec.height" } else { "spec.width" };
            return Err(FieldError::new(
                field,
                format!("{width}x{height} is {pixels} pixels a frame; model {} renders at most {}", model.name, model.max_pixels),
            ));
        }

        let sampler = if spec.sampler.is_empty() { d.sampler.as_str() } else { spec.sampler.as_str() };
        let sampler = sampler.parse::<Sampler>().map_err(|e| FieldError::new("spec.sampler", e))?;
        let steps = in_range("spec.steps", spec.steps.unwrap_or(d.steps), 1, MAX_STEPS)?;
        let guidance_scale = float_in_range("spec.guidance_scale", spec.guidance_scale.unwrap_or(d.guidance_scale), 0.0, MAX_GUIDANCE)?;
        let guidance_min_sigma =
            float_in_range("spec.guidance_min_sigma", spec.guidance_min_sigma.unwrap_or(d.guidance_min_sigma), 0.0, 1.0)?;
        let flow_shift = float_in_range("spec.flow_shift", spec.flow_shift.unwrap_or(d.flow_shift), f32::MIN_POSITIVE, MAX_FLOW_SHIFT)?;

        let chunk_latent_frames =
            in_range("spec.chunk_latent_frames", spec.chunk_latent_frames.unwrap_or(d.chunk_latent_frames), 1, MAX_CHUNK_LATENT_FRAMES)?;
        // A clip shorter than a chunk is one chunk of its own length.
        let chunk_frames = chunk_latent_frames.min(1 + (frames - 1) / model.temporal_factor);
        let chunk_tokens = u64::from(chunk_frames) * (pixels / u64::from(model.spatial_factor).pow(2));
        if chunk_tokens > model.max_chunk_tokens {
            return Err(FieldError::new(
                "spec.chunk_latent_frames",
                format!(
                    "chunks of {chunk_frames} latent frames at {width}x{height} hold {chunk_tokens} tokens; model {} takes at most {}: ask for shorter chunks or smaller frames",
                    model.name, model.max_chunk_tokens
                ),
            ));
        }
        let overlap_latent_frames = spec.overlap_latent_frames.unwrap_or(d.overlap_latent_frames.min(chunk_latent_frames - 1));
        if overlap_latent_frames >= chunk_latent_frames {
            return Err(FieldError::new(
                "spec.overlap_latent_frames",
                format!("must be smaller than chunk_latent_frames ({chunk_latent_frames}), got {overlap_latent_frames}"),
            ));
        }

        let stitch_mode = match pb::StitchMode::try_from(spec.stitch_mode) {
            Ok(pb::StitchMode::Unspecified | pb::StitchMode::Blend) => StitchMode::Blend,
            Ok(pb::StitchMode::Chain) if overlap_latent_frames == 0 => {
                return Err(FieldError::new("spec.overlap_latent_frames", "chain mode continues each chunk from the previous one's last latent frames: at least 1"));
            }
            Ok(pb::StitchMode::Chain) => StitchMode::Chain,
            // Chunks exchange latents between steps, so the sampler must carry no state across
            // them: multistep samplers (unipc) and heun's half steps would have to travel too.
            Ok(pb::StitchMode::Sync) if sampler != Sampler::Euler => {
                return Err(FieldError::new("spec.sampler", format!("sync mode steps chunks together one euler step at a time; use the euler sampler, not {sampler}")));
            }
            Ok(pb::StitchMode::Sync) => StitchMode::Sync,
            Err(_) => return Err(FieldError::new("spec.stitch_mode", format!("unknown value {}", spec.stitch_mode))),
        };
        let blend_curve = match pb::BlendCurve::try_from(spec.blend_curve) {
            Ok(pb::BlendCurve::Unspecified | pb::BlendCurve::Linear) => BlendCurve::Linear,
            Ok(pb::BlendCurve::Cosine) => BlendCurve::Cosine,
            Err(_) => return Err(FieldError::new("spec.blend_curve", format!("unknown value {}", spec.blend_curve))),
        };
        let priority = match pb::Priority::try_from(spec.priority) {
            Ok(pb::Priority::Unspecified | pb::Priority::Normal) => Priority::Normal,
            Ok(pb::Priority::Low) => Priority::Low,
            Ok(pb::Priority::High) => Priority::High,
            Err(_) => return Err(FieldError::new("spec.priority", format!("unknown value {}", spec.priority))),
        };

        Ok(Self {
            prompt: spec.prompt.clone(),
            negative_prompt: if spec.negative_prompt.is_empty() { d.negative_prompt.clone() } else { spec.negative_prompt.clone() },
            frames,
            fps,
            width,
            height,
            seed: spec.seed.unwrap_or(fallback_seed),
            sampler,
            steps,
            guidance_scale,
            guidance_min_sigma,
            flow_shift,
            chunk_latent_frames,
            overlap_latent_frames,
            stitch_mode,
            blend_curve,
            priority,
            model: model.name.clone(),
            temporal_factor: model.temporal_factor,
            spatial_factor: model.spatial_factor,
            keep_intermediates: spec.keep_intermediates,
        })
    }

    /// Latent frames of the whole clip.
    pub fn latent_frames(&self) -> u32 {
        1 + (self.frames - 1) / self.temporal_factor
    }

    pub fn duration_seconds(&self) -> f64 {
        f64::from(self.frames) / f64::from(self.fps)
    }
}

fn check_text(field: &str, text: &str) -> Result<(), FieldError> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(FieldError::new(field, format!("at most {MAX_PROMPT_BYTES} bytes, got {}", text.len())));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

fn in_range(field: &str, value: u32, min: u32, max: u32) -> Result<u32, FieldError> {
    if value < min || value > max {
        return Err(FieldError::new(field, format!("must be between {min} and {max}, got {value}")));
    }
    Ok(value)
}

fn float_in_range(field: &str, value: f32, min: f32, max: f32) -> Result<f32, FieldError> {
    if !value.is_finite() || value < min || value > max {
        return Err(FieldError::new(field, format!("must be a number between {min} and {max}, got {value}")));
    }
    Ok(value)
}

fn seconds_to_frames(field: &str, seconds: f64, fps: u32) -> Result<u32, FieldError> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > MAX_SECONDS {
        return Err(FieldError::new(field, format!("must be more than 0 and at most {MAX_SECONDS}, got {seconds}")));
    }
    Ok((seconds * f64::from(fps)).ceil().max(1.0) as u32)
}

fn side(field: &str, value: u32, model: &ModelProfile) -> Result<u32, FieldError> {
    let factor = model.spatial_factor;
    in_range(field, value, factor, MAX_SIDE)?;
    if !value.is_multiple_of(factor) {
        return Err(FieldError::new(field, format!("must be a multiple of {factor} for model {}, got {value}", model.name)));
    }
    Ok(value)
}

impl From<Sampler> for String {
    fn from(s: Sampler) -> String {
        s.to_string()
    }
}

impl From<StitchMode> for pb::StitchMode {
    fn from(m: StitchMode) -> Self {
        match m {
            StitchMode::Blend => pb::StitchMode::Blend,
            StitchMode::Sync => pb::StitchMode::Sync,
            StitchMode::Chain => pb::StitchMode::Chain,
        }
    }
}

impl From<Priority> for pb::Priority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Low => pb::Priority::Low,
            Priority::Normal => pb::Priority::Normal,
            Priority::High => pb::Priority::High,
        }
    }
}

impl From<&RenderSpec> for pb::ResolvedSpec {
    fn from(s: &RenderSpec) -> Self {
        pb::ResolvedSpec {
            prompt: s.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            frames: s.frames,
            fps: s.fps,
            width: s.width,
            height: s.height,
            seed: s.seed,
            sampler: s.sampler.to_string(),
            steps: s.steps,
            guidance_scale: s.guidance_scale,
            guidance_min_sigma: s.guidance_min_sigma,
            flow_shift: s.flow_shift,
            chunk_latent_frames: s.chunk_latent_frames,
            overlap_latent_frames: s.overlap_latent_frames,
            stitch_mode: pb::StitchMode::from(s.stitch_mode) as i32,
            blend_curve: match s.blend_curve {
                BlendCurve::Linear => pb::BlendCurve::Linear,
                BlendCurve::Cosine => pb::BlendCurve::Cosine,
            } as i32,
            priority: pb::Priority::from(s.priority) as i32,
            model: s.model.clone(),
            keep_intermediates: s.keep_intermediates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileDefaults;
    use proptest::prelude::*;

    fn profile() -> ModelProfile {
        ModelProfile {
            name: "tiny".into(),
            temporal_factor: 4,
            spatial_factor: 16,
            // No caps here; `frame_and_chunk_size_caps_are_the_models` sets its own.
            max_pixels: u64::MAX,
            max_chunk_tokens: u64::MAX,
            defaults: ProfileDefaults {
                fps: 8,
                width: 64,
                height: 64,
                seconds: 4.0,
                sampler: "euler".into(),
                steps: 20,
                guidance_scale: 4.0,
                guidance_min_sigma: 0.0,
                flow_shift: 3.0,
                chunk_latent_frames: 8,
                overlap_latent_frames: 2,
                negative_prompt: String::new(),
            },
        }
    }

    fn spec(prompt: &str) -> pb::JobSpec {
        pb::JobSpec { prompt: prompt.into(), ..Default::default() }
    }

    fn field_of(spec: pb::JobSpec) -> String {
        RenderSpec::resolve(&spec, &[profile()], 7).unwrap_err().field
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let r = RenderSpec::resolve(&spec("a red circle"), &[profile()], 7).unwrap();
        assert_eq!((r.fps, r.width, r.height, r.seed, r.steps), (8, 64, 64, 7, 20));
        assert_eq!(r.frames, 33); // 4 s at 8 fps = 32, rounded up to 1 + 4k
        assert_eq!(r.latent_frames(), 9);
        assert_eq!(r.model, "tiny");
        assert_eq!((r.stitch_mode, r.blend_curve), (StitchMode::Blend, BlendCurve::Linear));
        assert_eq!(r.priority, Priority::Normal);
    }

    /// A frame larger than the model's cap, or chunks holding more tokens than it takes, are
    /// refused (their attention would not fit), naming the field the client set.
    #[test]
    fn frame_and_chunk_size_caps_are_the_models() {
        let capped = ModelProfile { max_pixels: 256 * 256, max_chunk_tokens: 4096, ..profile() };
        let resolve = |spec: pb::JobSpec| RenderSpec::resolve(&spec, std::slice::from_ref(&capped), 0);
        assert!(resolve(pb::JobSpec { width: Some(256), height: Some(256), chunk_latent_frames: Some(16), ..spec("a") }).is_ok());
        let error = resolve(pb::JobSpec { width: Some(512), height: Some(256), ..spec("a") }).unwrap_err();
        assert_eq!((error.field.as_str(), error.reason.as_str()), ("spec.width", "512x256 is 131072 pixels a frame; model tiny renders at most 65536"));
        assert_eq!(resolve(pb::JobSpec { height: Some(2048), ..spec("a") }).unwrap_err().field, "spec.height");
        // 17 latent frames of 16 x 16 tokens: 4352.
        let long_chunks = pb::JobSpec { width: Some(256), height: Some(256), chunk_latent_frames: Some(17), ..spec("a") };
        let with_frames = |frames| pb::JobSpec { length: Some(pb::job_spec::Length::Frames(frames)), ..long_chunks.clone() };
        let error = resolve(with_frames(65)).unwrap_err();
        assert_eq!(error.field, "spec.chunk_latent_frames");
        assert!(error.reason.contains("4352 tokens") && error.reason.contains("at most 4096"), "{}", error.reason);
        // A clip shorter than a chunk holds only its own frames.
        assert!(resolve(with_frames(61)).is_ok(), "16 latent frames");
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(spec("   ")), "spec.prompt");
        assert_eq!(field_of(spec(&"x".repeat(MAX_PROMPT_BYTES + 1))), "spec.prompt");
        assert_eq!(field_of(pb::JobSpec { negative_prompt: "\u{7}".into(), ..spec("a") }), "spec.negative_prompt");
        for s in [0.0, -1.0, f64::NAN, MAX_SECONDS + 1.0] {
            assert_eq!(field_of(pb::JobSpec { length: Some(pb::job_spec::Length::Seconds(s)), ..spec("a") }), "spec.seconds");
        }
        // Each within its range, together too many frames: the length the client gave is named.
        assert_eq!(field_of(pb::JobSpec { length: Some(pb::job_spec::Length::Seconds(MAX_SECONDS)), fps: Some(30), ..spec("a") }), "spec.seconds");
        for f in [0, MAX_FRAMES + 1] {
            assert_eq!(field_of(pb::JobSpec { length: Some(pb::job_spec::Length::Frames(f)), ..spec("a") }), "spec.frames");
        }
        assert_eq!(field_of(pb::JobSpec { fps: Some(0), ..spec("a") }), "spec.fps");
        assert_eq!(field_of(pb::JobSpec { fps: Some(1000), ..spec("a") }), "spec.fps");
        assert_eq!(field_of(pb::JobSpec { width: Some(70), ..spec("a") }), "spec.width");
        assert_eq!(field_of(pb::JobSpec { height: Some(0), ..spec("a") }), "spec.height");
        assert_eq!(field_of(pb::JobSpec { steps: Some(0), ..spec("a") }), "spec.steps");
        assert_eq!(field_of(pb::JobSpec { steps: Some(MAX_STEPS + 1), ..spec("a") }), "spec.steps");
        assert_eq!(field_of(pb::JobSpec { sampler: "ddim".into(), ..spec("a") }), "spec.sampler");
        assert_eq!(field_of(pb::JobSpec { guidance_scale: Some(f32::INFINITY), ..spec("a") }), "spec.guidance_scale");
        for sigma in [-0.1, 1.5, f32::NAN] {
            assert_eq!(field_of(pb::JobSpec { guidance_min_sigma: Some(sigma), ..spec("a") }), "spec.guidance_min_sigma");
        }
        assert_eq!(field_of(pb::JobSpec { flow_shift: Some(0.0), ..spec("a") }), "spec.flow_shift");
        assert_eq!(field_of(pb::JobSpec { model: "sora".into(), ..spec("a") }), "spec.model");
        assert_eq!(
            field_of(pb::JobSpec { chunk_latent_frames: Some(4), overlap_latent_frames: Some(4), ..spec("a") }),
            "spec.overlap_latent_frames"
        );
        assert_eq!(field_of(pb::JobSpec { chunk_latent_frames: Some(0), ..spec("a") }), "spec.chunk_latent_frames");
        assert_eq!(field_of(pb::JobSpec { stitch_mode: 99, ..spec("a") }), "spec.stitch_mode");
        let chain = pb::StitchMode::Chain as i32;
        assert_eq!(field_of(pb::JobSpec { stitch_mode: chain, overlap_latent_frames: Some(0), ..spec("a") }), "spec.overlap_latent_frames");
        let sync = pb::StitchMode::Sync as i32;
        assert_eq!(field_of(pb::JobSpec { stitch_mode: sync, sampler: "unipc".into(), ..spec("a") }), "spec.sampler");
        let resolved = RenderSpec::resolve(&pb::JobSpec { stitch_mode: sync, sampler: "euler".into(), ..spec("a") }, &[profile()], 0);
        assert_eq!(resolved.expect("sync with euler").stitch_mode, StitchMode::Sync);
        assert_eq!(field_of(pb::JobSpec { blend_curve: 7, ..spec("a") }), "spec.blend_curve");
        let cosine = RenderSpec::resolve(&pb::JobSpec { blend_curve: pb::BlendCurve::Cosine as i32, ..spec("a") }, &[profile()], 0);
        assert_eq!(cosine.expect("cosine").blend_curve, BlendCurve::Cosine);
        assert_eq!(field_of(pb::JobSpec { priority: -3, ..spec("a") }), "spec.priority");
        assert!(RenderSpec::resolve(&spec("a"), &[], 0).is_err());
    }

    /// A huge value is shown by its start and its length, never whole.
    #[test]
    fn errors_quote_a_long_value_by_its_start() {
        let huge = "\u{e9}".repeat(10_000);
        let error = RenderSpec::resolve(&pb::JobSpec { model: huge.clone(), ..spec("a") }, &[profile()], 0).unwrap_err();
        assert_eq!(error.field, "spec.model");
        assert!(error.reason.len() < 200 && error.reason.contains("(20000 bytes)"), "{}", error.reason);
        let error = RenderSpec::resolve(&pb::JobSpec { sampler: huge, ..spec("a") }, &[profile()], 0).unwrap_err();
        assert!(error.reason.len() < 200 && error.reason.contains("(20000 bytes)"), "{}", error.reason);
        assert_eq!(quoted("ddpm"), "\"ddpm\"");
    }

    #[test]
    fn worker_names_are_host_names() {
        for good in ["gpu-node-3-4242", "vidfarm-worker-7d9f8b6c5-x2x9q", "w_1.local"] {
            assert_eq!(check_worker_name("name", good), Ok(()));
        }
        for (bad, says) in [("", "empty"), ("w1:drain", "not a worker name"), ("a b", "not a worker name"), ("w".repeat(300).as_str(), "at most 253")] {
            let error = check_worker_name("name", bad).unwrap_err();
            assert!(error.field == "name" && error.reason.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_small_chunk_shrinks_the_default_overlap() {
        let r = RenderSpec::resolve(&pb::JobSpec { chunk_latent_frames: Some(2), ..spec("a") }, &[profile()], 0).unwrap();
        assert_eq!(r.overlap_latent_frames, 1);
    }

    proptest! {
        #[test]
        fn frame_counts_meet_the_vae_constraint(frames in 1u32..5000, factor in 1u32..9) {
            let n = causal_frame_count(frames, factor);
            prop_assert!(n >= frames);
            prop_assert_eq!((n - 1) % factor, 0);
            prop_assert!(n - frames < factor);
        }
    }
}
