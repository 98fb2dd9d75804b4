//! The fast CPU SSD: the chunked algorithm (docs/numerics.md §3.2–3.3) on f32 slices, forward and backward.
//!
//! ## Forward ([`ssd_chunked`])
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
//! exponent is the same as without packing. `exp_if` is that rule.
//! `C·Bᵀ` depends only on the group, so it is computed once per (b, g, chunk) and shared by the group's heads.
//! Work is spread over (b, h) with rayon; each task runs single-threaded gemm on its small blocks.
//!
//! ## Backward ([`ssd_chunked_backward`])
//!
//! The chunked algorithm used in training. It recomputes what the forward built (in-chunk cumsums `acs`, `C·Bᵀ`,
//! the states entering each chunk) and then walks the chunks backwards:
//!
//! - diagonal block `Y = (CB ⊙ decay) · x̄`: `dx̄ = Mᵀ·dy`, `dM = dy·x̄ᵀ`, `dCB = dM ⊙ decay`, and through the decay
//!   `R = dM ⊙ M` adds its row sums to `dacs_l` and removes its column sums from `dacs_s`;
//! - state read `Y[l] += e^{acs_l} H_c C_l`: `dC_l += e^{acs_l} H_cᵀ dy_l`, `dacs_l += dC_l-term · C_l`,
//!   `dH_c = Σ_l e^{acs_l} dy_l C_lᵀ`;
//! - state passing `H_{c+1} = e^{acs_last} H_c + S_c` with the carried `dH_{c+1}` (= `dS_c`);
//! - chunk state `S_c = Σ_s w_s x̄_s B_sᵀ`, `w_s = e^{acs_last − acs_s}`;
//! - `acs` is an in-chunk cumsum of `a = dt·A`, so `da` is its reverse cumsum; then `x̄ = dt·x`, `a = dt·A` give
//!   `dx`, `ddt` and `dA`.
//!
//! Packed rows: the same segment rule as the forward: a decay factor between positions of two
//! segments is the constant 0, so it passes no gradient to `acs`, and every term it multiplies vanishes.
//!
//! Every exponent is a difference `acs_l − acs_s ≤ 0` (or `acs_l ≤ 0`), so nothing overflows, and the decay
//! gradient is summed from its parts rather than recovered from `out·dout` (which cancels badly).
//!
//! Parallel layout: one rayon task per (b, group, block of ≤ [`HEADS_PER_TASK`] heads of that group). A task
//! sums `dCB` over its heads before the two `dCB`-products with B and C (B and C are shared by the group), so
//! those products run once per block instead of once per head. The block size is a constant, so the summation
//! order (and the result) does not depend on the number of threads.

use super::{check_grads_in, SsdDims, SsdGrads, SsdInputs, SsdOutput};
use crate::linalg::{dot_f64, matmul, matmul_rs, Mat};
use crate::packing::segments_or_single;
use crate::vexp;
use rayon::prelude::*;

/// The chunked forward: y [B,T,H,P] with the D skip and the final state [B,H,P,N].
pub fn ssd_chunked(dims: SsdDims, inp: SsdInputs, chunk: usize) -> SsdOutput {
    let mut out = SsdOutput {
        y: vec![0f32; dims.x_len()],
        final_state: vec![0f32; dims.state_len()],
    };
    ssd_chunked_into(dims, inp, chunk, &mut out);
    out
}

/// [`ssd_chunked`] into `out` (sized for `dims`), every element of which it writes.
pub fn ssd_chunked_into(dims: SsdDims, inp: SsdInputs, chunk: usize, out: &mut SsdOutput) {
    assert_eq!(
        out.final_state.len(),
        dims.state_len(),
        "ssd: final state length"
    );
    forward(dims, inp, chunk, &mut out.y, Some(&mut out.final_state));
}

