//! Pure planning logic, no I/O: how a clip's latent frames split into overlapping chunks,
//! the deterministic seed and noise of each chunk, and how chunk latents stitch back together.

pub mod chunks;
pub mod latents;
pub mod noise;
pub mod stitch;

pub use chunks::{ChunkPlan, PlanError, plan_chunks, seam_frames};
pub use latents::{Latents, LatentsError};
pub use stitch::{BlendCurve, FrameSpan, fuse_chunk, shared_frames, stitch};
