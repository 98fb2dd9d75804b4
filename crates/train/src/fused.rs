//! In-place CPU kernels for the optimizer: gradient accumulation, the AdamW moment and parameter updates, and
//! the sum of squares for the gradient norm, each one pass over contiguous f32 storage with no temporaries.
//! [`crate::optim::AdamW`] uses them on the CPU and falls back to plain tensor ops on other devices.

use candle_core::{bail, CpuStorage, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

const CHUNK: usize = 1 << 16;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: non-contiguous input")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => bail!("{op}: expected f32 storage"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: non-contiguous input")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => bail!("{op}: expected f32 storage"),
    }
}

/// `dst = dst·keep + scale·f(src)` with `f` the identity or the square.
struct Ema {
    keep: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Ema {
    fn name(&self) -> &'static str {
        "coil-ema"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let dst = slice_mut(s1, l1, self.name())?;
        let src = slice(s2, l2, self.name())?;
        if dst.len() != src.len() {
            bail!("{}: {} vs {} elements", self.name(), dst.len(), src.len());
        }
        let (keep, scale, square) = (self.keep, self.scale, self.square);
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (d, &g) in d.iter_mut().zip(s) {
                    let g = if square { g * g } else { g };
                    *d = *d * keep + scale * g;
                }
            });
        Ok(())
    }
}

/// `p ← p·(1 − lr·wd) − lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)`.
struct AdamUpdate {
    lr: f64,
    wd: f64,
    bc1: f64,
    bc2: f64,
    eps: f64,
}

impl InplaceOp3 for AdamUpdate {
    fn name(&self) -> &'static str {
        "coil-adamw"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let p = slice_mut(s1, l1, self.name())?;
        let (m, v) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        if p.len() != m.len() || p.len() != v.len() {
            bail!("{}: parameter and moments differ in size", self.name());
        }
        let decay = (1.0 - self.lr * self.wd) as f32;
        let step = (self.lr / self.bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / self.bc2.sqrt()) as f32;
        let eps = self.eps as f32;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p = *p * decay - step * m / (v.sqrt() * inv_sqrt_bc2 + eps);
                }
            });
        Ok(())
    }
}

struct Fill(f32);

impl InplaceOp1 for Fill {
    fn name(&self) -> &'static str {
        "coil-fill"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        slice_mut(s, l, self.name())?.fill(self.0);
        Ok(())
    }
}

/// Reads the storage and records Σx² (f64); leaves it unchanged.
struct SumSq(Mutex<f64>);

impl InplaceOp1 for SumSq {
    fn name(&self) -> &'static str {
        "coil-sumsq"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let x = slice(s, l, self.name())?;
        let sum: f64 = x
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum();
        *self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("sumsq lock poisoned".into()))? = sum;
        Ok(())
    }
}

/// True when the fused kernels apply: contiguous f32 CPU tensors.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
}

/// `dst ← keep·dst + scale·src` (or `scale·src²` with `square`), in place.
pub fn ema(dst: &Tensor, src: &Tensor, keep: f64, scale: f64, square: bool) -> Result<()> {
    dst.inplace_op2(
        src,
        &Ema {
            keep: keep as f32,
            scale: scale as f32,
            square,
        },
    )
}

/// The AdamW parameter update, in place on `p`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    p: &Tensor,
    m: &Tensor,
    v: &Tensor,
    lr: f64,
    wd: f64,
    bc1: f64,
    bc2: f64,
    eps: f64,
) -> Result<()> {
    p.inplace_op3(
        m,
        v,
        &AdamUpdate {
            lr,
            wd,
            bc1,
            bc2,
            eps,
        },
    )
}

pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    t.inplace_op1(&Fill(value))
}

pub fn sum_sq(t: &Tensor) -> Result<f64> {
    let op = SumSq(Mutex::new(0.0));
    t.inplace_op1(&op)?;
    let v = *op
        .0
        .lock()
        .map_err(|_| candle_core::Error::Msg("sumsq lock poisoned".into()))?;
    Ok(v)
}
