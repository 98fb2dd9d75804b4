//! The SSD on a CUDA GPU: the fused forward of `coil-kernels` (`ssd_fwd`) on candle's storage and stream.
//!
//! [`fused`] runs the kernel when the inputs suit it (bf16 x, B and C; head dim and state 64 or 128; a GPU with a
//! cubin) and returns `None` otherwise, so the caller takes the composed path. x, B, C and dt may be strided views
//! (column ranges of the conv and in_proj outputs): only their batch and time strides reach the kernel.

use crate::ssd::SsdDims;
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Device, Layout, Result, Storage, Tensor};
use coil_kernels::ssd_fwd::{self as k, DtRaw, SsdFwdInputs, Strided};
use coil_kernels::KernelError;
use std::sync::Once;

/// How dt reaches the kernel.
pub(crate) struct DtSpec<'a> {
    /// [B,T,H]: raw (softplus applied inside) or already dt.
    pub dt: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub softplus: bool,
    pub limit: (f32, f32),
}

/// Tensors of one fused call. `x` [B,T,H·P] or [B,T,H,P], `b`/`c` [B,T,G·N] or [B,T,G,N], `a`/`d` [H],
/// `initial_state` [B,H,P,N], `seq_idx` [B·T] host ids.
pub(crate) struct Fused<'a> {
    pub dims: SsdDims,
    pub x: &'a Tensor,
    pub b: &'a Tensor,
    pub c: &'a Tensor,
    pub dt: DtSpec<'a>,
    pub a: &'a Tensor,
    pub d: &'a Tensor,
    pub initial_state: Option<&'a Tensor>,
    pub seq_idx: Option<&'a [i32]>,
}

/// Batch and time strides of a tensor whose dimensions after the first two are contiguous, row-major.
fn bt_strides(l: &Layout) -> Option<(usize, usize)> {
    let (dims, stride) = (l.dims(), l.stride());
    if dims.len() < 3 {
        return None;
    }
    let mut want = 1;
    for i in (2..dims.len()).rev() {
        if dims[i] > 1 && stride[i] != want {
            return None;
        }
        want *= dims[i];
    }
    Some((stride[0], stride[1]))
}

fn cuda_storage<'s>(s: &'s Storage, what: &str) -> Result<&'s CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("ssd: {what} is not on the GPU"),
    }
}

fn strided<T>(
    data: CudaView<'_, T>,
    (batch_stride, time_stride): (usize, usize),
) -> Strided<'_, T> {
    Strided {
        data,
        batch_stride,
        time_stride,
    }
}

/// The elements of a GPU tensor's storage from its layout's start.
fn view<'s, T: candle_core::cuda_backend::CudaDType>(
    s: &'s Storage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'s, T>> {
    Ok(cuda_storage(s, what)?
        .as_cuda_slice::<T>()?
        .slice(l.start_offset()..))
}

/// An f32 parameter as a contiguous device tensor starting on an 8-byte boundary (the kernel reads the initial
/// state as float2): the tensor itself when it already is one (no copy on the hot path), else a fresh copy.
fn f32_param(t: &Tensor) -> Result<Tensor> {
    let t = t.to_dtype(DType::F32)?;
    if t.is_contiguous() && t.layout().start_offset() % 2 == 0 {
        Ok(t)
    } else {
        Ok(t.force_contiguous()?)
    }
}

fn notice(why: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        eprintln!("coil: fused SSD kernel not used ({why}); running the composed GPU path")
    });
}

/// Runs the fused kernel, or returns `None` when these inputs or this GPU have no kernel (then the caller runs
/// the composed path). Returns `(y [B,T,H·P] bf16, final_state [B,H,P,N] f32)`.
pub(crate) fn fused(f: &Fused) -> Result<Option<(Tensor, Tensor)>> {
    let Device::Cuda(dev) = f.x.device() else {
        return Ok(None);
    };
    if [f.x, f.b, f.c].iter().any(|t| t.dtype() != DType::BF16)
        || !matches!(f.dt.dt.dtype(), DType::BF16 | DType::F32)
    {
        return Ok(None);
    }
    let dims = k::SsdDims {
        batch: f.dims.batch,
        seqlen: f.dims.seqlen,
        heads: f.dims.heads,
        head_dim: f.dims.head_dim,
        groups: f.dims.groups,
        state: f.dims.state,
    };
    if !k::supports(&dims) {
        return Ok(None);
    }
    let (a, d) = (f32_param(f.a)?, f32_param(f.d)?);
    let bias = f.dt.bias.map(f32_param).transpose()?;
    let init = f.initial_state.map(f32_param).transpose()?;
    let seq = match f.seq_idx {
        Some(ids) => Some(Tensor::from_slice(
            ids,
            (dims.batch, dims.seqlen),
            f.x.device(),
        )?),
        None => None,
    };
    let (xs, xl) = f.x.storage_and_layout();
    let (bs, bl) = f.b.storage_and_layout();
    let (cs, cl) = f.c.storage_and_layout();
    let (ds, dl) = f.dt.dt.storage_and_layout();
    let (Some(xst), Some(bst), Some(cst), Some(dst)) = (
        bt_strides(xl),
        bt_strides(bl),
        bt_strides(cl),
        bt_strides(dl),
    ) else {
        return Ok(None);
    };
    if bst != cst {
        return Ok(None);
    }
    let dt = match f.dt.dt.dtype() {
        DType::BF16 => DtRaw::Bf16(strided(view(&ds, dl, "dt")?, dst)),
        _ => DtRaw::F32(strided(view(&ds, dl, "dt")?, dst)),
    };
    let (a_s, a_l) = a.storage_and_layout();
    let (d_s, d_l) = d.storage_and_layout();
    let bias_s = bias.as_ref().map(|t| t.storage_and_layout());
    let init_s = init.as_ref().map(|t| t.storage_and_layout());
    let seq_s = seq.as_ref().map(|t| t.storage_and_layout());
    let inputs = SsdFwdInputs {
        x: strided(view(&xs, xl, "x")?, xst),
        b: strided(view(&bs, bl, "B")?, bst),
        c: strided(view(&cs, cl, "C")?, cst),
        dt,
        a: view(&a_s, a_l, "A")?,
        dt_bias: bias_s
            .as_ref()
            .map(|(s, l)| view(s, l, "dt_bias"))
            .transpose()?,
        d: Some(view(&d_s, d_l, "D")?),
        initial_state: init_s
            .as_ref()
            .map(|(s, l)| view(s, l, "initial state"))
            .transpose()?,
        seq_idx: seq_s
            .as_ref()
            .map(|(s, l)| view(s, l, "seq_idx"))
            .transpose()?,
        dt_limit: f.dt.limit,
        dt_softplus: f.dt.softplus,
    };
    let out = match k::ssd_fwd(&dev.cuda_stream(), dims, &inputs) {
        Ok(out) => out,
        Err(KernelError::Unsupported(why)) => {
            notice(&why);
            return Ok(None);
        }
        Err(e) => bail!("ssd: {e}"),
    };
    let wrap = |s: CudaStorage, shape: (usize, usize, usize, usize)| {
        Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
    };
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim,
        state,
        ..
    } = f.dims;
    let y = wrap(
        CudaStorage::wrap_cuda_slice(out.y, CudaDevice::clone(dev)),
        (batch, seqlen, heads, head_dim),
    );
    let fin = wrap(
        CudaStorage::wrap_cuda_slice(out.final_state, CudaDevice::clone(dev)),
        (batch, heads, head_dim, state),
    );
    Ok(Some((y, fin)))
}
