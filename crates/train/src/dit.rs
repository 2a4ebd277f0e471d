//! Stage 3 of TRAINING.md: the DiT and the text encoder together, with flow matching. For
//! normalised latents `x0`, noise `e` and a shifted noise level `s`: the input is
//! `(1 - s) x0 + s e` at timestep `1000 s`, the target the flow `e - x0` (the Euler sampler steps
//! `x + v (s_next - s)`), the loss their mean squared error ([`FlowLoss::Flow`]) or that of the
//! clean latents the predicted flow implies ([`FlowLoss::Sample`]). Latents are encoded once by
//! the frozen VAE and cached in the run's folder.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use vidfarm_model::Pipeline;
use vidfarm_model::checkpoint::{TensorSource, TensorWriter};
use vidfarm_model::text_encoder::UMT5EncoderModel;
use vidfarm_model::transformer::{ClipSpan, WanTransformer3DModel};
use vidfarm_model::vae::AutoencoderKLWan;
use vidfarm_synth::{SceneSpec, Split};

use crate::data::{Batch5, ClipShape, FlowBatch, LatentClips, Purpose, Rng, flow_batch, object_mask, training_clip, training_scene};
use crate::error::{TrainError, io_error, tensor_values};
use crate::run::{self, DitRecipe, FlowLoss, TrainOptions, TrainState};
use crate::vae::latent_shape;
use crate::{Progress, Stage, optimizer_config, run_steps, weighted_mean};

const LATENTS_TENSOR: &str = "latents";

/// The parts the DiT stage trains, as one module so one optimizer (and one record) covers both.
#[derive(Module, Debug)]
pub struct TextToFlow<B: Backend> {
    pub transformer: WanTransformer3DModel<B>,
    pub text_encoder: UMT5EncoderModel<B>,
}

/// The flow-matching loss of `batch` under `pipeline` (its DiT, text encoder and latent
/// statistics), measured as `loss` says.
pub fn flow_matching_loss<B: Backend>(pipeline: &Pipeline<B>, batch: &FlowBatch, loss: FlowLoss) -> Result<Tensor<B, 1>, TrainError> {
    let device = pipeline.device();
    let shape = batch.latents.shape;
    let x0 = pipeline.normalize(Tensor::from_data(TensorData::new(batch.latents.values.clone(), shape), device))?;
    let noise = Tensor::<B, 5>::from_data(TensorData::new(batch.noise.clone(), shape), device);
    let sigma = Tensor::<B, 5>::from_data(TensorData::new(batch.sigmas.clone(), [shape[0], 1, 1, 1, 1]), device);
    let x = x0.clone() * (sigma.clone().neg() + 1.0) + noise.clone() * sigma.clone();
    let captions: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
    let (text, _) = pipeline.encode_prompts(&captions)?;
    let timesteps: Vec<f32> = batch.sigmas.iter().map(|s| s * 1000.0).collect();
    let spans: Vec<ClipSpan> = batch.starts.iter().map(|&start| ClipSpan { start, clip_frames: batch.clip_frames }).collect();
    let flow = pipeline.transformer.forward_in(x, &timesteps, text, &spans)?;
    let error = flow - (noise - x0);
    let error = match loss {
        FlowLoss::Flow => error,
        // x_t - sigma v_pred - x0 = sigma (v - v_pred): the clean latents' error.
        FlowLoss::Sample => error * sigma,
    };
    Ok(weighted_mean(error.powi_scalar(2), batch.loss_weights.as_deref()))
}

pub struct DitTrainer<B: AutodiffBackend> {
    /// The whole pipeline: its VAE (frozen) gives the latent statistics, and checkpoints are complete.
    pub pipeline: Pipeline<B>,
    pub loss: FlowLoss,
    /// Threads a step's batch is split across (data parallel: on the CPU backend a step alone
    /// keeps about one core busy). Runs with other counts round differently.
    pub threads: usize,
    optim: OptimizerAdaptor<Adam, TextToFlow<B>, B>,
}

impl<B: AutodiffBackend> DitTrainer<B> {
    pub fn new(mut pipeline: Pipeline<B>, loss: FlowLoss, threads: usize) -> Self {
        let trained = run::canonical_params(TextToFlow { transformer: pipeline.transformer, text_encoder: pipeline.text_encoder });
        pipeline.transformer = trained.transformer;
        pipeline.text_encoder = trained.text_encoder;
        Self { pipeline, loss, threads, optim: optimizer_config().init() }
    }

