//! The inner chain of one Mamba2 mixer, between `in_proj` and `out_proj`, as one op with its backward
//! (docs/numerics.md §2, steps 2–5):
//!
//! ```text
//! zxbcdt [B,T,2I+2GN+H] = z [I] | xBC [C = I+2GN] | dt_raw [H]
//! xBC' = silu(conv1d(xBC, conv_w [C,K]) + conv_bias)        = x [I] | B [GN] | C [GN]
//! dt   = clamp(softplus(dt_raw + dt_bias), lo, hi)          A = −exp(A_log)
//! y    = SSD(x, dt, A, B, C) + D·x                          (zero initial state, chunked)
//! out  = gated_rmsnorm(y, z, norm_weight, groups, eps)      [B,T,I]
//! ```
//!
//! With `seq_idx` [B,T] (packed rows, [`crate::packing`]) the conv and the SSD restart at every boundary, so
//! each packed example gets exactly what it would get alone; the other steps are per position.
//!
//! Key design decision: the backward takes only the op's inputs and recomputes everything else (conv output,
//! dt, the norm's statistics), so a training engine saves little beyond the in_proj output per layer. The one
//! exception is the SSD output on the CPU: recomputing it was a third of the CPU backward, so when the op is
//! part of an autograd graph its forward keeps y [B,T,I] until the layer's backward takes it (I floats per
//! position and layer, about 45% of the in_proj output for Mamba2 shapes). The per-channel and
//! per-head parameters travel as one packed vector `[conv_bias (C) | dt_bias (H) | A_log (H) | D (H) |
//! norm_weight (I)]` (see [`MixerParams`], built by [`pack_mixer_params`]), which keeps the candle custom op at
//! three inputs.
//!
//! Implementations: [`reference`](mod@reference) (the f64 references of the four ops chained), [`cpu`] (their CPU
//! kernels chained, forward and backward), [`composed`] (candle tensor ops, differentiable by autograd). This file
//! holds the candle `CustomOp3` that candle autograd runs through ([`mixer_core`], [`mixer_core_packed`]) and that
//! alone picks the device path: `cpu_fwd` and the hand-written backward on the CPU; on CUDA `cuda_fwd` (today the
//! composed chain without an autograd graph; the place a fused kernel plugs in) and a backward that recomputes the
//! composed chain under autograd. The op itself only ever sees contiguous f32: [`mixer_core_packed`] converts its
//! inputs with `to_dtype` (differentiable) and the result back to the dtype of `zxbcdt`.

pub mod composed;
pub mod cpu;
pub mod reference;

pub use cpu::{
    mixer_core_backward, mixer_core_backward_into, mixer_core_backward_with_y, mixer_core_forward,
    mixer_core_forward_into, mixer_core_forward_keeping_y,
};
pub use reference::mixer_core_reference;

use crate::host::{host_f32, storage_f32};
use crate::packing::{seq_idx_host, Segments};
use crate::ssd::SsdDims;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Static sizes and settings of one mixer: `H` heads, `P` head dim, `G` groups, `N` state, `K` conv width, `Q`
/// chunk, the gated-norm `eps` and the dt clamp `(lo, hi)` (`(0, ∞)` for none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixerCoreDims {
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
    pub conv_kernel: usize,
    pub chunk: usize,
    pub eps: f32,
    pub dt_limit: (f32, f32),
}

impl MixerCoreDims {
    /// `I = H·P`.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }
    /// `G·N`, the width of B (and of C).
    pub fn bc_width(&self) -> usize {
        self.groups * self.state
    }
    /// `C = I + 2GN`, the conv channels.
    pub fn conv_channels(&self) -> usize {
        self.inner() + 2 * self.bc_width()
    }
    /// `2I + 2GN + H`, the last dimension of `zxbcdt`.
    pub fn in_width(&self) -> usize {
        self.inner() + self.conv_channels() + self.heads
    }
    /// `C + 3H + I`, the length of the packed parameter vector.
    pub fn params_len(&self) -> usize {
        self.conv_channels() + 3 * self.heads + self.inner()
    }
    /// Why these sizes cannot run, if they cannot (for callers that turn it into an error).
    pub fn invalid_reason(&self) -> Option<String> {
        if self.heads == 0 || self.head_dim == 0 || self.state == 0 {
            return Some(format!("mixer core: empty size in {self:?}"));
        }
        if self.groups == 0 || !self.heads.is_multiple_of(self.groups) {
            return Some(format!(
                "mixer core: {} heads not divisible by {} groups",
                self.heads, self.groups
            ));
        }
        if self.conv_kernel == 0 || self.chunk == 0 {
            return Some(format!(
                "mixer core: conv kernel {} and chunk {} must be positive",
                self.conv_kernel, self.chunk
            ));
        }
        None
    }
    pub(crate) fn ssd_dims(&self, batch: usize, seqlen: usize) -> SsdDims {
        SsdDims {
            batch,
            seqlen,
            heads: self.heads,
            head_dim: self.head_dim,
            groups: self.groups,
            state: self.state,
        }
    }
}

