//! A latent video in memory: `[channels, frames, height, width]`, row-major f32.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latents {
    /// `[channels, frames, height, width]`.
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LatentsError {
    #[error("latents of shape {shape:?} need {expected} values, got {got}")]
    Length { shape: [usize; 4], expected: usize, got: usize },
    #[error("chunk {index} has shape {got:?}, expected {expected:?}")]
    ChunkShape { index: u32, expected: [usize; 4], got: [usize; 4] },
    #[error("chunks do not cover the clip's {frames} latent frames")]
    Coverage { frames: u32 },
    #[error("fusing needs chunk {chunk}'s latent frame {frame}, which was not given")]
    MissingShared { chunk: u32, frame: u32 },
}

impl Latents {
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Self, LatentsError> {
        let expected = shape.iter().product();
        if data.len() != expected {
            return Err(LatentsError::Length { shape, expected, got: data.len() });
        }
        Ok(Self { shape, data })
    }

    pub fn zeros(shape: [usize; 4]) -> Self {
        Self { shape, data: vec![0.0; shape.iter().product()] }
    }

    pub fn frames(&self) -> usize {
        self.shape[1]
    }

    /// Values of one channel and frame.
    pub fn plane(&self, channel: usize, frame: usize) -> &[f32] {
        let plane = self.shape[2] * self.shape[3];
        let at = (channel * self.shape[1] + frame) * plane;
        &self.data[at..at + plane]
    }

    pub fn plane_mut(&mut self, channel: usize, frame: usize) -> &mut [f32] {
        let plane = self.shape[2] * self.shape[3];
        let at = (channel * self.shape[1] + frame) * plane;
        &mut self.data[at..at + plane]
    }

    /// Frames `[start, start + count)` as latents of their own.
    pub fn slice_frames(&self, start: usize, count: usize) -> Latents {
        let [channels, frames, height, width] = self.shape;
        assert!(start + count <= frames, "frames {start}..{} of {frames}", start + count);
        let plane = height * width;
        let mut data = Vec::with_capacity(channels * count * plane);
        for c in 0..channels {
            let at = (c * frames + start) * plane;
            data.extend_from_slice(&self.data[at..at + count * plane]);
        }
        Latents { shape: [channels, count, height, width], data }
    }
}