    /// One optimizer step on `batch` at learning rate `lr`; returns the loss before the step.
    pub fn step(&mut self, batch: &FlowBatch, lr: f64) -> Result<f32, TrainError> {
        // Clones share the parameters (and their ids), so the gradients map onto them.
        let trained = TextToFlow { transformer: self.pipeline.transformer.clone(), text_encoder: self.pipeline.text_encoder.clone() };
        let (value, grads) = self.gradients(&trained, batch)?;
        let trained = self.optim.step(lr, trained, grads);
        self.pipeline.transformer = trained.transformer;
        self.pipeline.text_encoder = trained.text_encoder;
        Ok(value)
    }

    /// The loss of `batch` and its gradients for `trained` (the pipeline's DiT and text encoder),
    /// on [`Self::threads`] threads: each shard of the batch runs on its own fork of the two (the
    /// same weights and parameter ids, a graph of its own), and the shards' gradients are summed.
    fn gradients(&self, trained: &TextToFlow<B>, batch: &FlowBatch) -> Result<(f32, GradientsParams), TrainError> {
        if self.threads <= 1 {
            let loss = flow_matching_loss(&self.pipeline, batch, self.loss)?;
            let value = loss.clone().into_scalar().elem();
            return Ok((value, GradientsParams::from_grads(loss.backward(), trained)));
        }
        let kind = self.loss;
        let shards = std::thread::scope(|scope| {
            let workers: Vec<_> = batch
                .shards(self.threads)
                .into_iter()
                .map(|(shard, share)| {
                    let (mut pipeline, copy) = (self.pipeline.clone(), trained.clone());
                    scope.spawn(move || {
                        let copy = copy.fork(pipeline.device());
                        (pipeline.transformer, pipeline.text_encoder) = (copy.transformer, copy.text_encoder);
                        let loss = flow_matching_loss(&pipeline, &shard, kind)? * share;
                        let value: f32 = loss.clone().into_scalar().elem();
                        let copy = TextToFlow { transformer: pipeline.transformer, text_encoder: pipeline.text_encoder };
                        Ok::<_, TrainError>((value, GradientsParams::from_grads(loss.backward(), &copy)))
                    })
                })
                .collect();
            workers.into_iter().map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect::<Result<Vec<_>, _>>()
        })?;
        let (values, parts): (Vec<f32>, Vec<GradientsParams>) = shards.into_iter().unzip();
        Ok((values.iter().sum(), sum_gradients(trained, parts)))
    }
}

/// The sum of `parts`, per parameter of `module`.
fn sum_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, parts: Vec<GradientsParams>) -> GradientsParams {
    struct Sum<B: AutodiffBackend> {
        parts: Vec<GradientsParams>,
        total: GradientsParams,
        backend: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grads = self.parts.iter_mut().filter_map(|part| part.remove::<B::InnerBackend, D>(param.id));
            if let Some(sum) = grads.reduce(|sum, grad| sum + grad) {
                self.total.register(param.id, sum);
            }
        }
    }
    let mut sum = Sum::<B> { parts, total: GradientsParams::new(), backend: PhantomData };
    module.visit(&mut sum);
    sum.total
}

/// Which clips the DiT stage pre-encodes: clip `index` comes from its own random stream of the
/// run's seed; with `only_captions` or `only_objects`, it is the first scene of that stream that
/// has one of those captions and that many objects (a curriculum stage, a probe, a fine-tune).
#[derive(Clone, Copy, Debug)]
pub struct ClipSource<'a> {
    pub seed: u64,
    pub only_captions: &'a [String],
    pub only_objects: Option<usize>,
}

/// Scenes one stream may draw looking for an `only_captions` caption: a one-object caption comes
/// about once in two thousand draws, a two-object one about once in a million.
const MAX_SCENE_DRAWS: usize = 1 << 22;

impl<'a> ClipSource<'a> {
    pub fn new(seed: u64, recipe: &'a DitRecipe) -> Self {
        Self { seed, only_captions: &recipe.only_captions, only_objects: recipe.only_objects }
    }

