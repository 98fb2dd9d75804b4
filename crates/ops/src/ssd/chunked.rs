//! Chunked SSD on the CPU: the intra-chunk work as matrix products, chunks chained by their states.
//!
//! Per (b, h) and chunk of `L ≤ Q` steps, with `x̄ = dt·x`, `a = dt·A`, `acs = cumsum(a)` inside the chunk:
//! 1. `Y = (CBᵀ ⊙ decay) · x̄` where `decay[l, s] = exp(acs_l − acs_s)` for `s ≤ l` (diagonal block);
//! 2. `Y += diag(exp(acs)) · C · Hᵀ` (contribution of the state entering the chunk);
//! 3. `H ← exp(acs_last)·H + (w ⊙ x̄)ᵀ · B` with `w_s = exp(acs_last − acs_s)` (state passing);
//! 4. `y = Y + D·x`.
//!
//! The last chunk is simply shorter (no padding), which is exactly HF's zero-padding after `dt·x` and `dt·A`.
//!
//! Packed rows (`seq_idx`): `acs` stays the plain in-chunk cumsum, and each decay factor above is kept only
//! between positions of one segment ([`crate::packing`]): `decay[l, s]` needs `seg_l = seg_s`, the state read
//! `exp(acs_l)` needs `seg_l` = the segment of the state entering the chunk (that of position `t0 − 1`; segment
//! 0 for the initial state), `w_s` needs `seg_s = seg_last`, and the state passing `exp(acs_last)` needs
//! `seg_last` = the entering segment. All others are 0, so nothing crosses a boundary; within a segment every
//! exponent is the same as without packing. [`exp_if`] is that rule.
//! `C·Bᵀ` depends only on the group, so it is computed once per (b, g, chunk) and shared by the group's heads.
//! Work is spread over (b, h) with rayon; each task runs single-threaded gemm on its small blocks.

use super::{SsdDims, SsdInputs, SsdOutput};
use crate::linalg::{matmul, Mat};
use crate::packing::segments_or_single;
use rayon::prelude::*;

