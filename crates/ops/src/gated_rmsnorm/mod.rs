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

use crate::host::{act_dtype, host_f32};
use candle_core::{bail, Device, Result, Tensor};

/// Group-wise gated RMSNorm on tensors: `y`, `z` [..., I], `w` [I] → [..., I], computed in f32 on every device:
/// bf16 for a bf16 `y` (rounded once at the end: on the GPU a bf16 layer's y and z are read as they are), f32
/// otherwise.
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
    let out = match y.device() {
        Device::Cpu => cpu_fwd(y, z, w, groups, eps),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_fwd(y, z, w, groups, eps),
        _ => composed::gated_rmsnorm(y, z, w, groups, eps),
    }?;
    out.to_dtype(act_dtype(y.dtype()))
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

/// The CUDA path: the kernel of `coil_kernels::gated_norm`, y and z read in place when their rows are evenly
/// strided (z is a narrow of the in_proj output); in bf16 when both are bf16 (a bf16 layer's SSD and in_proj
/// outputs), else in f32.
#[cfg(feature = "cuda")]
fn cuda_fwd(y: &Tensor, z: &Tensor, w: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    let width = w.elem_count();
    if y.elem_count() / width.max(1) == 0 {
        return composed::gated_rmsnorm(y, z, w, groups, eps);
    }
    use candle_core::DType;
    if y.dtype() == DType::BF16 && z.dtype() == DType::BF16 {
        cuda_launch::<half::bf16>(y, z, w, groups, eps)
    } else {
        cuda_launch::<f32>(y, z, w, groups, eps)
    }
}

/// [`cuda_fwd`]'s launch with activations of type `T` (y and z converted to it when they are not).
#[cfg(feature = "cuda")]
fn cuda_launch<
    T: coil_kernels::Act + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
>(
    y: &Tensor,
    z: &Tensor,
    w: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    use crate::cuda_tensors::{f32_contiguous, rows_in, view, wrap};
    let Device::Cuda(dev) = y.device() else {
        bail!("gated_rmsnorm: not a CUDA tensor");
    };
    let width = w.elem_count();
    let rows = y.elem_count() / width;
    // Rows of a tensor [.., width] are `ld` apart when every leading dimension's stride follows from the next.
    let row_stride = |t: &Tensor| -> Result<(Tensor, usize)> {
        let t = rows_in(t, T::DTYPE)?;
        let (d, s) = (t.dims().to_vec(), t.stride().to_vec());
        let n = d.len();
        let even = n < 2 || (0..n - 2).all(|i| d[i] <= 1 || s[i] == s[i + 1] * d[i + 1]);
        if even {
            let ld = if n >= 2 { s[n - 2] } else { width };
            Ok((t, ld))
        } else {
            let t = t.contiguous()?;
            Ok((t, width))
        }
    };
    let (y, ld_y) = row_stride(y)?;
    let (z, ld_z) = row_stride(z)?;
    let w = f32_contiguous(w)?;
    let stream = dev.cuda_stream();
    // SAFETY: the kernel writes every one of the rows·width elements before anything reads them.
    let mut out = unsafe { stream.alloc::<T>(rows * width) }.map_err(candle_core::Error::wrap)?;
    let ((sy, ly), (sz, lz), (sw, lw)) = (
        y.storage_and_layout(),
        z.storage_and_layout(),
        w.storage_and_layout(),
    );
    coil_kernels::gated_norm::gated_rmsnorm(
        &stream,
        (&view::<T>(&sy, ly, "gated_rmsnorm y")?, ld_y),
        (&view::<T>(&sz, lz, "gated_rmsnorm z")?, ld_z),
        &view::<f32>(&sw, lw, "gated_rmsnorm weight")?,
        &mut out,
        rows,
        groups,
        eps as f32,
    )
    .map_err(|e| candle_core::Error::Msg(format!("gated_rmsnorm: {e}")))?;
    wrap(out, dev, y.shape())
}

#[cfg(test)]
pub(crate) mod tests;
