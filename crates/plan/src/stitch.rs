//! Joining chunk latents into one latent video: each chunk weighted by ramps across its
//! overlaps with its neighbours (a crossfade), then the weighted sum normalised per frame. The
//! same weights fuse the overlaps after every denoising step in sync mode ([`fuse_chunk`]).

use std::ops::Range;

use crate::chunks::ChunkPlan;
use crate::latents::{Latents, LatentsError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlendCurve {
    #[default]
    Linear,
    Cosine,
}

impl BlendCurve {
    /// Maps the position `t` in (0, 1) across an overlap to the incoming chunk's weight;
    /// `f(t) + f(1 - t) = 1`, so two chunks' weights sum to one.
    fn apply(self, t: f32) -> f32 {
        match self {
            Self::Linear => t,
            Self::Cosine => 0.5 - 0.5 * (std::f32::consts::PI * t).cos(),
        }
    }
}

/// Each chunk's weight per frame (one vector per chunk, of its length): ramps across the
/// overlaps with its neighbours, normalised so the weights of every clip frame sum to one
/// (overlaps wider than half a chunk make three chunks meet on a frame).
pub fn blend_weights(plan: &[ChunkPlan], curve: BlendCurve) -> Vec<Vec<f32>> {
    let total = plan.iter().map(|c| c.end).max().unwrap_or(0) as usize;
    let ramps: Vec<Vec<f32>> = plan
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let prev_end = i.checked_sub(1).map(|p| plan[p].end);
            let next_start = plan.get(i + 1).map(|n| n.start);
            (chunk.start..chunk.end)
                .map(|f| {
                    let mut w = 1.0;
                    if let Some(prev_end) = prev_end.filter(|&e| f < e) {
                        let overlap = (prev_end - chunk.start) as f32;
                        w *= curve.apply((f - chunk.start + 1) as f32 / (overlap + 1.0));
                    }
                    if let Some(next_start) = next_start.filter(|&s| f >= s) {
                        let overlap = (chunk.end - next_start) as f32;
                        w *= curve.apply((chunk.end - f) as f32 / (overlap + 1.0));
                    }
                    w
                })
                .collect()
        })
        .collect();
    let mut sums = vec![0.0f32; total];
    for (chunk, ramp) in plan.iter().zip(&ramps) {
        for (k, w) in ramp.iter().enumerate() {
            sums[chunk.start as usize + k] += w;
        }
    }
    plan.iter()
        .zip(ramps)
        .map(|(chunk, ramp)| ramp.iter().enumerate().map(|(k, w)| w / sums[chunk.start as usize + k]).collect())
        .collect()
}

/// Stitches chunk latents (in plan order, each `[C, chunk.len(), H, W]`) into the clip's
/// `total_frames` latent frames.
pub fn stitch(total_frames: u32, parts: &[(ChunkPlan, Latents)], curve: BlendCurve) -> Result<Latents, LatentsError> {
    let Some((_, first)) = parts.first() else {
        return Err(LatentsError::Coverage { frames: total_frames });
    };
    let [channels, _, height, width] = first.shape;
    for (chunk, latents) in parts {
        let expected = [channels, chunk.len() as usize, height, width];
        if latents.shape != expected || chunk.end > total_frames {
            return Err(LatentsError::ChunkShape { index: chunk.index, expected, got: latents.shape });
        }
    }
    let plan: Vec<ChunkPlan> = parts.iter().map(|(c, _)| *c).collect();
    let mut covered = vec![false; total_frames as usize];
    plan.iter().for_each(|c| covered[c.start as usize..c.end as usize].fill(true));
    if covered.contains(&false) {
        return Err(LatentsError::Coverage { frames: total_frames });
    }
    let mut out = Latents::zeros([channels, total_frames as usize, height, width]);
    for ((chunk, latents), weights) in parts.iter().zip(blend_weights(&plan, curve)) {
        for (local, w) in weights.into_iter().enumerate() {
            for c in 0..channels {
                let src = latents.plane(c, local);
                for (dst, s) in out.plane_mut(c, chunk.start as usize + local).iter_mut().zip(src) {
                    *dst += w * s;
                }
            }
        }
    }
    Ok(out)
}

/// Latents of the clip's frames `[start, start + latents.frames())`.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameSpan {
    pub start: u32,
    pub latents: Latents,
}

