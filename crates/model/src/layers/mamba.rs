//! The Mamba2 mixer (`M`): in_proj → causal conv + SiLU on xBC → dt softplus → SSD → gated RMSNorm → out_proj.
//!
//! in_proj is one fused matrix whose rows are the segments `[z | x | B | C | dt]` ([`MixerDims::in_proj_segments`]);
//! a tensor-parallel rank takes its rows of each segment ([`MixerDims::in_proj_shard`]) and its heads of the
//! per-head tensors, so sharding never needs a different layer.

use super::{Linear, ParamMap};
use crate::config::{MixerDims, ModelConfig};
use crate::error::Result;
use crate::trace::Trace;
use candle_core::{DType, Device, Tensor};
use coil_ops::tensor as ops;
use std::ops::Range;

/// The decode state of one Mamba layer for a batch of sequences (HF cache semantics, docs/numerics.md §4).
#[derive(Clone, Debug)]
pub struct MambaState {
    /// [B, C, K]: the last K raw (pre-conv) xBC columns, oldest first, zero-padded on the left.
    pub conv: Tensor,
    /// [B, H, P, N], f32: the SSM state after the last token.
    pub ssm: Tensor,
}

#[derive(Clone, Debug)]
pub struct Mamba2Mixer {
    pub dims: MixerDims,
    pub in_proj: Linear,
    /// [C, K] (the checkpoint's [C, 1, K] without the middle axis).
    pub conv_weight: Tensor,
    pub conv_bias: Option<Tensor>,
    pub dt_bias: Tensor,
    pub a_log: Tensor,
    pub d: Tensor,
    pub norm_weight: Tensor,
    pub out_proj: Linear,
    pub chunk_size: usize,
    pub eps: f64,
    pub dt_limit: (f32, f32),
    /// `A = −exp(A_log)` in f32 for the inference chain, computed once (A_log is not an autograd variable there).
    a_inference: std::sync::OnceLock<Tensor>,
}

impl Mamba2Mixer {
    /// Takes the mixer's parameters under `prefix` (see [`crate::params::param_specs`]).
    pub fn load(p: &mut ParamMap, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let m = &cfg.mamba;
        let dims = cfg.mixer_dims();
        let n = |s: &str| format!("{prefix}.{s}");
        Ok(Mamba2Mixer {
            dims,
            in_proj: Linear::take(p, &n("in_proj"))?,
            // [C, 1, K] in checkpoints, [C, K] here.
            conv_weight: p
                .take(&n("conv1d.weight"))?
                .reshape((dims.conv_dim(), dims.conv_kernel))?,
            conv_bias: p.take_opt(&n("conv1d.bias")),
            dt_bias: p.take(&n("dt_bias"))?,
            a_log: p.take(&n("A_log"))?,
            d: p.take(&n("D"))?,
            norm_weight: p.take(&n("norm.weight"))?,
            out_proj: Linear::take(p, &n("out_proj"))?,
            chunk_size: m.chunk_size,
            eps: cfg.norm_eps,
            dt_limit: cfg.dt_limit(),
            a_inference: std::sync::OnceLock::new(),
        })
    }

    /// True when the parameters are autograd variables (a training forward).
    fn is_trained(&self) -> bool {
        self.in_proj.weight.track_op() || self.a_log.track_op() || self.conv_weight.track_op()
    }

    fn core_dims(&self) -> coil_ops::mixer_core::MixerCoreDims {
        let MixerDims {
            heads,
            head_dim,
            groups,
            state,
            conv_kernel,
        } = self.dims;
        coil_ops::mixer_core::MixerCoreDims {
            heads,
            head_dim,
            groups,
            state,
            conv_kernel,
            chunk: self.chunk_size,
            eps: self.eps as f32,
            dt_limit: self.dt_limit,
        }
    }

