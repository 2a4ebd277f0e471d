//! Deterministic Gaussian noise from a seed, identical on every machine and backend: the
//! farm's outputs must not depend on which worker rendered a chunk.

use crate::chunks::ChunkPlan;
use crate::latents::Latents;

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The starting noise of latent frame `frame` of a job seeded `job_seed`: `len` values (one
/// frame of every channel). Noise belongs to the clip's frames, not to chunks, so every chunk
/// covering a frame starts it from the same noise (FreeNoise), and neighbours agree where they
/// overlap.
pub fn frame_noise(job_seed: u64, frame: u32, len: usize) -> Vec<f32> {
    gaussian(splitmix64(job_seed ^ splitmix64(u64::from(frame).wrapping_add(0x5eed))), len)
}

/// A chunk's starting noise, `[channels, chunk frames, height, width]`, from its frames' noise.
pub fn chunk_noise(job_seed: u64, chunk: &ChunkPlan, channels: usize, height: usize, width: usize) -> Latents {
    let plane = height * width;
    let frames = chunk.len() as usize;
    let mut latents = Latents::zeros([channels, frames, height, width]);
    for (local, frame) in (chunk.start..chunk.end).enumerate() {
        let values = frame_noise(job_seed, frame, channels * plane);
        for (c, values) in values.chunks_exact(plane).enumerate() {
            latents.plane_mut(c, local).copy_from_slice(values);
        }
    }
    latents
}

/// `len` standard-normal samples from `seed` (SplitMix64 stream, Box-Muller transform).
pub fn gaussian(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next_unit = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        // 53 random bits in (0, 1]: never 0, so the logarithm is finite.
        ((splitmix64(state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let (u1, u2) = (next_unit(), next_unit());
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_standard_normal() {
        let a = gaussian(42, 100_001);
        assert_eq!(a, gaussian(42, 100_001));
        assert_ne!(a[..16], gaussian(43, 16)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(a.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn overlapping_chunks_share_their_frames_noise() {
        let plan = crate::plan_chunks(10, 6, 2).unwrap();
        let (a, b) = (chunk_noise(9, &plan[0], 3, 2, 2), chunk_noise(9, &plan[1], 3, 2, 2));
        assert_eq!(a.slice_frames(4, 2), b.slice_frames(0, 2), "frames 4 and 5 are shared");
        assert_ne!(a.slice_frames(0, 1), b.slice_frames(2, 1), "other frames differ");
        assert_ne!(a, chunk_noise(10, &plan[0], 3, 2, 2), "another seed, other noise");
    }
}
