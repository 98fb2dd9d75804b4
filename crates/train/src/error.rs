//! The training crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("non-finite value: {0}")]
    NonFinite(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The run directory is locked by another process.
    #[error("{0}")]
    Locked(String),
    // `error`, not `source`: the message holds its text already (anyhow's `{:#}` would print a source twice).
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("invalid training setup: {0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] coil_model::ModelError),
    /// A collective failed (a rank stopped, or the ranks disagree); its message says which.
    #[error(transparent)]
    Comm(#[from] coil_comm::CommError),
    #[error(transparent)]
    Data(#[from] coil_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |error| TrainError::Io {
        path: path.to_path_buf(),
        error,
    }
}
