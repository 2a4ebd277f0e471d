//! The one error type of the model crate: every failure names the file (and tensor) it is about,
//! so a bad checkpoint folder can be fixed from the message alone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: file not found")]
    MissingFile { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file (truncated or corrupt): {reason}")]
    CorruptSafetensors { path: PathBuf, reason: String },

    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor `{tensor}` has dtype {found}, expected {expected}")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        found: String,
        expected: &'static str,
    },

    #[error("{path}: invalid config: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    #[error("{path}: unsupported value {value} for config field `{field}`: {reason}")]
    UnsupportedConfig {
        path: PathBuf,
        field: String,
        value: String,
        reason: String,
    },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("cancelled by the step callback")]
    Cancelled,
}
