//! `vidfarm model eval`: renders held-out captions (attribute combinations training never
//! showed together), training ones or captions given on the command line with a model, chunked as the farm renders them, encodes each clip to MP4
//! and decodes it back (what a user downloads), and scores it with the synthetic-video
//! detector: colour, shape and motion adherence, smoothness, seam ratio. It also measures the
//! VAE alone: the PSNR of each prompt's synthetic clip after an encode and decode round trip,
//! and the detector's adherence on that round trip (the most a DiT could reach through this VAE).
//! As a diagnostic (`--from-clip SIGMA`), the DiT can start from each prompt's own clip, noised
//! part way, to tell at which noise level it loses what the clip shows.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU8;
use vidfarm_api::{ModelProfile, RenderSpec, StitchMode, pb};
use vidfarm_model::pipeline::{DefaultBackend, Pipeline};
use vidfarm_plan::{ChunkPlan, Latents, plan_chunks, seam_frames, stitch};
use burn::tensor::{Tensor, TensorData};
use vidfarm_synth::{
    Adherence, Clip, ClipSettings, DetectorConfig, SceneSpec, Split, detect, edge_pixels, mean_abs_frame_difference, render_clip, score, seam_ratio,
};
use vidfarm_video::{RgbFrames, decode_mp4};
use vidfarm_model::scheduler::FlowMatchEulerDiscreteScheduler;
use vidfarm_worker::render::{Directive, Prompts as EncodedPrompts, chunk_start, denoise_chunk, denoise_step, denoise_synced, encode_clip};

pub struct EvalArgs {
    pub model: PathBuf,
    pub prompts: Prompts,
    pub seed: u64,
    pub seconds: Option<f64>,
    pub steps: Option<u32>,
    pub stitch: Option<crate::spec_args::StitchArg>,
    pub overlap: Option<u32>,
    pub out: Option<PathBuf>,
    pub floors: Vec<Floor>,
    /// Start each chunk from the prompt's own clip noised to this sigma (see [`Start::Clip`]).
    pub from_clip: Option<f64>,
}

/// Which captions an evaluation renders.
pub enum Prompts {
    /// The first `limit` of the split's fixed prompt set.
    Split { split: Split, limit: usize },
    /// Captions in the form the synthetic data writes them (`--prompt`).
    Given(Vec<String>),
}

impl Prompts {
    fn scenes(&self) -> Result<Vec<SceneSpec>> {
        match self {
            Self::Split { limit: 0, .. } => bail!("--limit must be at least 1"),
            Self::Split { split, limit } => Ok(SceneSpec::prompt_set(*split, *limit)),
            Self::Given(captions) => captions.iter().map(|c| SceneSpec::parse(c).with_context(|| format!("--prompt {c:?}"))).collect(),
        }
    }
}

/// `--floor NAME=VALUE`: the command fails when the summary's metric NAME is under VALUE.
#[derive(Clone, Debug, PartialEq)]
pub struct Floor {
    pub metric: String,
    pub value: f64,
}

impl std::str::FromStr for Floor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (metric, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
        let value = value.trim().parse().map_err(|e| format!("{text:?}: the value is not a number ({e})"))?;
        Ok(Self { metric: metric.trim().to_string(), value })
    }
}

/// Checks every floor names a numeric metric of the summary, before any rendering.
fn check_floor_names(floors: &[Floor]) -> Result<()> {
    let summary = serde_json::to_value(Summary::default())?;
    let metrics: Vec<&str> = summary.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    match floors.iter().find(|f| !metrics.contains(&f.metric.as_str())) {
        Some(floor) => bail!("--floor {}: no such metric (one of: {})", floor.metric, metrics.join(", ")),
        None => Ok(()),
    }
}

/// The floors the summary is under, as one message each.
fn floors_missed(summary: &Summary, floors: &[Floor]) -> Result<Vec<String>> {
    let values = serde_json::to_value(summary)?;
    Ok(floors
        .iter()
        .filter_map(|floor| match values[floor.metric.as_str()].as_f64() {
            Some(value) if value >= floor.value => None,
            Some(value) => Some(format!("{} {value:.3} is under the floor {}", floor.metric, floor.value)),
            None => Some(format!("{} was not measured (floor {})", floor.metric, floor.value)),
        })
        .collect())
}

