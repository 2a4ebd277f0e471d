//! Reading and writing diffusers-layout component folders: `config.json` plus the weights, either
//! one safetensors file or a sharded set listed by a `*.safetensors.index.json`.
//!
//! Loading is explicit: each module asks a [`TensorSource`] for its tensors by checkpoint name and
//! expected shape, so a bad checkpoint fails with an error naming the file and the tensor.
//! Saving mirrors it: modules put their tensors into a [`TensorWriter`] under the same names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ModelError;

/// Weight file names diffusers and transformers write, in the order they are tried.
pub const WEIGHT_FILE_NAMES: [&str; 2] = ["diffusion_pytorch_model.safetensors", "model.safetensors"];

/// Joins a module prefix and a tensor name the way PyTorch state dicts do (`blocks.0` + `weight`).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ModelError::MissingFile { path: path.to_path_buf() }
    } else {
        ModelError::Io { path: path.to_path_buf(), source }
    }
}

/// Reads a JSON config; fields the struct does not know are ignored (diffusers adds `_class_name`
/// etc.), values it cannot parse are errors naming the file.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub fn write_config<T: Serialize>(path: &Path, config: &T) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(config).map_err(|e| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|e| io_error(path, e))
}

/// The weights file(s) of a component folder: a single file if present, else the shards named by
/// the index json.
pub fn component_weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    for name in WEIGHT_FILE_NAMES {
        let single = dir.join(name);
        if single.is_file() {
            return Ok(vec![single]);
        }
    }
    for name in WEIGHT_FILE_NAMES {
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            return shard_files(&index);
        }
    }
    Err(ModelError::MissingFile { path: dir.join(WEIGHT_FILE_NAMES[0]) })
}

fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = read_config(index_path)?;
    if index.weight_map.is_empty() {
        return Err(ModelError::InvalidConfig { path: index_path.to_path_buf(), reason: "weight_map names no tensors".into() });
    }
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = index.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl WeightFile {
    fn open(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::CorruptSafetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self { path: path.to_path_buf(), bytes, data_start: 8 + header_len, metadata })
    }

    fn data(&self, info: &TensorInfo) -> &[u8] {
        // read_metadata has validated the offsets against the buffer length.
        &self.bytes[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1]
    }
}

/// Named tensors of one component, from one or several safetensors files.
pub struct TensorSource {
    files: Vec<WeightFile>,
    /// Tensor name -> index into `files`.
    location: HashMap<String, usize>,
}