    /// Every training scene, as drawn.
    pub fn every_scene(seed: u64) -> Self {
        Self { seed, only_captions: &[], only_objects: None }
    }

    /// Refuses captions no training scene has, and filters no scene passes, before anything is drawn.
    pub fn check(&self) -> Result<(), TrainError> {
        if let Some(count) = self.only_objects
            && !(1..=SceneSpec::MAX_OBJECTS).contains(&count)
        {
            return Err(TrainError::InvalidOption(format!("--only-objects {count}: a scene has 1 to {} objects", SceneSpec::MAX_OBJECTS)));
        }
        for caption in self.only_captions {
            let scene = SceneSpec::parse(caption)?;
            if scene.caption() != *caption || scene.split() != Split::Train {
                return Err(TrainError::InvalidOption(format!(
                    "--only-caption {caption:?}: not a training caption (held-out, or not written as \"{}\")",
                    scene.caption()
                )));
            }
            if let Some(count) = self.only_objects.filter(|&count| count != scene.objects.len()) {
                return Err(TrainError::InvalidOption(format!(
                    "--only-caption {caption:?} has {} object(s), --only-objects asks for {count}",
                    scene.objects.len()
                )));
            }
        }
        Ok(())
    }

    fn admits(&self, scene: &SceneSpec) -> bool {
        (self.only_captions.is_empty() || self.only_captions.contains(&scene.caption()))
            && self.only_objects.is_none_or(|count| count == scene.objects.len())
    }

    /// The stream clip `index` is rendered from.
    fn rng(&self, index: usize) -> Result<Rng, TrainError> {
        let mut rng = Rng::for_item(self.seed, Purpose::DitClip, 0, index);
        for _ in 0..MAX_SCENE_DRAWS {
            let start = rng.clone();
            if self.admits(&training_scene(&mut rng).1) {
                return Ok(start);
            }
        }
        Err(TrainError::InvalidOption(format!(
            "--only-caption: none of {:?} in {MAX_SCENE_DRAWS} scenes drawn for clip {index}; two-object captions are too rare to draw",
            self.only_captions
        )))
    }
}

/// The cache of the run's encoded clips (outside the model layout, so rendering ignores it),
/// named by everything that picks the clips: a filtered run's first clip may well be the whole
/// set's, and only the first clip is checked against the VAE when reading.
fn cache_path(out: &Path, source: &ClipSource, clips: usize) -> PathBuf {
    let mut name = format!("latents-seed{}-{clips}clips", source.seed);
    if let Some(count) = source.only_objects {
        name.push_str(&format!("-{count}objects"));
    }
    if !source.only_captions.is_empty() {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let hash = source.only_captions.join("\n").bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        name.push_str(&format!("-captions{hash:016x}"));
    }
    out.join(format!("{name}.safetensors"))
}

/// Clips per VAE pass when encoding: one pass per clip leaves a GPU idle between small kernels.
const ENCODE_BATCH: usize = 16;

/// Encodes `count` training clips with the frozen `vae` (posterior means, not normalised).
pub fn encode_clips<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    source: ClipSource,
    clip: ClipShape,
    count: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<LatentClips, TrainError> {
    let clip_shape = [3, clip.frames, clip.height, clip.width];
    let [_, channels, frames, height, width] = latent_shape(vae, [1, 3, clip.frames, clip.height, clip.width]);
    let mut values = Vec::with_capacity(count * channels * frames * height * width);
    let mut captions = Vec::with_capacity(count);
    for first in (0..count).step_by(ENCODE_BATCH) {
        let group = ENCODE_BATCH.min(count - first);
        let mut pixels = Vec::with_capacity(group * clip_shape.iter().product::<usize>());
        for index in first..first + group {
            let training = training_clip(&mut source.rng(index)?, clip)?;
            pixels.extend(training.pixels);
            captions.push(training.scene.caption());
        }
        let [c, f, h, w] = clip_shape;
        let video = Tensor::<B, 5>::from_data(TensorData::new(pixels, [group, c, f, h, w]), device);
        values.extend(tensor_values(vae.encode(video)?)?);
        progress(Progress::EncodingClips { done: first + group, total: count });
    }
    Ok(LatentClips { latents: Batch5 { values, shape: [count, channels, frames, height, width] }, captions, object_masks: None })
}

