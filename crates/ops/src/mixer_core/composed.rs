//! The mixer core composed from the four ops' composed twins ([`crate::conv1d::composed`],
//! [`crate::dt::composed`], [`crate::ssd::composed`], [`crate::gated_rmsnorm::composed`]): f32, any device,
//! differentiable through candle autograd.

use super::MixerCoreDims;
use crate::conv1d::composed::causal_conv1d_silu;
use crate::dt::composed::dt_softplus;
use crate::gated_rmsnorm::composed::gated_rmsnorm;
use crate::packing::Segments;
use crate::ssd::composed::ssd;
use candle_core::{DType, Result, Tensor};

/// The mixer core (see [`crate::mixer_core`](mod@crate::mixer_core)) composed from tensor ops: `zxbcdt`
/// [B,T,2I+2GN+H], `conv_w` [C,K] or [C,1,K], `params` packed as [`super::pack_mixer_params`] makes it → [B,T,I], f32. Differentiable.
pub fn mixer_core(
    zxbcdt: &Tensor,
    conv_w: &Tensor,
    params: &Tensor,
    dims: MixerCoreDims,
    segments: Option<&Segments>,
) -> Result<Tensor> {
    let (batch, seqlen, _) = zxbcdt.dims3()?;
    let (i, gn, h, ch) = (
        dims.inner(),
        dims.bc_width(),
        dims.heads,
        dims.conv_channels(),
    );
    let zx = zxbcdt.to_dtype(DType::F32)?;
    let p = params.to_dtype(DType::F32)?;
    let z = zx.narrow(2, 0, i)?;
    let xbc_raw = zx.narrow(2, i, ch)?;
    let dt_raw = zx.narrow(2, i + ch, h)?;
    let conv_bias = p.narrow(0, 0, ch)?;
    let dt_bias = p.narrow(0, ch, h)?;
    let a_log = p.narrow(0, ch + h, h)?;
    let d = p.narrow(0, ch + 2 * h, h)?;
    let norm_w = p.narrow(0, ch + 3 * h, i)?;

    let xbc = causal_conv1d_silu(&xbc_raw, conv_w, Some(&conv_bias), None, segments)?;
    let x = xbc
        .narrow(2, 0, i)?
        .reshape((batch, seqlen, h, dims.head_dim))?;
    let bm = xbc
        .narrow(2, i, gn)?
        .reshape((batch, seqlen, dims.groups, dims.state))?;
    let cm = xbc
        .narrow(2, i + gn, gn)?
        .reshape((batch, seqlen, dims.groups, dims.state))?;
    let dt = dt_softplus(&dt_raw, &dt_bias, dims.dt_limit)?;
    let a = a_log.exp()?.neg()?;
    let (y, _) = ssd(&x, &dt, &a, &bm, &cm, &d, None, dims.chunk, segments)?;
    gated_rmsnorm(
        &y.reshape((batch, seqlen, i))?,
        &z,
        &norm_w,
        dims.groups,
        dims.eps as f64,
    )
}