#[derive(Serialize)]
struct PromptResult {
    prompt: String,
    /// Whether training showed the prompt's colour and shape pairs.
    split: Split,
    #[serde(flatten)]
    adherence: Adherence,
    all_correct: bool,
    /// What the detector saw: background, and per object colour, shape and motion.
    detected: String,
    mean_abs_frame_difference: Option<f64>,
    seam_ratio: Option<f64>,
    /// PSNR in dB of the prompt's synthetic clip (the seed's) through the VAE and back.
    vae_psnr_db: f64,
    /// The same on the pixels along colour boundaries (`vidfarm_synth::edge_pixels`), and on
    /// the others: where the VAE blurs, and where it shifts flat colours.
    vae_edge_psnr_db: f64,
    vae_flat_psnr_db: f64,
    /// Whether the detector finds every attribute in that round trip, and what it saw there.
    vae_all_correct: bool,
    vae_detected: String,
    render_s: f64,
}

#[derive(Default, Serialize)]
struct Summary {
    prompts: usize,
    adherence: f64,
    colour_accuracy: f64,
    shape_accuracy: f64,
    motion_accuracy: f64,
    background_accuracy: f64,
    mean_abs_frame_difference: Option<f64>,
    seam_ratio: Option<f64>,
    vae_psnr_db: Option<f64>,
    vae_edge_psnr_db: Option<f64>,
    vae_flat_psnr_db: Option<f64>,
    /// Adherence of the synthetic clips after the VAE round trip: the ceiling the VAE sets.
    vae_adherence: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    model: String,
    /// The prompt set's split; none for captions given with `--prompt`.
    split: Option<Split>,
    frames: u32,
    width: u32,
    height: u32,
    fps: u32,
    steps: u32,
    stitch_mode: StitchMode,
    chunk_latent_frames: u32,
    overlap_latent_frames: u32,
    /// `--from-clip`: the noise level the chunks started from, on the prompts' own clips.
    #[serde(skip_serializing_if = "Option::is_none")]
    from_clip_sigma: Option<f64>,
    summary: &'a Summary,
    results: &'a [PromptResult],
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Where each chunk's denoising starts.
enum Start {
    /// The chunk's seed noise, as the farm renders.
    Noise,
    /// The prompt's own synthetic clip (normalised latents of the whole clip) mixed with the
    /// chunk's seed noise at the first Euler step whose sigma is at most `sigma`, then denoised
    /// from that step: what the DiT keeps of a clip it is handed part way.
    Clip { clean: Latents, sigma: f64 },
}

/// Renders one clip and reads it back through an H.264 MP4 at `mp4` (a scratch path).
fn render(pipeline: &Pipeline<DefaultBackend>, spec: &RenderSpec, chunks: &[ChunkPlan], start: &Start, mp4: &Path) -> Result<Clip> {
    let parts: Vec<(ChunkPlan, Latents)> = match (spec.stitch_mode, start) {
        (StitchMode::Sync, Start::Noise) => chunks.iter().copied().zip(denoise_synced(pipeline, spec, chunks)?).collect(),
        (StitchMode::Blend, Start::Clip { clean, sigma }) => {
            let prompts = EncodedPrompts::encode(pipeline, spec)?;
            chunks.iter().map(|chunk| Ok((*chunk, denoise_from_clip(pipeline, spec, &prompts, chunk, clean, *sigma)?))).collect::<Result<_>>()?
        }
        (StitchMode::Blend | StitchMode::Chain, Start::Noise) => {
            let run = AtomicU8::new(Directive::Run as u8);
            let mut parts: Vec<(ChunkPlan, Latents)> = Vec::with_capacity(chunks.len());
            for chunk in chunks {
                // As the farm does: a chained chunk continues from the one before it.
                let previous = parts.last().filter(|_| spec.stitch_mode == StitchMode::Chain).map(|(plan, latents)| (plan, latents));
                let latents = denoise_chunk(pipeline, spec, chunk, previous, &run, &mut |_| {})?;
                parts.push((*chunk, latents));
            }
            parts
        }
        (mode, Start::Clip { .. }) => bail!("--from-clip renders with blend stitching, not with --stitch {}", mode.name()),
    };
    let latents = stitch(spec.latent_frames(), &parts, spec.blend_curve)?;
    encode_clip(pipeline, spec, latents, &[], &AtomicU8::new(Directive::Run as u8), mp4)?;
    let frames = decode_mp4(mp4);
    // The file was only a way through the codec.
    let _ = std::fs::remove_file(mp4);
    let frames = frames?;
    Ok(Clip::new(frames.width as usize, frames.height as usize, frames.fps, frames.frames)?)
}

/// [`Start::Clip`] for one chunk: `clean`'s frames under the chunk, noised with the chunk's seed
/// noise to the first schedule sigma at most `sigma`, then the Euler steps from there.
fn denoise_from_clip(
    pipeline: &Pipeline<DefaultBackend>,
    spec: &RenderSpec,
    prompts: &EncodedPrompts<DefaultBackend>,
    chunk: &ChunkPlan,
    clean: &Latents,
    sigma: f64,
) -> Result<Latents> {
    let sigmas = FlowMatchEulerDiscreteScheduler::new(f64::from(spec.flow_shift)).schedule(spec.steps as usize).sigmas;
    // The schedule ends at 0, so some step qualifies; starting at the end runs no step.
    let first = sigmas.iter().position(|&s| s <= sigma).unwrap_or(sigmas.len() - 1);
    let noise = chunk_start(pipeline, spec, chunk);
    let clean = clean.slice_frames(chunk.start as usize, chunk.len() as usize);
    let level = sigmas[first] as f32;
    let mixed = clean.data.iter().zip(&noise.data).map(|(c, n)| (1.0 - level) * c + level * n).collect();
    let mut latents = Latents::new(noise.shape, mixed)?;
    for step in first..spec.steps as usize {
        latents = denoise_step(pipeline, spec, prompts, chunk, latents, step as u32)?;
    }
    Ok(latents)
}

/// `scene`'s synthetic clip from `seed` and its VAE latents.
fn encode_scene(pipeline: &Pipeline<DefaultBackend>, scene: &SceneSpec, settings: &ClipSettings, seed: u64) -> Result<(Clip, Tensor<DefaultBackend, 5>)> {
    let clip = render_clip(scene, settings, seed)?;
    let shape = [1, 3, settings.frames, settings.height, settings.width];
    let video = Tensor::<DefaultBackend, 5>::from_data(TensorData::new(clip.to_planar_signed(), shape), pipeline.device());
    let latents = pipeline.vae.encode(video)?;
    Ok((clip, latents))
}

/// The DiT-space (normalised) latents of a clip's VAE latents.
fn normalised_latents(pipeline: &Pipeline<DefaultBackend>, latents: Tensor<DefaultBackend, 5>) -> Result<Latents> {
    let [_, c, f, h, w] = latents.dims();
    let values = pipeline.normalize(latents)?.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| anyhow::anyhow!("latents: {e:?}"))?;
    Ok(Latents::new([c, f, h, w], values)?)
}

