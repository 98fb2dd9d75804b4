//! The fast CPU mixer core on f32 slices: the CPU kernels of [`crate::conv1d`], [`crate::dt`], [`crate::ssd`]
//! and [`crate::gated_rmsnorm`] chained, forward and backward. The backward takes the op's inputs and recomputes
//! the forward (conv output, dt, and the SSD output unless the caller kept it from the forward:
//! [`mixer_core_forward_keeping_y`], [`mixer_core_backward_with_y`]).

use super::{MixerCoreDims, MixerCoreGrads, MixerParams};
use crate::conv1d::cpu::{causal_conv1d_silu, causal_conv1d_silu_backward};
use crate::dt::cpu::{a_from_log, dt_softplus, dt_softplus_backward};
use crate::gated_rmsnorm::cpu::{gated_rmsnorm_backward, gated_rmsnorm_into};
use crate::ssd::{ssd_chunked_backward, ssd_chunked_y, SsdInputs};

/// Everything the forward computes before the norm, kept for the backward.
struct Activations {
    z: Vec<f32>,       // [B,T,I]
    xbc_raw: Vec<f32>, // [B,T,C], conv input
    dt_raw: Vec<f32>,  // [B,T,H]
    x: Vec<f32>,       // [B,T,I] = [B,T,H,P]
    b: Vec<f32>,       // [B,T,G,N]
    c: Vec<f32>,       // [B,T,G,N]
    dt: Vec<f32>,      // [B,T,H]
    a: Vec<f32>,       // [H]
    y: Vec<f32>,       // [B,T,I], SSD output with the D skip
}

impl Activations {
    fn ssd_inputs<'s>(&'s self, p: &MixerParams<'s>, seq_idx: Option<&'s [i32]>) -> SsdInputs<'s> {
        SsdInputs {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: p.d,
            initial_state: None,
            seq_idx,
        }
    }
}

/// Copies columns `range` of every row of a row-major [rows, width] matrix.
fn columns(data: &[f32], width: usize, range: std::ops::Range<usize>) -> Vec<f32> {
    data.chunks_exact(width)
        .flat_map(|row| row[range.clone()].iter().copied())
        .collect()
}

fn check_inputs(
    dims: &MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: &MixerParams,
    seq_idx: Option<&[i32]>,
) {
    if let Some(why) = dims.invalid_reason() {
        panic!("{why}");
    }
    if let Some(s) = seq_idx {
        assert_eq!(s.len(), batch * seqlen, "mixer core: seq_idx length");
    }
    assert_eq!(
        zxbcdt.len(),
        batch * seqlen * dims.in_width(),
        "mixer core: zxbcdt length"
    );
    assert_eq!(
        conv_w.len(),
        dims.conv_channels() * dims.conv_kernel,
        "mixer core: conv weight length"
    );
    p.check(dims);
}

/// The forward up to the norm's inputs; `ssd_y` is the SSD output when the caller kept it from an earlier
/// forward over the same inputs (else it is computed).
fn activations(
    dims: &MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: &MixerParams,
    seq_idx: Option<&[i32]>,
    ssd_y: Option<Vec<f32>>,
) -> Activations {
    let (i_dim, ch, gn, w) = (
        dims.inner(),
        dims.conv_channels(),
        dims.bc_width(),
        dims.in_width(),
    );
    let z = columns(zxbcdt, w, 0..i_dim);
    let xbc_raw = columns(zxbcdt, w, i_dim..i_dim + ch);
    let dt_raw = columns(zxbcdt, w, i_dim + ch..w);
    let xbc = causal_conv1d_silu(
        &xbc_raw,
        (batch, seqlen, ch),
        conv_w,
        dims.conv_kernel,
        Some(p.conv_bias),
        None,
        seq_idx,
    );
    let mut act = Activations {
        x: columns(&xbc, ch, 0..i_dim),
        b: columns(&xbc, ch, i_dim..i_dim + gn),
        c: columns(&xbc, ch, i_dim + gn..ch),
        dt: dt_softplus(&dt_raw, p.dt_bias, dims.dt_limit),
        a: a_from_log(p.a_log),
        z,
        xbc_raw,
        dt_raw,
        y: Vec::new(),
    };
    act.y = match ssd_y {
        Some(y) => {
            assert_eq!(y.len(), act.x.len(), "mixer core: kept SSD output length");
            y
        }
        None => {
            let sd = dims.ssd_dims(batch, seqlen);
            ssd_chunked_y(sd, act.ssd_inputs(p, seq_idx), dims.chunk)
        }
    };
    act
}

/// The mixer core forward: `zxbcdt` [B,T,2I+2GN+H], `conv_w` [C,K], `seq_idx` [B,T] → [B,T,I].
pub fn mixer_core_forward(
    dims: MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; batch * seqlen * dims.inner()];
    mixer_core_forward_into(dims, (batch, seqlen), zxbcdt, conv_w, p, seq_idx, &mut out);
    out
}