/// The chunked forward's y [B,T,H,P] alone, for callers that have no use for the final state (a training step):
/// the last chunk's state update is skipped.
pub fn ssd_chunked_y(dims: SsdDims, inp: SsdInputs, chunk: usize) -> Vec<f32> {
    let mut y = vec![0f32; dims.x_len()];
    forward(dims, inp, chunk, &mut y, None);
    y
}

/// The forward into `y`, and into `final_state` when given (else the last chunk's state update is skipped).
fn forward(
    dims: SsdDims,
    inp: SsdInputs,
    chunk: usize,
    out_y: &mut [f32],
    mut final_state: Option<&mut [f32]>,
) {
    inp.check(&dims);
    assert!(chunk > 0, "ssd: chunk size must be positive");
    assert_eq!(out_y.len(), dims.x_len(), "ssd: y length");
    let want_final = final_state.is_some();
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
            // Until the first state update a missing initial state is exactly zero: nothing to read.
            let mut st_zero = inp.initial_state.is_none();
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
                decay_block(&mut m[..len * len], Some(cbc), &acs[..len], sg);
                let yc = &mut y[t0 * p_dim..(t0 + len) * p_dim];
                for rows in row_blocks(len) {
                    // The rows' entries right of their block's last column are zero: skip them.
                    let k = rows.end;
                    matmul(
                        &mut yc[rows.start * p_dim..k * p_dim],
                        strided(&m, rows.start * len, rows.len(), k, len),
                        Mat::rows(&xbar[..k * p_dim], k, p_dim),
                        None,
                    );
                }
                // 2. state entering the chunk, read through exp(acs_l)·C_l
                let off = (b * seqlen + t0) * groups * n_dim + g * n_dim;
                if !st_zero {
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
                }
                if c + 1 == n_chunks && !want_final {
                    break;
                }
                // 3. state passing: H ← exp(acs_last)·H + (w ⊙ x̄)ᵀ · B
                st_zero = false;
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

    for (i, (yh, st)) in per_head.into_iter().enumerate() {
        let (b, h) = (i / heads, i % heads);
        for t in 0..seqlen {
            out_y[((b * seqlen + t) * heads + h) * p_dim..][..p_dim]
                .copy_from_slice(&yh[t * p_dim..(t + 1) * p_dim]);
        }
        if let Some(fs) = final_state.as_deref_mut() {
            fs[i * p_dim * n_dim..(i + 1) * p_dim * n_dim].copy_from_slice(&st);
        }
    }
}

/// Rows per block of the lower-triangular products: a block of rows only needs the columns up to its last row.
const TRI_BLOCK: usize = 64;

/// The row ranges of a lower-triangular `[len, len]` matrix in blocks of [`TRI_BLOCK`].
fn row_blocks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len)
        .step_by(TRI_BLOCK)
        .map(move |r0| r0..(r0 + TRI_BLOCK).min(len))
}

/// One past the last column that the blocked products read in row `l`: the end of its [`row_blocks`] block.
fn block_end(l: usize, len: usize) -> usize {
    ((l / TRI_BLOCK + 1) * TRI_BLOCK).min(len)
}

/// The chunk's decay matrix `[L, L]` into `out`: `e^{acs_l − acs_s}` for `s ≤ l` in one segment (times
/// `cb[l, s]` when given), 0 elsewhere up to the end of row `l`'s [`row_blocks`] block (the rest of the row is
/// never read). Segment ids are non-decreasing, so row `l`'s nonzero entries are one run ending at `l`.
fn decay_block(out: &mut [f32], cb: Option<&[f32]>, acs: &[f32], sg: &[u32]) {
    let len = acs.len();
    let mut start = 0;
    for l in 0..len {
        if l > 0 && sg[l] != sg[l - 1] {
            start = l;
        }
        let row = &mut out[l * len..l * len + block_end(l, len)];
        row[..start].fill(0.0);
        match cb {
            Some(cb) => vexp::exp_diff_scaled(
                &mut row[start..=l],
                &cb[l * len + start..=l * len + l],
                acs[l],
                &acs[start..=l],
            ),
            None => vexp::exp_diff(&mut row[start..=l], acs[l], &acs[start..=l]),
        }
        row[l + 1..].fill(0.0);
    }
}

