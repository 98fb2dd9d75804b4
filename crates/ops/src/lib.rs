//! Coil ops: the numerical kernels of the Mamba2 mixer.
//!
//! Owns: the SSD (state-space dual) scan, the causal depthwise conv1d + SiLU, the dt parametrisation and the
//! group-wise gated RMSNorm, each with its backward, and [`mixer_core`]: the whole Mamba2 mixer chain between
//! in_proj and out_proj as one op with a backward (and, in [`tensor::mixer_core`], as a candle custom op that
//! candle autograd runs through). Every op has a plain, readable reference (`*_reference`) and a fast CPU path;
//! tests run both on one case table, and check backwards against finite differences. Every op that mixes time
//! steps takes an optional `seq_idx` for packed rows ([`packing`] says what it means).
//!
//! Key design decision: the math lives on plain `f32` slices with explicit shapes (see [`ssd::SsdDims`]); the
//! tensor-level entry points in [`tensor`] are the only place that looks at the device. Model code calls those
//! and never names a backend, so a CUDA path slots in beside the CPU one without touching the model.

pub mod conv1d;
pub mod dt;
mod linalg;
pub mod mixer_core;
pub mod norm;
pub mod packing;
pub mod ssd;
pub mod tensor;

pub use mixer_core::{
    mixer_core_backward, mixer_core_forward, MixerCoreDims, MixerCoreGrads, MixerParams,
};
pub use tensor::{mixer_core, mixer_core_packed, pack_mixer_params};

#[cfg(test)]
mod testutil;
