//! Per-row cross-entropy over a large vocabulary, `ce_i = logsumexp(logits_i) − logits_i[t_i]`, as one candle
//! op with its own backward `dlogits_i = g_i · (softmax(logits_i) − onehot(t_i))`.
//!
//! On the CPU the op ([`cpu`]) reads the logits once forward and once backward and allocates nothing of the logits'
//! size but the gradient itself, where candle's composed `log_softmax` and `gather` keep a full f32 log-probability
//! tensor and run their backward through several more of that size. Implementations: [`reference`](mod@reference)
//! (f64), [`cpu`], [`composed`] (candle tensor ops, differentiable); [`row_cross_entropy`] (this file) picks among them
//! by device. On CUDA it runs the composed ops (`cuda_fwd` below); a CUDA kernel would become this op's `cuda_fwd` with
//! a CUDA backward in `bwd`.

pub mod composed;
pub mod cpu;
pub mod reference;

pub use reference::{row_cross_entropy_reference, row_cross_entropy_reference_backward};

use crate::host::storage_f32;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

struct RowCrossEntropy {
    targets: Vec<u32>,
}

impl CustomOp1 for RowCrossEntropy {
    fn name(&self) -> &'static str {
        "coil-row-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, v) = l.shape().dims2()?;
        let x = storage_f32(s, l, "cross entropy", "logits")?;
        let mut ce = vec![0f32; rows];
        cpu::row_cross_entropy_into(x, v, &self.targets, &mut ce);
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
        let x = storage_f32(cs, l, "cross entropy", "logits")?;
        let g = grad.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut out = vec![0f32; rows * v];
        cpu::row_cross_entropy_backward_into(x, v, &self.targets, &g, &mut out);
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
    match logits.device() {
        Device::Cpu => logits
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1(RowCrossEntropy {
                targets: targets.to_vec(),
            }),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_fwd(logits, targets),
        _ => composed::row_cross_entropy(logits, targets),
    }
}

/// The CUDA path: today the composed ops, differentiated by candle autograd.
#[cfg(feature = "cuda")]
fn cuda_fwd(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    composed::row_cross_entropy(logits, targets)
}

#[cfg(test)]
pub(crate) mod tests;
