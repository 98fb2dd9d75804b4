//! Causal depthwise conv1d over time followed by SiLU (the xBC path of the Mamba2 mixer).
//!
//! `out[b, t, c] = silu(bias[c] + Σ_{k<K} w[c, k] · x[b, t − K + 1 + k, c])`, where positions before the start read
//! the optional `history` (the K−1 raw columns that preceded this call, oldest first) or zero. With `seq_idx`
//! (packed rows, [`crate::packing`]) a tap reads only columns of its own segment.
//!
//! Implementations: [`reference`](mod@reference) (the definition in f64), [`cpu`] (f32 slices, rayon; forward and
//! backward), [`composed`] (candle tensor ops, differentiable); [`causal_conv1d_silu`] (this file) picks among them by
//! device. A CUDA kernel plugs in at `cuda_fwd` below. The training backward runs inside the mixer-core op.

pub mod composed;
pub mod cpu;
pub mod reference;

pub use cpu::{
    causal_conv1d_silu_backward, causal_conv1d_silu_backward_into, causal_conv1d_silu_into, silu,
    silu_grad, Conv1dGrads,
};
pub use reference::causal_conv1d_silu_reference;

use crate::host::{act_dtype, expect_shape, host_f32};
use crate::packing::{seq_idx_host, Segments};
use candle_core::{bail, Device, Result, Tensor};

/// Causal depthwise conv + SiLU on tensors: `x` [B,T,C], `w` [C,K] (or [C,1,K]), `bias` [C], `history`
/// [B,C,K−1] → [B,T,C], computed in f32 on every device: bf16 for a bf16 `x` (rounded once at the end: a bf16
/// layer's in_proj output is read as it is on the GPU), f32 otherwise.
pub fn causal_conv1d_silu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
) -> Result<Tensor> {
    causal_conv1d_silu_packed(x, w, bias, history, None)
}

/// [`causal_conv1d_silu`] for packed rows: `seq_idx` [B,T] (any integer dtype) names the example of every
/// position, and no tap reads across a change ([`crate::packing`]). `None` is [`causal_conv1d_silu`].
pub fn causal_conv1d_silu_packed(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
    seq_idx: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, seqlen, ch) = x.dims3()?;
    let k = *w.dims().last().unwrap_or(&0);
    if w.elem_count() != ch * k || k == 0 {
        bail!("conv1d: weight {:?} does not match {ch} channels", w.dims());
    }
    if let Some(bv) = bias {
        expect_shape(bv, &[ch], "conv1d bias")?;
    }
    if let Some(h) = history {
        expect_shape(h, &[batch, ch, k - 1], "conv1d history")?;
    }
    let seq_idx = seq_idx
        .map(|s| seq_idx_host(s, batch, seqlen))
        .transpose()?;
    let out = match x.device() {
        Device::Cpu => cpu_fwd(x, w, bias, history, seq_idx.as_deref()),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_fwd(x, w, bias, history, seq_idx),
        _ => composed_fwd(x, w, bias, history, seq_idx),
    }?;
    out.to_dtype(act_dtype(x.dtype()))
}

/// The CPU path: [`cpu::causal_conv1d_silu`] on host copies.
fn cpu_fwd(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
    seq_idx: Option<&[i32]>,
) -> Result<Tensor> {
    let (batch, seqlen, ch) = x.dims3()?;
    let k = *w.dims().last().unwrap_or(&0);
    let xv = host_f32(x, "conv1d")?;
    let wv = host_f32(w, "conv1d")?;
    let bv = bias.map(|b| host_f32(b, "conv1d")).transpose()?;
    let hv = history.map(|h| host_f32(h, "conv1d")).transpose()?;
    let out = cpu::causal_conv1d_silu(
        &xv,
        (batch, seqlen, ch),
        &wv,
        k,
        bv.as_deref(),
        hv.as_deref(),
        seq_idx,
    );
    Tensor::from_vec(out, (batch, seqlen, ch), x.device())
}