impl TensorSource {
    /// Opens the weights of a diffusers component folder (single file or sharded).
    pub fn open_component(dir: &Path) -> Result<Self, ModelError> {
        Self::open_files(&component_weight_files(dir)?)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = WeightFile::open(path)?;
            for name in file.metadata.tensors().keys() {
                location.insert(name.clone(), index);
            }
            files.push(file);
        }
        Ok(Self { files, location })
    }

    /// The file a tensor lives in, or the first file when it is missing (for error messages).
    fn path_of(&self, name: &str) -> PathBuf {
        let index = self.location.get(name).copied().unwrap_or(0);
        self.files.get(index).map(|f| f.path.clone()).unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.location.keys().cloned().collect();
        names.sort();
        names
    }

    /// Shape and dtype of a stored tensor.
    pub fn info(&self, name: &str) -> Result<(Vec<usize>, Dtype), ModelError> {
        let (_, info) = self.lookup(name)?;
        Ok((info.shape.clone(), info.dtype))
    }

    fn lookup(&self, name: &str) -> Result<(&WeightFile, &TensorInfo), ModelError> {
        let missing = || ModelError::MissingTensor { path: self.path_of(name), tensor: name.to_string() };
        let file = self.location.get(name).and_then(|&i| self.files.get(i)).ok_or_else(missing)?;
        let info = file.metadata.info(name).ok_or_else(missing)?;
        Ok((file, info))
    }

    /// A float tensor converted to f32, checked against the expected shape.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        let (file, info) = self.lookup(name)?;
        if info.shape.as_slice() != shape.as_slice() {
            return Err(ModelError::ShapeMismatch {
                path: file.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        self.float_tensor(file, name, info, device)
    }

    /// A float tensor of any shape of rank `D` (for inputs whose size is not known in advance).
    pub fn tensor_of_rank<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        let (file, info) = self.lookup(name)?;
        if info.shape.len() != D {
            return Err(ModelError::ShapeMismatch {
                path: file.path.clone(),
                tensor: name.to_string(),
                expected: vec![0; D],
                found: info.shape.clone(),
            });
        }
        self.float_tensor(file, name, info, device)
    }

    fn float_tensor<B: Backend, const D: usize>(
        &self,
        file: &WeightFile,
        name: &str,
        info: &TensorInfo,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        let bytes = file.data(info);
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => {
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::F64 => self.f64_values(name)?.into_iter().map(|v| v as f32).collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: file.path.clone(),
                    tensor: name.to_string(),
                    found: format!("{other:?}"),
                    expected: "F32, F16, BF16 or F64",
                });
            }
        };
        Ok(Tensor::from_data(TensorData::new(values, info.shape.clone()), device))
    }

    /// The values of an F64 or F32 tensor in full precision (schedules, reference numbers).
    pub fn f64_values(&self, name: &str) -> Result<Vec<f64>, ModelError> {
        let (file, info) = self.lookup(name)?;
        let bytes = file.data(info);
        match info.dtype {
            Dtype::F64 => Ok(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()),
            Dtype::F32 => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect()),
            other => Err(ModelError::UnsupportedDtype {
                path: file.path.clone(),
                tensor: name.to_string(),
                found: format!("{other:?}"),
                expected: "F64 or F32",
            }),
        }
    }

    /// The values of a float (F64/F32/F16/BF16) or integer (I64/I32) tensor as f64, e.g. timesteps
    /// that a reference may store in either form.
    pub fn f64_values_any(&self, name: &str) -> Result<Vec<f64>, ModelError> {
        let (file, info) = self.lookup(name)?;
        let bytes = file.data(info);
        match info.dtype {
            Dtype::F64 | Dtype::F32 => self.f64_values(name),
            Dtype::F16 => Ok(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect()),
            Dtype::BF16 => Ok(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect()),
            Dtype::I64 => Ok(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64).collect()),
            Dtype::I32 => Ok(bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect()),
            other => Err(ModelError::UnsupportedDtype {
                path: file.path.clone(),
                tensor: name.to_string(),
                found: format!("{other:?}"),
                expected: "a float or integer dtype (F64, F32, F16, BF16, I64, I32)",
            }),
        }
    }

    /// An integer tensor (I64 or I32) of any shape of rank `D`, e.g. token ids.
    pub fn int_tensor_of_rank<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D, Int>, ModelError> {
        let (file, info) = self.lookup(name)?;
        if info.shape.len() != D {
            return Err(ModelError::ShapeMismatch {
                path: file.path.clone(),
                tensor: name.to_string(),
                expected: vec![0; D],
                found: info.shape.clone(),
            });
        }
        let bytes = file.data(info);
        let values: Vec<i64> = match info.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect(),
            Dtype::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: file.path.clone(),
                    tensor: name.to_string(),
                    found: format!("{other:?}"),
                    expected: "I64 or I32",
                });
            }
        };
        Ok(Tensor::from_data(TensorData::new(values, info.shape.clone()), device))
    }
}