/// The [`object_mask`]s of the `count` clips [`encode_clips`] encodes (rendering is cheap, so
/// they are not cached).
fn object_masks<B: Backend>(vae: &AutoencoderKLWan<B>, source: ClipSource, clip: ClipShape, count: usize) -> Result<Vec<f32>, TrainError> {
    let (time, space) = (vae.temporal_factor(), vae.spatial_factor());
    let mut masks = Vec::new();
    for index in 0..count {
        masks.extend(object_mask(&mut source.rng(index)?, clip, time, space)?);
    }
    Ok(masks)
}

/// The run's encoded clips: read from its cache, or encoded and cached. A cache is read only when
/// its first clip is what `vae` encodes now (it may come from another model's VAE: copied from
/// another run, or left by a run of another model into the same folder). Object masks are added
/// by the caller.
fn latent_clips<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    options: &TrainOptions,
    recipe: &DitRecipe,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<LatentClips, TrainError> {
    let source = ClipSource::new(options.recipe.seed, recipe);
    let path = cache_path(&options.out, &source, recipe.clips);
    if path.is_file()
        && let Some(latents) = cached_latents(vae, &path, options, recipe, device)?
    {
        let captions = (0..recipe.clips).map(|index| Ok(training_scene(&mut source.rng(index)?).1.caption())).collect::<Result<_, TrainError>>()?;
        progress(Progress::ReadCachedClips { count: recipe.clips });
        return Ok(LatentClips { latents, captions, object_masks: None });
    }
    let clips = encode_clips(vae, source, options.recipe.clip, recipe.clips, device, progress)?;
    let mut writer = TensorWriter::new();
    writer.put(LATENTS_TENSOR, &Tensor::<B, 5>::from_data(TensorData::new(clips.latents.values.clone(), clips.latents.shape), device))?;
    let partial = path.with_extension("partial");
    writer.write(&partial)?;
    std::fs::rename(&partial, &path).map_err(|e| io_error(&partial, e))?;
    Ok(clips)
}

/// The latents cached at `path` if they have the run's shape and their first clip matches a
/// fresh encoding of it by `vae`; `None` when they must be encoded again.
fn cached_latents<B: Backend>(
    vae: &AutoencoderKLWan<B>,
    path: &Path,
    options: &TrainOptions,
    recipe: &DitRecipe,
    device: &B::Device,
) -> Result<Option<Batch5>, TrainError> {
    let clip = options.recipe.clip;
    let [_, channels, frames, height, width] = latent_shape(vae, [1, 3, clip.frames, clip.height, clip.width]);
    let latents = TensorSource::open_files(&[path.to_path_buf()])?.tensor_of_rank::<B, 5>(LATENTS_TENSOR, device)?;
    let shape = latents.dims();
    if shape != [recipe.clips, channels, frames, height, width] {
        return Ok(None);
    }
    let values = tensor_values(latents)?;
    let first = encode_clips(vae, ClipSource::new(options.recipe.seed, recipe), clip, 1, device, &mut |_| {})?.latents.values;
    let matches = first.iter().zip(&values).all(|(fresh, cached)| (fresh - cached).abs() <= 1e-4 * (1.0 + fresh.abs()));
    Ok(matches.then_some(Batch5 { values, shape }))
}

struct DitStage<'a, B: AutodiffBackend> {
    trainer: DitTrainer<B>,
    clips: LatentClips,
    options: &'a TrainOptions,
    recipe: &'a DitRecipe,
}

impl<B: AutodiffBackend> Stage for DitStage<'_, B> {
    fn step(&mut self, step: usize) -> Result<f32, TrainError> {
        let recipe = &self.options.recipe;
        let flow_shift = self.trainer.pipeline.scheduler.flow_shift;
        let batch = flow_batch(&self.clips, recipe.seed, step, recipe.batch, self.recipe, flow_shift);
        self.trainer.step(&batch, recipe.lr_schedule.lr(recipe.lr, step))
    }

    fn checkpoint(&mut self, options: &TrainOptions, state: &TrainState) -> Result<(), TrainError> {
        let pipeline = &self.trainer.pipeline;
        run::write_checkpoint::<_, B>(options, state, self.trainer.optim.to_record(), |dir: &Path| Ok(pipeline.save(dir)?))
    }
}

