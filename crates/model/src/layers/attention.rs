//! Self-attention (`*`): causal GQA with no positional encoding (Nemotron-H), softmax in f32.

use super::Linear;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::Loader;
use candle_core::{DType, Device, Tensor};

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
    pub fn load(l: &Loader, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let a = &cfg.attention;
        let (d, q, kv) = (
            cfg.hidden_size,
            a.num_heads * a.head_dim,
            a.num_kv_heads * a.head_dim,
        );
        let p = |s: &str| format!("{prefix}.{s}");
        Ok(Attention {
            q_proj: Linear::load(l, &p("q_proj"), q, d, false)?,
            k_proj: Linear::load(l, &p("k_proj"), kv, d, false)?,
            v_proj: Linear::load(l, &p("v_proj"), kv, d, false)?,
            o_proj: Linear::load(l, &p("o_proj"), d, q, false)?,
            num_heads: a.num_heads,
            num_kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
        })
    }

    /// `x` [B,T,D] → [B,T,D].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nq, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.q_proj.forward(x)?, nq)?;
        let k = repeat_kv(heads(self.k_proj.forward(x)?, nkv)?, nq / nkv)?;
        let v = repeat_kv(heads(self.v_proj.forward(x)?, nkv)?, nq / nkv)?;
        let scores = (q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.broadcast_add(&causal_mask(t, x.device())?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, nq * hd))?;
        self.o_proj.forward(&out)
    }
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

/// [T, T] additive mask: 0 on and below the diagonal, −∞ above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}
