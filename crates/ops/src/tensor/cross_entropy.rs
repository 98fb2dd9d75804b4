//! Per-row cross-entropy over a large vocabulary, `ce_i = logsumexp(logits_i) − logits_i[t_i]`, as one candle
//! op with its own backward `dlogits_i = g_i · (softmax(logits_i) − onehot(t_i))`.
//!
//! On the CPU the op reads the logits once forward (a max and an exp-sum per row, rayon over rows) and once
//! backward, and allocates nothing of the logits' size but the gradient itself, where candle's composed
//! `log_softmax` and `gather` keep a full f32 log-probability tensor and run their backward through several more
//! of that size. On other devices the function computes the same with candle tensor ops (the reference, and the
//! test's comparison).

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

struct RowCrossEntropy {
    targets: Vec<u32>,
}

/// `max` and `log Σ exp(x − max)` of one row.
fn row_lse(row: &[f32]) -> f32 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if !m.is_finite() {
        return m;
    }
    let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
    m + s.ln()
}

fn dense<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("cross entropy: logits must be f32 inside the op");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("cross entropy: logits must be contiguous inside the op"),
    }
}

impl CustomOp1 for RowCrossEntropy {
    fn name(&self) -> &'static str {
        "coil-row-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, v) = l.shape().dims2()?;
        let x = dense(s, l)?;
        let ce: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| row_lse(row) - row[t as usize])
            .collect();
        debug_assert_eq!(ce.len(), rows);
        Ok((CpuStorage::F32(ce), Shape::from(rows)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, v) = arg.dims2()?;
        if !arg.device().is_cpu() {
            bail!("cross entropy: the fused op runs on the CPU only");
        }
        let x = arg.detach().to_dtype(DType::F32)?.contiguous()?;
        let (st, l) = x.storage_and_layout();
        let candle_core::Storage::Cpu(cs) = &*st else {
            bail!("cross entropy: logits left the CPU");
        };
        let x = dense(cs, l)?;
        let g = grad.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut out = vec![0f32; rows * v];
        out.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(self.targets.par_iter().zip(g.par_iter()))
            .for_each(|((o, row), (&t, &gi))| {
                let lse = row_lse(row);
                for (ov, &xv) in o.iter_mut().zip(row) {
                    *ov = gi * (xv - lse).exp();
                }
                o[t as usize] -= gi;
            });
        Ok(Some(Tensor::from_vec(out, (rows, v), arg.device())?))
    }
}

/// `ce [N] = logsumexp(logits [N, V]) − logits[i, targets[i]]`, f32, differentiable w.r.t. the logits (any float
/// dtype; the gradient comes back in it). Targets must be below V.
pub fn row_cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (rows, v) = logits.dims2()?;
    if targets.len() != rows {
        bail!(
            "cross entropy: {} targets for {rows} rows of logits",
            targets.len()
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("cross entropy: target {t} is outside the {v} logits of a row");
    }
    if !matches!(logits.device(), Device::Cpu) {
        return composed_row_cross_entropy(logits, targets);
    }
    let out = logits
        .to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1(RowCrossEntropy {
            targets: targets.to_vec(),
        })?;
    Ok(out)
}

/// The same with candle tensor ops: `−log_softmax(logits)[i, t_i]`.
pub fn composed_row_cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let rows = targets.len();
    let t = Tensor::from_slice(targets, (rows, 1), logits.device())?;
    let logp = log_softmax(&logits.to_dtype(DType::F32)?)?;
    logp.gather(&t, 1)?.squeeze(1)?.neg()
}

/// `x − logsumexp(x)` over the last dimension (max shift detached).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::checks::{scaled_err, Lcg};
    use candle_core::Var;

    #[test]
    fn fused_matches_composed_in_value_and_gradient() -> Result<()> {
        let (rows, v) = (7, 301);
        let mut r = Lcg(9);
        let x = r.vec(rows * v, -6.0, 6.0);
        let targets: Vec<u32> = (0..rows).map(|i| ((i * 97 + 5) % v) as u32).collect();
        let g = r.vec(rows, 0.0, 2.0);
        for dtype in [DType::F32, DType::BF16] {
            let run = |fused: bool| -> Result<(Vec<f32>, Vec<f32>)> {
                let var = Var::from_tensor(
                    &Tensor::from_slice(&x, (rows, v), &Device::Cpu)?.to_dtype(dtype)?,
                )?;
                let ce = if fused {
                    row_cross_entropy(var.as_tensor(), &targets)?
                } else {
                    composed_row_cross_entropy(var.as_tensor(), &targets)?
                };
                let gt = Tensor::from_slice(&g, rows, &Device::Cpu)?;
                let grads = (&ce * gt)?.sum_all()?.backward()?;
                let dx = grads.get(var.as_tensor()).expect("gradient");
                assert_eq!(dx.dtype(), dtype);
                Ok((
                    ce.to_vec1()?,
                    dx.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                ))
            };
            let (ce_f, dx_f) = run(true)?;
            let (ce_c, dx_c) = run(false)?;
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            assert!(scaled_err(&ce_f, &ce_c) < 1e-5, "{dtype:?} values");
            assert!(scaled_err(&dx_f, &dx_c) < tol, "{dtype:?} gradients");
            // and by hand for row 0: ce = lse − x[t]
            let row = &x[..v];
            let want = row_lse(row) - row[targets[0] as usize];
            if dtype == DType::F32 {
                assert!((ce_f[0] - want).abs() < 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn bad_targets_are_clear_errors() {
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let e = row_cross_entropy(&x, &[0, 5]).unwrap_err().to_string();
        assert!(e.contains("target 5"), "{e}");
        let e = row_cross_entropy(&x, &[0]).unwrap_err().to_string();
        assert!(e.contains("1 targets for 2 rows"), "{e}");
    }
}