/// The frames of chunk `index` that other chunks cover too: `(head, tail)`, those shared with
/// earlier chunks and those shared with later ones (empty without overlap). In sync mode a chunk
/// publishes these after every step, and its neighbours read only them.
pub fn shared_frames(plan: &[ChunkPlan], index: u32) -> (Range<u32>, Range<u32>) {
    let i = index as usize;
    let chunk = plan[i];
    let head_end = i.checked_sub(1).map_or(chunk.start, |p| plan[p].end.max(chunk.start));
    let tail_start = plan.get(i + 1).map_or(chunk.end, |n| n.start.min(chunk.end));
    (chunk.start..head_end, tail_start..chunk.end)
}

/// Sync mode's fusion after a denoising step: chunk `index`'s latents with every frame replaced
/// by the blend-weighted mean of all chunks covering it, with the weights [`stitch`] uses (so
/// fusing every chunk and stitching gives the stitch of the unfused chunks). `own` is the chunk's
/// latents; `shared` holds, per other chunk, a span of its frames covering what it shares with
/// this one (the head or tail of [`shared_frames`]).
pub fn fuse_chunk(
    plan: &[ChunkPlan],
    index: u32,
    own: &Latents,
    shared: &[(u32, FrameSpan)],
    curve: BlendCurve,
) -> Result<Latents, LatentsError> {
    let chunk = plan[index as usize];
    let [channels, frames, height, width] = own.shape;
    if frames != chunk.len() as usize {
        return Err(LatentsError::ChunkShape { index, expected: [channels, chunk.len() as usize, height, width], got: own.shape });
    }
    for (other, span) in shared {
        let [c, _, h, w] = span.latents.shape;
        if [c, h, w] != [channels, height, width] {
            return Err(LatentsError::ChunkShape { index: *other, expected: [channels, span.latents.frames(), height, width], got: span.latents.shape });
        }
    }
    let weights = blend_weights(plan, curve);
    let mut out = Latents::zeros(own.shape);
    for frame in chunk.start..chunk.end {
        let local = (frame - chunk.start) as usize;
        for (j, other) in plan.iter().enumerate().filter(|(_, c)| c.start <= frame && frame < c.end) {
            let w = weights[j][(frame - other.start) as usize];
            let (source, at) = if j == index as usize {
                (own, local)
            } else {
                let span = shared
                    .iter()
                    .find(|(c, span)| *c == other.index && span.start <= frame && frame < span.start + span.latents.frames() as u32)
                    .map(|(_, span)| span)
                    .ok_or(LatentsError::MissingShared { chunk: other.index, frame })?;
                (&span.latents, (frame - span.start) as usize)
            };
            for c in 0..channels {
                for (dst, s) in out.plane_mut(c, local).iter_mut().zip(source.plane(c, at)) {
                    *dst += w * s;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::plan_chunks;
    use proptest::prelude::*;

    fn full_weights(plan: &[ChunkPlan], total: u32, curve: BlendCurve) -> Vec<Vec<f32>> {
        plan.iter()
            .zip(blend_weights(plan, curve))
            .map(|(c, w)| {
                let mut full = vec![0.0; total as usize];
                full[c.start as usize..c.end as usize].copy_from_slice(&w);
                full
            })
            .collect()
    }

    proptest! {
        #[test]
        fn weights_sum_to_one_and_overlaps_are_symmetric(total in 1u32..200, chunk in 1u32..24, frac in 0.0f64..1.0, cosine: bool) {
            let curve = if cosine { BlendCurve::Cosine } else { BlendCurve::Linear };
            let overlap = ((chunk as f64 - 1.0) * frac) as u32;
            let plan = plan_chunks(total, chunk, overlap).unwrap();
            let weights = full_weights(&plan, total, curve);
            for f in 0..total as usize {
                let sum: f32 = weights.iter().map(|w| w[f]).sum();
                prop_assert!((sum - 1.0).abs() < 1e-5, "frame {} sums to {}", f, sum);
            }
            // Where only two chunks meet on a frame, their ramps mirror each other.
            let two_way = 2 * overlap <= chunk;
            for (i, pair) in plan.windows(2).enumerate().filter(|_| two_way) {
                let (a, b) = (&weights[i], &weights[i + 1]);
                let o = (pair[0].end - pair[1].start) as usize;
                let s = pair[1].start as usize;
                for j in 0..o {
                    prop_assert!((a[s + j] - b[s + o - 1 - j]).abs() < 1e-5, "ramps mirror each other");
                }
            }
        }
    }

    #[test]
    fn stitching_constant_chunks_gives_the_constant_and_crossfades_between_them() {
        let plan = plan_chunks(10, 6, 2).unwrap();
        let parts: Vec<_> = plan
            .iter()
            .map(|c| (*c, Latents::new([1, c.len() as usize, 1, 1], vec![c.index as f32; c.len() as usize]).unwrap()))
            .collect();
        let out = stitch(10, &parts, BlendCurve::Linear).unwrap();
        assert_eq!(out.shape, [1, 10, 1, 1]);
        let v: Vec<f32> = out.data.clone();
        assert_eq!(&v[..4], &[0.0; 4]);
        assert!((v[4] - 1.0 / 3.0).abs() < 1e-6 && (v[5] - 2.0 / 3.0).abs() < 1e-6, "{v:?}");
        assert_eq!(&v[6..], &[1.0; 4]);
    }

    /// Random latents per chunk of a plan, `[2, len, 1, 2]`.
    fn random_parts(plan: &[ChunkPlan], seed: u64) -> Vec<(ChunkPlan, Latents)> {
        plan.iter()
            .map(|c| {
                let shape = [2, c.len() as usize, 1, 2];
                (*c, Latents::new(shape, crate::noise::gaussian(seed + u64::from(c.index), shape.iter().product())).unwrap())
            })
            .collect()
    }

    /// What a sync worker reads for chunk `index`: the neighbours' head or tail frames.
    fn neighbours(plan: &[ChunkPlan], parts: &[(ChunkPlan, Latents)], index: u32) -> Vec<(u32, FrameSpan)> {
        parts
            .iter()
            .filter(|(c, _)| c.index != index)
            .map(|(c, latents)| {
                let (head, tail) = shared_frames(plan, c.index);
                let span = if c.index < index { tail } else { head };
                let at = (span.start - c.start) as usize;
                (c.index, FrameSpan { start: span.start, latents: latents.slice_frames(at, span.len()) })
            })
            .collect()
    }

    proptest! {
        /// Fusing a chunk from the other chunks' shared frames gives the stitched clip's frames,
        /// also where three chunks meet on a frame.
        #[test]
        fn a_fused_chunk_is_its_slice_of_the_stitched_clip(total in 1u32..60, chunk in 1u32..12, frac in 0.0f64..1.0, seed in 0u64..1000) {
            let overlap = ((chunk as f64 - 1.0) * frac) as u32;
            let plan = plan_chunks(total, chunk, overlap).unwrap();
            let parts = random_parts(&plan, seed);
            let clip = stitch(total, &parts, BlendCurve::Linear).unwrap();
            let mut fused_parts = Vec::new();
            for (c, latents) in &parts {
                let fused = fuse_chunk(&plan, c.index, latents, &neighbours(&plan, &parts, c.index), BlendCurve::Linear).unwrap();
                let expected = clip.slice_frames(c.start as usize, c.len() as usize);
                let worst = fused.data.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                prop_assert!(worst < 1e-5, "chunk {} differs by {}", c.index, worst);
                fused_parts.push((*c, fused));
            }
            // Fusing again changes nothing: the chunks already agree on their overlaps.
            let again = stitch(total, &fused_parts, BlendCurve::Linear).unwrap();
            let worst = again.data.iter().zip(&clip.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            prop_assert!(worst < 1e-5);
        }
    }

    #[test]
    fn fusing_without_a_neighbours_frames_is_an_error() {
        let plan = plan_chunks(10, 6, 2).unwrap();
        let parts = random_parts(&plan, 1);
        assert_eq!(shared_frames(&plan, 0), (0..0, 4..6));
        assert_eq!(shared_frames(&plan, 1), (4..6, 10..10));
        let result = fuse_chunk(&plan, 1, &parts[1].1, &[], BlendCurve::Linear);
        assert_eq!(result, Err(LatentsError::MissingShared { chunk: 0, frame: 4 }));
    }

    #[test]
    fn mis_shaped_chunks_are_errors() {
        let plan = plan_chunks(10, 6, 2).unwrap();
        let parts = vec![(plan[0], Latents::zeros([1, 5, 1, 1])), (plan[1], Latents::zeros([1, 6, 1, 1]))];
        assert!(matches!(stitch(10, &parts, BlendCurve::Linear), Err(LatentsError::ChunkShape { index: 0, .. })));
        assert!(matches!(stitch(10, &[], BlendCurve::Linear), Err(LatentsError::Coverage { .. })));
    }
}
