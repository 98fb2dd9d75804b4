//! Coil models: Mamba2 and hybrid Mamba-Transformer (Nemotron-H, Mamba2-Hybrid) language models.
//!
//! Owns: the model config ([`config::ModelConfig`], read from HF / state-spaces `config.json` by
//! [`hf_config`], or taken from the 11 NeMo [`presets`]), the parameter table ([`params`]: names, shapes,
//! count, initialisation), checkpoint reading ([`weights`]) and the forward pass ([`lm::HybridLm`]).
//!
//! Key design decision: the architecture is data. The hybrid pattern string (`M` Mamba2, `*` attention,
//! `-` MLP) is parsed into layer kinds and the model is built with one `match`; module and tensor names spell
//! the HF checkpoint names, so HF import needs no renaming table beyond [`weights::aliases`].
//!
//! dt clamp: HF applies `time_step_limit` (Nemotron-H: `time_step_min`) only in the chunked path; Coil applies
//! the same limits in the single-token path too, so its prefill and decode compute the same function.

pub mod config;
pub mod device;
pub mod error;
pub mod hf_config;
pub mod layers;
pub mod lm;
pub mod parallel;
pub mod params;
pub mod presets;
pub mod trace;
pub mod weights;

pub use config::{LayerKind, ModelConfig};
pub use error::{ModelError, Result};
pub use lm::{all_finite, next_token_loss, HybridLm, LayerState, ModelState};
pub use trace::Trace;
