//! The inner chain of one Mamba2 mixer, between `in_proj` and `out_proj`, as one op with its backward
//! (docs/numerics.md §2, steps 2–5):
//!
//! ```text
//! zxbcdt [B,T,2I+2GN+H] = z [I] | xBC [C = I+2GN] | dt_raw [H]
//! xBC' = silu(conv1d(xBC, conv_w [C,K]) + conv_bias)        = x [I] | B [GN] | C [GN]
//! dt   = clamp(softplus(dt_raw + dt_bias), lo, hi)          A = −exp(A_log)
//! y    = SSD(x, dt, A, B, C) + D·x                          (zero initial state, chunked)
//! out  = gated_rmsnorm(y, z, norm_weight, groups, eps)      [B,T,I]
//! ```
//!
//! With `seq_idx` [B,T] (packed rows, [`crate::packing`]) the conv and the SSD restart at every boundary, so
//! each packed example gets exactly what it would get alone; the other steps are per position.
//!
//! Key design decision: the backward takes only the op's inputs and recomputes everything else (conv output,
//! dt, the SSD output), so a training engine saves nothing but the in_proj output per layer. The per-channel and
//! per-head parameters travel as one packed vector `[conv_bias (C) | dt_bias (H) | A_log (H) | D (H) |
//! norm_weight (I)]` (see [`MixerParams`]), which keeps the candle custom op at three inputs
//! ([`crate::tensor::mixer_core`]).

use crate::conv1d::{causal_conv1d_silu, causal_conv1d_silu_backward};
use crate::dt::{a_from_log, dt_softplus, dt_softplus_backward};
use crate::norm::{gated_rmsnorm, gated_rmsnorm_backward};
use crate::ssd::{ssd_chunked, ssd_chunked_backward, SsdDims, SsdInputs};

/// Static sizes and settings of one mixer: `H` heads, `P` head dim, `G` groups, `N` state, `K` conv width, `Q`
/// chunk, the gated-norm `eps` and the dt clamp `(lo, hi)` (`(0, ∞)` for none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixerCoreDims {
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
    pub conv_kernel: usize,
    pub chunk: usize,
    pub eps: f32,
    pub dt_limit: (f32, f32),
}

impl MixerCoreDims {
    /// `I = H·P`.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }
    /// `G·N`, the width of B (and of C).
    pub fn bc_width(&self) -> usize {
        self.groups * self.state
    }
    /// `C = I + 2GN`, the conv channels.
    pub fn conv_channels(&self) -> usize {
        self.inner() + 2 * self.bc_width()
    }
    /// `2I + 2GN + H`, the last dimension of `zxbcdt`.
    pub fn in_width(&self) -> usize {
        self.inner() + self.conv_channels() + self.heads
    }
    /// `C + 3H + I`, the length of the packed parameter vector.
    pub fn params_len(&self) -> usize {
        self.conv_channels() + 3 * self.heads + self.inner()
    }
    /// Why these sizes cannot run, if they cannot (for callers that turn it into an error).
    pub fn invalid_reason(&self) -> Option<String> {
        if self.heads == 0 || self.head_dim == 0 || self.state == 0 {
            return Some(format!("mixer core: empty size in {self:?}"));
        }
        if self.groups == 0 || !self.heads.is_multiple_of(self.groups) {
            return Some(format!(
                "mixer core: {} heads not divisible by {} groups",
                self.heads, self.groups
            ));
        }
        if self.conv_kernel == 0 || self.chunk == 0 {
            return Some(format!(
                "mixer core: conv kernel {} and chunk {} must be positive",
                self.conv_kernel, self.chunk
            ));
        }
        None
    }
    fn ssd_dims(&self, batch: usize, seqlen: usize) -> SsdDims {
        SsdDims {
            batch,
            seqlen,
            heads: self.heads,
            head_dim: self.head_dim,
            groups: self.groups,
            state: self.state,
        }
    }
}

/// The per-channel and per-head parameters of one mixer. `conv_bias` is required: pass zeros for a checkpoint
/// without one (`use_conv_bias = false`).
#[derive(Clone, Copy, Debug)]
pub struct MixerParams<'a> {
    pub conv_bias: &'a [f32],
    pub dt_bias: &'a [f32],
    pub a_log: &'a [f32],
    pub d: &'a [f32],
    pub norm_w: &'a [f32],
}

