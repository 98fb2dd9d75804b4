//! The per-row cross-entropy composed from candle tensor ops (any device, differentiable): `−log_softmax(x)[i, t_i]`.

use candle_core::{DType, Result, Tensor, D};

/// `ce [N] = −log_softmax(logits [N, V])[i, targets[i]]`, f32.
pub fn row_cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
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
