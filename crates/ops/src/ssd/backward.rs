//! Backward of the SSD scan (docs/numerics.md §3.3): gradients of `(y, final_state)` with respect to every input.
//!
//! [`ssd_reference_backward`] is plain reverse-mode through the sequential recurrence (f64, every state kept).
//! [`ssd_chunked_backward`] is the chunked algorithm used in training. It recomputes what the forward built
//! (in-chunk cumsums `acs`, `C·Bᵀ`, the states entering each chunk) and then walks the chunks backwards:
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
//! Packed rows: the same segment rule as the forward (`chunked.rs`): a decay factor between positions of two
//! segments is the constant 0, so it passes no gradient to `acs`, and every term it multiplies vanishes.
//!
//! Every exponent is a difference `acs_l − acs_s ≤ 0` (or `acs_l ≤ 0`), so nothing overflows, and the decay
//! gradient is summed from its parts rather than recovered from `out·dout` (which cancels badly).
//!
//! Parallel layout: one rayon task per (b, group, block of ≤ [`HEADS_PER_TASK`] heads of that group). A task
//! sums `dCB` over its heads before the two `dCB`-products with B and C (B and C are shared by the group), so
//! those products run once per block instead of once per head. The block size is a constant, so the summation
//! order (and the result) does not depend on the number of threads.

use super::chunked::{chunk_cb, entering_segment, exp_if};
use super::reference::{step_decay, widen, Inputs64};
use super::{SsdDims, SsdInputs};
use crate::linalg::{matmul, Mat};
use crate::packing::segments_or_single;
use rayon::prelude::*;

/// Gradients of one SSD call, in the layouts of [`SsdInputs`]: dx [B,T,H,P], ddt [B,T,H], da [H] (w.r.t. the
/// negative `A`, summed over b and t), db, dc [B,T,G,N], dd [H], d_initial_state [B,H,P,N] (zeros when the call
/// had no initial state).
#[derive(Clone, Debug)]
pub struct SsdGrads {
    pub dx: Vec<f32>,
    pub ddt: Vec<f32>,
    pub da: Vec<f32>,
    pub db: Vec<f32>,
    pub dc: Vec<f32>,
    pub dd: Vec<f32>,
    pub d_initial_state: Vec<f32>,
}

/// Heads of one group handled by one backward task (see the module doc).
pub const HEADS_PER_TASK: usize = 4;

fn check_grads_in(dims: &SsdDims, inp: &SsdInputs, dy: &[f32], d_final: Option<&[f32]>) {
    inp.check(dims);
    assert_eq!(dy.len(), dims.x_len(), "ssd backward: dy length");
    if let Some(s) = d_final {
        assert_eq!(
            s.len(),
            dims.state_len(),
            "ssd backward: d_final_state length"
        );
    }
}

/// Reverse-mode through the sequential recurrence, in f64. `dy` [B,T,H,P]; `d_final_state` [B,H,P,N] is the
/// gradient flowing into the final state (None = unused).
pub fn ssd_reference_backward(
    dims: SsdDims,
    inp: SsdInputs,
    dy: &[f32],
    d_final_state: Option<&[f32]>,
) -> SsdGrads {
    check_grads_in(&dims, &inp, dy, d_final_state);
    let g = backward64(
        dims,
        &Inputs64::from_f32(inp),
        &widen(dy),
        d_final_state.map(widen).as_deref(),
    );
    let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    SsdGrads {
        dx: narrow(g.dx),
        ddt: narrow(g.ddt),
        da: narrow(g.da),
        db: narrow(g.db),
        dc: narrow(g.dc),
        dd: narrow(g.dd),
        d_initial_state: narrow(g.d_initial_state),
    }
}

/// [`SsdGrads`] in f64, as the reference backward computes them.
#[derive(Clone, Debug)]
pub(crate) struct Grads64 {
    pub dx: Vec<f64>,
    pub ddt: Vec<f64>,
    pub da: Vec<f64>,
    pub db: Vec<f64>,
    pub dc: Vec<f64>,
    pub dd: Vec<f64>,
    pub d_initial_state: Vec<f64>,
}

