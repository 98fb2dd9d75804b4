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
    mixer_core_with(zxbcdt, conv_w, params, dims, segments, false)
}

/// [`mixer_core`], with `fused_ssd` the SSD step (and everything after the conv up to the norm) runs in bf16
/// through [`crate::ssd::ssd_layer`], the fused kernel on a GPU; then the result is not differentiable.
pub(crate) fn mixer_core_with(
    zxbcdt: &Tensor,
    conv_w: &Tensor,
    params: &Tensor,
    dims: MixerCoreDims,
    segments: Option<&Segments>,
    fused_ssd: bool,
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
    let a = a_log.exp()?.neg()?;
    if fused_ssd {
        // The layer's bf16 activations into the fused SSD (dt softplus, bias and clamp inside): not
        // differentiable, for the GPU forward whose backward recomputes the composed chain.
        let xbc = xbc.to_dtype(DType::BF16)?;
        let (y, _) = crate::ssd::ssd_layer(&crate::ssd::LayerSsd {
            x: &xbc.narrow(2, 0, i)?,
            b: &xbc.narrow(2, i, gn)?,
            c: &xbc.narrow(2, i + gn, gn)?,
            dt_raw: &dt_raw,
            dt_bias: &dt_bias,
            a: &a,
            d: &d,
            initial_state: None,
            seq_idx: segments.map(|s| s.ids.as_slice()),
            heads: h,
            groups: dims.groups,
            chunk: dims.chunk,
            dt_limit: dims.dt_limit,
            dtype: DType::BF16,
        })?;
        return gated_rmsnorm(&y, &z, &norm_w, dims.groups, dims.eps as f64);
    }
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
    let (y, _) = ssd(&x, &dt, &a, &bm, &cm, &d, None, dims.chunk, segments)?;
    gated_rmsnorm(
        &y.reshape((batch, seqlen, i))?,
        &z,
        &norm_w,
        dims.groups,
        dims.eps as f64,
    )
}