/// The CUDA path: the kernel of `coil_kernels::conv1d` (x read in place with its row strides; bf16 x read and
/// the output written in bf16, f32 otherwise), or the composed twin for packed rows and widths it has no kernel
/// for.
#[cfg(feature = "cuda")]
fn cuda_fwd(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
    seq_idx: Option<Vec<i32>>,
) -> Result<Tensor> {
    use crate::cuda_tensors::{f32_contiguous, rows_in};
    let k = *w.dims().last().unwrap_or(&0);
    if seq_idx.is_some() || !(1..=4).contains(&k) || x.elem_count() == 0 {
        return composed_fwd(x, w, bias, history, seq_idx);
    }
    let act = act_dtype(x.dtype());
    let x = rows_in(x, act)?;
    let w = f32_contiguous(w)?;
    let bias = bias.map(f32_contiguous).transpose()?;
    let history = history.map(f32_contiguous).transpose()?;
    let args = (&x, &w, bias.as_ref(), history.as_ref());
    if act == candle_core::DType::BF16 {
        cuda_launch::<half::bf16>(args)
    } else {
        cuda_launch::<f32>(args)
    }
}

/// [`cuda_fwd`]'s launch with activations of type `T`: `x` with its last dimension contiguous, the rest f32 and
/// contiguous.
#[cfg(feature = "cuda")]
fn cuda_launch<
    T: coil_kernels::Act + candle_core::cuda_backend::CudaDType + candle_core::WithDType,
>(
    (x, w, bias, history): (&Tensor, &Tensor, Option<&Tensor>, Option<&Tensor>),
) -> Result<Tensor> {
    use crate::cuda_tensors::{view, wrap};
    use coil_kernels::conv1d::{conv1d_silu, Conv1dDims};
    let (batch, seqlen, ch) = x.dims3()?;
    let k = *w.dims().last().unwrap_or(&0);
    let Device::Cuda(dev) = x.device() else {
        bail!("conv1d: not a CUDA tensor");
    };
    let (ld_b, ld_t) = (x.stride()[0], x.stride()[1]);
    let stream = dev.cuda_stream();
    // SAFETY: the kernel writes every one of the B·T·C elements before anything reads them.
    let mut out =
        unsafe { stream.alloc::<T>(batch * seqlen * ch) }.map_err(candle_core::Error::wrap)?;
    let dims = Conv1dDims {
        batch,
        seqlen,
        channels: ch,
        k,
        ld_b,
        ld_t,
    };
    let (sx, lx) = x.storage_and_layout();
    let (sw, lw) = w.storage_and_layout();
    let sh = history.map(|h| h.storage_and_layout());
    let sb = bias.map(|b| b.storage_and_layout());
    let hv = sh
        .as_ref()
        .map(|(s, l)| view::<f32>(s, l, "conv1d history"))
        .transpose()?;
    let bv = sb
        .as_ref()
        .map(|(s, l)| view::<f32>(s, l, "conv1d bias"))
        .transpose()?;
    conv1d_silu(
        &stream,
        &view::<T>(&sx, lx, "conv1d x")?,
        hv.as_ref(),
        &view::<f32>(&sw, lw, "conv1d weight")?,
        bv.as_ref(),
        &mut out,
        dims,
    )
    .map_err(|e| candle_core::Error::Msg(format!("conv1d: {e}")))?;
    wrap(out, dev, (batch, seqlen, ch))
}

/// Any other device: [`composed::causal_conv1d_silu`].
fn composed_fwd(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
    seq_idx: Option<Vec<i32>>,
) -> Result<Tensor> {
    let (batch, seqlen, _) = x.dims3()?;
    let segments = seq_idx.map(|ids| Segments { batch, seqlen, ids });
    composed::causal_conv1d_silu(x, w, bias, history, segments.as_ref())
}

#[cfg(test)]
pub(crate) mod tests;
