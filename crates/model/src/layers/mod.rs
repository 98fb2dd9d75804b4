//! The three layer kinds of a hybrid stack and their shared pieces (linear projection, RMSNorm).
//!
//! Layers hold tensors under their checkpoint names' structure and compute with device-agnostic candle ops;
//! the Mamba2 mixer's special ops go through `coil_ops::tensor` (each op's `mod.rs` in coil-ops picks the device
//! path).

pub mod attention;
pub mod mamba;
pub mod mlp;

use crate::error::{ModelError, Result};
use crate::params::ParamSpec;
use crate::weights::Loader;
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// A model's parameters read for its parameter table ([`crate::params::param_specs`]), which the layers take by
/// name as they are built. Names, shapes and presence come from the table alone; a layer taking a name the table
/// lacks, or leaving one untaken, is an error.
pub struct ParamMap {
    /// In table order, as read (what the model saves).
    ordered: Vec<(String, Tensor)>,
    untaken: BTreeMap<String, Tensor>,
}

impl ParamMap {
    /// Reads every tensor of `specs` through `l`, checking names and shapes.
    pub fn read(l: &Loader, specs: &[ParamSpec]) -> Result<Self> {
        let ordered = specs
            .iter()
            .map(|s| Ok((s.name.clone(), l.tensor(&s.name, &s.shape)?)))
            .collect::<Result<Vec<_>>>()?;
        let untaken = ordered.iter().cloned().collect();
        Ok(ParamMap { ordered, untaken })
    }

    /// The parameter `name`.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.untaken.remove(name).ok_or_else(|| {
            ModelError::Invalid(format!(
                "parameter {name} is not in the parameter table (or taken twice)"
            ))
        })
    }

    /// The parameter `name` if the table has it (optional biases).
    pub fn take_opt(&mut self, name: &str) -> Option<Tensor> {
        self.untaken.remove(name)
    }

    /// Every parameter in table order, once the layers have taken them all.
    pub fn finish(self) -> Result<Vec<(String, Tensor)>> {
        match self.untaken.keys().next() {
            Some(name) => Err(ModelError::Invalid(format!(
                "parameter {name} is in the parameter table but no layer uses it"
            ))),
            None => Ok(self.ordered),
        }
    }
}

/// `y = x·Wᵀ (+ b)` over the last dimension; `W` is [out, in] as checkpoints store it.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{prefix}.weight` and, when the table has it, `{prefix}.bias`.
    pub fn take(p: &mut ParamMap, prefix: &str) -> Result<Self> {
        Ok(Linear {
            weight: p.take(&format!("{prefix}.weight"))?,
            bias: p.take_opt(&format!("{prefix}.bias")),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        let y = coil_ops::tensor::linear(&x.reshape((rows, in_dim))?, &self.weight)?;
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
/// or Coil's differentiable op when an input is an autograd variable.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let tracked = x.track_op() || weight.track_op();
    if !tracked && x.device().is_cuda() && x.dtype() == weight.dtype() && x.dtype() != DType::F32 {
        // candle's CUDA kernel reads bf16/f16 as f32 and computes exactly as for f32 input (scale·x·w in f32, the
        // same reduction order), rounding once when it stores: the conversions to f32 and back below would give
        // the same bits with two more passes over x. (Its CPU kernel divides in the storage type instead.)
        return Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            weight,
            eps as f32,
        )?);
    }
    let xf = x.to_dtype(DType::F32)?;
    let wf = weight.to_dtype(DType::F32)?;
    let y = if tracked {
        // Coil's op (one node with its own backward on the CPU; the composed ops elsewhere).
        coil_ops::tensor::rms_norm(&xf.contiguous()?, &wf.contiguous()?, eps)?
    } else {
        candle_nn::ops::rms_norm(&xf.contiguous()?, &wf, eps as f32)?
    };
    Ok(y.to_dtype(weight.dtype())?)
}