/// The reference backward on f64 inputs. Per (b, h) it replays the recurrence keeping every state `s_t`, then
/// walks time backwards with `ds` = the gradient w.r.t. `s_t`:
/// `y_t = s_t·C_t + D·x_t` and `s_t = e^{dt_t A}·s_{t−1} + dt_t·x_t ⊗ B_t`.
pub(crate) fn backward64(
    dims: SsdDims,
    inp: &Inputs64,
    dy: &[f64],
    d_final: Option<&[f64]>,
) -> Grads64 {
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
    } = dims;
    let pn = p_dim * n_dim;
    let mut g = Grads64 {
        dx: vec![0.0; dims.x_len()],
        ddt: vec![0.0; dims.dt_len()],
        da: vec![0.0; heads],
        db: vec![0.0; dims.bc_len()],
        dc: vec![0.0; dims.bc_len()],
        dd: vec![0.0; heads],
        d_initial_state: vec![0.0; dims.state_len()],
    };
    let seg = segments_or_single(inp.seq_idx.as_deref(), batch, seqlen);
    let mut states = vec![0f64; (seqlen + 1) * pn]; // states[t] = s_{t−1}; states[0] = initial state
    for b in 0..batch {
        for h in 0..heads {
            let grp = dims.group_of(h);
            let s_off = (b * heads + h) * pn;
            let (a, d) = (inp.a[h], inp.d[h]);
            states[..pn].fill(0.0);
            if let Some(init) = &inp.init {
                states[..pn].copy_from_slice(&init[s_off..s_off + pn]);
            }
            let xi = |t: usize| ((b * seqlen + t) * heads + h) * p_dim;
            let ti = |t: usize| (b * seqlen + t) * heads + h;
            let bi = |t: usize| ((b * seqlen + t) * groups + grp) * n_dim;
            for t in 0..seqlen {
                let (dt, x, bv) = (
                    inp.dt[ti(t)],
                    &inp.x[xi(t)..][..p_dim],
                    &inp.b[bi(t)..][..n_dim],
                );
                let decay = step_decay(&seg, seqlen, b, t, dt * a);
                let (prev, next) = states.split_at_mut((t + 1) * pn);
                let (prev, next) = (&prev[t * pn..], &mut next[..pn]);
                for p in 0..p_dim {
                    for n in 0..n_dim {
                        next[p * n_dim + n] = decay * prev[p * n_dim + n] + dt * x[p] * bv[n];
                    }
                }
            }
            let mut ds = match d_final {
                Some(df) => df[s_off..s_off + pn].to_vec(),
                None => vec![0.0; pn],
            };
            for t in (0..seqlen).rev() {
                let (dt, x) = (inp.dt[ti(t)], &inp.x[xi(t)..][..p_dim]);
                let (bv, cv) = (&inp.b[bi(t)..][..n_dim], &inp.c[bi(t)..][..n_dim]);
                let dyt = &dy[xi(t)..][..p_dim];
                let (s_prev, s_t) = (&states[t * pn..][..pn], &states[(t + 1) * pn..][..pn]);
                // y_t = s_t·C_t + D·x_t
                for p in 0..p_dim {
                    g.dd[h] += dyt[p] * x[p];
                    g.dx[xi(t) + p] += d * dyt[p];
                    for n in 0..n_dim {
                        ds[p * n_dim + n] += dyt[p] * cv[n];
                        g.dc[bi(t) + n] += s_t[p * n_dim + n] * dyt[p];
                    }
                }
                // s_t = decay·s_{t−1} + dt·x ⊗ B (decay = 0, a constant, at a packing boundary)
                let decay = step_decay(&seg, seqlen, b, t, dt * a);
                let mut d_decay = 0.0;
                let mut d_dt = 0.0;
                for p in 0..p_dim {
                    let mut dxp = 0.0;
                    for n in 0..n_dim {
                        let v = ds[p * n_dim + n];
                        d_decay += v * s_prev[p * n_dim + n];
                        d_dt += v * x[p] * bv[n];
                        dxp += v * bv[n];
                        g.db[bi(t) + n] += dt * v * x[p];
                    }
                    g.dx[xi(t) + p] += dt * dxp;
                }
                // decay = exp(dt·A)
                g.ddt[ti(t)] += d_dt + d_decay * decay * a;
                g.da[h] += d_decay * decay * dt;
                ds.iter_mut().for_each(|v| *v *= decay);
            }
            if inp.init.is_some() {
                g.d_initial_state[s_off..s_off + pn].copy_from_slice(&ds);
            }
        }
    }
    g
}