/// Trains (or continues training) the DiT and text encoder of `options.model` into `options.out`.
pub fn train_dit<B: AutodiffBackend>(
    options: &TrainOptions,
    recipe: &DitRecipe,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<TrainState, TrainError> {
    let source = ClipSource::new(options.recipe.seed, recipe);
    source.check()?;
    let start = run::start(options)?;
    let pipeline = Pipeline::<B>::load(&start.weights, device)?;
    std::fs::create_dir_all(&options.out).map_err(|e| io_error(&options.out, e))?;
    let vae = pipeline.vae.valid();
    let mut clips = latent_clips(&vae, options, recipe, device, progress)?;
    if recipe.object_weight > 0.0 {
        clips.object_masks = Some(object_masks(&vae, source, options.recipe.clip, recipe.clips)?);
    }
    let mut trainer = DitTrainer::new(pipeline, recipe.loss, options.threads);
    if start.resumed {
        trainer.optim = trainer.optim.load_record(run::load_optimizer::<_, B>(&options.out, device)?);
    }
    progress(Progress::Started { step: start.state.step, steps: options.steps, resumed: start.resumed });
    run_steps(options, start.state, &mut DitStage { trainer, clips, options, recipe }, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::SigmaSampling;
    use crate::test_model::{CLIP, TestBackend, load, parameter_values, write_tiny_model};

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{what}: differs by {worst}");
    }

    /// Clips encoded in one VAE pass and captions in one text-encoder pass (as training does)
    /// equal the same encoded one at a time (as rendering does).
    #[test]
    fn batched_encoding_matches_one_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_model(dir.path());
        let pipeline = load::<vidfarm_model::DefaultBackend>(dir.path());
        let device = Default::default();
        let source = ClipSource::every_scene(4);
        let together = encode_clips(&pipeline.vae, source, CLIP, 3, &device, &mut |_| {}).expect("encode");
        let per_clip = together.latents.values.len() / 3;
        for index in 0..3 {
            let training = training_clip(&mut source.rng(index).expect("rng"), CLIP).expect("clip");
            let video = Tensor::from_data(TensorData::new(training.pixels, [1, 3, CLIP.frames, CLIP.height, CLIP.width]), &device);
            let alone = tensor_values(pipeline.vae.encode(video).expect("encode")).expect("values");
            assert_close(&together.latents.values[index * per_clip..(index + 1) * per_clip], &alone, &format!("clip {index}"));
            assert_eq!(together.captions[index], training.scene.caption());
        }
        let prompts = ["a red circle moving up", "", "a blue square on a white background"];
        let (hidden, _) = pipeline.encode_prompts(&prompts).expect("prompts");
        for (index, prompt) in prompts.iter().enumerate() {
            let alone = pipeline.encode_prompt(prompt).expect("prompt").hidden;
            let row = tensor_values(hidden.clone().narrow(0, index, 1)).expect("values");
            assert_close(&row, &tensor_values(alone).expect("values"), prompt);
        }
    }

    /// `--only-caption` draws every clip from its captions, each clip still its own draw, and
    /// refuses a caption no training scene has.
    #[test]
    fn only_captions_restrict_the_clips_drawn() {
        let only = ["a blue circle moving to the right on a white background".to_string(), "a blue circle moving up on a white background".to_string()];
        let source = ClipSource { seed: 3, only_captions: &only, only_objects: None };
        source.check().expect("training captions");
        let scenes: Vec<SceneSpec> = (0..12).map(|index| training_scene(&mut source.rng(index).expect("rng")).1).collect();
        assert!(scenes.iter().all(|scene| only.contains(&scene.caption())));
        assert!(only.iter().all(|caption| scenes.iter().any(|scene| scene.caption() == *caption)), "both captions drawn");
        let seeds: Vec<u64> = (0..12).map(|index| training_scene(&mut source.rng(index).expect("rng")).0).collect();
        assert!(seeds.iter().enumerate().all(|(i, seed)| !seeds[..i].contains(seed)), "every clip its own scene seed");
        let everything = ClipSource::every_scene(3);
        assert_eq!(training_scene(&mut everything.rng(5).expect("rng")).0, training_scene(&mut Rng::for_item(3, Purpose::DitClip, 0, 5)).0);
        for bad in ["a red circle moving to the right on a pink background", "a white circle moving up on a black background", "A blue circle moving up on a white background"] {
            let only = [bad.to_string()];
            let error = ClipSource { seed: 3, only_captions: &only, only_objects: None }.check().expect_err(bad).to_string();
            assert!(error.contains("pink") || error.contains("only-caption"), "{bad}: {error}");
        }
    }

    /// `--only-objects 2` draws two-object scenes only, and refuses a count no scene has or a
    /// caption of another count.
    #[test]
    fn only_objects_restricts_the_scenes_drawn() {
        let source = ClipSource { seed: 3, only_captions: &[], only_objects: Some(2) };
        source.check().expect("two objects");
        let scenes: Vec<SceneSpec> = (0..12).map(|index| training_scene(&mut source.rng(index).expect("rng")).1).collect();
        assert!(scenes.iter().all(|scene| scene.objects.len() == 2 && scene.split() == Split::Train));
        assert!(scenes.iter().enumerate().all(|(i, scene)| !scenes[..i].contains(scene)), "every clip its own scene");
        for count in [0, 3] {
            let error = ClipSource { seed: 3, only_captions: &[], only_objects: Some(count) }.check().expect_err("count").to_string();
            assert!(error.contains("--only-objects"), "{error}");
        }
        let one = ["a blue circle moving up on a white background".to_string()];
        let error = ClipSource { seed: 3, only_captions: &one, only_objects: Some(2) }.check().expect_err("one-object caption").to_string();
        assert!(error.contains("has 1 object(s)"), "{error}");
    }

    /// Runs that draw other clips never share a latents cache, and the whole set's keeps its name.
    #[test]
    fn cache_names_tell_clip_filters_apart() {
        let out = Path::new("run");
        let captions = ["a blue circle moving up on a white background".to_string()];
        let other = ["a blue circle moving down on a white background".to_string()];
        let names: Vec<PathBuf> = [
            ClipSource::every_scene(8),
            ClipSource { seed: 8, only_captions: &[], only_objects: Some(2) },
            ClipSource { seed: 8, only_captions: &captions, only_objects: None },
            ClipSource { seed: 8, only_captions: &other, only_objects: None },
            ClipSource::every_scene(9),
        ]
        .iter()
        .map(|source| cache_path(out, source, 1024))
        .collect();
        assert_eq!(names[0], out.join("latents-seed8-1024clips.safetensors"));
        assert!(names.iter().enumerate().all(|(i, name)| !names[..i].contains(name)), "{names:?}");
        assert_ne!(cache_path(out, &ClipSource::every_scene(8), 512), names[0]);
    }

    /// Every parameter's gradient in `grads`, in visiting order.
    fn gradient_values<M: AutodiffModule<TestBackend>>(module: &M, grads: &GradientsParams) -> Vec<f32> {
        struct Collect<'a>(&'a GradientsParams, Vec<f32>);
        impl ModuleVisitor<TestBackend> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<TestBackend, D>>) {
                if let Some(grad) = self.0.get::<<TestBackend as AutodiffBackend>::InnerBackend, D>(param.id) {
                    self.1.extend(tensor_values(grad).expect("values"));
                }
            }
        }
        let mut collect = Collect(grads, Vec::new());
        module.visit(&mut collect);
        collect.1
    }

    /// A batch split across threads (into even shards and uneven ones) gives the whole batch's
    /// loss and gradients, with the object-weighted loss and without.
    #[test]
    fn batches_split_across_threads_give_the_whole_batchs_gradients() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_model(dir.path());
        let trainers: Vec<DitTrainer<TestBackend>> = [1, 2, 3].into_iter().map(|threads| DitTrainer::new(load(dir.path()), FlowLoss::Sample, threads)).collect();
        let vae = trainers[0].pipeline.vae.valid();
        let clips = encode_clips(&vae, ClipSource::every_scene(0), CLIP, 2, &Default::default(), &mut |_| {}).expect("encode");
        let recipe = DitRecipe {
            clips: 2,
            window: 2,
            caption_dropout: 0.3,
            sigmas: SigmaSampling::Shifted,
            object_weight: 0.0,
            loss: FlowLoss::Sample,
            pure_noise_fraction: 0.0,
            only_captions: Vec::new(),
            only_objects: None,
        };
        let plain = flow_batch(&clips, 0, 0, 4, &recipe, 3.0);
        let weights = (0..4 * 2 * 4 * 4).map(|i| if i % 3 == 0 { 5.0 } else { 1.0 }).collect();
        let weighted = FlowBatch { loss_weights: Some(weights), ..plain.clone() };
        for (name, batch) in [("plain", plain), ("weighted", weighted)] {
            let results: Vec<(f32, Vec<f32>)> = trainers
                .iter()
                .map(|trainer| {
                    let trained = TextToFlow { transformer: trainer.pipeline.transformer.clone(), text_encoder: trainer.pipeline.text_encoder.clone() };
                    let (loss, grads) = trainer.gradients(&trained, &batch).expect("gradients");
                    (loss, gradient_values(&trained, &grads))
                })
                .collect();
            let (loss, grads) = &results[0];
            let largest = grads.iter().fold(0.0f32, |m, g| m.max(g.abs()));
            assert!(largest > 0.0 && grads.len() > 1000, "{name}: {} gradients up to {largest}", grads.len());
            for (threads, (split_loss, split_grads)) in [2, 3].iter().zip(&results[1..]) {
                assert!((split_loss - loss).abs() < 1e-5 * loss, "{name}, {threads} threads: loss {split_loss} vs {loss}");
                assert_eq!(split_grads.len(), grads.len(), "{name}, {threads} threads");
                let worst = grads.iter().zip(split_grads).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst < 1e-4 * largest, "{name}, {threads} threads: a gradient differs by {worst} (largest {largest})");
            }
        }
    }

    /// Training on one fixed batch must fit it, through the DiT and the text encoder both.
    #[test]
    fn steps_on_a_fixed_batch_lower_the_loss_and_train_the_text_encoder() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_model(dir.path());
        let mut trainer = DitTrainer::new(load::<TestBackend>(dir.path()), FlowLoss::Flow, 1);
        let device = Default::default();
        let vae = trainer.pipeline.vae.valid();
        let clips = encode_clips(&vae, ClipSource::every_scene(0), CLIP, 2, &device, &mut |_| {}).expect("encode");
        assert_eq!(clips.latents.shape, [2, 4, 3, 4, 4]);
        let recipe = DitRecipe {
            clips: 2,
            window: 2,
            caption_dropout: 0.0,
            sigmas: SigmaSampling::Shifted,
            object_weight: 0.0,
            loss: FlowLoss::Flow,
            pure_noise_fraction: 0.0,
            only_captions: Vec::new(),
            only_objects: None,
        };
        let batch = flow_batch(&clips, 0, 0, 2, &recipe, 3.0);
        // Weights of 1 everywhere are the plain MSE; weights on some values change it.
        let loss = |batch: &FlowBatch, kind| flow_matching_loss(&trainer.pipeline, batch, kind).expect("loss").into_scalar().elem::<f32>();
        let plain = loss(&batch, FlowLoss::Flow);
        // The clean latents' error is the flow's times sigma (< 1), so smaller.
        let sample = loss(&batch, FlowLoss::Sample);
        assert!(sample < plain && sample > 0.0, "sample loss {sample} against flow loss {plain}");
        let ones = FlowBatch { loss_weights: Some(vec![1.0; 2 * 2 * 4 * 4]), ..batch.clone() };
        let same = loss(&ones, FlowLoss::Flow);
        assert!((plain - same).abs() < 1e-5 * plain, "{plain} vs {same}");
        let weights = (0..2 * 2 * 4 * 4).map(|i| if i % 5 == 0 { 5.0 } else { 1.0 }).collect();
        let weighted = loss(&FlowBatch { loss_weights: Some(weights), ..batch.clone() }, FlowLoss::Flow);
        assert!((weighted - plain).abs() > 1e-4 * plain);
        let text_before = parameter_values(&trainer.pipeline.text_encoder);
        let losses: Vec<f32> = (0..12).map(|_| trainer.step(&batch, 1e-2).expect("step")).collect();
        println!("dit losses: {losses:?}");
        assert!(losses[11] < 0.5 * losses[0], "loss {} -> {}", losses[0], losses[11]);
        let text_after = parameter_values(&trainer.pipeline.text_encoder);
        assert!(text_before.iter().zip(&text_after).any(|(a, b)| a != b), "the text encoder did not change");
    }
}
