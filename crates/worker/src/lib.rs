//! The worker: leases tasks from the queue and does the heavy work. A denoise task turns one
//! chunk's noise into latents and stores them; the assemble task stitches every chunk's
//! latents, decodes them with the VAE, encodes the MP4 and stores the clip. While it works it
//! renews its lease, reports progress, and stops between denoising steps on cancel.

pub mod render;
pub mod worker;

pub use worker::{Worker, WorkerConfig, WorkerError};
