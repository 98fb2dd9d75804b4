//! The group-wise gated RMSNorm composed from candle tensor ops (f32, any device, differentiable).

use crate::conv1d::composed::silu;
use candle_core::{bail, DType, Result, Tensor, D};

/// Group-wise gated RMSNorm in f32: `u = y ⊙ silu(z)`, `w ⊙ u_g / sqrt(mean(u_g²) + eps)`; `y`, `z` [..., I].
pub fn gated_rmsnorm(
    y: &Tensor,
    z: &Tensor,
    w: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    let width = w.elem_count();
    let dims = y.dims().to_vec();
    if groups == 0 || !width.is_multiple_of(groups) || dims.last() != Some(&width) {
        bail!("gated_rmsnorm: weight of {width} channels, {groups} groups, input {dims:?}");
    }
    let u = (y.to_dtype(DType::F32)? * silu(&z.to_dtype(DType::F32)?)?)?;
    let rows = u.elem_count() / width;
    let ug = u.reshape((rows, groups, width / groups))?;
    let inv = (ug.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let normed = ug.broadcast_mul(&inv)?.reshape(dims)?;
    normed.broadcast_mul(&w.to_dtype(DType::F32)?)
}
