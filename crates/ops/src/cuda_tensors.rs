//! Plumbing between candle tensors and the kernel launchers of `coil-kernels` for the ops' CUDA paths: views of a
//! tensor's storage with its row strides, and tensors around the kernels' outputs.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

/// `t` in `dtype` with its last dimension contiguous and its leading dimensions evenly strided (a narrow of the
/// in_proj output is), copied only when it is not.
pub fn rows_in(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let t = t.to_dtype(dtype)?;
    let s = t.stride();
    if s.last() == Some(&1) || t.dims().last() == Some(&1) {
        Ok(t)
    } else {
        t.contiguous()
    }
}

/// `t` as a contiguous f32 tensor (a copy only when it is not one already).
pub fn f32_contiguous(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.contiguous()
}

/// The view of a tensor's storage (from `storage_and_layout`) from its start offset, as elements of `T`.
pub fn view<'s, T: CudaDType>(s: &'s Storage, l: &Layout, what: &str) -> Result<CudaView<'s, T>> {
    let Storage::Cuda(c) = s else {
        bail!("{what} is not on the GPU")
    };
    Ok(c.as_cuda_slice::<T>()?.slice(l.start_offset()..))
}

/// A tensor of `shape` around a kernel's output.
pub fn wrap<T: CudaDType>(
    out: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Result<Tensor> {
    Ok(Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    ))
}
