//! Splitting a clip's latent frames into overlapping chunks.

use serde::{Deserialize, Serialize};

/// One chunk: latent frames `[start, end)` of the clip. Its noise is its frames' noise
/// ([`crate::noise::chunk_noise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlan {
    pub index: u32,
    pub start: u32,
    pub end: u32,
}

impl ChunkPlan {
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("a clip needs at least one latent frame")]
    NoFrames,
    #[error("chunk length must be positive")]
    EmptyChunk,
    #[error("overlap ({overlap}) must be smaller than the chunk length ({chunk})")]
    OverlapTooLarge { chunk: u32, overlap: u32 },
}

/// Plans chunks of at most `chunk` latent frames, neighbours sharing exactly `overlap` frames.
///
/// Chunks start every `chunk - overlap` frames; the last one ends at the clip's end and may be
/// shorter, but always longer than the overlap, so every chunk contributes frames of its own.
pub fn plan_chunks(latent_frames: u32, chunk: u32, overlap: u32) -> Result<Vec<ChunkPlan>, PlanError> {
    if latent_frames == 0 {
        return Err(PlanError::NoFrames);
    }
    if chunk == 0 {
        return Err(PlanError::EmptyChunk);
    }
    if overlap >= chunk {
        return Err(PlanError::OverlapTooLarge { chunk, overlap });
    }
    let stride = chunk - overlap;
    let count = 1 + latent_frames.saturating_sub(chunk).div_ceil(stride);
    Ok((0..count)
        .map(|index| {
            let start = index * stride;
            ChunkPlan { index, start, end: (start + chunk).min(latent_frames) }
        })
        .collect())
}

/// The video frames where one chunk hands over to the next: the middle of each overlap (the
/// crossfade's centre), mapped from latent frames to the first video frame each decodes to
/// with a causal VAE of `temporal_factor` (latent 0 is video frame 0, latent k is 1 + f (k - 1)).
pub fn seam_frames(chunks: &[ChunkPlan], temporal_factor: u32) -> Vec<usize> {
    chunks
        .windows(2)
        .map(|pair| pair[1].start + pair[0].end.saturating_sub(pair[1].start) / 2)
        .filter(|&latent| latent > 0)
        .map(|latent| (1 + temporal_factor * (latent - 1)) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_short_clip_is_one_chunk() {
        let plan = plan_chunks(5, 8, 2).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].start, plan[0].end), (0, 5));
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert_eq!(plan_chunks(0, 8, 2), Err(PlanError::NoFrames));
        assert_eq!(plan_chunks(9, 0, 0), Err(PlanError::EmptyChunk));
        assert_eq!(plan_chunks(9, 4, 4), Err(PlanError::OverlapTooLarge { chunk: 4, overlap: 4 }));
    }

    #[test]
    fn known_plan() {
        let plan = plan_chunks(20, 8, 2).unwrap();
        let spans: Vec<(u32, u32)> = plan.iter().map(|c| (c.start, c.end)).collect();
        assert_eq!(spans, vec![(0, 8), (6, 14), (12, 20)]);
    }

    proptest! {
        #[test]
        fn plans_cover_every_frame_with_exact_overlaps(total in 1u32..400, chunk in 1u32..40, overlap_frac in 0.0f64..1.0) {
            let overlap = ((chunk as f64 - 1.0) * overlap_frac) as u32;
            let plan = plan_chunks(total, chunk, overlap).unwrap();
            prop_assert_eq!(plan[0].start, 0);
            prop_assert_eq!(plan.last().unwrap().end, total);
            for c in &plan {
                prop_assert!(c.len() >= 1 && c.len() <= chunk);
            }
            for pair in plan.windows(2) {
                prop_assert_eq!(pair[0].end - pair[1].start, overlap, "neighbours share exactly the overlap");
                prop_assert!(pair[1].len() > overlap, "every chunk has frames of its own");
                prop_assert_eq!(pair[1].index, pair[0].index + 1);
            }
            prop_assert_eq!(&plan, &plan_chunks(total, chunk, overlap).unwrap());
        }
    }

    #[test]
    fn seams_sit_mid_overlap_in_video_frames() {
        // 9 latent frames in chunks of 6 sharing 2: chunks [0, 6) and [4, 9); the crossfade's
        // middle is latent frame 5, whose first video frame is 1 + 4 * 4 = 17.
        assert_eq!(seam_frames(&plan_chunks(9, 6, 2).unwrap(), 4), vec![17]);
        assert!(seam_frames(&plan_chunks(5, 6, 2).unwrap(), 4).is_empty());
        // Without overlap the seam is the first frame of the next chunk: latent 6, video 21.
        assert_eq!(seam_frames(&plan_chunks(12, 6, 0).unwrap(), 4), vec![21]);
    }
}