/// The per-channel and per-head parameters of one mixer. `conv_bias` is required: pass zeros for a checkpoint
/// without one (`use_conv_bias = false`).
#[derive(Clone, Copy, Debug)]
pub struct MixerParams<'a> {
    pub conv_bias: &'a [f32],
    pub dt_bias: &'a [f32],
    pub a_log: &'a [f32],
    pub d: &'a [f32],
    pub norm_w: &'a [f32],
}

impl<'a> MixerParams<'a> {
    /// Splits the packed vector `[conv_bias (C) | dt_bias (H) | A_log (H) | D (H) | norm_weight (I)]`.
    pub fn unpack(dims: &MixerCoreDims, packed: &'a [f32]) -> Self {
        assert_eq!(
            packed.len(),
            dims.params_len(),
            "mixer core: packed params length"
        );
        let (conv_bias, rest) = packed.split_at(dims.conv_channels());
        let (dt_bias, rest) = rest.split_at(dims.heads);
        let (a_log, rest) = rest.split_at(dims.heads);
        let (d, norm_w) = rest.split_at(dims.heads);
        MixerParams {
            conv_bias,
            dt_bias,
            a_log,
            d,
            norm_w,
        }
    }
    pub(crate) fn check(&self, dims: &MixerCoreDims) {
        assert_eq!(
            self.conv_bias.len(),
            dims.conv_channels(),
            "mixer core: conv_bias length"
        );
        assert_eq!(self.dt_bias.len(), dims.heads, "mixer core: dt_bias length");
        assert_eq!(self.a_log.len(), dims.heads, "mixer core: A_log length");
        assert_eq!(self.d.len(), dims.heads, "mixer core: D length");
        assert_eq!(
            self.norm_w.len(),
            dims.inner(),
            "mixer core: norm weight length"
        );
    }
}

/// Gradients of [`mixer_core_forward`]: d_zxbcdt [B,T,2I+2GN+H], d_conv_w [C,K], and one per parameter.
#[derive(Clone, Debug)]
pub struct MixerCoreGrads {
    pub d_zxbcdt: Vec<f32>,
    pub d_conv_w: Vec<f32>,
    pub d_conv_bias: Vec<f32>,
    pub d_dt_bias: Vec<f32>,
    pub d_a_log: Vec<f32>,
    pub d_d: Vec<f32>,
    pub d_norm_w: Vec<f32>,
}

impl MixerCoreGrads {
    /// Zero gradients for a call of (B, T) = `bt`.
    pub fn zeros(dims: &MixerCoreDims, (batch, seqlen): (usize, usize)) -> Self {
        let ch = dims.conv_channels();
        MixerCoreGrads {
            d_zxbcdt: vec![0.0; batch * seqlen * dims.in_width()],
            d_conv_w: vec![0.0; ch * dims.conv_kernel],
            d_conv_bias: vec![0.0; ch],
            d_dt_bias: vec![0.0; dims.heads],
            d_a_log: vec![0.0; dims.heads],
            d_d: vec![0.0; dims.heads],
            d_norm_w: vec![0.0; dims.inner()],
        }
    }

    /// Panics naming the field when one is not sized as [`MixerCoreGrads::zeros`] sizes it (a caller bug).
    pub fn check(&self, dims: &MixerCoreDims, bt: (usize, usize)) {
        let want = MixerCoreGrads::zeros(dims, bt);
        for (name, got, want) in [
            ("d_zxbcdt", &self.d_zxbcdt, &want.d_zxbcdt),
            ("d_conv_w", &self.d_conv_w, &want.d_conv_w),
            ("d_conv_bias", &self.d_conv_bias, &want.d_conv_bias),
            ("d_dt_bias", &self.d_dt_bias, &want.d_dt_bias),
            ("d_a_log", &self.d_a_log, &want.d_a_log),
            ("d_d", &self.d_d, &want.d_d),
            ("d_norm_w", &self.d_norm_w, &want.d_norm_w),
        ] {
            assert_eq!(got.len(), want.len(), "mixer core grads: {name} length");
        }
    }

