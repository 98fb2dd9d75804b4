//! Self-attention (`*`): causal GQA with no positional encoding (Nemotron-H), softmax in f32. Packed rows
//! use a block-diagonal causal mask ([`segment_mask`]) so no example attends to another.

use super::{Linear, ParamMap};
use crate::config::ModelConfig;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Keys and values of the positions seen so far: [B, n_kv, S, hd] each (HF `DynamicLayer` semantics).
#[derive(Clone, Debug)]
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
}

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// Takes the layer's parameters under `prefix` (see [`crate::params::param_specs`]).
    pub fn load(p: &mut ParamMap, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let a = &cfg.attention;
        let n = |s: &str| format!("{prefix}.{s}");
        Ok(Attention {
            q_proj: Linear::take(p, &n("q_proj"))?,
            k_proj: Linear::take(p, &n("k_proj"))?,
            v_proj: Linear::take(p, &n("v_proj"))?,
            o_proj: Linear::take(p, &n("o_proj"))?,
            num_heads: a.num_heads,
            num_kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
        })
    }

    /// `x` [B,T,D] → [B,T,D] (causal, no cache).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_cache(x, None)?.0)
    }

    /// `x` [B,T,D] → ([B,T,D], cache extended by these T positions). With `cache` holding S earlier positions,
    /// query i (absolute position S+i) attends to keys 0..=S+i.
    pub fn forward_with_cache(
        &self,
        x: &Tensor,
        cache: Option<&KvCache>,
    ) -> Result<(Tensor, KvCache)> {
        let (b, t, _) = x.dims3()?;
        let (nq, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.q_proj.forward(x)?, nq)?;
        let mut k = heads(self.k_proj.forward(x)?, nkv)?;
        let mut v = heads(self.v_proj.forward(x)?, nkv)?;
        if let Some(c) = cache {
            k = Tensor::cat(&[&c.k, &k], 2)?;
            v = Tensor::cat(&[&c.v, &v], 2)?;
        }
        let past = k.dim(2)? - t;
        let out = self.attend(&q, &k, &v, &causal_mask(t, past, x.device())?)?;
        Ok((self.o_proj.forward(&out)?, KvCache { k, v }))
    }

    /// `x` [B,T,D] → [B,T,D] for packed rows: `mask` [B,1,T,T] from [`segment_mask`], so a query sees the keys
    /// of its own example only (block-diagonal causal). No cache.
    pub fn forward_packed(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nq, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.q_proj.forward(x)?, nq)?;
        let k = heads(self.k_proj.forward(x)?, nkv)?;
        let v = heads(self.v_proj.forward(x)?, nkv)?;
        let out = self.attend(&q, &k, &v, mask)?;
        self.o_proj.forward(&out)
    }

    /// Scaled dot-product attention of `q` [B,nq,T,hd] over `k`, `v` [B,nkv,S,hd] with the additive `mask`
    /// (broadcast to [B,nq,T,S]) → [B,T,nq·hd] before o_proj.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let (nq, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (kr, vr) = (
            repeat_kv(k.clone(), nq / nkv)?,
            repeat_kv(v.clone(), nq / nkv)?,
        );
        let scores = (q
            .to_dtype(DType::F32)?
            .matmul(&kr.to_dtype(DType::F32)?.t()?)?
            * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.broadcast_add(mask)?;
        let probs = softmax(&scores)?.to_dtype(vr.dtype())?;
        Ok(probs
            .matmul(&vr)?
            .transpose(1, 2)?
            .reshape((b, t, nq * hd))?)
    }
}

/// Softmax over the last dimension: candle's fused kernel, or plain differentiable ops (max shift detached)
/// when the scores are part of an autograd graph.
fn softmax(scores: &Tensor) -> Result<Tensor> {
    if !scores.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(scores)?);
    }
    let max = scores.max_keepdim(candle_core::D::Minus1)?.detach();
    let e = scores.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?)
}

/// [B, n_kv, T, hd] → [B, n_kv·rep, T, hd], each kv head serving `rep` consecutive query heads.
pub fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, n, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, n, rep, t, hd))?
        .reshape((b, n * rep, t, hd))?)
}

/// [B, 1, T, T] additive mask of packed rows from their segment ids `seg` [B,T] (`coil_ops::packing`):
/// query i sees key j iff j ≤ i and both are in one segment.
pub fn segment_mask(seg: &[u32], batch: usize, t: usize, device: &Device) -> Result<Tensor> {
    assert_eq!(seg.len(), batch * t, "segment_mask: seg length");
    let mut mask = vec![0f32; batch * t * t];
    for (b, rows) in mask.chunks_exact_mut(t * t).enumerate() {
        let s = &seg[b * t..(b + 1) * t];
        for (i, row) in rows.chunks_exact_mut(t).enumerate() {
            for (j, m) in row.iter_mut().enumerate() {
                if j > i || s[j] != s[i] {
                    *m = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(mask, (batch, 1, t, t), device)?)
}

/// [T, S+T] additive mask for T new queries after S cached positions: query i sees keys 0..=S+i.
fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let width = past + t;
    let mask: Vec<f32> = (0..t * width)
        .map(|i| {
            if i % width > past + i / width {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, width), device)?)
}
