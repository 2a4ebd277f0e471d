//! Component runner and model inspection for the CLI: run one model component on tensors read from
//! a safetensors file (e.g. a parity fixture's inputs) and time it; summarise a model folder.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde_json::{Value, json};

use crate::checkpoint::{TensorSource, TensorWriter, read_config};
use crate::error::ModelError;
use crate::pipeline::DefaultBackend;
use crate::text_encoder::UMT5EncoderModel;
use crate::transformer::WanTransformer3DModel;
use crate::vae::AutoencoderKLWan;

/// A component that can be run alone. Input and output tensor names:
/// `dit`: `hidden_states`, `timestep`, `encoder_hidden_states` -> `sample`;
/// `vae-decode`: `z` -> `sample`; `vae-encode`: `sample` -> `latent_dist_mean`;
/// `text`: `input_ids`, `attention_mask` -> `last_hidden_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Dit,
    VaeDecode,
    VaeEncode,
    Text,
}

impl Component {
    pub const ALL: [Component; 4] = [Component::Dit, Component::VaeDecode, Component::VaeEncode, Component::Text];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Dit => "dit",
            Component::VaeDecode => "vae-decode",
            Component::VaeEncode => "vae-encode",
            Component::Text => "text",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Component {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Component::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            ModelError::InvalidInput(format!("unknown component {s:?}, expected dit, vae-decode, vae-encode or text"))
        })
    }
}

/// Seconds spent loading the component and running it, once per repeat.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentTiming {
    pub load_s: f64,
    pub run_s: Vec<f64>,
}

/// Loads `component` from its folder `checkpoint` (e.g. `.../transformer`), runs it `repeat` times
/// (at least once) on the tensors in `inputs`, and writes the last output to `out`.
pub fn run_component(
    component: Component,
    checkpoint: &Path,
    inputs: &Path,
    out: &Path,
    repeat: usize,
) -> Result<ComponentTiming, ModelError> {
    run_component_on::<DefaultBackend>(component, checkpoint, inputs, out, repeat, &Default::default())
}

/// [`run_component`] on a chosen backend and device.
pub fn run_component_on<B: Backend>(
    component: Component,
    checkpoint: &Path,
    inputs: &Path,
    out: &Path,
    repeat: usize,
    device: &B::Device,
) -> Result<ComponentTiming, ModelError> {
    let io = TensorSource::open_files(&[inputs.to_path_buf()])?;
    let started = Instant::now();
    let runner: Box<dyn Fn() -> Result<Output<B>, ModelError>> = match component {
        Component::Dit => {
            let model = WanTransformer3DModel::<B>::load(checkpoint, device)?;
            let latents = io.tensor_of_rank::<B, 5>("hidden_states", device)?;
            let text = io.tensor_of_rank::<B, 3>("encoder_hidden_states", device)?;
            let timesteps: Vec<f32> = io.f64_values_any("timestep")?.into_iter().map(|t| t as f32).collect();
            Box::new(move || Ok(Output::Float5("sample", model.forward(latents.clone(), &timesteps, text.clone())?)))
        }
        Component::VaeDecode => {
            let vae = AutoencoderKLWan::<B>::load(checkpoint, device)?;
            let z = io.tensor_of_rank::<B, 5>("z", device)?;
            Box::new(move || Ok(Output::Float5("sample", vae.decode(z.clone())?)))
        }
        Component::VaeEncode => {
            let vae = AutoencoderKLWan::<B>::load(checkpoint, device)?;
            let video = io.tensor_of_rank::<B, 5>("sample", device)?;
            Box::new(move || Ok(Output::Float5("latent_dist_mean", vae.encode(video.clone())?)))
        }
        Component::Text => {
            let encoder = UMT5EncoderModel::<B>::load(checkpoint, device)?;
            let ids = io.int_tensor_of_rank::<B, 2>("input_ids", device)?;
            let mask = io.int_tensor_of_rank::<B, 2>("attention_mask", device)?;
            Box::new(move || Ok(Output::Float3("last_hidden_state", encoder.forward(ids.clone(), mask.clone())?)))
        }
    };
    let _ = B::sync(device);
    let load_s = started.elapsed().as_secs_f64();

    let mut run_s = Vec::with_capacity(repeat.max(1));
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        let output = runner()?;
        // Reading the result back waits for the device, so the time covers the whole run.
        let written = output.into_writer()?;
        run_s.push(started.elapsed().as_secs_f64());
        last = Some(written);
    }
    if let Some(writer) = last {
        writer.write(out)?;
    }
    Ok(ComponentTiming { load_s, run_s })
}

