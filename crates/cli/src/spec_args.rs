//! The job-spec flags shared by `render` and `submit`.

use clap::{Args, ValueEnum};
use vidfarm_api::pb;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PriorityArg {
    Low,
    Normal,
    High,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StitchArg {
    Blend,
    Sync,
    Chain,
}

impl From<StitchArg> for pb::StitchMode {
    fn from(stitch: StitchArg) -> Self {
        match stitch {
            StitchArg::Blend => pb::StitchMode::Blend,
            StitchArg::Sync => pb::StitchMode::Sync,
            StitchArg::Chain => pb::StitchMode::Chain,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BlendCurveArg {
    Linear,
    Cosine,
}

impl From<BlendCurveArg> for pb::BlendCurve {
    fn from(curve: BlendCurveArg) -> Self {
        match curve {
            BlendCurveArg::Linear => pb::BlendCurve::Linear,
            BlendCurveArg::Cosine => pb::BlendCurve::Cosine,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// What the clip shows.
    pub prompt: String,
    /// What it should not show (guidance pushes away from it).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Length in seconds (frames = seconds x fps, rounded up to 1 + 4k).
    #[arg(long, conflicts_with = "frames")]
    pub seconds: Option<f64>,
    /// Length in frames (rounded up to 1 + 4k).
    #[arg(long)]
    pub frames: Option<u32>,
    #[arg(long)]
    pub fps: Option<u32>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// euler, heun or unipc.
    #[arg(long)]
    pub sampler: Option<String>,
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Guide only the steps above this noise level (0 to 1; 0 guides every step).
    #[arg(long)]
    pub guidance_min_sigma: Option<f32>,
    #[arg(long)]
    pub flow_shift: Option<f32>,
    /// Chunk length in latent frames (one latent frame is 4 video frames).
    #[arg(long)]
    pub chunk: Option<u32>,
    /// Latent frames shared by neighbouring chunks.
    #[arg(long)]
    pub overlap: Option<u32>,
    #[arg(long, value_enum)]
    pub stitch: Option<StitchArg>,
    /// The overlap ramps of stitching and of sync mode's fusion [default: linear].
    #[arg(long, value_enum)]
    pub blend_curve: Option<BlendCurveArg>,
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Model name; the farm's default when unset.
    #[arg(long = "model-name")]
    pub model_name: Option<String>,
    /// Keep the chunk latents in the store after the clip is made (deleted by default).
    #[arg(long)]
    pub keep_intermediates: bool,
}

impl SpecArgs {
    pub fn to_pb(&self) -> pb::JobSpec {
        let length = match (self.seconds, self.frames) {
            (Some(s), _) => Some(pb::job_spec::Length::Seconds(s)),
            (None, Some(f)) => Some(pb::job_spec::Length::Frames(f)),
            (None, None) => None,
        };
        pb::JobSpec {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            length,
            fps: self.fps,
            width: self.width,
            height: self.height,
            seed: self.seed,
            sampler: self.sampler.clone().unwrap_or_default(),
            steps: self.steps,
            guidance_scale: self.guidance,
            guidance_min_sigma: self.guidance_min_sigma,
            flow_shift: self.flow_shift,
            chunk_latent_frames: self.chunk,
            overlap_latent_frames: self.overlap,
            stitch_mode: self.stitch.map_or(pb::StitchMode::Unspecified, pb::StitchMode::from) as i32,
            blend_curve: self.blend_curve.map_or(pb::BlendCurve::Unspecified, pb::BlendCurve::from) as i32,
            priority: match self.priority {
                None => pb::Priority::Unspecified,
                Some(PriorityArg::Low) => pb::Priority::Low,
                Some(PriorityArg::Normal) => pb::Priority::Normal,
                Some(PriorityArg::High) => pb::Priority::High,
            } as i32,
            model: self.model_name.clone().unwrap_or_default(),
            keep_intermediates: self.keep_intermediates,
        }
    }
}