pub fn ssd_chunked(dims: SsdDims, inp: SsdInputs, chunk: usize) -> SsdOutput {
    inp.check(&dims);
    assert!(chunk > 0, "ssd: chunk size must be positive");
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
    } = dims;
    let n_chunks = seqlen.div_ceil(chunk);

    let cb = chunk_cb(dims, inp, chunk);
    let segs = segments_or_single(inp.seq_idx, batch, seqlen);

    let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * heads)
        .into_par_iter()
        .map(|i| {
            let (b, h) = (i / heads, i % heads);
            let g = dims.group_of(h);
            let seg = &segs[b * seqlen..(b + 1) * seqlen];
            let s_off = (b * heads + h) * p_dim * n_dim;
            let mut st = match inp.initial_state {
                Some(init) => init[s_off..s_off + p_dim * n_dim].to_vec(),
                None => vec![0f32; p_dim * n_dim],
            };
            let mut y = vec![0f32; seqlen * p_dim];
            let mut acs = vec![0f32; chunk];
            let mut xbar = vec![0f32; chunk * p_dim];
            let mut m = vec![0f32; chunk * chunk];
            let mut cs = vec![0f32; chunk * n_dim];
            let a_h = inp.a[h];
            for c in 0..n_chunks {
                let t0 = c * chunk;
                let len = chunk.min(seqlen - t0);
                let (sg, seg_in) = (&seg[t0..t0 + len], entering_segment(seg, t0));
                let mut run = 0f32;
                for l in 0..len {
                    let t = t0 + l;
                    let dt = inp.dt[(b * seqlen + t) * heads + h];
                    run += dt * a_h;
                    acs[l] = run;
                    let x = &inp.x[((b * seqlen + t) * heads + h) * p_dim..][..p_dim];
                    for (o, &v) in xbar[l * p_dim..(l + 1) * p_dim].iter_mut().zip(x) {
                        *o = dt * v;
                    }
                }
                // 1. diagonal block
                let cbc = &cb[(b * groups + g) * n_chunks + c];
                for l in 0..len {
                    let row = &mut m[l * len..(l + 1) * len];
                    for s in 0..=l {
                        row[s] = cbc[l * len + s] * exp_if(sg[l] == sg[s], acs[l] - acs[s]);
                    }
                    row[l + 1..].fill(0.0);
                }
                let yc = &mut y[t0 * p_dim..(t0 + len) * p_dim];
                matmul(
                    yc,
                    Mat::rows(&m[..len * len], len, len),
                    Mat::rows(&xbar[..len * p_dim], len, p_dim),
                    None,
                );
                // 2. state entering the chunk, read through exp(acs_l)·C_l
                let off = (b * seqlen + t0) * groups * n_dim + g * n_dim;
                for l in 0..len {
                    let e = exp_if(sg[l] == seg_in, acs[l]);
                    let src = &inp.c[off + l * groups * n_dim..][..n_dim];
                    for (o, &v) in cs[l * n_dim..(l + 1) * n_dim].iter_mut().zip(src) {
                        *o = e * v;
                    }
                }
                let st_t = Mat::rows(&st, p_dim, n_dim).t();
                matmul(
                    yc,
                    Mat::rows(&cs[..len * n_dim], len, n_dim),
                    st_t,
                    Some(1.0),
                );
                // 3. state passing: H ← exp(acs_last)·H + (w ⊙ x̄)ᵀ · B
                let (last, seg_last) = (acs[len - 1], sg[len - 1]);
                for l in 0..len {
                    let w = exp_if(sg[l] == seg_last, last - acs[l]);
                    xbar[l * p_dim..(l + 1) * p_dim]
                        .iter_mut()
                        .for_each(|v| *v *= w);
                }
                let bm = Mat {
                    data: &inp.b[off..],
                    rows: len,
                    cols: n_dim,
                    rs: groups * n_dim,
                    cs: 1,
                };
                matmul(
                    &mut st,
                    Mat::rows(&xbar[..len * p_dim], len, p_dim).t(),
                    bm,
                    Some(exp_if(seg_last == seg_in, last)),
                );
            }
            // 4. D skip
            let d = inp.d[h];
            for t in 0..seqlen {
                let x = &inp.x[((b * seqlen + t) * heads + h) * p_dim..][..p_dim];
                for (o, &v) in y[t * p_dim..(t + 1) * p_dim].iter_mut().zip(x) {
                    *o += d * v;
                }
            }
            (y, st)
        })
        .collect();

    let mut y = vec![0f32; dims.x_len()];
    let mut final_state = vec![0f32; dims.state_len()];
    for (i, (yh, st)) in per_head.into_iter().enumerate() {
        let (b, h) = (i / heads, i % heads);
        for t in 0..seqlen {
            y[((b * seqlen + t) * heads + h) * p_dim..][..p_dim]
                .copy_from_slice(&yh[t * p_dim..(t + 1) * p_dim]);
        }
        final_state[i * p_dim * n_dim..(i + 1) * p_dim * n_dim].copy_from_slice(&st);
    }
    SsdOutput { y, final_state }
}

/// `exp(x)` when the two positions it links are in one segment, else 0 (see the module doc).
#[inline]
pub(super) fn exp_if(same_segment: bool, x: f32) -> f32 {
    if same_segment {
        x.exp()
    } else {
        0.0
    }
}

/// The segment of the state entering the chunk that starts at `t0`: that of position `t0 − 1`, or 0 (the
/// initial state's) for the first chunk. `seg` is one row's segment ids.
#[inline]
pub(super) fn entering_segment(seg: &[u32], t0: usize) -> u32 {
    if t0 == 0 {
        0
    } else {
        seg[t0 - 1]
    }
}

/// `C·Bᵀ` per (b, g, chunk), indexed `(b·G + g)·n_chunks + c`: [L, L] row-major with `L` the chunk's length
/// (only the lower triangle is used). Shared by the forward and the backward.
pub(super) fn chunk_cb(dims: SsdDims, inp: SsdInputs, chunk: usize) -> Vec<Vec<f32>> {
    let SsdDims {
        batch,
        seqlen,
        groups,
        state: n_dim,
        ..
    } = dims;
    let n_chunks = seqlen.div_ceil(chunk);
    let gn = groups * n_dim;
    (0..batch * groups * n_chunks)
        .into_par_iter()
        .map(|i| {
            let (b, g, c) = (
                i / (groups * n_chunks),
                (i / n_chunks) % groups,
                i % n_chunks,
            );
            let t0 = c * chunk;
            let len = chunk.min(seqlen - t0);
            let off = (b * seqlen + t0) * gn + g * n_dim;
            let cm = Mat {
                data: &inp.c[off..],
                rows: len,
                cols: n_dim,
                rs: gn,
                cs: 1,
            };
            let bm = Mat {
                data: &inp.b[off..],
                rows: len,
                cols: n_dim,
                rs: gn,
                cs: 1,
            };
            let mut out = vec![0f32; len * len];
            matmul(&mut out, cm, bm.t(), None);
            out
        })
        .collect()
}
