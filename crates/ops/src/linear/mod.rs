//! A dense layer without bias, `y [N, out] = x [N, in] · wᵀ` with `w` [out, in] as checkpoints store it, as one
//! candle op with its own backward `dx = dy · w`, `dw = dyᵀ · x`.
//!
//! Why an op: candle differentiates `x.matmul(&w.t())` through its transpose node, so the gradient of `w` is first
//! built for `wᵀ` (a zero-filled tensor plus an add), then transposed and added into another zero-filled tensor of
//! `w`'s shape through a strided add. For the 50,280-row LM head of Mamba2-130M that was ~0.4 s of a CPU training
//! step beyond the two products themselves (1,024 positions). The op hands candle `dw` already in `w`'s layout.
//!
//! Implementations: [`reference`](mod@reference) (f64 loops), [`cpu`] (`gemm` on all threads), and candle's
//! `matmul` for every other case (other devices, f16/bf16, non-contiguous inputs): [`linear`] picks.

pub mod cpu;
pub mod reference;

use crate::host::storage_f32;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "coil-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((rows, d_in), (d_out, w_in)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if d_in != w_in {
            bail!("linear: x has {d_in} features but the weight [{d_out}, {w_in}] takes {w_in}");
        }
        let x = storage_f32(s1, l1, "linear", "x")?;
        let w = storage_f32(s2, l2, "linear", "weight")?;
        let mut y = vec![0f32; rows * d_out];
        cpu::linear_into(x, w, d_in, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((rows, d_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, dy) = (x.detach(), w.detach(), dy.detach().contiguous()?);
        Ok((Some(dy.matmul(&w)?), Some(dy.t()?.matmul(&x)?)))
    }
}

/// `x [N, in] · wᵀ` for `w` [out, in] → [N, out], differentiable w.r.t. both. Contiguous f32 on the CPU runs the
/// op above; anything else is candle's `x.matmul(&w.t())`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ((_, d_in), (d_out, w_in)) = (x.dims2()?, w.dims2()?);
    if d_in != w_in {
        bail!("linear: x has {d_in} features but the weight [{d_out}, {w_in}] takes {w_in}");
    }
    let fits = |t: &Tensor| t.dtype() == DType::F32 && t.is_contiguous();
    if matches!(x.device(), Device::Cpu) && w.device().is_cpu() && fits(x) && fits(w) {
        x.apply_op2(w, Linear)
    } else {
        x.matmul(&w.t()?)
    }
}

#[cfg(test)]
mod tests;