/// The f64 reference loss `Σ dy·y + Σ d_final·final_state` used by the finite-difference tests.
#[cfg(test)]
pub(crate) fn loss64(dims: SsdDims, inp: &Inputs64, dy: &[f64], d_final: Option<&[f64]>) -> f64 {
    let (y, fin) = super::reference::forward64(dims, inp);
    let mut l: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    if let Some(df) = d_final {
        l += fin.iter().zip(df).map(|(a, b)| a * b).sum::<f64>();
    }
    l
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

/// The chunked backward (see the module doc). Same arguments as [`ssd_reference_backward`] plus the chunk size.
pub fn ssd_chunked_backward(
    dims: SsdDims,
    inp: SsdInputs,
    chunk: usize,
    dy: &[f32],
    d_final_state: Option<&[f32]>,
) -> SsdGrads {
    check_grads_in(&dims, &inp, dy, d_final_state);
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

    let mut out = SsdGrads {
        dx: vec![0.0; dims.x_len()],
        ddt: vec![0.0; dims.dt_len()],
        da: vec![0.0; heads],
        db: vec![0.0; dims.bc_len()],
        dc: vec![0.0; dims.bc_len()],
        dd: vec![0.0; heads],
        d_initial_state: vec![0.0; dims.state_len()],
    };
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
        for t in 0..seqlen {
            let off = ((b * seqlen + t) * groups + g) * n_dim;
            let src = t * n_dim..(t + 1) * n_dim;
            for (o, v) in out.db[off..off + n_dim]
                .iter_mut()
                .zip(&task.db[src.clone()])
            {
                *o += v;
            }
            for (o, v) in out.dc[off..off + n_dim].iter_mut().zip(&task.dc[src]) {
                *o += v;
            }
        }
    }
    out.da = da.iter().map(|&v| v as f32).collect();
    out.dd = dd.iter().map(|&v| v as f32).collect();
    out
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
            let xbar = Mat::rows(&sc.xbar[..len * p_dim], len, p_dim);
            let dacs = &mut sc.dacs[..len];
            dacs.fill(0.0);

            // Diagonal block: M = CB ⊙ decay (lower triangle), Y = M·x̄.
            for l in 0..len {
                for s in 0..=l {
                    let e = exp_if(sg[l] == sg[s], acs[l] - acs[s]);
                    sc.decay[l * len + s] = e;
                    sc.m[l * len + s] = cbc[l * len + s] * e;
                }
                sc.decay[l * len + l + 1..(l + 1) * len].fill(0.0);
                sc.m[l * len + l + 1..(l + 1) * len].fill(0.0);
            }
            let m = Mat::rows(&sc.m[..len * len], len, len);
            matmul(&mut sc.dxbar, m.t(), dyv, None);
            matmul(&mut sc.dm, dyv, xbar.t(), None);
            for l in 0..len {
                let row = l * len..l * len + l + 1;
                let (dm_row, m_row) = (&sc.dm[row.clone()], &sc.m[row.clone()]);
                let (decay_row, dcb_row) = (&sc.decay[row.clone()], &mut sc.dcb[row]);
                let mut row_sum = 0f64;
                for (s, ((&dm, &mv), (&e, o))) in dm_row
                    .iter()
                    .zip(m_row)
                    .zip(decay_row.iter().zip(dcb_row))
                    .enumerate()
                {
                    let r = (dm * mv) as f64;
                    row_sum += r;
                    dacs[s] -= r;
                    *o += dm * e;
                }
                dacs[l] += row_sum;
            }

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

            // State passing: the carry (dH_{c+1}) is dS_c; its decay term goes to acs_last.
            let carry = &mut hg.dh0;
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
            // carry ← e^{acs_last}·carry + dH_c, dH_c = Σ_l e^{acs_l} dy_l C_lᵀ.
            matmul(
                carry,
                dyv.t(),
                Mat::rows(&sc.ec[..len * n_dim], len, n_dim),
                Some(pass),
            );

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