    /// `[conv_bias | dt_bias | A_log | D | norm_weight]` for the mixer-core op (zeros for a missing conv bias).
    fn packed_params(&self) -> Result<Tensor> {
        let conv_bias = match &self.conv_bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(
                self.dims.conv_dim(),
                self.dt_bias.dtype(),
                self.dt_bias.device(),
            )?,
        };
        Ok(ops::pack_mixer_params(
            &conv_bias,
            &self.dt_bias,
            &self.a_log,
            &self.d,
            &self.norm_weight,
        )?)
    }

    /// `x` [B,T,D] → [B,T,D], starting from zero state.
    pub fn forward(
        &self,
        x: &Tensor,
        trace: &mut Option<&mut Trace>,
        prefix: &str,
    ) -> Result<Tensor> {
        if !self.is_trained() {
            return Ok(self.forward_with_state(x, None, trace, prefix)?.0);
        }
        self.forward_packed(x, None)
    }

    /// `x` [B,T,D] → [B,T,D] for packed rows: `seq_idx` [B,T] (integer) names the example of every position, and
    /// the conv window and the SSM state restart from zero wherever it changes (`coil_ops::packing`). Runs the
    /// mixer-core op, so it is differentiable when the parameters are autograd variables; `None` = one sequence
    /// per row.
    pub fn forward_packed(&self, x: &Tensor, seq_idx: Option<&Tensor>) -> Result<Tensor> {
        let zxbcdt = self.in_proj.forward(x)?;
        let g = ops::mixer_core_packed(
            &zxbcdt,
            &self.conv_weight,
            &self.packed_params()?,
            self.core_dims(),
            seq_idx,
        )?;
        self.out_proj
            .forward(&g.to_dtype(self.out_proj.weight.dtype())?)
    }

    /// `x` [B,T,D] → ([B,T,D], state after the last token). With `state`, the conv window and the SSM continue
    /// from it (prefill continuation or, with T = 1, one decode step); without, they start from zero.
    /// Inference only: not differentiable (use [`forward`](Self::forward) for training).
    /// Records `in_proj`, `y` and `gated_norm` under `prefix` when tracing.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        state: Option<&MambaState>,
        trace: &mut Option<&mut Trace>,
        prefix: &str,
    ) -> Result<(Tensor, MambaState)> {
        let (b, t, _) = x.dims3()?;
        let (conv, k) = (self.dims.conv_dim(), self.dims.conv_kernel);
        // The K−1 raw columns before this call, oldest first; zeros at the start of a sequence.
        let history = match state {
            Some(s) => s.conv.narrow(2, 1, k - 1)?.to_dtype(DType::F32)?,
            None => Tensor::zeros((b, conv, k - 1), DType::F32, x.device())?,
        };
        let hist = state.map(|_| &history);
        let pass = self.pass(x, hist, state.map(|s| &s.ssm), None, trace, prefix)?;
        // The window after the last position: its K raw columns, from this call alone when it is long enough
        // (no copy of the whole sequence).
        let new_conv = if t >= k {
            pass.xbc_raw.narrow(1, t - k, k)?.transpose(1, 2)?
        } else {
            Tensor::cat(
                &[
                    &history,
                    &pass.xbc_raw.to_dtype(DType::F32)?.transpose(1, 2)?,
                ],
                2,
            )?
            .narrow(2, t - 1, k)?
        };
        Ok((
            pass.out,
            MambaState {
                conv: new_conv.to_dtype(DType::F32)?.contiguous()?,
                ssm: pass.ssm,
            },
        ))
    }

    /// Ragged prefill: `x` [1,T,D] holds several sequences one after another, `segments` their position ranges
    /// (consecutive, covering 0..T). Returns ([1,T,D], the state after each sequence's last token, batched in
    /// the order of `segments`): each sequence's output and state are what
    /// [`forward_with_state`](Self::forward_with_state) of that sequence alone gives, within rounding. The
    /// output runs the same inference chain with the conv and SSD restarting at every boundary (`seq_idx`); the
    /// states come from `segment_conv_states` and `segment_ssm_states`.
    pub fn forward_ragged(
        &self,
        x: &Tensor,
        segments: &[Range<usize>],
    ) -> Result<(Tensor, MambaState)> {
        let seq_idx: Vec<i32> = segments
            .iter()
            .enumerate()
            .flat_map(|(i, r)| std::iter::repeat_n(i as i32, r.len()))
            .collect();
        let pass = self.pass(x, None, None, Some(&seq_idx), &mut None, "")?;
        let inner = self.dims.d_inner();
        let gn = self.dims.groups * self.dims.state;
        // The states are kept in f32 whatever the chain's activation dtype.
        let row = |t: &Tensor| t.squeeze(0)?.to_dtype(DType::F32);
        let dt = ops::dt_softplus(&row(&pass.dt_raw)?, &self.dt_bias, self.dt_limit)?;
        let ssm = segment_ssm_states(
            &row(&pass.xbc.narrow(2, 0, inner)?)?,
            &row(&pass.xbc.narrow(2, inner, gn)?)?,
            &dt,
            &self.a()?,
            self.dims,
            // The chunk size changes rounding only; no longer than the longest segment, to keep padding small.
            self.chunk_size
                .min(segments.iter().map(Range::len).max().unwrap_or(0).max(1)),
            segments,
        )?;
        Ok((
            pass.out,
            MambaState {
                conv: segment_conv_states(&row(&pass.xbc_raw)?, self.dims.conv_kernel, segments)?,
                ssm,
            },
        ))
    }

    /// `A = −exp(A_log)` [H], f32 (computed once when A_log is not an autograd variable).
    fn a(&self) -> Result<Tensor> {
        let compute = || -> Result<Tensor> { Ok(self.a_log.to_dtype(DType::F32)?.exp()?.neg()?) };
        if self.a_log.track_op() {
            return compute();
        }
        if let Some(a) = self.a_inference.get() {
            return Ok(a.clone());
        }
        let a = compute()?;
        Ok(self.a_inference.get_or_init(|| a).clone())
    }

    /// The inference chain in_proj → conv + SiLU → SSD → gated norm → out_proj on `x` [B,T,D], from the conv
    /// `history` [B,C,K−1] and SSM `initial` state when given, restarting at every change of `seq_idx` [B·T]
    /// (host) when given. Keeps what the callers build decode states from.
    fn pass(
        &self,
        x: &Tensor,
        history: Option<&Tensor>,
        initial: Option<&Tensor>,
        seq_idx: Option<&[i32]>,
        trace: &mut Option<&mut Trace>,
        prefix: &str,
    ) -> Result<Pass> {
        let (b, t, _) = x.dims3()?;
        let MixerDims {
            heads,
            groups,
            state: n,
            ..
        } = self.dims;
        let (inner, conv, gn) = (self.dims.d_inner(), self.dims.conv_dim(), groups * n);
        // The chain's activations: bf16 where the SSD kernel takes bf16 x, B and C (a bf16 layer on a GPU: the conv
        // reads in_proj's output as it is and writes the SSD's input, the gated norm reads z and y and writes
        // out_proj's input, each computing in f32 and rounding once, which is where the f32 chain rounds too),
        // f32 everywhere else.
        let act = ops::ssd_input_dtype(
            self.in_proj.weight.dtype(),
            x.device(),
            heads,
            self.dims.head_dim,
            groups,
            n,
        );
        let zxbcdt = self.in_proj.forward(x)?.to_dtype(act)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.record(format!("{prefix}.in_proj"), &zxbcdt.to_dtype(DType::F32)?);
        }
        let z = zxbcdt.narrow(2, 0, inner)?;
        let xbc_raw = zxbcdt.narrow(2, inner, conv)?;
        let dt_raw = zxbcdt.narrow(2, inner + conv, heads)?;
        let seq_tensor = seq_idx
            .map(|s| Tensor::from_slice(s, (b, t), &Device::Cpu))
            .transpose()?;
        let xbc = ops::causal_conv1d_silu_packed(
            &xbc_raw,
            &self.conv_weight,
            self.conv_bias.as_ref(),
            history,
            seq_tensor.as_ref(),
        )?;
        let (y, ssm) = ops::ssd_layer(&ops::LayerSsd {
            x: &xbc.narrow(2, 0, inner)?,
            b: &xbc.narrow(2, inner, gn)?,
            c: &xbc.narrow(2, inner + gn, gn)?,
            dt_raw: &dt_raw,
            dt_bias: &self.dt_bias,
            a: &self.a()?,
            d: &self.d,
            initial_state: initial,
            seq_idx,
            heads,
            groups,
            chunk: self.chunk_size,
            dt_limit: self.dt_limit,
            dtype: self.in_proj.weight.dtype(),
        })?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.record(format!("{prefix}.y"), &y);
        }
        let g = ops::gated_rmsnorm(&y, &z, &self.norm_weight, groups, self.eps)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.record(format!("{prefix}.gated_norm"), &g.to_dtype(DType::F32)?);
        }
        let out = self
            .out_proj
            .forward(&g.to_dtype(self.out_proj.weight.dtype())?)?;
        Ok(Pass {
            out,
            xbc_raw,
            xbc,
            dt_raw,
            ssm,
        })
    }
}

