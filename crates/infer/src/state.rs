//! The decode state of one sequence, in plain host buffers the step updates in place.
//!
//! Per Mamba layer a fixed-size pair (conv window [C, K], SSM state [H, P, N] in f32): the memory of a pure
//! Mamba2 model does not grow with the number of generated tokens. Attention layers keep a KV cache that grows
//! by one position per token, stored position-major ([S, n_kv·hd]) so appending never moves old entries.
//! Conversions to and from the model's [`ModelState`] (batch of one) connect the step to the prefill.

use crate::error::{InferError, Result};
use crate::weights::vec_f32;
use candle_core::{Device, Tensor};
use coil_model::layers::attention::KvCache;
use coil_model::layers::mamba::MambaState;
use coil_model::{LayerState, ModelState};

#[derive(Clone, Debug)]
pub enum LayerCache {
    Mamba {
        /// [C, K]: the last K raw xBC columns per channel, oldest first.
        conv: Vec<f32>,
        /// [H, P, N].
        ssm: Vec<f32>,
    },
    Attention {
        /// [S, n_kv·hd] each.
        k: Vec<f32>,
        v: Vec<f32>,
        /// n_kv·hd.
        width: usize,
    },
    Stateless,
}

/// One sequence's state after `position` tokens.
#[derive(Clone, Debug)]
pub struct SeqState {
    pub layers: Vec<LayerCache>,
    /// Tokens consumed so far (prompt + generated).
    pub position: usize,
}

impl SeqState {
    /// Takes a batch-of-one [`ModelState`] (as the prefill returns it) after `position` tokens. `reserve` extra
    /// positions are allocated in the KV caches now, so that many steps append without allocating.
    pub fn from_model_state(st: &ModelState, position: usize, reserve: usize) -> Result<Self> {
        let mut layers = Vec::with_capacity(st.layers.len());
        for (i, l) in st.layers.iter().enumerate() {
            layers.push(match l {
                LayerState::Mamba(m) => {
                    if m.conv.dim(0)? != 1 {
                        return Err(InferError::Invalid(format!(
                            "layer {i}: expected the state of one sequence, got batch {}",
                            m.conv.dim(0)?
                        )));
                    }
                    LayerCache::Mamba {
                        conv: vec_f32(&m.conv)?,
                        ssm: vec_f32(&m.ssm)?,
                    }
                }
                LayerState::Attention(c) => {
                    let (b, nkv, s, hd) = c.k.dims4()?;
                    if b != 1 {
                        return Err(InferError::Invalid(format!(
                            "layer {i}: expected the KV cache of one sequence, got batch {b}"
                        )));
                    }
                    let width = nkv * hd;
                    let pos_major = |t: &Tensor| -> Result<Vec<f32>> {
                        let mut v = Vec::with_capacity((s + reserve) * width);
                        v.extend(vec_f32(&t.transpose(1, 2)?.contiguous()?)?);
                        Ok(v)
                    };
                    LayerCache::Attention {
                        k: pos_major(&c.k)?,
                        v: pos_major(&c.v)?,
                        width,
                    }
                }
                LayerState::Stateless => LayerCache::Stateless,
            });
        }
        Ok(SeqState { layers, position })
    }

    /// Back to the model's representation (batch of one, on the CPU), e.g. to continue with a multi-token
    /// forward; `lm` supplies the shapes.
    pub fn to_model_state(&self, lm: &coil_model::HybridLm) -> Result<ModelState> {
        let dev = Device::Cpu;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (l, block) in self.layers.iter().zip(&lm.blocks) {
            layers.push(match (l, &block.mixer) {
                (LayerCache::Mamba { conv, ssm }, coil_model::lm::Mixer::Mamba(m)) => {
                    let d = m.dims;
                    LayerState::Mamba(MambaState {
                        conv: Tensor::from_slice(conv, (1, d.conv_dim(), d.conv_kernel), &dev)?,
                        ssm: Tensor::from_slice(ssm, (1, d.heads, d.head_dim, d.state), &dev)?,
                    })
                }
                (LayerCache::Attention { k, v, width }, coil_model::lm::Mixer::Attention(a)) => {
                    let s = k.len() / width;
                    let t = |x: &[f32]| -> Result<Tensor> {
                        Ok(
                            Tensor::from_slice(x, (1, s, a.num_kv_heads, a.head_dim), &dev)?
                                .transpose(1, 2)?
                                .contiguous()?,
                        )
                    };
                    LayerState::Attention(KvCache { k: t(k)?, v: t(v)? })
                }
                (LayerCache::Stateless, coil_model::lm::Mixer::Mlp(_)) => LayerState::Stateless,
                _ => {
                    return Err(InferError::Invalid(
                        "sequence state does not match the model's layers".into(),
                    ))
                }
            });
        }
        Ok(ModelState { layers })
    }

    /// Bytes the state holds now (allocated capacity, all layers).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Mamba { conv, ssm } => (conv.capacity() + ssm.capacity()) * 4,
                LayerCache::Attention { k, v, .. } => (k.capacity() + v.capacity()) * 4,
                LayerCache::Stateless => 0,
            })
            .sum()
    }

    /// Bytes one step reads and writes of this state (Mamba states in full, the KV cache read once).
    pub fn traffic_per_step(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Mamba { conv, ssm } => 2 * (conv.len() + ssm.len()) * 4,
                LayerCache::Attention { k, v, .. } => (k.len() + v.len()) * 4,
                LayerCache::Stateless => 0,
            })
            .sum()
    }
}
