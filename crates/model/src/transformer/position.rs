//! vidfarm's extension to Wan: each token's place in the frame and in the whole clip, as Fourier
//! features that `position_embedding` (a linear layer) adds to the patch tokens.
//!
//! Why: Wan's rotary attention sees only relative positions, so from pure noise (sigma 1, where
//! sampling starts) a token cannot tell the middle of the frame from its edge, nor the start of a
//! clip from its end: a caption cannot place anything. Rows and columns are normalised to [0, 1]
//! (any resolution), and time is the place in the clip, not in the chunk, so a chunk denoised on
//! its own knows which part of the clip's motion it shows.
//!
//! With `oblique` set, features of `column -+ time` and `row -+ time` follow: an object moving at a
//! constant pace across the frame keeps one of those coordinates fixed, so "inside the object
//! moving right" is a function of a single feature set (`column - time`) gated by the caption,
//! which one feed-forward layer can compute; from row, column and time alone it needs products.

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

/// Which position features a model adds: sin and cos of `pi * 2^k * coordinate` for k below
/// `frequencies`, for time, row and column, then (`oblique`) for column - time, column + time,
/// row - time and row + time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositionFeatures {
    pub frequencies: usize,
    pub oblique: bool,
}

impl PositionFeatures {
    /// Values per token.
    pub fn count(&self) -> usize {
        let coordinates = if self.oblique { 7 } else { 3 };
        coordinates * 2 * self.frequencies
    }

    /// `[spans.len() * tokens, count]` values, tokens in the transformer's order (frame, row,
    /// column) over the patch `grid`; `patch_frames` latent frames per temporal patch.
    pub fn values(&self, spans: &[ClipSpan], grid: [usize; 3], patch_frames: usize) -> Vec<f32> {
        let [frames, rows, columns] = grid;
        let mut values = Vec::with_capacity(spans.len() * frames * rows * columns * self.count());
        let encode = |values: &mut Vec<f32>, coordinate: f64| {
            for k in 0..self.frequencies {
                let angle = std::f64::consts::PI * f64::from(1u32 << k) * coordinate;
                values.push(angle.sin() as f32);
                values.push(angle.cos() as f32);
            }
        };
        for span in spans {
            for f in 0..frames {
                let time = span.time((f * patch_frames) as f64 + (patch_frames as f64 - 1.0) / 2.0);
                for r in 0..rows {
                    let row = (r as f64 + 0.5) / rows as f64;
                    for c in 0..columns {
                        let column = (c as f64 + 0.5) / columns as f64;
                        encode(&mut values, time);
                        encode(&mut values, row);
                        encode(&mut values, column);
                        if self.oblique {
                            for coordinate in [column - time, column + time, row - time, row + time] {
                                encode(&mut values, coordinate);
                            }
                        }
                    }
                }
            }
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_name_the_place_in_the_clip_not_in_the_chunk() {
        let grid = [2, 2, 3];
        let features = PositionFeatures { frequencies: 2, oblique: false };
        let per_token = features.count();
        let whole = features.values(&[ClipSpan::whole(5)], [5, 2, 3], 1);
        let tail = features.values(&[ClipSpan { start: 3, clip_frames: 5 }], grid, 1);
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
        let features = PositionFeatures { frequencies: 1, oblique: false };
        let values = features.values(&[ClipSpan::whole(1)], [1, 1, 1], 1);
        assert_eq!(&values[..2], &[0.0, 1.0]);
        assert_eq!(values.len(), features.count());
    }

    #[test]
    fn oblique_features_follow_the_plain_ones_and_stay_fixed_along_a_motion() {
        let plain = PositionFeatures { frequencies: 2, oblique: false };
        let oblique = PositionFeatures { frequencies: 2, oblique: true };
        assert_eq!(oblique.count(), 7 * 4);
        // 6 latent frames, 1 row, 5 columns: time and column both step by a fifth.
        let grid = [6, 1, 5];
        let a = plain.values(&[ClipSpan::whole(6)], grid, 1);
        let b = oblique.values(&[ClipSpan::whole(6)], grid, 1);
        let token = |values: &[f32], per: usize, f: usize, c: usize| values[(f * 5 + c) * per..(f * 5 + c + 1) * per].to_vec();
        for (f, c) in [(0, 0), (2, 3), (4, 1)] {
            assert_eq!(token(&a, 12, f, c), token(&b, 28, f, c)[..12]);
        }
        // Moving right one column per frame keeps column - time (the first oblique set), and only it.
        let along = |f: usize| token(&b, 28, f, f);
        let minus = 12..16;
        assert!(along(0)[minus.clone()].iter().zip(&along(3)[minus]).all(|(x, y)| (x - y).abs() < 1e-6));
        assert!(along(0)[16..20].iter().zip(&along(3)[16..20]).any(|(x, y)| (x - y).abs() > 0.1));
    }
}
