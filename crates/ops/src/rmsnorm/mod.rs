//! RMSNorm over the last dimension, `y = w ⊙ x / sqrt(mean(x²) + eps)`, as one candle op with its own backward.
//!
//! Why an op: differentiated as tensor ops (square, mean, add, sqrt, divide, scale) it is six graph nodes of the
//! input's size, each with a full pass forward and, in candle's backward, a zero-filled gradient plus an add;
//! Mamba2-130M's training step runs 25 of them. The op is one pass forward and one backward.
//!
//! Implementations: [`reference`](mod@reference) (f64) and [`cpu`] (f32, rayon over rows, the row's sums in f64);
//! [`rms_norm`] runs the op for contiguous f32 CPU tensors and the composed tensor ops for anything else.

pub mod cpu;
pub mod reference;

use crate::host::{host_f32, storage_f32};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D};

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "coil-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(s1, l1, "rms norm", "x")?;
        let w = storage_f32(s2, l2, "rms norm", "weight")?;
        let mut y = vec![0f32; x.len()];
        cpu::rms_norm_into(x, w, self.eps, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = "rms norm backward";
        let (xv, wv, dyv) = (host_f32(x, op)?, host_f32(w, op)?, host_f32(dy, op)?);
        let (mut dx, mut dw) = (vec![0f32; xv.len()], vec![0f32; wv.len()]);
        cpu::rms_norm_backward_into(&xv, &wv, self.eps, &dyv, &mut dx, &mut dw);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// `w ⊙ x / sqrt(mean(x²) + eps)` over the last dimension of `x`, for `w` [d], differentiable w.r.t. both; f32
/// in and out. Contiguous f32 on the CPU runs the op above; anything else runs the composed tensor ops.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] {
        bail!(
            "rms norm: weight {:?} does not fit the last dimension {d} of x {:?}",
            w.dims(),
            x.dims()
        );
    }
    let fits = |t: &Tensor| t.dtype() == DType::F32 && t.is_contiguous();
    if matches!(x.device(), Device::Cpu) && w.device().is_cpu() && fits(x) && fits(w) {
        return x.apply_op2(w, RmsNorm { eps: eps as f32 });
    }
    let (xf, wf) = (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?);
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    xf.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(&wf)
}

#[cfg(test)]
mod tests;
