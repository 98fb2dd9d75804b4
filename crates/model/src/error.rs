//! The model crate's error type: every variant names the file, field or tensor involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("invalid model config: {0}")]
    Invalid(String),

    #[error("{0} is not supported by Coil")]
    Unsupported(String),

    #[error("tensor `{name}` not found in {file} (expected shape {expected:?})")]
    MissingTensor {
        name: String,
        file: String,
        expected: Vec<usize>,
    },

    #[error("tensor `{name}` in {file} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        file: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Tensor {
        context: String,
        source: candle_core::Error,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
