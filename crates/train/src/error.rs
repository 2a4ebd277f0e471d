//! The training crate's error: every failure says which file or option it is about.

use std::path::PathBuf;

use vidfarm_model::ModelError;
use vidfarm_synth::SynthError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),

    // Transparent: a `{0}` message with `#[from]` (also its source) prints the cause twice.
    #[error(transparent)]
    Synth(#[from] SynthError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: optimizer state: {reason}")]
    OptimizerState { path: PathBuf, reason: String },

    /// The output folder holds a run this command cannot continue.
    #[error("{path}: {reason}")]
    Resume { path: PathBuf, reason: String },

    #[error("step {step}: the loss is {loss}; lower the learning rate")]
    Diverged { step: usize, loss: f32 },

    #[error("tensor: {0}")]
    Tensor(String),

    #[error("invalid training option: {0}")]
    InvalidOption(String),
}

pub(crate) fn io_error(path: impl Into<PathBuf>, source: std::io::Error) -> TrainError {
    TrainError::Io { path: path.into(), source }
}

/// A tensor's values as f32 (the backends here hold f32).
pub(crate) fn tensor_values<B: burn::tensor::backend::Backend, const D: usize>(
    tensor: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>, TrainError> {
    tensor.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| TrainError::Tensor(format!("{e:?}")))
}