/// Collects named f32 tensors and writes them as one safetensors file.
#[derive(Default)]
pub struct TensorWriter {
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl TensorWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put<B: Backend, const D: usize>(&mut self, name: &str, tensor: &Tensor<B, D>) -> Result<(), ModelError> {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .to_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::InvalidInput(format!("tensor `{name}`: {e:?}")))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.insert(name.to_string(), (Dtype::F32, shape, bytes));
        Ok(())
    }

    pub fn put_int<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        tensor: &Tensor<B, D, Int>,
    ) -> Result<(), ModelError> {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .to_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| ModelError::InvalidInput(format!("tensor `{name}`: {e:?}")))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.insert(name.to_string(), (Dtype::I64, shape, bytes));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Number of scalar values written so far (the parameter count when a whole module was put).
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|(_, shape, _)| shape.iter().product::<usize>()).sum()
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, (dtype, shape, bytes)) in &self.tensors {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| {
                ModelError::CorruptSafetensors { path: path.to_path_buf(), reason: format!("tensor `{name}`: {e}") }
            })?;
            views.push((name.as_str(), view));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        safetensors::tensor::serialize_to_file(views, None, path)
            .map_err(|e| ModelError::CorruptSafetensors { path: path.to_path_buf(), reason: e.to_string() })
    }
}

/// Writes a component folder: `config.json` and one weights file named `weights_file`.
pub fn save_component<T: Serialize>(
    dir: &Path,
    config: &T,
    weights_file: &str,
    weights: &TensorWriter,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    write_config(&dir.join("config.json"), config)?;
    weights.write(&dir.join(weights_file))
}

