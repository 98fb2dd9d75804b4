//! The model crate's error type: every variant names the file, field or tensor involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("invalid model config: {0}")]
    Invalid(String),

    /// Input the model cannot run on (token ids outside the vocabulary, empty or misshapen ids).
    #[error("{0}")]
    Input(String),

    /// A misspelt device spec (`--device`, `run.device`).
    #[error("{0}")]
    Device(String),

    /// A weight holding NaN or infinity: the checkpoint is broken (typically saved by a diverged run).
    #[error(
        "tensor `{name}` in {file} holds non-finite values (NaN or infinity); these weights cannot be used \
         (a diverged training run?): take an earlier checkpoint"
    )]
    NonFinite { name: String, file: String },

    /// A collective of tensor parallelism failed (a rank stopped, or the ranks disagree).
    #[error("tensor parallelism: {0}")]
    Comm(#[from] coil_comm::CommError),

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

    // The underlying errors are fields named `error`, not `source`: the message already holds their text, and a
    // `source` would make `{:#}` (anyhow's chain) print it a second time.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{context}: {error}")]
    Tensor {
        context: String,
        error: candle_core::Error,
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
