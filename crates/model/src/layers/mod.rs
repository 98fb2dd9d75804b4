//! The three layer kinds of a hybrid stack and their shared pieces (linear projection, RMSNorm).
//!
//! Layers hold tensors under their checkpoint names' structure and compute with device-agnostic candle ops;
//! the Mamba2 mixer's special ops go through `coil_ops::tensor` (each op's `mod.rs` in coil-ops picks the device
//! path).

pub mod attention;
pub mod mamba;
pub mod mlp;

use crate::error::Result;
use crate::weights::Loader;
use candle_core::{DType, Tensor};

/// `y = x·Wᵀ (+ b)` over the last dimension; `W` is [out, in] as checkpoints store it.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(
        l: &Loader,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Linear {
            weight: l.tensor(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: if bias {
                Some(l.tensor(&format!("{prefix}.bias"), &[out_dim])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dim(0)?;
        }
        Ok(y.reshape(out_dims)?)
    }
}

/// RMSNorm in f32: `w ⊙ x / sqrt(mean(x²) + eps)`, returned in the weight's dtype. Uses candle's fused kernel,
/// or plain differentiable ops when an input is an autograd variable.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    let wf = weight.to_dtype(DType::F32)?;
    let y = if x.track_op() || weight.track_op() {
        let ms = xf.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        xf.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(&wf)?
    } else {
        candle_nn::ops::rms_norm(&xf.contiguous()?, &wf, eps as f32)?
    };
    Ok(y.to_dtype(weight.dtype())?)
}
