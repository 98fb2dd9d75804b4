//! Group-wise gated RMSNorm (HF `MambaRMSNormGated`, mamba_ssm `norm_before_gate=False`): gate first, then
//! normalise each contiguous group of `I/G` channels: `u = y ⊙ silu(z)`, `out = w ⊙ u_g / sqrt(mean(u_g²) + eps)`.
//!
//! Implementations: [`reference`](mod@reference) (f64), [`cpu`] (f32 slices, rayon; forward and backward), [`composed`]
//! (candle tensor ops, differentiable); [`gated_rmsnorm`] (this file) picks among them by device. A CUDA kernel plugs
//! in at `cuda_fwd` below. The training backward runs inside the mixer-core op.

pub mod composed;
pub mod cpu;
pub mod reference;

pub use cpu::{gated_rmsnorm_backward, gated_rmsnorm_backward_into, gated_rmsnorm_into};
pub use reference::gated_rmsnorm_reference;

use crate::host::host_f32;
use candle_core::{bail, Device, Result, Tensor};

/// Group-wise gated RMSNorm on tensors: `y`, `z` [..., I], `w` [I] → [..., I], f32.
pub fn gated_rmsnorm(
    y: &Tensor,
    z: &Tensor,
    w: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    if y.dims() != z.dims() {
        bail!(
            "gated_rmsnorm: y {:?} and z {:?} differ",
            y.dims(),
            z.dims()
        );
    }
    let width = w.elem_count();
    if y.dims().last() != Some(&width) || groups == 0 || !width.is_multiple_of(groups) {
        bail!(
            "gated_rmsnorm: weight of {width} channels, {groups} groups, input {:?}",
            y.dims()
        );
    }
    match y.device() {
        Device::Cpu => cpu_fwd(y, z, w, groups, eps),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_fwd(y, z, w, groups, eps),
        _ => composed::gated_rmsnorm(y, z, w, groups, eps),
    }
}

/// The CPU path: [`cpu::gated_rmsnorm`] on host copies.
fn cpu_fwd(y: &Tensor, z: &Tensor, w: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    let op = "gated_rmsnorm";
    let out = cpu::gated_rmsnorm(
        &host_f32(y, op)?,
        &host_f32(z, op)?,
        &host_f32(w, op)?,
        groups,
        eps as f32,
    );
    Tensor::from_vec(out, y.shape(), y.device())
}

/// The CUDA path: today the composed twin.
#[cfg(feature = "cuda")]
fn cuda_fwd(y: &Tensor, z: &Tensor, w: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    composed::gated_rmsnorm(y, z, w, groups, eps)
}

#[cfg(test)]
pub(crate) mod tests;
