//! The mixer core ([`crate::mixer_core`]) as a candle `CustomOp3`, so candle autograd runs through it.
//!
//! Inputs: `zxbcdt` [B,T,2I+2GN+H], `conv_w` [C,K] (or [C,1,K] as checkpoints store it) and one packed 1-D
//! `params` tensor `[conv_bias (C) | dt_bias (H) | A_log (H) | D (H) | norm_weight (I)]` built by
//! [`pack_mixer_params`]. The op runs in f32: [`mixer_core`] converts inputs with `to_dtype` (differentiable) and
//! the result back to the dtype of `zxbcdt`, so the custom op itself only ever sees contiguous f32.
//! [`mixer_core_packed`] adds `seq_idx` for packed rows; it travels inside the op (it has no gradient).

use super::host_f32;
use crate::mixer_core::{mixer_core_backward, mixer_core_forward, MixerCoreDims, MixerParams};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

struct MixerCoreOp {
    dims: MixerCoreDims,
    /// [B,T] example ids of packed rows (checked against the input shape before the op is built).
    seq_idx: Option<Vec<i32>>,
}

/// Checks the three input shapes against `dims`; returns (B, T).
fn check_shapes(
    dims: &MixerCoreDims,
    zx: &[usize],
    conv_w: &[usize],
    params: &[usize],
) -> Result<(usize, usize)> {
    if let Some(why) = dims.invalid_reason() {
        bail!("{why}");
    }
    let (ch, k) = (dims.conv_channels(), dims.conv_kernel);
    let (batch, seqlen) = match *zx {
        [b, t, w] if w == dims.in_width() => (b, t),
        _ => bail!(
            "mixer core: zxbcdt {zx:?} should be [B, T, {}] (2·I + 2·G·N + H for {dims:?})",
            dims.in_width()
        ),
    };
    if conv_w != [ch, k] && conv_w != [ch, 1, k] {
        bail!("mixer core: conv weight {conv_w:?} should be [{ch}, {k}] or [{ch}, 1, {k}]");
    }
    if params != [dims.params_len()] {
        bail!(
            "mixer core: params {params:?} should be [{}] = conv_bias {ch} + dt_bias, A_log, D {} each + \
             norm weight {} (build it with pack_mixer_params)",
            dims.params_len(),
            dims.heads,
            dims.inner()
        );
    }
    Ok((batch, seqlen))
}

/// The contiguous f32 data behind a storage and layout.
fn cpu_f32<'s>(s: &'s CpuStorage, l: &Layout, what: &str) -> Result<&'s [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!(
            "mixer core: {what} must be f32 inside the op (got {:?})",
            s.dtype()
        );
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("mixer core: {what} must be contiguous inside the op"),
    }
}

