//! Training examples from `vidfarm-synth`, drawn from `(seed, step, item)` alone, so any step of a
//! run can be rebuilt exactly (that is what makes resuming reproducible): video crops for the VAE,
//! latent windows with noise levels and captions for the DiT. Pure logic: no tensors.

use serde::{Deserialize, Serialize};
use vidfarm_synth::{ClipSettings, SceneSpec, Split, edge_pixels, render_clip};

use crate::error::TrainError;
use crate::run::{DitRecipe, SigmaSampling};

/// SplitMix64: tiny, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator for one purpose of one item of one step; `purpose` keeps streams apart.
    pub fn for_item(seed: u64, purpose: Purpose, step: usize, item: usize) -> Self {
        let mut rng = Self { state: seed };
        for word in [purpose as u64, step as u64, item as u64] {
            rng.state ^= word;
            rng.next_u64();
        }
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in the open interval `(0, 1)`.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    pub fn normals(&mut self, count: usize) -> Vec<f32> {
        (0..count).map(|_| self.normal()).collect()
    }
}

/// The independent random streams of a run.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    VaeClip = 1,
    VaeNoise = 2,
    DitExample = 3,
    /// The clips pre-encoded for the DiT (`step` is 0, `item` the clip's index).
    DitClip = 4,
    /// The clips whose latents set the VAE's `latents_mean` / `latents_std`.
    StatisticsClip = 5,
}

/// The synthetic clips trained on: the model's native size and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipShape {
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub fps: u32,
}

impl ClipShape {
    fn settings(self) -> ClipSettings {
        ClipSettings { frames: self.frames, width: self.width, height: self.height, fps: self.fps }
    }
}

/// A training-split scene and the seed its clip is rendered with.
pub fn training_scene(rng: &mut Rng) -> (u64, SceneSpec) {
    let scene_seed = rng.next_u64();
    (scene_seed, SceneSpec::sample(scene_seed, Split::Train))
}

/// A training-split scene, its clip `[3, frames, height, width]` in [-1, 1], where its
/// objects are, `[frames, height, width]`: 1 on pixels that are not the background, else 0, and
/// where its colour boundaries are, likewise ([`edge_pixels`]).
#[derive(Clone, Debug)]
pub struct TrainingClip {
    pub scene: SceneSpec,
    pub pixels: Vec<f32>,
    pub objects: Vec<f32>,
    pub edges: Vec<f32>,
}

pub fn training_clip(rng: &mut Rng, shape: ClipShape) -> Result<TrainingClip, TrainError> {
    let (scene_seed, scene) = training_scene(rng);
    let clip = render_clip(&scene, &shape.settings(), scene_seed)?;
    let background = scene.background.rgb();
    let objects = clip.frames.iter().flat_map(|frame| frame.chunks_exact(3).map(|rgb| f32::from(u8::from(rgb != &background[..])))).collect();
    let edges = edge_pixels(&clip).into_iter().map(|edge| f32::from(u8::from(edge))).collect();
    Ok(TrainingClip { pixels: clip.to_planar_signed(), objects, edges, scene })
}

/// Where a training clip's objects are on the latent grid: `[frames, height, width]` of 1 where
/// any pixel the latent value encodes shows an object (not the background), else 0. Latent frame 0
/// encodes pixel frame 0, latent frame k > 0 frames `time (k - 1) + 1 ..= time k`; a latent pixel
/// a `space x space` block.
pub fn object_mask(rng: &mut Rng, shape: ClipShape, time: usize, space: usize) -> Result<Vec<f32>, TrainError> {
    let objects = training_clip(rng, shape)?.objects;
    let (frames, height, width) = (1 + (shape.frames - 1) / time, shape.height / space, shape.width / space);
    let mut mask = vec![0.0; frames * height * width];
    for (f, frame) in objects.chunks_exact(shape.height * shape.width).enumerate() {
        let latent_frame = f.div_ceil(time);
        for (p, &object) in frame.iter().enumerate() {
            let (y, x) = (p / shape.width / space, p % shape.width / space);
            if object > 0.0 && y < height && x < width {
                mask[(latent_frame * height + y) * width + x] = 1.0;
            }
        }
    }
    Ok(mask)
}

