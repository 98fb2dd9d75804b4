//! The time-step parametrisation of the Mamba2 mixer: `dt = clamp(softplus(dt_raw + dt_bias), lo, hi)` (torch's
//! softplus, threshold 20) and `A = −exp(A_log)`.
//!
//! Implementations: [`reference`](mod@reference) (f64), [`cpu`] (f32 slices; forward and backward), [`composed`]
//! (candle tensor ops, differentiable); [`dt_softplus`] (this file) picks among them by device. A CUDA kernel plugs in
//! at `cuda_fwd` below (in practice it fuses into the SSD kernel). The training backward runs inside the mixer-core op.

pub mod composed;
pub mod cpu;
pub mod reference;

pub use cpu::{
    a_from_log, dt_softplus_backward, dt_softplus_backward_into, dt_softplus_into, softplus,
};
pub use reference::{dt_softplus_reference, dt_softplus_reference_backward};

use crate::host::host_f32;
use candle_core::{bail, Device, Result, Tensor};

/// `clamp(softplus(dt_raw + bias), lo, hi)` on tensors: `dt_raw` [..., H], `bias` [H] → the shape of `dt_raw`, f32.
pub fn dt_softplus(dt_raw: &Tensor, bias: &Tensor, limit: (f32, f32)) -> Result<Tensor> {
    let h = bias.elem_count();
    if dt_raw.dims().last() != Some(&h) {
        bail!(
            "dt: last dimension of {:?} is not the {h} heads of dt_bias",
            dt_raw.dims()
        );
    }
    match dt_raw.device() {
        Device::Cpu => cpu_fwd(dt_raw, bias, limit),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_fwd(dt_raw, bias, limit),
        _ => composed::dt_softplus(dt_raw, bias, limit),
    }
}

/// The CPU path: [`cpu::dt_softplus`] on host copies.
fn cpu_fwd(dt_raw: &Tensor, bias: &Tensor, limit: (f32, f32)) -> Result<Tensor> {
    let out = cpu::dt_softplus(&host_f32(dt_raw, "dt")?, &host_f32(bias, "dt")?, limit);
    Tensor::from_vec(out, dt_raw.shape(), dt_raw.device())
}

/// The CUDA path: today the composed twin.
#[cfg(feature = "cuda")]
fn cuda_fwd(dt_raw: &Tensor, bias: &Tensor, limit: (f32, f32)) -> Result<Tensor> {
    composed::dt_softplus(dt_raw, bias, limit)
}

#[cfg(test)]
pub(crate) mod tests;