impl CustomOp3 for MixerCoreOp {
    fn name(&self) -> &'static str {
        "coil-mixer-core"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = &self.dims;
        let (batch, seqlen) = check_shapes(dims, l1.dims(), l2.dims(), l3.dims())?;
        let (zx, w, p) = (
            cpu_f32(s1, l1, "zxbcdt")?,
            cpu_f32(s2, l2, "conv weight")?,
            cpu_f32(s3, l3, "params")?,
        );
        let out = mixer_core_forward(
            *dims,
            (batch, seqlen),
            zx,
            w,
            MixerParams::unpack(dims, p),
            self.seq_idx.as_deref(),
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seqlen, dims.inner())),
        ))
    }

    /// The composed forward ([`super::composed::mixer_core`]) on the GPU's tensors, with no autograd graph: the
    /// backward recomputes it, so training keeps only each layer's in_proj output, as on the CPU.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::op::BackpropOp;
        use candle_core::Storage;
        let (batch, seqlen) = check_shapes(&self.dims, l1.dims(), l2.dims(), l3.dims())?;
        let tensor = |s: &candle_core::CudaStorage, l: &Layout| -> Result<Tensor> {
            if l.start_offset() != 0 || !l.is_contiguous() {
                bail!("mixer core: inputs must be fresh contiguous tensors inside the op");
            }
            Ok(Tensor::from_storage(
                Storage::Cuda(s.try_clone(l)?),
                l.shape().clone(),
                BackpropOp::none(),
                false,
            ))
        };
        let out = super::composed::mixer_core(
            &tensor(s1, l1)?,
            &tensor(s2, l2)?,
            &tensor(s3, l3)?,
            self.dims,
            self.segments(batch, seqlen).as_ref(),
        )?
        .force_contiguous()?;
        let (st, l) = out.storage_and_layout();
        match &*st {
            Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => bail!("mixer core: the composed forward left the GPU"),
        }
    }

    fn bwd(
        &self,
        zx: &Tensor,
        conv_w: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = &self.dims;
        let (batch, seqlen) = check_shapes(dims, zx.dims(), conv_w.dims(), params.dims())?;
        if !matches!(zx.device(), Device::Cpu) {
            return self.recompute_bwd(zx, conv_w, params, grad, (batch, seqlen));
        }
        let op = "mixer core backward";
        let (zxv, wv, pv, gv) = (
            host_f32(&zx.detach(), op)?,
            host_f32(&conv_w.detach(), op)?,
            host_f32(&params.detach(), op)?,
            host_f32(&grad.detach(), op)?,
        );
        let g = mixer_core_backward(
            *dims,
            (batch, seqlen),
            &zxv,
            &wv,
            MixerParams::unpack(dims, &pv),
            self.seq_idx.as_deref(),
            &gv,
        );
        let dev = zx.device();
        let d_params = g.packed_params();
        Ok((
            Some(Tensor::from_vec(g.d_zxbcdt, zx.shape(), dev)?),
            Some(Tensor::from_vec(g.d_conv_w, conv_w.shape(), dev)?),
            Some(Tensor::from_vec(d_params, params.shape(), dev)?),
        ))
    }
}

impl MixerCoreOp {
    fn segments(&self, batch: usize, seqlen: usize) -> Option<super::composed::Segments> {
        self.seq_idx
            .clone()
            .map(|ids| super::composed::Segments { batch, seqlen, ids })
    }

    /// The backward on devices without a hand-written one: the composed forward again, on this layer alone,
    /// differentiated by candle autograd.
    fn recompute_bwd(
        &self,
        zx: &Tensor,
        conv_w: &Tensor,
        params: &Tensor,
        grad: &Tensor,
        (batch, seqlen): (usize, usize),
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let zv = candle_core::Var::from_tensor(&zx.detach())?;
        let wv = candle_core::Var::from_tensor(&conv_w.detach())?;
        let pv = candle_core::Var::from_tensor(&params.detach())?;
        let out = super::composed::mixer_core(
            zv.as_tensor(),
            wv.as_tensor(),
            pv.as_tensor(),
            self.dims,
            self.segments(batch, seqlen).as_ref(),
        )?;
        let grads = (out * grad.detach().to_dtype(DType::F32)?)?
            .sum_all()?
            .backward()?;
        let take = |v: &candle_core::Var| -> Result<Option<Tensor>> {
            match grads.get(v.as_tensor()) {
                Some(g) => Ok(Some(g.clone())),
                None => Ok(Some(v.as_tensor().zeros_like()?)),
            }
        };
        Ok((take(&zv)?, take(&wv)?, take(&pv)?))
    }
}