/// What one inference pass of a mixer ([`Mamba2Mixer::pass`]) computes on the way, for the decode states.
struct Pass {
    /// [B,T,D]
    out: Tensor,
    /// [B,T,C] in the chain's activation dtype (f32, or bf16 for a bf16 layer on a GPU): the conv input
    /// (in_proj's xBC columns) and output (after SiLU).
    xbc_raw: Tensor,
    xbc: Tensor,
    /// [B,T,H] in the chain's activation dtype, before bias and softplus.
    dt_raw: Tensor,
    /// [B,H,P,N] f32: the SSD state after the last position (of the last segment when packed).
    ssm: Tensor,
}

/// The rows `idx` of `t` [T, ..] ([`None`]: a row of zeros) → [idx.len(), ..].
fn gather_rows(t: &Tensor, idx: &[Option<usize>]) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let mut zero_shape = t.dims().to_vec();
    zero_shape[0] = 1;
    let padded = Tensor::cat(&[t, &Tensor::zeros(zero_shape, t.dtype(), t.device())?], 0)?;
    let n = idx.len();
    let idx: Vec<u32> = idx.iter().map(|i| i.unwrap_or(rows) as u32).collect();
    let idx = Tensor::from_vec(idx, n, t.device())?;
    Ok(padded.index_select(&idx, 0)?)
}

