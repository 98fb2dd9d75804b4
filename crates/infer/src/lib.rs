//! Coil inference: generation from Mamba2 and hybrid Mamba-Transformer models.
//!
//! Owns: the decode state of a sequence ([`state`]: Mamba conv window + SSM state, attention KV cache), the
//! decode-step weights ([`weights`]) and the fast CPU step ([`step`], batched matrix-vector products in
//! [`matvec`]), the engine that joins prefill and step ([`engine`]), Megatron's sampling rules ([`sampling`])
//! and batched generation with EOS / length stops ([`generate`]); on a CUDA GPU, generation on the model's device
//! ([`device`]) with the fused decode step of `cuda_step` for models made of Mamba2 layers.
//!
//! Key design decision: prefill and decode are two implementations of one function. Prefill is the model's
//! own chunked forward (`HybridLm::forward_with_state`, the readable reference); the step is a separate,
//! allocation-free path over weights extracted once into contiguous buffers, and the tests hold it equal to
//! the model's forward. A sequence's state is its own (no padding, no shared batch tensor), so prompts of any
//! lengths batch together and give the same tokens as alone.
//!
//! dt clamp: by default the step clamps dt with the model's `time_step_limit` exactly as prefill does (Coil's
//! choice, see `coil_model`); [`DecodeDtClamp::HfUnclamped`] reproduces HF transformers' unclamped step.

#[cfg(feature = "cuda")]
pub mod cuda_step;
pub mod device;
pub mod engine;
pub mod error;
pub mod generate;
pub mod matvec;
pub mod sampling;
pub mod state;
pub mod step;
pub mod weights;

pub use device::generate_on_device;
pub use engine::{Engine, EngineOptions};
pub use error::{InferError, Result};
pub use generate::{generate, GenerateParams, Generation, StateDtype, StopReason};
pub use matvec::WeightDtype;
pub use sampling::{Sampler, SamplingParams};
pub use state::SeqState;
pub use weights::DecodeDtClamp;
