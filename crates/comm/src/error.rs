//! The collectives' error type.

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// A wrong group set-up or a mismatch between the ranks (lengths, roots).
    #[error("{0}")]
    Invalid(String),
    /// A connection failed (a rank stopped, the network went away).
    #[error("{0}")]
    Net(String),
}

pub type Result<T, E = CommError> = std::result::Result<T, E>;