/// PSNR in dB of a clip's VAE round trip: over every pixel, along its colour boundaries, elsewhere.
struct VaePsnr {
    all: f64,
    edges: f64,
    flat: f64,
}

/// The clip `original` after the VAE's decode of its `latents`, and its PSNR.
fn vae_round_trip(pipeline: &Pipeline<DefaultBackend>, original: &Clip, latents: Tensor<DefaultBackend, 5>, settings: &ClipSettings) -> Result<(Clip, VaePsnr)> {
    let decoded = pipeline.vae.decode(latents)?;
    let decoded = decoded.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| anyhow::anyhow!("decoded video: {e:?}"))?;
    let edges = edge_pixels(original);
    // Squared errors and pixel counts, on the edges and off them (planar: the mask repeats per channel).
    let mut sums = [(0.0f64, 0usize); 2];
    for (i, (a, b)) in original.to_planar_signed().iter().zip(&decoded).enumerate() {
        let sum = &mut sums[usize::from(edges[i % edges.len()])];
        sum.0 += f64::from(a - b).powi(2);
        sum.1 += 1;
    }
    // Values span [-1, 1], so the peak-to-peak range is 2.
    let psnr = |(squared, count): (f64, usize)| 10.0 * (4.0 / (squared / count.max(1) as f64).max(1e-12)).log10();
    let psnr = VaePsnr { all: psnr((sums[0].0 + sums[1].0, sums[0].1 + sums[1].1)), edges: psnr(sums[1]), flat: psnr(sums[0]) };
    let frames = RgbFrames::from_planar_signed(&decoded, settings.frames, settings.height, settings.width, settings.fps)?;
    Ok((Clip::new(settings.width, settings.height, settings.fps, frames.frames)?, psnr))
}

