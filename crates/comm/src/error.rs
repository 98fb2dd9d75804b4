//! The collectives' error type.

/// Why a collective call or a group's set-up failed. A failed call fails on every rank of the group.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// A wrong group set-up or a mismatch between the ranks (lengths, roots).
    #[error("{0}")]
    Invalid(String),
    /// A connection failed (a rank stopped, the network went away).
    #[error("{0}")]
    Net(String),
}

/// The collectives' result type.
pub type Result<T, E = CommError> = std::result::Result<T, E>;