/// The mixer core between in_proj and out_proj, with candle autograd: `zxbcdt` [B,T,2I+2GN+H], `conv_w` [C,K] or
/// [C,1,K], `params` from [`pack_mixer_params`] → [B,T,I] in the dtype of `zxbcdt`.
///
/// Accepts f32, bf16 and f16 (computed in f32). On the CPU it is the custom op with its hand-written backward;
/// on other devices the same chain composed from tensor ops ([`super::composed::mixer_core`]).
/// `backward()` gives gradients to all three inputs, and through [`pack_mixer_params`]'s `cat` to each piece.
pub fn mixer_core(
    zxbcdt: &Tensor,
    conv_w: &Tensor,
    params: &Tensor,
    dims: MixerCoreDims,
) -> Result<Tensor> {
    mixer_core_packed(zxbcdt, conv_w, params, dims, None)
}

/// [`mixer_core`] for packed rows: `seq_idx` [B,T] (any integer dtype) names the example of every position, and
/// the conv window and the SSD state restart wherever it changes ([`crate::packing`]). `None` is [`mixer_core`].
pub fn mixer_core_packed(
    zxbcdt: &Tensor,
    conv_w: &Tensor,
    params: &Tensor,
    dims: MixerCoreDims,
    seq_idx: Option<&Tensor>,
) -> Result<Tensor> {
    for (t, what) in [
        (zxbcdt, "zxbcdt"),
        (conv_w, "conv weight"),
        (params, "params"),
    ] {
        if !t.device().same_device(zxbcdt.device()) {
            bail!(
                "mixer core: {what} is on {:?} but zxbcdt is on {:?}",
                t.device(),
                zxbcdt.device()
            );
        }
        if !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
            bail!(
                "mixer core: {what} has dtype {:?}; expected f32, bf16 or f16",
                t.dtype()
            );
        }
    }
    let (batch, seqlen) = check_shapes(&dims, zxbcdt.dims(), conv_w.dims(), params.dims())?;
    let seq_idx = seq_idx
        .map(|s| super::seq_idx_host(s, batch, seqlen))
        .transpose()?;
    // Other devices run the op too (forward: the composed chain without a graph; backward: recomputed), so a
    // training step keeps one tensor per layer instead of every intermediate of the composed chain. Inputs are
    // fresh f32 copies there (the GPU forward wraps their storage).
    let on_cpu = matches!(zxbcdt.device(), Device::Cpu);
    let f32_contig = |t: &Tensor| -> Result<Tensor> {
        let t = t.to_dtype(DType::F32)?;
        if on_cpu {
            t.contiguous()
        } else {
            t.force_contiguous()
        }
    };
    let out = f32_contig(zxbcdt)?.apply_op3(
        &f32_contig(conv_w)?,
        &f32_contig(params)?,
        MixerCoreOp { dims, seq_idx },
    )?;
    out.to_dtype(zxbcdt.dtype())
}

/// Packs the mixer's per-channel and per-head parameters into the one 1-D tensor [`mixer_core`] takes:
/// `[conv_bias (C) | dt_bias (H) | A_log (H) | D (H) | norm_weight (I)]`, with `Tensor::cat` so gradients flow
/// back to each piece. `conv_bias` is required: pass zeros when the checkpoint has none.
/// All pieces must be 1-D and of one dtype.
pub fn pack_mixer_params(
    conv_bias: &Tensor,
    dt_bias: &Tensor,
    a_log: &Tensor,
    d: &Tensor,
    norm_w: &Tensor,
) -> Result<Tensor> {
    let pieces = [
        (conv_bias, "conv_bias"),
        (dt_bias, "dt_bias"),
        (a_log, "A_log"),
        (d, "D"),
        (norm_w, "norm weight"),
    ];
    for (t, what) in pieces {
        if t.rank() != 1 {
            bail!(
                "pack_mixer_params: {what} has shape {:?}; expected 1-D",
                t.dims()
            );
        }
        if t.dtype() != conv_bias.dtype() {
            bail!(
                "pack_mixer_params: {what} is {:?} but conv_bias is {:?}; convert them to one dtype",
                t.dtype(),
                conv_bias.dtype()
            );
        }
    }
    Tensor::cat(&pieces.map(|(t, _)| t), 0)
}

#[cfg(test)]
mod tests;
