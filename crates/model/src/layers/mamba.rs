//! The Mamba2 mixer (`M`): in_proj → causal conv + SiLU on xBC → dt softplus → SSD → gated RMSNorm → out_proj.
//!
//! in_proj is one fused matrix whose rows are the segments `[z | x | B | C | dt]` ([`MixerDims::in_proj_segments`]);
//! a tensor-parallel rank takes its rows of each segment ([`MixerDims::in_proj_shard`]) and its heads of the
//! per-head tensors, so sharding never needs a different layer.

use super::{Linear, ParamMap};
use crate::config::{MixerDims, ModelConfig};
use crate::error::Result;
use crate::trace::Trace;
use candle_core::{DType, Tensor};
use coil_ops::tensor as ops;

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
        let MixerDims {
            heads,
            head_dim: _,
            groups,
            state: n,
            conv_kernel: k,
        } = self.dims;
        let (inner, conv, gn) = (self.dims.d_inner(), self.dims.conv_dim(), groups * n);
        let zxbcdt = self.in_proj.forward(x)?.to_dtype(DType::F32)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.record(format!("{prefix}.in_proj"), &zxbcdt);
        }
        let z = zxbcdt.narrow(2, 0, inner)?;
        let xbc_raw = zxbcdt.narrow(2, inner, conv)?;
        let dt_raw = zxbcdt.narrow(2, inner + conv, heads)?;

        // The K−1 raw columns before this call, oldest first; zeros at the start of a sequence.
        let history = match state {
            Some(s) => s.conv.narrow(2, 1, k - 1)?.to_dtype(DType::F32)?,
            None => Tensor::zeros((b, conv, k - 1), DType::F32, x.device())?,
        };
        // The window after the last position: its K raw columns, from this call alone when it is long enough
        // (no copy of the whole sequence).
        let new_conv = if t >= k {
            xbc_raw.narrow(1, t - k, k)?.transpose(1, 2)?
        } else {
            Tensor::cat(&[&history, &xbc_raw.transpose(1, 2)?], 2)?.narrow(2, t - 1, k)?
        };
        let hist = if state.is_some() {
            Some(&history)
        } else {
            None
        };
        let xbc =
            ops::causal_conv1d_silu(&xbc_raw, &self.conv_weight, self.conv_bias.as_ref(), hist)?;
        let a = self.a_log.to_dtype(DType::F32)?.exp()?.neg()?;
        let (y, ssm) = ops::ssd_layer(&ops::LayerSsd {
            x: &xbc.narrow(2, 0, inner)?,
            b: &xbc.narrow(2, inner, gn)?,
            c: &xbc.narrow(2, inner + gn, gn)?,
            dt_raw: &dt_raw,
            dt_bias: &self.dt_bias,
            a: &a,
            d: &self.d,
            initial_state: state.map(|s| &s.ssm),
            seq_idx: None,
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
            tr.record(format!("{prefix}.gated_norm"), &g);
        }
        let out = self
            .out_proj
            .forward(&g.to_dtype(self.out_proj.weight.dtype())?)?;
        Ok((
            out,
            MambaState {
                conv: new_conv.contiguous()?,
                ssm,
            },
        ))
    }
}