/// The box `[start, start + size)` of a `[channels, frames, height, width]` array, same layout.
pub fn crop(values: &[f32], dims: [usize; 4], start: [usize; 3], size: [usize; 3]) -> Vec<f32> {
    let [channels, frames, height, width] = dims;
    debug_assert_eq!(values.len(), channels * frames * height * width);
    let mut out = Vec::with_capacity(channels * size.iter().product::<usize>());
    for c in 0..channels {
        for f in start[0]..start[0] + size[0] {
            for y in start[1]..start[1] + size[1] {
                let row = ((c * frames + f) * height + y) * width;
                out.extend_from_slice(&values[row + start[2]..row + start[2] + size[2]]);
            }
        }
    }
    out
}

/// Values of a batch and its shape (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch5 {
    pub values: Vec<f32>,
    pub shape: [usize; 5],
}

/// A VAE step's input: `video` `[batch, 3, frames, crop, crop]` and its `objects` and `edges`
/// `[batch, frames, crop, crop]` (see [`TrainingClip`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeBatch {
    pub video: Batch5,
    pub objects: Vec<f32>,
    pub edges: Vec<f32>,
}

/// Random `frames`-long windows of training clips, randomly cropped to `crop x crop` (the VAE is
/// convolutional and causal, so short crops teach it the whole clip).
pub fn vae_batch(seed: u64, step: usize, batch: usize, clip: ClipShape, frames: usize, crop_side: usize) -> Result<VaeBatch, TrainError> {
    let mut values = Vec::with_capacity(batch * 3 * frames * crop_side * crop_side);
    let mut objects = Vec::with_capacity(batch * frames * crop_side * crop_side);
    let mut edges = Vec::with_capacity(batch * frames * crop_side * crop_side);
    for item in 0..batch {
        let mut rng = Rng::for_item(seed, Purpose::VaeClip, step, item);
        let training = training_clip(&mut rng, clip)?;
        let start = [
            rng.below(clip.frames - frames + 1),
            rng.below(clip.height - crop_side + 1),
            rng.below(clip.width - crop_side + 1),
        ];
        let size = [frames, crop_side, crop_side];
        values.extend(crop(&training.pixels, [3, clip.frames, clip.height, clip.width], start, size));
        objects.extend(crop(&training.objects, [1, clip.frames, clip.height, clip.width], start, size));
        edges.extend(crop(&training.edges, [1, clip.frames, clip.height, clip.width], start, size));
    }
    Ok(VaeBatch { video: Batch5 { values, shape: [batch, 3, frames, crop_side, crop_side] }, objects, edges })
}

/// Loss weights of `1 + object_weight` on objects (a mask of 1s) and 1 elsewhere.
pub fn object_weights(objects: &[f32], object_weight: f64) -> Vec<f32> {
    objects.iter().map(|&m| 1.0 + object_weight as f32 * m).collect()
}

/// A VAE batch's pixel loss weights: [`object_weights`] plus `edge_weight` on its edges.
pub fn pixel_weights(batch: &VaeBatch, object_weight: f64, edge_weight: f64) -> Vec<f32> {
    let weights = object_weights(&batch.objects, object_weight);
    weights.into_iter().zip(&batch.edges).map(|(w, &edge)| w + edge_weight as f32 * edge).collect()
}

/// Raw (not normalised) VAE latents of the clips the DiT trains on, with their captions.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentClips {
    /// `[clips, channels, frames, height, width]`.
    pub latents: Batch5,
    pub captions: Vec<String>,
    /// `[clips, frames, height, width]` [`object_mask`]s, when the loss weights objects.
    pub object_masks: Option<Vec<f32>>,
}

/// A DiT step's input, before the model: latent windows, their noise, shifted noise levels and
/// the captions the text encoder reads ("" where the caption was dropped).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowBatch {
    pub latents: Batch5,
    pub noise: Vec<f32>,
    /// Shifted sigmas in `(0, 1)`, one per item; the DiT's timestep is `1000 * sigma`.
    pub sigmas: Vec<f32>,
    pub captions: Vec<String>,
    /// Each item's first latent frame in its clip, of `clip_frames`.
    pub starts: Vec<usize>,
    pub clip_frames: usize,
    /// Per latent value of `[batch, 1, window, height, width]`, the weight of its squared error:
    /// `1 + object_weight` on objects, 1 elsewhere (present when the clips have object masks).
    pub loss_weights: Option<Vec<f32>>,
}