/// `exp(x)` when the two positions it links are in one segment, else 0 (see the module doc).
#[inline]
fn exp_if(same_segment: bool, x: f32) -> f32 {
    if same_segment {
        x.exp()
    } else {
        0.0
    }
}

/// The segment of the state entering the chunk that starts at `t0`: that of position `t0 − 1`, or 0 (the
/// initial state's) for the first chunk. `seg` is one row's segment ids.
#[inline]
fn entering_segment(seg: &[u32], t0: usize) -> u32 {
    if t0 == 0 {
        0
    } else {
        seg[t0 - 1]
    }
}

/// `C·Bᵀ` per (b, g, chunk), indexed `(b·G + g)·n_chunks + c`: [L, L] row-major with `L` the chunk's length
/// (only the lower triangle is used). Shared by the forward and the backward.
fn chunk_cb(dims: SsdDims, inp: SsdInputs, chunk: usize) -> Vec<Vec<f32>> {
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

/// Per-head results of the chunked backward.
struct HeadGrads {
    dx: Vec<f32>,  // [T, P]
    ddt: Vec<f32>, // [T]
    da: f64,
    dd: f64,
    dh0: Vec<f32>, // [P, N]
}

/// One task's results: its heads, and its share of dB and dC for the group ([T, N] each).
struct TaskGrads {
    heads: Vec<HeadGrads>,
    db: Vec<f32>,
    dc: Vec<f32>,
}

/// Scratch buffers of one task, sized for a full chunk.
struct Scratch {
    acs: Vec<f32>,   // [L]
    xbar: Vec<f32>,  // [L, P]
    decay: Vec<f32>, // [L, L]
    m: Vec<f32>,     // [L, L]
    dm: Vec<f32>,    // [L, L]
    dcb: Vec<f32>,   // [L, L], summed over the task's heads
    dxbar: Vec<f32>, // [L, P]
    u: Vec<f32>,     // [L, max(P, N)]
    ec: Vec<f32>,    // [L, N]
    dacs: Vec<f64>,  // [L]
}

/// Heads of one group handled by one backward task (see the module doc).
pub const HEADS_PER_TASK: usize = 4;

/// The chunked backward (see the module doc). Same arguments as [`super::ssd_reference_backward`] plus the chunk
/// size.
pub fn ssd_chunked_backward(
    dims: SsdDims,
    inp: SsdInputs,
    chunk: usize,
    dy: &[f32],
    d_final_state: Option<&[f32]>,
) -> SsdGrads {
    let mut out = SsdGrads::zeros(dims);
    ssd_chunked_backward_into(dims, inp, chunk, dy, d_final_state, &mut out);
    out
}

/// [`ssd_chunked_backward`] into `out` (sized for `dims`), every element of which it writes.
pub fn ssd_chunked_backward_into(
    dims: SsdDims,
    inp: SsdInputs,
    chunk: usize,
    dy: &[f32],
    d_final_state: Option<&[f32]>,
    out: &mut SsdGrads,
) {
    check_grads_in(&dims, &inp, dy, d_final_state);
    out.check(&dims);
    assert!(chunk > 0, "ssd backward: chunk size must be positive");
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
    } = dims;
    let hpg = heads / groups;
    let blocks = hpg.div_ceil(HEADS_PER_TASK);
    let cb = chunk_cb(dims, inp, chunk);
    let segs = segments_or_single(inp.seq_idx, batch, seqlen);

    let tasks: Vec<TaskGrads> = (0..batch * groups * blocks)
        .into_par_iter()
        .map(|i| {
            let (b, g, blk) = (i / (groups * blocks), (i / blocks) % groups, i % blocks);
            let h0 = g * hpg + blk * HEADS_PER_TASK;
            let h1 = (h0 + HEADS_PER_TASK).min((g + 1) * hpg);
            let cb_bg = &cb[(b * groups + g) * seqlen.div_ceil(chunk)..];
            let seg = &segs[b * seqlen..(b + 1) * seqlen];
            backward_task(
                dims,
                inp,
                chunk,
                dy,
                d_final_state,
                cb_bg,
                seg,
                b,
                g,
                h0..h1,
            )
        })
        .collect();

    if inp.initial_state.is_none() {
        out.d_initial_state.fill(0.0);
    }
    let mut da = vec![0f64; heads];
    let mut dd = vec![0f64; heads];
    for (i, task) in tasks.into_iter().enumerate() {
        let (b, g, blk) = (i / (groups * blocks), (i / blocks) % groups, i % blocks);
        let h0 = g * hpg + blk * HEADS_PER_TASK;
        for (j, hg) in task.heads.into_iter().enumerate() {
            let h = h0 + j;
            for t in 0..seqlen {
                let row = (b * seqlen + t) * heads + h;
                out.dx[row * p_dim..(row + 1) * p_dim]
                    .copy_from_slice(&hg.dx[t * p_dim..(t + 1) * p_dim]);
                out.ddt[row] = hg.ddt[t];
            }
            da[h] += hg.da;
            dd[h] += hg.dd;
            if inp.initial_state.is_some() {
                let s = (b * heads + h) * p_dim * n_dim;
                out.d_initial_state[s..s + p_dim * n_dim].copy_from_slice(&hg.dh0);
            }
        }
        // The group's first block writes its dB and dC rows, later blocks add to them.
        for t in 0..seqlen {
            let off = ((b * seqlen + t) * groups + g) * n_dim;
            let src = t * n_dim..(t + 1) * n_dim;
            let (db, dc) = (&mut out.db[off..off + n_dim], &mut out.dc[off..off + n_dim]);
            if blk == 0 {
                db.copy_from_slice(&task.db[src.clone()]);
                dc.copy_from_slice(&task.dc[src]);
            } else {
                db.iter_mut()
                    .zip(&task.db[src.clone()])
                    .for_each(|(o, v)| *o += v);
                dc.iter_mut().zip(&task.dc[src]).for_each(|(o, v)| *o += v);
            }
        }
    }
    for (o, &v) in out.da.iter_mut().zip(&da) {
        *o = v as f32;
    }
    for (o, &v) in out.dd.iter_mut().zip(&dd) {
        *o = v as f32;
    }
}

