//! The plain mixer core: the f64 references of the four ops it chains (docs/numerics.md §2, steps 2–5), so every
//! step is the readable definition: [`crate::conv1d::reference`], [`crate::dt::reference`],
//! [`crate::ssd::reference`] and [`crate::gated_rmsnorm::reference`].

use super::MixerCoreDims;
use crate::conv1d::reference::causal_conv1d_silu_reference;
use crate::dt::reference::dt_softplus_reference;
use crate::gated_rmsnorm::reference::gated_rmsnorm_reference;
use crate::ssd::reference::{forward64, Inputs64};

/// The mixer core in f64: `zxbcdt` [B,T,2I+2GN+H], `conv_w` [C,K], `params` packed as
/// [`super::MixerParams::unpack`] reads them, `seq_idx` [B,T] → [B,T,I].
pub fn mixer_core_reference(
    dims: &MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f64],
    conv_w: &[f64],
    params: &[f64],
    seq_idx: Option<&[i32]>,
) -> Vec<f64> {
    let (i_dim, ch, gn, w, h) = (
        dims.inner(),
        dims.conv_channels(),
        dims.bc_width(),
        dims.in_width(),
        dims.heads,
    );
    assert_eq!(
        zxbcdt.len(),
        batch * seqlen * w,
        "mixer reference: zxbcdt length"
    );
    assert_eq!(
        params.len(),
        dims.params_len(),
        "mixer reference: params length"
    );
    let (conv_b, rest) = params.split_at(ch);
    let (dt_b, rest) = rest.split_at(h);
    let (a_log, rest) = rest.split_at(h);
    let (d, norm_w) = rest.split_at(h);
    let columns = |data: &[f64], width: usize, from: usize, to: usize| -> Vec<f64> {
        data.chunks_exact(width)
            .flat_map(|row| row[from..to].iter().copied())
            .collect()
    };
    let z = columns(zxbcdt, w, 0, i_dim);
    let xbc = causal_conv1d_silu_reference(
        &columns(zxbcdt, w, i_dim, i_dim + ch),
        (batch, seqlen, ch),
        conv_w,
        dims.conv_kernel,
        Some(conv_b),
        None,
        seq_idx,
    );
    let (lo, hi) = dims.dt_limit;
    let inp = Inputs64 {
        x: columns(&xbc, ch, 0, i_dim),
        dt: dt_softplus_reference(
            &columns(zxbcdt, w, i_dim + ch, w),
            dt_b,
            (lo as f64, hi as f64),
        ),
        a: a_log.iter().map(|v| -v.exp()).collect(),
        b: columns(&xbc, ch, i_dim, i_dim + gn),
        c: columns(&xbc, ch, i_dim + gn, ch),
        d: d.to_vec(),
        init: None,
        seq_idx: seq_idx.map(<[i32]>::to_vec),
    };
    let (y, _) = forward64(dims.ssd_dims(batch, seqlen), &inp);
    gated_rmsnorm_reference(&y, &z, norm_w, dims.groups, dims.eps as f64)
}
