//! Between tensors and the CPU kernels' f32 slices: host copies, storage views and shape checks, shared by the
//! ops' entry points (each op's `mod.rs`).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Tensor};

/// The dtype an elementwise prefill op (conv1d, gated RMSNorm) returns for an input of `dtype`: bf16 stays bf16
/// (computed in f32, rounded once at the end), anything else is f32.
pub(crate) fn act_dtype(dtype: DType) -> DType {
    if dtype == DType::BF16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// `t` as a host `Vec<f32>` (any float dtype); an error naming `op` on a device without a CPU kernel's data.
pub(crate) fn host_f32(t: &Tensor, op: &str) -> Result<Vec<f32>> {
    if !matches!(t.device(), Device::Cpu) {
        bail!(
            "{op}: no kernel for device {:?} in this build (CPU only)",
            t.device()
        );
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The contiguous f32 data behind a CPU storage and layout (inside a candle custom op).
pub(crate) fn storage_f32<'s>(
    s: &'s CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<&'s [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!(
            "{op}: {what} must be f32 inside the op (got {:?})",
            s.dtype()
        );
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: {what} must be contiguous inside the op"),
    }
}

pub(crate) fn dims4(t: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    match t.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        other => bail!("{what}: expected 4 dimensions, got {other:?}"),
    }
}

pub(crate) fn expect_shape(t: &Tensor, want: &[usize], what: &str) -> Result<()> {
    if t.dims() != want {
        bail!("{what}: expected shape {want:?}, got {:?}", t.dims());
    }
    Ok(())
}
