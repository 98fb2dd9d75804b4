//! The decode step's copy of the model: every tensor extracted once from a [`HybridLm`] into contiguous
//! row-major buffers (matrices in f32 or bf16, small vectors in f32), with the fused layouts the step wants
//! (attention q|k|v as one matrix, `A = −exp(A_log)` precomputed).

use crate::error::{InferError, Result};
use crate::matvec::{Matrix, WeightDtype};
use candle_core::{DType, Tensor};
use coil_model::config::{MixerDims, MlpActivation};
use coil_model::layers::Linear;
use coil_model::lm::Mixer;
use coil_model::HybridLm;

/// Whether the single-token path clamps dt like the chunked prefill does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeDtClamp {
    /// Coil's choice: the same `time_step_limit` clamp in prefill and decode, so a step equals a full forward.
    SameAsPrefill,
    /// HF transformers / mamba_ssm `selective_state_update`: no clamp in the single-token path.
    HfUnclamped,
}

pub(crate) fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn matrix(t: &Tensor, dtype: WeightDtype) -> Result<Matrix> {
    let (rows, cols) = t.dims2()?;
    Ok(Matrix::new(vec_f32(t)?, rows, cols, dtype))
}

fn bias(l: &Linear) -> Result<Option<Vec<f32>>> {
    l.bias.as_ref().map(vec_f32).transpose()
}

/// A Mamba2 mixer for the single-token step.
#[derive(Debug)]
pub struct MambaWeights {
    pub dims: MixerDims,
    pub in_proj: Matrix,
    pub in_bias: Option<Vec<f32>>,
    /// [C, K].
    pub conv_w: Vec<f32>,
    pub conv_b: Option<Vec<f32>>,
    pub dt_bias: Vec<f32>,
    /// `A = −exp(A_log)` [H].
    pub a: Vec<f32>,
    pub d: Vec<f32>,
    /// Gated-norm weight [I].
    pub norm_w: Vec<f32>,
    pub out_proj: Matrix,
    pub out_bias: Option<Vec<f32>>,
    pub eps: f32,
    /// dt clamp `(lo, hi)` of the step (`(0, ∞)` when unclamped).
    pub dt_limit: (f32, f32),
}

/// An attention layer: q, k and v projections fused into one `[nq·hd + 2·nkv·hd, D]` matrix.
#[derive(Debug)]
pub struct AttentionWeights {
    pub qkv: Matrix,
    pub o: Matrix,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Debug)]
pub struct MlpWeights {
    pub up: Matrix,
    pub up_bias: Option<Vec<f32>>,
    pub down: Matrix,
    pub down_bias: Option<Vec<f32>>,
    pub activation: MlpActivation,
}

#[derive(Debug)]
pub enum MixerWeights {
    Mamba(MambaWeights),
    Attention(AttentionWeights),
    Mlp(MlpWeights),
}

#[derive(Debug)]
pub struct LayerWeights {
    /// Pre-mixer RMSNorm weight [D].
    pub norm: Vec<f32>,
    pub mixer: MixerWeights,
}

/// Everything the decode step reads.
#[derive(Debug)]
pub struct StepWeights {
    pub hidden: usize,
    pub vocab: usize,
    pub eps: f32,
    pub dtype: WeightDtype,
    /// [V, D]; also the LM head when the embeddings are tied.
    pub embeddings: Matrix,
    pub layers: Vec<LayerWeights>,
    pub norm_f: Vec<f32>,
    /// `None` when tied to the embeddings.
    pub lm_head: Option<Matrix>,
}