/// Flow-matching examples as `recipe` says: each item a random `window`-latent slice of a random
/// clip, a sigma drawn as `sigmas` says (`flow_shift` is the model's, for
/// [`SigmaSampling::Shifted`]) or 1 (`pure_noise_fraction`), and the caption replaced by "" with
/// probability `caption_dropout` (the sampler's unconditional branch is the empty negative
/// prompt). With object masks, the loss weights of the windows too.
pub fn flow_batch(clips: &LatentClips, seed: u64, step: usize, batch: usize, recipe: &DitRecipe, flow_shift: f64) -> FlowBatch {
    let window = recipe.window;
    let [count, channels, frames, height, width] = clips.latents.shape;
    let clip_len = channels * frames * height * width;
    let mut latents = Vec::with_capacity(batch * channels * window * height * width);
    let (mut noise, mut sigmas, mut captions, mut starts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut loss_weights = clips.object_masks.as_ref().map(|_| Vec::with_capacity(batch * window * height * width));
    for item in 0..batch {
        let mut rng = Rng::for_item(seed, Purpose::DitExample, step, item);
        let clip = rng.below(count);
        let start = rng.below(frames - window + 1);
        starts.push(start);
        let values = &clips.latents.values[clip * clip_len..(clip + 1) * clip_len];
        let slice = crop(values, [channels, frames, height, width], [start, 0, 0], [window, height, width]);
        if let (Some(weights), Some(masks)) = (&mut loss_weights, &clips.object_masks) {
            let mask = &masks[clip * frames * height * width..(clip + 1) * frames * height * width];
            let window_mask = crop(mask, [1, frames, height, width], [start, 0, 0], [window, height, width]);
            weights.extend(object_weights(&window_mask, recipe.object_weight));
        }
        noise.extend(rng.normals(slice.len()));
        latents.extend(slice);
        let sigma = match recipe.sigmas {
            SigmaSampling::Shifted => vidfarm_model::scheduler::shift_sigma(rng.unit(), flow_shift),
            SigmaSampling::Uniform => rng.unit(),
            SigmaSampling::LogitNormal { mean, std } => 1.0 / (1.0 + (-(mean + std * f64::from(rng.normal()))).exp()),
        };
        let dropped = rng.unit() < recipe.caption_dropout;
        captions.push(if dropped { String::new() } else { clips.captions[clip].clone() });
        // Drawn last and only when asked for, so runs without it keep their batches.
        let pure_noise = recipe.pure_noise_fraction > 0.0 && rng.unit() < recipe.pure_noise_fraction;
        sigmas.push(if pure_noise { 1.0 } else { sigma as f32 });
    }
    FlowBatch {
        latents: Batch5 { values: latents, shape: [batch, channels, window, height, width] },
        noise,
        sigmas,
        captions,
        starts,
        clip_frames: frames,
        loss_weights,
    }
}

impl FlowBatch {
    /// The batch cut into `count` runs of consecutive items (sizes differing by at most one;
    /// fewer when it has fewer items), each with its share of the batch's loss: the summed
    /// weights of its values over the batch's (its items over the batch's when unweighted).
    /// The shards' losses times their shares sum to the batch's loss, so their gradients sum to
    /// the batch's gradient.
    pub fn shards(&self, count: usize) -> Vec<(FlowBatch, f32)> {
        let items = self.sigmas.len();
        let count = count.clamp(1, items.max(1));
        let latent_len = self.latents.values.len() / items.max(1);
        let weight_len = self.loss_weights.as_ref().map_or(0, |weights| weights.len() / items.max(1));
        let total_weight: f32 = self.loss_weights.as_ref().map_or(items as f32, |weights| weights.iter().sum());
        let mut start = 0;
        (0..count)
            .map(|shard| {
                let range = start..start + items / count + usize::from(shard < items % count);
                start = range.end;
                let values = |all: &[f32], per_item: usize| all[range.start * per_item..range.end * per_item].to_vec();
                let loss_weights = self.loss_weights.as_ref().map(|weights| values(weights, weight_len));
                let weight = loss_weights.as_ref().map_or(range.len() as f32, |weights| weights.iter().sum());
                let mut shape = self.latents.shape;
                shape[0] = range.len();
                let batch = FlowBatch {
                    latents: Batch5 { values: values(&self.latents.values, latent_len), shape },
                    noise: values(&self.noise, latent_len),
                    sigmas: self.sigmas[range.clone()].to_vec(),
                    captions: self.captions[range.clone()].to_vec(),
                    starts: self.starts[range].to_vec(),
                    clip_frames: self.clip_frames,
                    loss_weights,
                };
                (batch, weight / total_weight)
            })
            .collect()
    }
}

/// Per-channel mean and standard deviation of `[batch, channels, ...]` values.
pub fn channel_statistics(batch: &Batch5) -> (Vec<f64>, Vec<f64>) {
    let [items, channels, ..] = batch.shape;
    let per_item: usize = batch.shape[2..].iter().product();
    let mut sums = vec![(0.0f64, 0.0f64); channels];
    for (i, chunk) in batch.values.chunks_exact(per_item).enumerate() {
        let (sum, squares) = &mut sums[i % channels];
        for &v in chunk {
            *sum += f64::from(v);
            *squares += f64::from(v) * f64::from(v);
        }
    }
    let n = (items * per_item) as f64;
    sums.iter()
        .map(|&(sum, squares)| {
            let mean = sum / n;
            (mean, (squares / n - mean * mean).max(0.0).sqrt())
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIP: ClipShape = ClipShape { frames: 9, width: 32, height: 24, fps: 8 };

    #[test]
    fn crop_takes_the_box_in_every_channel() {
        // value = c * 1000 + f * 100 + y * 10 + x
        let dims = [2, 3, 4, 5];
        let values: Vec<f32> = (0..2)
            .flat_map(|c| (0..3).flat_map(move |f| (0..4).flat_map(move |y| (0..5).map(move |x| (c * 1000 + f * 100 + y * 10 + x) as f32))))
            .collect();
        let out = crop(&values, dims, [1, 2, 3], [2, 2, 2]);
        let expected: Vec<f32> = [
            123, 124, 133, 134, 223, 224, 233, 234, 1123, 1124, 1133, 1134, 1223, 1224, 1233, 1234,
        ]
        .iter()
        .map(|&v| v as f32)
        .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn vae_batches_are_a_function_of_seed_and_step() {
        let a = vae_batch(7, 3, 2, CLIP, 5, 16).expect("batch");
        assert_eq!(a.video.shape, [2, 3, 5, 16, 16]);
        assert_eq!(a.video.values.len(), 2 * 3 * 5 * 16 * 16);
        assert!(a.video.values.iter().all(|v| (-1.0..=1.0).contains(v)));
        // The objects mask the same crop: every pixel outside them is the one background colour.
        let per_item = 5 * 16 * 16;
        assert_eq!(a.objects.len(), 2 * per_item);
        assert!(a.objects.iter().all(|&m| m == 0.0 || m == 1.0));
        for (item, objects) in a.objects.chunks_exact(per_item).enumerate() {
            let rgb = |p: usize| [0, 1, 2].map(|c| a.video.values[(item * 3 + c) * per_item + p]);
            let Some(background) = objects.iter().position(|&m| m == 0.0).map(rgb) else { continue };
            for (p, &m) in objects.iter().enumerate() {
                assert_eq!(m == 0.0, rgb(p) == background, "item {item} pixel {p}");
            }
        }
        assert_eq!(a, vae_batch(7, 3, 2, CLIP, 5, 16).expect("again"));
        assert_ne!(a, vae_batch(7, 4, 2, CLIP, 5, 16).expect("next step"));
        assert_ne!(a, vae_batch(8, 3, 2, CLIP, 5, 16).expect("other seed"));
    }

    fn recipe(window: usize, caption_dropout: f64, object_weight: f64) -> DitRecipe {
        DitRecipe {
            clips: 3,
            window,
            caption_dropout,
            sigmas: SigmaSampling::Shifted,
            object_weight,
            loss: Default::default(),
            pure_noise_fraction: 0.0,
            only_captions: Vec::new(),
            only_objects: None,
        }
    }

    fn latent_clips() -> LatentClips {
        let shape = [3, 2, 4, 2, 2];
        let values = (0..shape.iter().product::<usize>()).map(|v| v as f32).collect();
        LatentClips { latents: Batch5 { values, shape }, captions: vec!["a".into(), "b".into(), "c".into()], object_masks: None }
    }

    #[test]
    fn flow_batches_slice_windows_shift_sigmas_and_drop_captions() {
        let clips = latent_clips();
        let batch = flow_batch(&clips, 1, 0, 400, &recipe(2, 0.1, 0.0), 3.0);
        assert_eq!(batch.latents.shape, [400, 2, 2, 2, 2]);
        assert_eq!(batch.noise.len(), batch.latents.values.len());
        // Each item is two consecutive latent frames of one clip: values count up by 4 per frame.
        for item in batch.latents.values.chunks_exact(16) {
            assert_eq!(item[4] - item[0], 4.0);
            assert_eq!(item[8] - item[0], 16.0, "channel 1 of the same clip and frame");
        }
        assert!(batch.sigmas.iter().all(|&s| s > 0.0 && s < 1.0));
        // Each item's start is where its values come from (frame f starts at 4 f).
        for (item, &start) in batch.latents.values.chunks_exact(16).zip(&batch.starts) {
            assert_eq!(item[0] % 16.0, 4.0 * start as f32, "{item:?} from {start}");
        }
        assert_eq!(batch.clip_frames, 4);
        assert!(batch.starts.contains(&0) && batch.starts.contains(&1));
        // shift 3 moves the median sigma from 0.5 to 0.75.
        let above = batch.sigmas.iter().filter(|&&s| s > 0.75).count();
        assert!((150..250).contains(&above), "{above} of 400 above 0.75");
        let dropped = batch.captions.iter().filter(|c| c.is_empty()).count();
        assert!((20..65).contains(&dropped), "{dropped} of 400 captions dropped");
        assert_eq!(batch, flow_batch(&clips, 1, 0, 400, &recipe(2, 0.1, 0.0), 3.0), "a function of seed and step");
        let mean = batch.noise.iter().map(|&v| f64::from(v)).sum::<f64>() / batch.noise.len() as f64;
        let variance = batch.noise.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / batch.noise.len() as f64;
        assert!(mean.abs() < 0.05 && (variance - 1.0).abs() < 0.05, "noise mean {mean}, variance {variance}");
        // A pure-noise fraction sets that share of sigmas to 1 and leaves the rest of the batch.
        let pure = flow_batch(&clips, 1, 0, 400, &DitRecipe { pure_noise_fraction: 0.25, ..recipe(2, 0.1, 0.0) }, 3.0);
        let ones = pure.sigmas.iter().filter(|&&s| s == 1.0).count();
        assert!((70..130).contains(&ones), "{ones} of 400 at sigma 1");
        for (a, b) in pure.sigmas.iter().zip(&batch.sigmas) {
            assert!(a == b || *a == 1.0);
        }
        assert_eq!((&pure.latents, &pure.noise, &pure.captions), (&batch.latents, &batch.noise, &batch.captions));
    }

    #[test]
    fn object_masks_cover_the_objects_on_the_latent_grid_and_weight_their_windows() {
        let shape = ClipShape { frames: 9, width: 32, height: 32, fps: 8 };
        let mask = object_mask(&mut Rng::for_item(3, Purpose::DitClip, 0, 0), shape, 4, 4).expect("mask");
        assert_eq!(mask.len(), 3 * 8 * 8);
        // An object takes a few percent to a third of each latent frame, and it moves or changes size.
        let frames: Vec<&[f32]> = mask.chunks_exact(64).collect();
        for frame in &frames {
            let covered = frame.iter().sum::<f32>();
            assert!((2.0..=24.0).contains(&covered), "{covered} of 64 latent pixels");
        }
        assert_ne!(frames[0], frames[2]);
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0));

        let mut clips = latent_clips();
        let masks: Vec<f32> = (0..3 * 4 * 2 * 2).map(|i| (i % 3 == 0) as u8 as f32).collect();
        clips.object_masks = Some(masks.clone());
        let batch = flow_batch(&clips, 1, 0, 40, &recipe(2, 0.1, 4.0), 3.0);
        let weights = batch.loss_weights.expect("weights with masks");
        assert_eq!(weights.len(), 40 * 2 * 2 * 2);
        for ((item, &start), latents) in weights.chunks_exact(8).zip(&batch.starts).zip(batch.latents.values.chunks_exact(16)) {
            // A clip holds 32 values (2 channels of 4 frames of 4) and 16 mask values.
            let clip = latents[0] as usize / 32;
            assert_eq!(latents[0] as usize % 32, 4 * start);
            for (k, &w) in item.iter().enumerate() {
                let expected = 1.0 + 4.0 * masks[clip * 16 + 4 * start + k];
                assert_eq!(w, expected, "clip {clip} start {start} value {k}");
            }
        }
        assert_eq!(flow_batch(&clips, 1, 0, 40, &recipe(2, 0.1, 0.0), 3.0).loss_weights.map(|w| w.iter().all(|&x| x == 1.0)), Some(true));
    }

    #[test]
    fn channel_statistics_are_per_channel() {
        let batch = Batch5 { values: vec![1.0, 3.0, 10.0, 10.0, 5.0, 7.0, 20.0, 20.0], shape: [2, 2, 1, 1, 2] };
        let (mean, std) = channel_statistics(&batch);
        assert_eq!(mean, vec![4.0, 15.0]);
        assert!((std[0] - 5f64.sqrt()).abs() < 1e-12 && (std[1] - 5.0).abs() < 1e-12, "{std:?}");
    }

    /// Shards are consecutive runs of items whose sizes differ by at most one, whose shares
    /// (weights over the batch's) sum to 1, and which put the batch back together.
    #[test]
    fn flow_batches_shard_into_consecutive_items_with_their_loss_shares() {
        let item = |i: usize| i as f32;
        let batch = FlowBatch {
            latents: Batch5 { values: (0..5 * 6).map(|v| v as f32).collect(), shape: [5, 2, 3, 1, 1] },
            noise: (0..5 * 6).map(|v| -(v as f32)).collect(),
            sigmas: (0..5).map(item).collect(),
            captions: (0..5).map(|i| format!("caption {i}")).collect(),
            starts: (0..5).collect(),
            clip_frames: 7,
            loss_weights: Some((0..5 * 3).map(|v| if v < 3 { 4.0 } else { 1.0 }).collect()),
        };
        for count in 1..=7 {
            let shards = batch.shards(count);
            assert_eq!(shards.len(), count.min(5));
            let sizes: Vec<usize> = shards.iter().map(|(shard, _)| shard.latents.shape[0]).collect();
            assert!(sizes.iter().max().expect("sizes") - sizes.iter().min().expect("sizes") <= 1, "{sizes:?}");
            let joined = |part: fn(&FlowBatch) -> Vec<f32>| shards.iter().flat_map(|(shard, _)| part(shard)).collect::<Vec<f32>>();
            assert_eq!(joined(|b| b.latents.values.clone()), batch.latents.values);
            assert_eq!(joined(|b| b.noise.clone()), batch.noise);
            assert_eq!(joined(|b| b.sigmas.clone()), batch.sigmas);
            assert_eq!(joined(|b| b.loss_weights.clone().expect("weights")), batch.loss_weights.clone().expect("weights"));
            assert!(shards.iter().all(|(shard, _)| shard.captions.len() == shard.starts.len() && shard.clip_frames == 7));
            assert_eq!(shards.iter().flat_map(|(shard, _)| shard.starts.clone()).collect::<Vec<_>>(), batch.starts);
            let total: f32 = shards.iter().map(|(_, share)| share).sum();
            assert!((total - 1.0).abs() < 1e-6, "{count}: shares sum to {total}");
        }
        // The first item weighs 12 of the batch's 24: unweighted, 1 of 5.
        assert_eq!(batch.shards(5)[0].1, 0.5);
        assert_eq!(FlowBatch { loss_weights: None, ..batch.clone() }.shards(5)[0].1, 0.2);
    }
}