    /// The parameter gradients in the packed order of [`MixerParams::unpack`].
    pub fn packed_params(&self) -> Vec<f32> {
        [
            &self.d_conv_bias,
            &self.d_dt_bias,
            &self.d_a_log,
            &self.d_d,
            &self.d_norm_w,
        ]
        .into_iter()
        .flat_map(|v| v.iter().copied())
        .collect()
    }
}

struct MixerCoreOp {
    dims: MixerCoreDims,
    /// [B,T] example ids of packed rows (checked against the input shape before the op is built).
    seq_idx: Option<Vec<i32>>,
    /// The layer computes in bf16: the GPU forward may run the fused bf16 SSD kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    bf16: bool,
    /// The op is part of an autograd graph on the CPU: its forward keeps the SSD output here for the backward,
    /// which takes it (so it lives from the forward to this layer's backward only).
    keep_y: Option<Mutex<Option<Vec<f32>>>>,
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
            storage_f32(s1, l1, "mixer core", "zxbcdt")?,
            storage_f32(s2, l2, "mixer core", "conv weight")?,
            storage_f32(s3, l3, "mixer core", "params")?,
        );
        let (p, seq_idx) = (MixerParams::unpack(dims, p), self.seq_idx.as_deref());
        let out = match &self.keep_y {
            Some(slot) => {
                let (out, y) =
                    mixer_core_forward_keeping_y(*dims, (batch, seqlen), zx, w, p, seq_idx);
                *slot.lock().map_err(|_| poisoned())? = Some(y);
                out
            }
            None => mixer_core_forward(*dims, (batch, seqlen), zx, w, p, seq_idx),
        };
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seqlen, dims.inner())),
        ))
    }

    /// The CUDA forward: the composed chain on the GPU's tensors with no autograd graph (the backward recomputes
    /// it, so training keeps only each layer's in_proj output, as on the CPU); for a bf16 layer its SSD step is
    /// the fused kernel of `coil-kernels` ([`crate::ssd::ssd_layer`]).
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
        use candle_core::backend::BackendStorage;
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
        let out = composed::mixer_core_with(
            &tensor(s1, l1)?,
            &tensor(s2, l2)?,
            &tensor(s3, l3)?,
            self.dims,
            self.segments(batch, seqlen).as_ref(),
            self.bf16,
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
        let kept = match &self.keep_y {
            Some(slot) => slot.lock().map_err(|_| poisoned())?.take(),
            None => None,
        };
        let (p, seq_idx) = (MixerParams::unpack(dims, &pv), self.seq_idx.as_deref());
        let g =
            mixer_core_backward_with_y(*dims, (batch, seqlen), &zxv, &wv, p, seq_idx, kept, &gv);
        let dev = zx.device();
        let d_params = g.packed_params();
        Ok((
            Some(Tensor::from_vec(g.d_zxbcdt, zx.shape(), dev)?),
            Some(Tensor::from_vec(g.d_conv_w, conv_w.shape(), dev)?),
            Some(Tensor::from_vec(d_params, params.shape(), dev)?),
        ))
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("mixer core: the kept SSD output's lock is poisoned".into())
}

impl MixerCoreOp {
    fn segments(&self, batch: usize, seqlen: usize) -> Option<Segments> {
        self.seq_idx
            .clone()
            .map(|ids| Segments { batch, seqlen, ids })
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
        let out = composed::mixer_core(
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
/// Accepts f32, bf16 and f16 (computed in f32). On the CPU the custom op runs the CPU kernels and their
/// hand-written backward; on a GPU its `cuda_fwd`, with a backward that recomputes [`composed::mixer_core`].
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
        .map(|s| seq_idx_host(s, batch, seqlen))
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
        MixerCoreOp {
            dims,
            seq_idx,
            bf16: zxbcdt.dtype() == DType::BF16,
            keep_y: (on_cpu && [zxbcdt, conv_w, params].iter().any(|t| t.track_op()))
                .then(|| Mutex::new(None)),
        },
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
mod op_tests;
#[cfg(test)]
pub(crate) mod tests;