fn describe(detection: &vidfarm_synth::Detection) -> String {
    let background = detection.background.map_or("none", |c| c.word());
    let objects: Vec<String> = detection
        .objects
        .iter()
        .map(|o| format!("{} {} {}", o.colour.word(), o.shape.word(), o.motion.map_or("still", |m| m.phrase())))
        .collect();
    format!("[{}] on {background}", objects.join("; "))
}

pub fn run(args: EvalArgs) -> Result<()> {
    check_floor_names(&args.floors)?;
    if let Some(sigma) = args.from_clip.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
        bail!("--from-clip {sigma}: a noise level in (0, 1]");
    }
    let dir = crate::farm::resolve_model_dir(&args.model);
    let profile = ModelProfile::load(&dir)?;
    let pipeline = Pipeline::<DefaultBackend>::load(&dir, &Default::default()).with_context(|| format!("loading model {}", dir.display()))?;
    let scenes = args.prompts.scenes()?;
    let mut results = Vec::with_capacity(scenes.len());
    let mut first_spec = None;
    for (index, scene) in scenes.iter().enumerate() {
        let prompt = scene.caption();
        let job = pb::JobSpec {
            prompt: prompt.clone(),
            length: args.seconds.map(pb::job_spec::Length::Seconds),
            seed: Some(args.seed.wrapping_add(index as u64)),
            steps: args.steps,
            stitch_mode: args.stitch.map_or(pb::StitchMode::Unspecified, pb::StitchMode::from) as i32,
            overlap_latent_frames: args.overlap,
            ..Default::default()
        };
        let spec = RenderSpec::resolve(&job, std::slice::from_ref(&profile), args.seed)?;
        let chunks = plan_chunks(spec.latent_frames(), spec.chunk_latent_frames, spec.overlap_latent_frames)?;
        let settings = ClipSettings { frames: spec.frames as usize, width: spec.width as usize, height: spec.height as usize, fps: spec.fps };
        let (original, latents) = encode_scene(&pipeline, scene, &settings, spec.seed).with_context(|| format!("encoding the clip of {prompt:?}"))?;
        let start = match args.from_clip {
            Some(sigma) => Start::Clip { clean: normalised_latents(&pipeline, latents.clone())?, sigma },
            None => Start::Noise,
        };
        let started = std::time::Instant::now();
        let mp4 = std::env::temp_dir().join(format!("vidfarm-eval-{}-{index}.mp4", std::process::id()));
        let clip = render(&pipeline, &spec, &chunks, &start, &mp4).with_context(|| format!("rendering {prompt:?}"))?;
        let render_s = started.elapsed().as_secs_f64();
        let (round_trip, vae_psnr) =
            vae_round_trip(&pipeline, &original, latents, &settings).with_context(|| format!("VAE round trip of {prompt:?}"))?;
        let detection = detect(&clip, &DetectorConfig::default());
        let adherence = score(&detection, scene);
        let round_trip = detect(&round_trip, &DetectorConfig::default());
        let result = PromptResult {
            all_correct: adherence.all_correct(),
            detected: describe(&detection),
            adherence,
            mean_abs_frame_difference: mean_abs_frame_difference(&clip),
            seam_ratio: seam_ratio(&clip, &seam_frames(&chunks, spec.temporal_factor), spec.temporal_factor as usize),
            vae_psnr_db: vae_psnr.all,
            vae_edge_psnr_db: vae_psnr.edges,
            vae_flat_psnr_db: vae_psnr.flat,
            vae_all_correct: score(&round_trip, scene).all_correct(),
            vae_detected: describe(&round_trip),
            render_s,
            prompt,
            split: scene.split(),
        };
        eprintln!("[{}/{}] {} {}", index + 1, scenes.len(), if result.all_correct { "ok  " } else { "miss" }, result.prompt);
        results.push(result);
        first_spec.get_or_insert(spec);
    }
    let spec = first_spec.context("at least one prompt was rendered")?;

    let objects: usize = results.iter().map(|r| r.adherence.objects).sum();
    let fraction = |count: usize, of: usize| count as f64 / of.max(1) as f64;
    let summary = Summary {
        prompts: results.len(),
        adherence: fraction(results.iter().filter(|r| r.all_correct).count(), results.len()),
        colour_accuracy: fraction(results.iter().map(|r| r.adherence.colour_correct).sum(), objects),
        shape_accuracy: fraction(results.iter().map(|r| r.adherence.shape_correct).sum(), objects),
        motion_accuracy: fraction(results.iter().map(|r| r.adherence.motion_correct).sum(), objects),
        background_accuracy: fraction(results.iter().filter(|r| r.adherence.background_correct).count(), results.len()),
        mean_abs_frame_difference: mean(results.iter().filter_map(|r| r.mean_abs_frame_difference)),
        seam_ratio: mean(results.iter().filter_map(|r| r.seam_ratio)),
        vae_psnr_db: mean(results.iter().map(|r| r.vae_psnr_db)),
        vae_edge_psnr_db: mean(results.iter().map(|r| r.vae_edge_psnr_db)),
        vae_flat_psnr_db: mean(results.iter().map(|r| r.vae_flat_psnr_db)),
        vae_adherence: fraction(results.iter().filter(|r| r.vae_all_correct).count(), results.len()),
    };
    print_table(&results, &summary);
    if let Some(out) = &args.out {
        let report = Report {
            model: dir.display().to_string(),
            split: match args.prompts {
                Prompts::Split { split, .. } => Some(split),
                Prompts::Given(_) => None,
            },
            frames: spec.frames,
            width: spec.width,
            height: spec.height,
            fps: spec.fps,
            steps: spec.steps,
            stitch_mode: spec.stitch_mode,
            chunk_latent_frames: spec.chunk_latent_frames,
            overlap_latent_frames: spec.overlap_latent_frames,
            from_clip_sigma: args.from_clip,
            summary: &summary,
            results: &results,
        };
        write_json(out, &report)?;
    }
    let missed = floors_missed(&summary, &args.floors)?;
    if !missed.is_empty() {
        bail!("{}", missed.join("; "));
    }
    Ok(())
}

