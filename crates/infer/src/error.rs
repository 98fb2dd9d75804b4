//! Errors of the inference crate: every message names what was wrong and what to do instead.

use coil_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Sampling settings that Megatron refuses (or that make no sense), e.g. top-k and top-p together.
    #[error("invalid sampling settings: {0}")]
    Sampling(String),
    /// A request the engine cannot serve (empty prompt, token id outside the vocabulary, batch too large).
    #[error("{0}")]
    Invalid(String),
    /// The model produced NaN or infinite logits (broken or diverged weights): sampling from them is refused.
    #[error("{0}")]
    NonFinite(String),
    /// The model (or its state) failed while prefilling.
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, InferError>;