/// Recomputes `acs` and `x̄ = dt·x` of one chunk for head `h` into the scratch buffers.
#[allow(clippy::too_many_arguments)]
fn load_chunk(
    dims: &SsdDims,
    inp: &SsdInputs,
    b: usize,
    h: usize,
    t0: usize,
    len: usize,
    acs: &mut [f32],
    xbar: &mut [f32],
) {
    let (seqlen, heads, p_dim) = (dims.seqlen, dims.heads, dims.head_dim);
    let mut run = 0f32;
    for l in 0..len {
        let row = (b * seqlen + t0 + l) * heads + h;
        let dt = inp.dt[row];
        run += dt * inp.a[h];
        acs[l] = run;
        let x = &inp.x[row * p_dim..(row + 1) * p_dim];
        for (o, &v) in xbar[l * p_dim..(l + 1) * p_dim].iter_mut().zip(x) {
            *o = dt * v;
        }
    }
}

/// The backward of one (b, g, block of heads) task.
#[allow(clippy::too_many_arguments)]
fn backward_task(
    dims: SsdDims,
    inp: SsdInputs,
    chunk: usize,
    dy: &[f32],
    d_final: Option<&[f32]>,
    cb: &[Vec<f32>],
    seg: &[u32],
    b: usize,
    g: usize,
    head_range: std::ops::Range<usize>,
) -> TaskGrads {
    let SsdDims {
        seqlen,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
        ..
    } = dims;
    let pn = p_dim * n_dim;
    let gn = groups * n_dim;
    let hp = heads * p_dim;
    let n_chunks = seqlen.div_ceil(chunk);
    let q = chunk.min(seqlen);
    let mut sc = Scratch {
        acs: vec![0.0; q],
        xbar: vec![0.0; q * p_dim],
        decay: vec![0.0; q * q],
        m: vec![0.0; q * q],
        dm: vec![0.0; q * q],
        dcb: vec![0.0; q * q],
        dxbar: vec![0.0; q * p_dim],
        u: vec![0.0; q * p_dim.max(n_dim)],
        ec: vec![0.0; q * n_dim],
        dacs: vec![0.0; q],
    };
    // Row views of B/C ([L, N] for group g) and of per-head tensors ([L, P] for head h) from time t0 on.
    let bc_view = |data, t0, len| strided(data, (b * seqlen + t0) * gn + g * n_dim, len, n_dim, gn);
    let head_view = |data, h, t0, len| {
        strided(
            data,
            ((b * seqlen + t0) * heads + h) * p_dim,
            len,
            p_dim,
            hp,
        )
    };

    // Forward recompute: the state entering every chunk, per head ([n_chunks, P, N]).
    let hin: Vec<Vec<f32>> = head_range
        .clone()
        .map(|h| {
            let mut hs = vec![0f32; n_chunks * pn];
            let mut st = match inp.initial_state {
                Some(init) => init[(b * heads + h) * pn..][..pn].to_vec(),
                None => vec![0f32; pn],
            };
            for c in 0..n_chunks {
                hs[c * pn..(c + 1) * pn].copy_from_slice(&st);
                if c + 1 == n_chunks {
                    break;
                }
                let (t0, len) = (c * chunk, chunk);
                load_chunk(&dims, &inp, b, h, t0, len, &mut sc.acs, &mut sc.xbar);
                let (last, seg_last) = (sc.acs[len - 1], seg[t0 + len - 1]);
                for l in 0..len {
                    let w = exp_if(seg[t0 + l] == seg_last, last - sc.acs[l]);
                    sc.xbar[l * p_dim..(l + 1) * p_dim]
                        .iter_mut()
                        .for_each(|v| *v *= w);
                }
                matmul(
                    &mut st,
                    Mat::rows(&sc.xbar[..len * p_dim], len, p_dim).t(),
                    bc_view(inp.b, t0, len),
                    Some(exp_if(seg_last == entering_segment(seg, t0), last)),
                );
            }
            hs
        })
        .collect();

    let mut heads_out: Vec<HeadGrads> = head_range
        .clone()
        .map(|h| HeadGrads {
            dx: vec![0.0; seqlen * p_dim],
            ddt: vec![0.0; seqlen],
            da: 0.0,
            dd: 0.0,
            dh0: match d_final {
                Some(df) => df[(b * heads + h) * pn..][..pn].to_vec(),
                None => vec![0.0; pn],
            },
        })
        .collect();
    // `dh0` doubles as the carried gradient w.r.t. the state leaving the current chunk.
    let mut db = vec![0f32; seqlen * n_dim];
    let mut dc = vec![0f32; seqlen * n_dim];

    for c in (0..n_chunks).rev() {
        let t0 = c * chunk;
        let len = chunk.min(seqlen - t0);
        let (sg, seg_in) = (&seg[t0..t0 + len], entering_segment(seg, t0));
        let cbc = &cb[c];
        sc.dcb[..len * len].fill(0.0);
        let bv = bc_view(inp.b, t0, len);
        let cv = bc_view(inp.c, t0, len);
        for (j, h) in head_range.clone().enumerate() {
            let hg = &mut heads_out[j];
            let a_h = inp.a[h];
            load_chunk(&dims, &inp, b, h, t0, len, &mut sc.acs, &mut sc.xbar);
            let acs = &sc.acs[..len];
            let last = acs[len - 1];
            // The chunk's decay from its entering state to its last position (0 across a boundary).
            let pass = exp_if(sg[len - 1] == seg_in, last);
            let dyv = head_view(dy, h, t0, len);
            let dacs = &mut sc.dacs[..len];
            dacs.fill(0.0);

            // Diagonal block: M = CB ⊙ decay (lower triangle), Y = M·x̄. The products run over row blocks and
            // skip what lies right of a block's diagonal (zeros of M, or entries of dM that are never read).
            decay_block(&mut sc.decay[..len * len], None, acs, sg);
            for l in 0..len {
                let row = l * len..l * len + block_end(l, len);
                let (m_row, e_row) = (&mut sc.m[row.clone()], &sc.decay[row.clone()]);
                for ((o, &cbv), &e) in m_row.iter_mut().zip(&cbc[row]).zip(e_row) {
                    *o = cbv * e;
                }
            }
            for rows in row_blocks(len) {
                let (r0, r1) = (rows.start, rows.end);
                // dx̄[s] = Σ_{l ≥ s} M[l, s]·dy[l] for the block's s.
                matmul(
                    &mut sc.dxbar[r0 * p_dim..r1 * p_dim],
                    strided(&sc.m, r0 * len + r0, len - r0, r1 - r0, len).t(),
                    head_view(dy, h, t0 + r0, len - r0),
                    None,
                );
                // dM[l, s] = dy_l·x̄_s for the block's l and s < r1.
                matmul_rs(
                    &mut sc.dm[r0 * len..],
                    len,
                    head_view(dy, h, t0 + r0, r1 - r0),
                    Mat::rows(&sc.xbar[..r1 * p_dim], r1, p_dim).t(),
                    None,
                );
            }
            for l in 0..len {
                let row = l * len..l * len + l + 1;
                let (dm_row, m_row) = (&sc.dm[row.clone()], &sc.m[row.clone()]);
                let (decay_row, dcb_row) = (&sc.decay[row.clone()], &mut sc.dcb[row]);
                for ((o, &dm), &e) in dcb_row.iter_mut().zip(dm_row).zip(decay_row) {
                    *o += dm * e;
                }
                // R = dM ⊙ M: its row sum goes to dacs_l, its column entries come off dacs_s.
                for ((d, &dm), &mv) in dacs.iter_mut().zip(dm_row).zip(m_row) {
                    *d -= (dm * mv) as f64;
                }
                dacs[l] += dot_f64(dm_row, m_row);
            }

            // The state entering the first chunk is exactly zero without an initial state (nothing was read
            // from it, and the gradient into it is dropped); the carried gradient is exactly zero in the last
            // chunk without a final-state gradient. Their terms are skipped there.
            let (state_zero, carry_zero) = (
                c == 0 && inp.initial_state.is_none(),
                c + 1 == n_chunks && d_final.is_none(),
            );
            let carry = &mut hg.dh0;
            if !state_zero {
                // State read: Y[l] += e^{acs_l}·H_c·C_l.
                let hc = Mat::rows(&hin[j][c * pn..(c + 1) * pn], p_dim, n_dim);
                let zc = &mut sc.u[..len * n_dim];
                matmul(zc, dyv, hc, None); // row l: H_cᵀ dy_l
                for l in 0..len {
                    let e = exp_if(sg[l] == seg_in, acs[l]);
                    let crow = &inp.c[(b * seqlen + t0 + l) * gn + g * n_dim..][..n_dim];
                    let zrow = &zc[l * n_dim..(l + 1) * n_dim];
                    let dcrow = &mut dc[(t0 + l) * n_dim..(t0 + l + 1) * n_dim];
                    let mut dot = 0f32;
                    for n in 0..n_dim {
                        dcrow[n] += e * zrow[n];
                        dot += zrow[n] * crow[n];
                    }
                    dacs[l] += (e * dot) as f64;
                    for (o, &v) in sc.ec[l * n_dim..(l + 1) * n_dim].iter_mut().zip(crow) {
                        *o = e * v;
                    }
                }
            }

            if !carry_zero {
                // State passing: the carry (dH_{c+1}) is dS_c; its decay term goes to acs_last.
                let hcd = &hin[j][c * pn..(c + 1) * pn];
                let d_last_decay: f64 = carry
                    .iter()
                    .zip(hcd)
                    .map(|(&a, &b)| (a * b) as f64)
                    .sum::<f64>()
                    * pass as f64;

                // Chunk state S_c = Σ_s w_s x̄_s B_sᵀ with w_s = e^{acs_last − acs_s}.
                let ds = Mat::rows(carry, p_dim, n_dim);
                let u = &mut sc.u[..len * p_dim];
                matmul(u, bv, ds.t(), None); // row s: dS_c B_s
                let mut omega_sum = 0f64;
                for s in 0..len {
                    let w = exp_if(sg[s] == sg[len - 1], last - acs[s]);
                    let mut dot = 0f32;
                    for p in 0..p_dim {
                        dot += sc.xbar[s * p_dim + p] * u[s * p_dim + p];
                        sc.dxbar[s * p_dim + p] += w * u[s * p_dim + p];
                    }
                    let omega = (w * dot) as f64;
                    dacs[s] -= omega;
                    omega_sum += omega;
                    // Scale x̄ by w for dB below (x̄ is not needed unscaled any more).
                    sc.xbar[s * p_dim..(s + 1) * p_dim]
                        .iter_mut()
                        .for_each(|v| *v *= w);
                }
                dacs[len - 1] += omega_sum + d_last_decay;
                matmul(
                    &mut db[t0 * n_dim..(t0 + len) * n_dim],
                    Mat::rows(&sc.xbar[..len * p_dim], len, p_dim),
                    ds,
                    Some(1.0),
                );
            }
            if !state_zero {
                // carry ← e^{acs_last}·carry + dH_c, dH_c = Σ_l e^{acs_l} dy_l C_lᵀ.
                matmul(
                    carry,
                    dyv.t(),
                    Mat::rows(&sc.ec[..len * n_dim], len, n_dim),
                    Some(pass),
                );
            }

            // acs = cumsum(a): da is the reverse cumsum; then x̄ = dt·x, a = dt·A and the D skip.
            let mut run = 0f64;
            for l in (0..len).rev() {
                run += dacs[l];
                let t = t0 + l;
                let row = (b * seqlen + t) * heads + h;
                let dt = inp.dt[row];
                let x = &inp.x[row * p_dim..(row + 1) * p_dim];
                let dyt = &dy[row * p_dim..(row + 1) * p_dim];
                let dxo = &mut hg.dx[t * p_dim..(t + 1) * p_dim];
                let mut x_dot = 0f32;
                let mut dd = 0f32;
                for p in 0..p_dim {
                    let dxb = sc.dxbar[l * p_dim + p];
                    dxo[p] = inp.d[h] * dyt[p] + dt * dxb;
                    x_dot += x[p] * dxb;
                    dd += dyt[p] * x[p];
                }
                hg.ddt[t] = x_dot + (a_h as f64 * run) as f32;
                hg.da += dt as f64 * run;
                hg.dd += dd as f64;
            }
        }
        // dCB summed over this task's heads, against the group's B and C.
        let dcb = Mat::rows(&sc.dcb[..len * len], len, len);
        matmul(&mut dc[t0 * n_dim..(t0 + len) * n_dim], dcb, bv, Some(1.0));
        matmul(
            &mut db[t0 * n_dim..(t0 + len) * n_dim],
            dcb.t(),
            cv,
            Some(1.0),
        );
    }
    if inp.initial_state.is_none() {
        heads_out.iter_mut().for_each(|hg| hg.dh0.fill(0.0));
    }
    TaskGrads {
        heads: heads_out,
        db,
        dc,
    }
}

/// A row-strided view `rows × cols` starting at `off`, rows `rs` apart.
fn strided(data: &[f32], off: usize, rows: usize, cols: usize, rs: usize) -> Mat<'_> {
    Mat {
        data: &data[off..],
        rows,
        cols,
        rs,
        cs: 1,
    }
}
