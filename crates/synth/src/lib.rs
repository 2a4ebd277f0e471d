//! Synthetic videos for training and evaluating vidfarm's own model: coloured shapes moving on
//! plain backgrounds, each clip with the caption built from its attributes, all made
//! deterministically from a seed; and the detector that reads those attributes back from frames,
//! to score how well a rendered clip follows its prompt. Pure logic: no I/O, no tensors.

pub mod attributes;
pub mod detect;
pub mod metrics;
pub mod render;
pub mod scene;
mod rng;

pub use attributes::{Colour, Motion, Shape};
pub use detect::{DetectedObject, Detection, DetectorConfig, detect};
pub use metrics::{Adherence, FrameChanges, edge_pixels, mean_abs_frame_difference, score, seam_ratio};
pub use render::{Clip, ClipSettings, render_clip};
pub use scene::{ObjectSpec, SceneSpec, Split};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SynthError {
    #[error("clip size {width}x{height}: each side needs at least {min} pixels", min = render::MIN_SIDE)]
    TooSmall { width: usize, height: usize },
    #[error("a clip needs at least one frame")]
    NoFrames,
    #[error("a scene has one or two objects, got {0}")]
    ObjectCount(usize),
    #[error("scene: {0}")]
    Scene(String),
    #[error("caption {caption:?}: {reason}")]
    Caption { caption: String, reason: String },
    #[error("frames: {0}")]
    Frames(String),
}
