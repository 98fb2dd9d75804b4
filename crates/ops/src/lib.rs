//! Coil ops: the numerical kernels of the Mamba2 mixer and of the training loss.
//!
//! Owns the SSD (state-space dual) scan ([`ssd`]), the causal depthwise conv1d + SiLU ([`conv1d`]), the dt
//! parametrisation ([`dt`]), the group-wise gated RMSNorm ([`gated_rmsnorm`]), the whole Mamba2 mixer chain
//! between in_proj and out_proj as one candle op with a hand-written backward
//! ([`mixer_core`](mod@mixer_core)), the per-row cross-entropy over a large vocabulary ([`cross_entropy`]), and
//! the dense layer ([`linear`]) and RMSNorm ([`rmsnorm`]) as ops whose CPU backward avoids the zero-filled,
//! strided and per-node gradients candle's autograd would build for their composed forms.
//! Every op that mixes time steps takes an optional `seq_idx` for packed rows ([`packing`] says what it means).
//!
//! Layout rule: one directory per op, each with the same files:
//! - `mod.rs`: the op's tensor-level entry point and the one place that picks the device path (for an op with
//!   autograd, the candle custom op with `cpu_fwd`, `cuda_fwd` behind the `cuda` feature, and the backward);
//! - `reference.rs`: the plain, readable definition (f64 or simple loops) every other path is checked against;
//! - `cpu.rs`: the fast CPU kernels on f32 slices, forward and backward, each with an `_into` form that writes
//!   every element of a caller's buffer;
//! - `composed.rs`: the same op from candle tensor ops, differentiable by candle autograd: the path of every
//!   device without a kernel of its own (CUDA today), and after that a checked twin;
//! - `tests.rs`: the op's case table, one named-field row per case, running every implementation against the
//!   reference on fresh random inputs with NaN-poisoned outputs, forward and backward; `tests/cuda.rs` runs the
//!   same tables on a GPU in f32 and bf16.
//!
//! CUDA kernels live in `crates/kernels` and are called only from an op's `mod.rs` (its `cuda_fwd`). Shared
//! pieces: [`packing`] (segments of packed rows), `linalg` (a checked view over `gemm` for the CPU kernels'
//! products), `vexp` (a vectorised `exp`, the SiLU and softmax loops built on it, and the run-time choice of the
//! AVX2 build of such loops) and `host` (tensors to host slices and back).
//!
//! Key design decision: the math lives on plain `f32` slices with explicit shapes (see [`ssd::SsdDims`]) and the
//! device is looked at in one place per op, so model code calls the entry points ([`tensor`] gathers them) and
//! never names a backend, and a CUDA kernel slots in beside the CPU one without touching the model.

pub mod conv1d;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda_tensors;
pub mod dt;
pub mod gated_rmsnorm;
mod host;
mod linalg;
pub mod linear;
pub mod mixer_core;
pub mod packing;
pub mod rmsnorm;
pub mod ssd;
pub mod tensor;
mod vexp;

pub use mixer_core::{
    mixer_core, mixer_core_backward, mixer_core_forward, mixer_core_packed, pack_mixer_params,
    MixerCoreDims, MixerCoreGrads, MixerParams,
};

/// Settings a device needs before the ops run on it, once per device: on a CUDA GPU, freed memory stays in the
/// stream-ordered pool (`coil_kernels::keep_freed_memory`), so repeated steps do not map their tensors afresh.
/// Nothing elsewhere.
pub fn prepare_device(dev: &candle_core::Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(c) = dev {
        coil_kernels::keep_freed_memory(c.cuda_stream().context())
            .map_err(|e| candle_core::Error::Msg(format!("CUDA memory pool: {e}")))?;
    }
    let _ = dev;
    Ok(())
}

// The case tables (`<op>/tests.rs`) name this crate `coil_ops`, so `tests/cuda.rs` can include them as they are.
#[cfg(test)]
extern crate self as coil_ops;
