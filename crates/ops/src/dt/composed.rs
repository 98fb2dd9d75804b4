//! The dt parametrisation composed from candle tensor ops (f32, any device, differentiable).

use candle_core::{DType, Result, Tensor};

/// `clamp(softplus(dt_raw + bias), lo, hi)` in f32: `dt_raw` [..., H], `bias` [H].
pub fn dt_softplus(dt_raw: &Tensor, bias: &Tensor, (lo, hi): (f32, f32)) -> Result<Tensor> {
    let v = dt_raw
        .to_dtype(DType::F32)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?;
    // softplus(v) = max(v, 0) + log(1 + exp(−|v|)): never overflows.
    let sp = (v.relu()? + (v.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let sp = if lo > 0.0 { sp.maximum(lo)? } else { sp };
    if hi.is_finite() {
        sp.minimum(hi)
    } else {
        Ok(sp)
    }
}