/// The conv state of every segment: its last K raw (pre-conv) columns of `xbc_raw` [T,C], oldest first, zeros
/// on the left of a segment shorter than K (what the prefill of that segment alone keeps) → [S,C,K].
fn segment_conv_states(xbc_raw: &Tensor, k: usize, segments: &[Range<usize>]) -> Result<Tensor> {
    let idx: Vec<Option<usize>> = segments
        .iter()
        .flat_map(|r| (0..k).map(move |j| (r.end + j).checked_sub(k).filter(|&p| p >= r.start)))
        .collect();
    let c = xbc_raw.dim(1)?;
    Ok(gather_rows(xbc_raw, &idx)?
        .reshape((segments.len(), k, c))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// The SSM state after the last token of every segment, each from a zero state: for segment `s` ending at `e`
/// (inclusive) and head `h` (of group `g`),
///
/// ```text
/// S_s[h] = Σ_{t∈s} exp(Σ_{u∈(t,e]} dt_u·A_h) · dt_t · x_t[h] ⊗ B_t[g]      [P,N]
/// ```
///
/// with `dt` processed as the SSD of the prefill takes it (bias, softplus, clamp). `x` [T,H·P], `b` [T,G·N],
/// `dt` [T,H] and `a` [H], f32 → [S,H,P,N] f32.
///
/// Computed chunkwise so that nothing is quadratic in a segment's length and every decay exponent is a sum
/// over positions *after* t (never a difference of two long prefix sums, which would lose the small exponents
/// that matter to f32 rounding). Each segment is cut into chunks of `q` positions aligned to its end (its first
/// chunk left-padded with zero rows, which add nothing); per chunk `z` and position `j`,
/// `Σ_{u∈(t,e]} dt_u·A = r_j + R_z`, with `r_j` the sum over the rest of the chunk (a [q,q] triangular matmul)
/// and `R_z` that over the segment's later chunks (a [Z,Z] matmul of the chunk totals). Then one batched
/// matmul per (chunk, group) gives the chunk's weighted `Σ_j x_j ⊗ B_j`, and a [S,Z] one-hot matmul adds up
/// each segment's chunks.
fn segment_ssm_states(
    x: &Tensor,
    b: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    dims: MixerDims,
    q: usize,
    segments: &[Range<usize>],
) -> Result<Tensor> {
    let MixerDims {
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
        ..
    } = dims;
    let dev = x.device();
    // Host bookkeeping: the chunk layout (source row of every slot), each chunk's segment.
    let mut slots: Vec<Option<usize>> = vec![];
    let mut owner: Vec<usize> = vec![];
    for (s, r) in segments.iter().enumerate() {
        let nz = r.len().div_ceil(q);
        let pad = nz * q - r.len();
        slots.extend(std::iter::repeat_n(None, pad));
        slots.extend(r.clone().map(Some));
        owner.extend(std::iter::repeat_n(s, nz));
    }
    let z = owner.len();
    let host = |v: Vec<f32>, shape: (usize, usize)| Tensor::from_vec(v, shape, dev);
    // after[u, j] = 1 when u > j (the rest of a chunk); later[z, z'] = 1 when z' > z in the same segment.
    let after = host(
        (0..q * q).map(|e| f32::from(e / q > e % q)).collect(),
        (q, q),
    )?;
    let later = host(
        (0..z * z)
            .map(|e| f32::from(e % z > e / z && owner[e % z] == owner[e / z]))
            .collect(),
        (z, z),
    )?;
    let one_hot = host(
        (0..segments.len() * z)
            .map(|e| f32::from(owner[e % z] == e / z))
            .collect(),
        (segments.len(), z),
    )?;

    // [Z,H,Q]: heads before positions.
    let per_chunk = |t: &Tensor| -> Result<Tensor> {
        Ok(gather_rows(t, &slots)?
            .reshape((z, q, h))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let dt_c = per_chunk(dt)?;
    let da_c = per_chunk(&dt.broadcast_mul(&a.unsqueeze(0)?)?)?;
    let rest = da_c
        .reshape((z * h, q))?
        .matmul(&after)?
        .reshape((z, h, q))?;
    let later_chunks = later.matmul(&da_c.sum(2)?)?; // [Z,H]
    let w = (rest.broadcast_add(&later_chunks.unsqueeze(2)?)?.exp()? * dt_c)?; // [Z,H,Q]

    // Σ_j w_j · x_j ⊗ B_j per chunk: [Z·G, (H/G)·P, Q] × [Z·G, Q, N].
    let xw = gather_rows(x, &slots)?
        .reshape((z, q, h, p))?
        .permute((0, 2, 3, 1))? // [Z,H,P,Q]
        .broadcast_mul(&w.unsqueeze(2)?)?
        .reshape((z * g, (h / g) * p, q))?;
    let bc = gather_rows(b, &slots)?
        .reshape((z, q, g, n))?
        .permute((0, 2, 1, 3))?
        .contiguous()?
        .reshape((z * g, q, n))?;
    let chunk_states = xw.matmul(&bc)?.reshape((z, h * p * n))?;
    Ok(one_hot
        .matmul(&chunk_states)?
        .reshape((segments.len(), h, p, n))?)
}