impl<'a> MixerParams<'a> {
    /// Splits the packed vector `[conv_bias (C) | dt_bias (H) | A_log (H) | D (H) | norm_weight (I)]`.
    pub fn unpack(dims: &MixerCoreDims, packed: &'a [f32]) -> Self {
        assert_eq!(
            packed.len(),
            dims.params_len(),
            "mixer core: packed params length"
        );
        let (conv_bias, rest) = packed.split_at(dims.conv_channels());
        let (dt_bias, rest) = rest.split_at(dims.heads);
        let (a_log, rest) = rest.split_at(dims.heads);
        let (d, norm_w) = rest.split_at(dims.heads);
        MixerParams {
            conv_bias,
            dt_bias,
            a_log,
            d,
            norm_w,
        }
    }
    fn check(&self, dims: &MixerCoreDims) {
        assert_eq!(
            self.conv_bias.len(),
            dims.conv_channels(),
            "mixer core: conv_bias length"
        );
        assert_eq!(self.dt_bias.len(), dims.heads, "mixer core: dt_bias length");
        assert_eq!(self.a_log.len(), dims.heads, "mixer core: A_log length");
        assert_eq!(self.d.len(), dims.heads, "mixer core: D length");
        assert_eq!(
            self.norm_w.len(),
            dims.inner(),
            "mixer core: norm weight length"
        );
    }
}

/// Gradients of [`mixer_core_forward`]: d_zxbcdt [B,T,2I+2GN+H], d_conv_w [C,K], and one per parameter.
#[derive(Clone, Debug)]
pub struct MixerCoreGrads {
    pub d_zxbcdt: Vec<f32>,
    pub d_conv_w: Vec<f32>,
    pub d_conv_bias: Vec<f32>,
    pub d_dt_bias: Vec<f32>,
    pub d_a_log: Vec<f32>,
    pub d_d: Vec<f32>,
    pub d_norm_w: Vec<f32>,
}

impl MixerCoreGrads {
    /// The parameter gradients in the packed order of [`MixerParams::unpack`].
    pub fn packed_params(&self) -> Vec<f32> {
        [
            &self.d_conv_bias,
            &self.d_dt_bias,
            &self.d_a_log,
            &self.d_d,
            &self.d_norm_w,
        ]
        .into_iter()
        .flat_map(|v| v.iter().copied())
        .collect()
    }
}

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

fn activations(
    dims: &MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: &MixerParams,
    seq_idx: Option<&[i32]>,
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
    let sd = dims.ssd_dims(batch, seqlen);
    act.y = ssd_chunked(sd, act.ssd_inputs(p, seq_idx), dims.chunk).y;
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
    check_inputs(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx);
    let act = activations(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx);
    gated_rmsnorm(&act.y, &act.z, p.norm_w, dims.groups, dims.eps)
}

/// The mixer core backward for the upstream gradient `dout` [B,T,I]; recomputes the forward from the inputs
/// (the same `seq_idx` as the forward; it has no gradient).
pub fn mixer_core_backward(
    dims: MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zxbcdt: &[f32],
    conv_w: &[f32],
    p: MixerParams,
    seq_idx: Option<&[i32]>,
    dout: &[f32],
) -> MixerCoreGrads {
    check_inputs(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx);
    assert_eq!(
        dout.len(),
        batch * seqlen * dims.inner(),
        "mixer core: dout length"
    );
    let act = activations(&dims, (batch, seqlen), zxbcdt, conv_w, &p, seq_idx);
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
    let d_a_log = g.da.iter().zip(&act.a).map(|(d, a)| d * a).collect();

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
    let mut d_zxbcdt = vec![0f32; rows * w];
    for (r, o) in d_zxbcdt.chunks_exact_mut(w).enumerate() {
        o[..i_dim].copy_from_slice(&dz[r * i_dim..(r + 1) * i_dim]);
        o[i_dim..i_dim + ch].copy_from_slice(&cg.dx[r * ch..(r + 1) * ch]);
        o[i_dim + ch..].copy_from_slice(&d_dt_raw[r * h..(r + 1) * h]);
    }
    MixerCoreGrads {
        d_zxbcdt,
        d_conv_w: cg.dw,
        d_conv_bias: cg.dbias,
        d_dt_bias,
        d_a_log,
        d_d: g.dd,
        d_norm_w,
    }
}

#[cfg(test)]
pub(crate) mod tests;
