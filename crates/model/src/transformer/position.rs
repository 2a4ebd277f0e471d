//! vidfarm's extension to Wan: each token's place in the frame and in the whole clip, as Fourier
//! features that `position_embedding` (a linear layer) adds to the patch tokens.
//!
//! Why: Wan's rotary attention sees only relative positions, so from pure noise (sigma 1, where
//! sampling starts) a token cannot tell the middle of the frame from its edge, nor the start of a
//! clip from its end: a caption cannot place anything. Rows and columns are normalised to [0, 1]
//! (any resolution), and time is the place in the clip, not in the chunk, so a chunk denoised on
//! its own knows which part of the clip's motion it shows.

/// Where a sample's latent frames sit in the clip: its first frame is latent frame `start` of a
/// clip of `clip_frames` latent frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClipSpan {
    pub start: usize,
    pub clip_frames: usize,
}

impl ClipSpan {
    /// A sample that is a whole clip of `frames` latent frames.
    pub fn whole(frames: usize) -> Self {
        Self { start: 0, clip_frames: frames }
    }

    /// The place in the clip, in [0, 1], of latent frame `frame` of the sample (fractional frames
    /// for the middle of a temporal patch).
    fn time(&self, frame: f64) -> f64 {
        let last = self.clip_frames.saturating_sub(1).max(1) as f64;
        (self.start as f64 + frame) / last
    }
}

/// Features per token for `frequencies` frequencies: sin and cos of `pi * 2^k * coordinate` for
/// k below `frequencies`, for time, row and column.
pub fn feature_count(frequencies: usize) -> usize {
    3 * 2 * frequencies
}

/// `[spans.len() * tokens, feature_count]` values, tokens in the transformer's order (frame, row,
/// column) over the patch `grid`; `patch_frames` latent frames per temporal patch.
pub fn position_features(spans: &[ClipSpan], grid: [usize; 3], patch_frames: usize, frequencies: usize) -> Vec<f32> {
    let [frames, rows, columns] = grid;
    let mut values = Vec::with_capacity(spans.len() * frames * rows * columns * feature_count(frequencies));
    let encode = |values: &mut Vec<f32>, coordinate: f64| {
        for k in 0..frequencies {
            let angle = std::f64::consts::PI * f64::from(1u32 << k) * coordinate;
            values.push(angle.sin() as f32);
            values.push(angle.cos() as f32);
        }
    };
    for span in spans {
        for f in 0..frames {
            let time = span.time((f * patch_frames) as f64 + (patch_frames as f64 - 1.0) / 2.0);
            for r in 0..rows {
                for c in 0..columns {
                    encode(&mut values, time);
                    encode(&mut values, (r as f64 + 0.5) / rows as f64);
                    encode(&mut values, (c as f64 + 0.5) / columns as f64);
                }
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_name_the_place_in_the_clip_not_in_the_chunk() {
        let grid = [2, 2, 3];
        let per_token = feature_count(2);
        let whole = position_features(&[ClipSpan::whole(5)], [5, 2, 3], 1, 2);
        let tail = position_features(&[ClipSpan { start: 3, clip_frames: 5 }], grid, 1, 2);
        assert_eq!(tail.len(), 2 * 2 * 3 * per_token);
        // The chunk's frames 0 and 1 are the clip's frames 3 and 4.
        let frame = |values: &[f32], f: usize| values[f * 6 * per_token..(f + 1) * 6 * per_token].to_vec();
        assert_eq!(frame(&tail, 0), frame(&whole, 3));
        assert_eq!(frame(&tail, 1), frame(&whole, 4));
        assert_ne!(frame(&whole, 0), frame(&whole, 4));
        // Row and column features differ across a frame; the first is sin(pi * time) = 0 at the start.
        let token = |values: &[f32], t: usize| values[t * per_token..(t + 1) * per_token].to_vec();
        assert_ne!(token(&whole, 0), token(&whole, 1));
        assert_ne!(token(&whole, 0), token(&whole, 3));
        assert_eq!(whole[0], 0.0);
        assert_eq!(whole[1], 1.0);
    }

    #[test]
    fn a_one_frame_clip_sits_at_its_start() {
        let values = position_features(&[ClipSpan::whole(1)], [1, 1, 1], 1, 1);
        assert_eq!(&values[..2], &[0.0, 1.0]);
        assert_eq!(values.len(), feature_count(1));
    }
}