impl StepWeights {
    /// Extracts the weights of `lm` (any dtype, any device) into host buffers of `dtype`.
    pub fn from_model(lm: &HybridLm, dtype: WeightDtype, clamp: DecodeDtClamp) -> Result<Self> {
        let cfg = &lm.config;
        let mut layers = Vec::with_capacity(lm.blocks.len());
        for block in &lm.blocks {
            let mixer = match &block.mixer {
                Mixer::Mamba(m) => MixerWeights::Mamba(MambaWeights {
                    dims: m.dims,
                    in_proj: matrix(&m.in_proj.weight, dtype)?,
                    in_bias: bias(&m.in_proj)?,
                    conv_w: vec_f32(&m.conv_weight)?,
                    conv_b: m.conv_bias.as_ref().map(vec_f32).transpose()?,
                    dt_bias: vec_f32(&m.dt_bias)?,
                    a: vec_f32(&m.a_log)?.iter().map(|v| -v.exp()).collect(),
                    d: vec_f32(&m.d)?,
                    norm_w: vec_f32(&m.norm_weight)?,
                    out_proj: matrix(&m.out_proj.weight, dtype)?,
                    out_bias: bias(&m.out_proj)?,
                    eps: m.eps as f32,
                    dt_limit: match clamp {
                        DecodeDtClamp::SameAsPrefill => m.dt_limit,
                        DecodeDtClamp::HfUnclamped => (f32::NEG_INFINITY, f32::INFINITY),
                    },
                }),
                Mixer::Attention(a) => {
                    if a.q_proj.bias.is_some() || a.k_proj.bias.is_some() || a.v_proj.bias.is_some()
                    {
                        return Err(InferError::Invalid(
                            "attention projections with bias are not supported by the decode step"
                                .into(),
                        ));
                    }
                    let qkv =
                        Tensor::cat(&[&a.q_proj.weight, &a.k_proj.weight, &a.v_proj.weight], 0)?;
                    MixerWeights::Attention(AttentionWeights {
                        qkv: matrix(&qkv, dtype)?,
                        o: matrix(&a.o_proj.weight, dtype)?,
                        num_heads: a.num_heads,
                        num_kv_heads: a.num_kv_heads,
                        head_dim: a.head_dim,
                    })
                }
                Mixer::Mlp(m) => MixerWeights::Mlp(MlpWeights {
                    up: matrix(&m.up_proj.weight, dtype)?,
                    up_bias: bias(&m.up_proj)?,
                    down: matrix(&m.down_proj.weight, dtype)?,
                    down_bias: bias(&m.down_proj)?,
                    activation: m.activation,
                }),
            };
            layers.push(LayerWeights {
                norm: vec_f32(&block.norm)?,
                mixer,
            });
        }
        Ok(StepWeights {
            hidden: cfg.hidden_size,
            vocab: cfg.vocab_size,
            eps: cfg.norm_eps as f32,
            dtype,
            embeddings: matrix(&lm.embeddings, dtype)?,
            layers,
            norm_f: vec_f32(&lm.norm_f)?,
            lm_head: lm.lm_head.as_ref().map(|h| matrix(h, dtype)).transpose()?,
        })
    }

    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embeddings)
    }

    /// Bytes of weights one decode step reads for a batch (every matrix once, one embedding row per sequence,
    /// the small vectors), the numerator of the memory roofline.
    pub fn bytes_per_step(&self, batch: usize) -> usize {
        let vecs = |v: &[f32]| v.len() * 4;
        let opt = |v: &Option<Vec<f32>>| v.as_deref().map_or(0, vecs);
        let mut total =
            self.lm_head().bytes() + batch * self.hidden * self.dtype.bytes() + vecs(&self.norm_f);
        for l in &self.layers {
            total += vecs(&l.norm);
            total += match &l.mixer {
                MixerWeights::Mamba(m) => {
                    m.in_proj.bytes()
                        + m.out_proj.bytes()
                        + opt(&m.in_bias)
                        + opt(&m.out_bias)
                        + vecs(&m.conv_w)
                        + opt(&m.conv_b)
                        + vecs(&m.dt_bias)
                        + vecs(&m.a)
                        + vecs(&m.d)
                        + vecs(&m.norm_w)
                }
                MixerWeights::Attention(a) => a.qkv.bytes() + a.o.bytes(),
                MixerWeights::Mlp(m) => {
                    m.up.bytes() + m.down.bytes() + opt(&m.up_bias) + opt(&m.down_bias)
                }
            };
        }
        total
    }
}