fn write_json(path: &Path, report: &Report) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?).with_context(|| format!("writing {}", path.display()))
}

fn print_table(results: &[PromptResult], summary: &Summary) {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    crate::output::emit(format!(
        "{:<4} {:>6} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6}  {:<70} detected",
        "ok", "colour", "shape", "motion", "diff", "seam", "psnr", "vae ok", "prompt"
    ));
    for r in results {
        let a = &r.adherence;
        crate::output::emit(format!(
            "{:<4} {:>6} {:>5} {:>6} {:>6} {:>6} {:>6.1} {:>6}  {:<70} {}",
            if r.all_correct { "yes" } else { "no" },
            format!("{}/{}", a.colour_correct, a.objects),
            format!("{}/{}", a.shape_correct, a.objects),
            format!("{}/{}", a.motion_correct, a.objects),
            cell(r.mean_abs_frame_difference),
            cell(r.seam_ratio),
            r.vae_psnr_db,
            if r.vae_all_correct { "yes" } else { "no" },
            r.prompt,
            r.detected
        ));
    }
    crate::output::emit(format!(
        "{} prompts: adherence {:.3}, colour {:.3}, shape {:.3}, motion {:.3}, background {:.3}, mean frame difference {}, seam ratio {}, VAE PSNR {} dB (edges {} dB, flat {} dB), VAE adherence {:.3}",
        summary.prompts,
        summary.adherence,
        summary.colour_accuracy,
        summary.shape_accuracy,
        summary.motion_accuracy,
        summary.background_accuracy,
        cell(summary.mean_abs_frame_difference),
        cell(summary.seam_ratio),
        cell(summary.vae_psnr_db),
        cell(summary.vae_edge_psnr_db),
        cell(summary.vae_flat_psnr_db),
        summary.vae_adherence
    ));
}