/// Error for an enum-like config field with a value this crate does not implement.
pub fn unsupported(path: &Path, field: &str, value: impl std::fmt::Debug, reason: &str) -> ModelError {
    ModelError::UnsupportedConfig {
        path: path.to_path_buf(),
        field: field.to_string(),
        value: format!("{value:?}"),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Linear;
    use crate::test_util::TestBackend;

    type B = TestBackend;

    fn write_raw(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                (*name, safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("view"))
            })
            .collect();
        safetensors::tensor::serialize_to_file(views, None, path).expect("write");
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn message(err: ModelError) -> String {
        err.to_string()
    }

    #[test]
    fn missing_weights_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = TensorSource::open_component(dir.path()).err().expect("must fail");
        assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
        assert!(message(err).contains("diffusion_pytorch_model.safetensors"));
    }

    #[test]
    fn missing_tensor_names_file_and_tensor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        write_raw(&path, vec![("proj.weight", Dtype::F32, vec![2, 3], f32_bytes(&[0.0; 6]))]);
        let src = TensorSource::open_component(dir.path()).expect("open");
        let err = Linear::<B>::load(&src, "proj", 3, 2, true, &Default::default()).expect_err("no bias");
        assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
        let text = message(err);
        assert!(text.contains("model.safetensors") && text.contains("proj.bias"), "{text}");
    }

    #[test]
    fn wrong_shape_names_file_tensor_and_shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        write_raw(&path, vec![("proj.weight", Dtype::F32, vec![3, 2], f32_bytes(&[0.0; 6]))]);
        let src = TensorSource::open_component(dir.path()).expect("open");
        let err = Linear::<B>::load(&src, "proj", 3, 2, false, &Default::default()).expect_err("shape");
        let text = message(err);
        assert!(text.contains("model.safetensors") && text.contains("proj.weight"), "{text}");
        assert!(text.contains("[3, 2]") && text.contains("[2, 3]"), "{text}");
    }

    #[test]
    fn integer_dtype_is_rejected_with_file_and_tensor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        let bytes: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_raw(&path, vec![("scale", Dtype::I64, vec![2], bytes)]);
        let src = TensorSource::open_component(dir.path()).expect("open");
        let err = src.tensor::<B, 1>("scale", [2], &Default::default()).expect_err("dtype");
        assert!(matches!(err, ModelError::UnsupportedDtype { .. }), "{err}");
        let text = message(err);
        assert!(text.contains("model.safetensors") && text.contains("scale") && text.contains("I64"), "{text}");
    }

    #[test]
    fn half_precision_weights_convert_to_f32() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        let f16: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let bf16: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        write_raw(&path, vec![("a", Dtype::F16, vec![2], f16), ("b", Dtype::BF16, vec![2], bf16)]);
        let src = TensorSource::open_component(dir.path()).expect("open");
        let device = Default::default();
        let a: Vec<f32> = src.tensor::<B, 1>("a", [2], &device).expect("a").into_data().into_vec().expect("f32");
        let b: Vec<f32> = src.tensor::<B, 1>("b", [2], &device).expect("b").into_data().into_vec().expect("f32");
        assert_eq!((a, b), (vec![1.5, -2.0], vec![0.25, 3.0]));
    }

    #[test]
    fn truncated_file_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("diffusion_pytorch_model.safetensors");
        write_raw(&path, vec![("w", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("truncate");
        let err = TensorSource::open_component(dir.path()).err().expect("corrupt");
        assert!(matches!(err, ModelError::CorruptSafetensors { .. }), "{err}");
        assert!(message(err).contains("diffusion_pytorch_model.safetensors"));
        std::fs::write(&path, b"\x05").expect("garbage");
        assert!(matches!(TensorSource::open_component(dir.path()), Err(ModelError::CorruptSafetensors { .. })));
    }

    #[test]
    fn sharded_component_loads_through_its_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_raw(&dir.path().join("model-00001-of-00002.safetensors"), vec![("a", Dtype::F32, vec![1], f32_bytes(&[1.0]))]);
        write_raw(&dir.path().join("model-00002-of-00002.safetensors"), vec![("b", Dtype::F32, vec![1], f32_bytes(&[2.0]))]);
        let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).expect("index");
        let src = TensorSource::open_component(dir.path()).expect("open");
        assert_eq!(src.names(), vec!["a".to_string(), "b".to_string()]);
        let b: Vec<f32> = src.tensor::<B, 1>("b", [1], &Default::default()).expect("b").into_data().into_vec().expect("f32");
        assert_eq!(b, vec![2.0]);
        // A shard named by the index but absent is a missing file.
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).expect("rm");
        let err = TensorSource::open_component(dir.path()).err().expect("missing shard");
        assert!(message(err).contains("model-00002-of-00002.safetensors"));
    }

    /// An index naming no shards is an error about the index, not a missing tensor with no
    /// file named; an integer tensor's message names the float dtypes that would do.
    #[test]
    fn an_empty_index_and_a_wrong_dtype_say_what_would_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("model.safetensors.index.json"), r#"{"metadata": {}, "weight_map": {}}"#).expect("index");
        let text = message(TensorSource::open_component(dir.path()).err().expect("empty index"));
        assert!(text.contains("model.safetensors.index.json") && text.contains("weight_map names no tensors"), "{text}");

        std::fs::remove_file(dir.path().join("model.safetensors.index.json")).expect("rm");
        write_raw(&dir.path().join("model.safetensors"), vec![("scale", Dtype::I8, vec![2], vec![1, 2])]);
        let src = TensorSource::open_component(dir.path()).expect("open");
        let text = message(src.tensor::<B, 1>("scale", [2], &Default::default()).expect_err("dtype"));
        assert!(text.ends_with("has dtype I8, expected F32, F16, BF16 or F64"), "{text}");
    }

    #[test]
    fn writer_round_trips_through_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = Default::default();
        let linear = Linear::<B>::random(3, 2, true, &device);
        let mut out = TensorWriter::new();
        linear.save(&mut out, "proj").expect("save");
        assert_eq!(out.num_values(), 8);
        out.write(&dir.path().join("model.safetensors")).expect("write");
        let src = TensorSource::open_component(dir.path()).expect("open");
        let loaded = Linear::<B>::load(&src, "proj", 3, 2, true, &device).expect("load");
        let values = |t: Tensor<B, 2>| t.into_data().into_vec::<f32>().expect("f32");
        assert_eq!(values(loaded.weight.val()), values(linear.weight.val()), "weights round-trip bit for bit");
        let bias = |l: &Linear<B>| l.bias.as_ref().expect("bias").val().into_data().into_vec::<f32>().expect("f32");
        assert_eq!(bias(&loaded), bias(&linear));
        // The loaded weight is a transposed view of the file's [out, in] layout, so the matmul may
        // sum in another order: equal outputs to rounding, not bit for bit.
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [1, 3]), &device);
        let diff: f32 = (linear.forward(x.clone()) - loaded.forward(x)).abs().max().into_scalar();
        assert!(diff <= 1e-6, "{diff}");
    }
}