enum Output<B: Backend> {
    Float5(&'static str, Tensor<B, 5>),
    Float3(&'static str, Tensor<B, 3>),
}

impl<B: Backend> Output<B> {
    fn into_writer(self) -> Result<TensorWriter, ModelError> {
        let mut writer = TensorWriter::new();
        match self {
            Output::Float5(name, tensor) => writer.put(name, &tensor)?,
            Output::Float3(name, tensor) => writer.put(name, &tensor)?,
        }
        Ok(writer)
    }
}

/// Parameter count and dtypes of a component folder's weights, read from the safetensors headers.
fn weights_summary(dir: &Path) -> Result<Value, ModelError> {
    let src = TensorSource::open_component(dir)?;
    let mut parameters = 0usize;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for name in src.names() {
        let (shape, dtype) = src.info(&name)?;
        let count = shape.iter().product::<usize>();
        parameters += count;
        *dtypes.entry(format!("{dtype:?}")).or_default() += count;
    }
    Ok(json!({ "tensors": src.names().len(), "parameters": parameters, "dtype": dtypes }))
}

fn component_info(dir: &Path) -> Result<Value, ModelError> {
    let config: Value = read_config(&dir.join("config.json"))?;
    let mut info = weights_summary(dir)?;
    info["config"] = config;
    Ok(info)
}

/// Summary of a model folder: a whole pipeline (with `model_index.json`) or one component folder.
/// For each component: its config, parameter count, and parameters per stored dtype.
pub fn model_info(dir: &Path) -> Result<Value, ModelError> {
    let index_path = dir.join("model_index.json");
    if !index_path.is_file() {
        return component_info(dir);
    }
    let index: Value = read_config(&index_path)?;
    let mut components = serde_json::Map::new();
    let mut total = 0u64;
    for name in ["transformer", "vae", "text_encoder"] {
        let info = component_info(&dir.join(name))?;
        total += info["parameters"].as_u64().unwrap_or(0);
        components.insert(name.to_string(), info);
    }
    let scheduler: Value = read_config(&dir.join("scheduler").join("scheduler_config.json"))?;
    Ok(json!({
        "model_index": index,
        "parameters": total,
        "components": components,
        "scheduler": scheduler,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, fixture, max_abs_diff};

    type B = TestBackend;

    #[test]
    fn runs_the_dit_fixture_and_writes_its_output() {
        let dir = fixture("dit_b");
        let out_dir = tempfile::tempdir().expect("tempdir");
        let out = out_dir.path().join("out.safetensors");
        let device = Default::default();
        let timing = run_component_on::<B>(Component::Dit, &dir.join("transformer"), &dir.join("io.safetensors"), &out, 2, &device)
            .expect("run");
        assert_eq!(timing.run_s.len(), 2);
        let produced = TensorSource::open_files(&[out]).expect("out").tensor_of_rank::<B, 5>("sample", &device).expect("sample");
        let expected = TensorSource::open_files(&[dir.join("io.safetensors")])
            .expect("io")
            .tensor_of_rank::<B, 5>("sample", &device)
            .expect("sample");
        assert!(max_abs_diff(produced, expected) <= 1e-4);
    }

    #[test]
    fn missing_input_tensor_is_an_error() {
        let dir = fixture("dit_b");
        let out_dir = tempfile::tempdir().expect("tempdir");
        let result = run_component_on::<B>(
            Component::VaeDecode,
            &fixture("vae").join("vae"),
            &dir.join("io.safetensors"),
            &out_dir.path().join("o.safetensors"),
            1,
            &Default::default(),
        );
        let err = result.expect_err("no z in the DiT inputs");
        assert!(err.to_string().contains('z'), "{err}");
    }

    #[test]
    fn component_names_parse() {
        for c in Component::ALL {
            assert_eq!(c.to_string().parse::<Component>().expect("parse"), c);
        }
    }

    #[test]
    fn model_info_counts_parameters() {
        let info = model_info(&fixture("dit_a").join("transformer")).expect("info");
        assert!(info["parameters"].as_u64().unwrap_or(0) > 1000);
        assert!(info["dtype"]["F16"].as_u64().is_some());
        assert_eq!(info["config"]["num_layers"], 2);
    }
}