/// [`mixer_core_forward`] into `out` [B,T,I], every element of which it writes.
pub fn mixer_core_forward_into(
    dims: MixerCoreDims,
    bt: (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    out: &mut [f32],
) {
    forward_to(dims, bt, zxbcdt, conv_w, p, seq_idx, out);
}

/// [`mixer_core_forward`] that also returns the SSD output y [B,T,I] (with the D skip), for
/// [`mixer_core_backward_with_y`]: a training step that keeps it skips the SSD forward in the backward (about a
/// third of the backward's SSD time) for I floats per position and layer.
pub fn mixer_core_forward_keeping_y(
    dims: MixerCoreDims,
    bt: (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; bt.0 * bt.1 * dims.inner()];
    let y = forward_to(dims, bt, zxbcdt, conv_w, p, seq_idx, &mut out);
    (out, y)
}

/// The forward into `out` [B,T,I]; returns the SSD output.
fn forward_to(
    dims: MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    out: &mut [f32],
) -> Vec<f32> {
    check_inputs(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx);
    assert_eq!(
        out.len(),
        batch * seqlen * dims.inner(),
        "mixer core: output length"
    );
    let act = activations(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx, None);
    gated_rmsnorm_into(&act.y, &act.z, p.norm_w, dims.groups, dims.eps, out);
    act.y
}

/// The mixer core backward for the upstream gradient `dout` [B,T,I]; recomputes the forward from the inputs
/// (the same `seq_idx` as the forward; it has no gradient).
pub fn mixer_core_backward(
    dims: MixerCoreDims,
    bt: (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    dout: &[f32],
) -> MixerCoreGrads {
    mixer_core_backward_with_y(dims, bt, zxbcdt, conv_w, p, seq_idx, None, dout)
}

/// [`mixer_core_backward`] into `out` (sized by [`MixerCoreGrads::zeros`]), every element of which it writes.
#[allow(clippy::too_many_arguments)]
pub fn mixer_core_backward_into(
    dims: MixerCoreDims,
    bt: (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    dout: &[f32],
    out: &mut MixerCoreGrads,
) {
    check_inputs(&dims, bt, zxbcdt, conv_w, &p, seq_idx);
    backward_into(dims, bt, zxbcdt, conv_w, p, seq_idx, None, dout, out);
}

/// [`mixer_core_backward`], given (`Some`) the SSD output that [`mixer_core_forward_keeping_y`] returned for the
/// same inputs: the same gradients, bit for bit, without recomputing the SSD forward.
#[allow(clippy::too_many_arguments)]
pub fn mixer_core_backward_with_y(
    dims: MixerCoreDims,
    bt: (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    ssd_y: Option<Vec<f32>>,
    dout: &[f32],
) -> MixerCoreGrads {
    let mut out = MixerCoreGrads::zeros(&dims, bt);
    check_inputs(&dims, bt, zxbcdt, conv_w, &p, seq_idx);
    backward_into(dims, bt, zxbcdt, conv_w, p, seq_idx, ssd_y, dout, &mut out);
    out
}

#[allow(clippy::too_many_arguments)]
fn backward_into(
    dims: MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    ssd_y: Option<Vec<f32>>,
    dout: &[f32],
    out: &mut MixerCoreGrads,
) {
    out.check(&dims, (batch, seqlen));
    assert_eq!(
        dout.len(),
        batch * seqlen * dims.inner(),
        "mixer core: dout length"
    );
    let act = activations(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx, ssd_y);
    let (i_dim, ch, gn, w) = (
        dims.inner(),
        dims.conv_channels(),
        dims.bc_width(),
        dims.in_width(),
    );
    let (dy, dz, d_norm_w) =
        gated_rmsnorm_backward(&act.y, &act.z, p.norm_w, dims.groups, dims.eps, dout);
    let sd = dims.ssd_dims(batch, seqlen);
    let g = ssd_chunked_backward(sd, act.ssd_inputs(&p, seq_idx), dims.chunk, &dy, None);
    let (d_dt_raw, d_dt_bias) = dt_softplus_backward(&act.dt_raw, p.dt_bias, dims.dt_limit, &g.ddt);
    // A = −exp(A_log) ⇒ dA_log = dA·A.
    let d_a_log: Vec<f32> = g.da.iter().zip(&act.a).map(|(d, a)| d * a).collect();

    let rows = batch * seqlen;
    let mut d_xbc = vec![0f32; rows * ch];
    for (r, o) in d_xbc.chunks_exact_mut(ch).enumerate() {
        o[..i_dim].copy_from_slice(&g.dx[r * i_dim..(r + 1) * i_dim]);
        o[i_dim..i_dim + gn].copy_from_slice(&g.db[r * gn..(r + 1) * gn]);
        o[i_dim + gn..].copy_from_slice(&g.dc[r * gn..(r + 1) * gn]);
    }
    let cg = causal_conv1d_silu_backward(
        &act.xbc_raw,
        (batch, seqlen, ch),
        conv_w,
        dims.conv_kernel,
        Some(p.conv_bias),
        None,
        seq_idx,
        &d_xbc,
    );
    let h = dims.heads;
    for (r, o) in out.d_zxbcdt.chunks_exact_mut(w).enumerate() {
        o[..i_dim].copy_from_slice(&dz[r * i_dim..(r + 1) * i_dim]);
        o[i_dim..i_dim + ch].copy_from_slice(&cg.dx[r * ch..(r + 1) * ch]);
        o[i_dim + ch..].copy_from_slice(&d_dt_raw[r * h..(r + 1) * h]);
    }
    out.d_conv_w.copy_from_slice(&cg.dw);
    out.d_conv_bias.copy_from_slice(&cg.dbias);
    out.d_dt_bias.copy_from_slice(&d_dt_bias);
    out.d_a_log.copy_from_slice(&d_a_log);
    out.d_d.copy_from_slice(&g.dd);
    out.d_norm_w.copy_from_slice(&d_norm_w);
}
