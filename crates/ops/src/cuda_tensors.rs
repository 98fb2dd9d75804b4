//! Plumbing between candle tensors and the kernel launchers of `coil-kernels` for the ops' CUDA paths: f32 views
//! of a tensor's storage with its row strides, and tensors around the kernels' outputs.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

/// `t` as f32 whose last dimension is contiguous and whose leading dimensions are evenly strided (a narrow of
/// the in_proj output is), copied only when it is not; with its strides of dimensions 0 and 1 (of a 3-D view).
pub fn f32_rows(t: &Tensor) -> Result<Tensor> {
    let t = t.to_dtype(DType::F32)?;
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

/// The f32 view of a tensor's storage (from `storage_and_layout`) from its start offset.
pub fn view<'s>(s: &'s Storage, l: &Layout, what: &str) -> Result<CudaView<'s, f32>> {
    let Storage::Cuda(c) = s else {
        bail!("{what} is not on the GPU")
    };
    Ok(c.as_cuda_slice::<f32>()?.slice(l.start_offset()..))
}

/// A tensor of `shape` around a kernel's f32 output.
pub fn wrap(out: CudaSlice<f32>, dev: &CudaDevice, shape: impl Into<Shape>) -> Result<Tensor> {
    Ok(Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    ))
}
