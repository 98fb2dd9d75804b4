//! Plain sequential SSD: the readable definition every fast path is checked against.

use super::{SsdDims, SsdInputs, SsdOutput};
use crate::packing::segments_or_single;

/// Runs the recurrence one time step at a time, accumulating in f64.
pub fn ssd_reference(dims: SsdDims, inp: SsdInputs) -> SsdOutput {
    inp.check(&dims);
    let (y, final_state) = forward64(dims, &Inputs64::from_f32(inp));
    SsdOutput {
        y: y.iter().map(|&v| v as f32).collect(),
        final_state: final_state.iter().map(|&v| v as f32).collect(),
    }
}

/// The SSD inputs widened to f64 (same layouts as [`SsdInputs`]); the reference forward and backward run on
/// these so that finite-difference checks can work in f64 end to end.
#[derive(Clone, Debug)]
pub(crate) struct Inputs64 {
    pub x: Vec<f64>,
    pub dt: Vec<f64>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub d: Vec<f64>,
    pub init: Option<Vec<f64>>,
    pub seq_idx: Option<Vec<i32>>,
}

pub(crate) fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

impl Inputs64 {
    pub fn from_f32(inp: SsdInputs) -> Self {
        Inputs64 {
            x: widen(inp.x),
            dt: widen(inp.dt),
            a: widen(inp.a),
            b: widen(inp.b),
            c: widen(inp.c),
            d: widen(inp.d),
            init: inp.initial_state.map(widen),
            seq_idx: inp.seq_idx.map(<[i32]>::to_vec),
        }
    }
}

/// The decay `exp(dt·A)` of step `t` of row `b`, or 0 at a packing boundary (the state restarts there).
pub(crate) fn step_decay(seg: &[u32], seqlen: usize, b: usize, t: usize, dt_a: f64) -> f64 {
    if t > 0 && seg[b * seqlen + t] != seg[b * seqlen + t - 1] {
        0.0
    } else {
        dt_a.exp()
    }
}

/// The sequential recurrence in f64: returns (y [B,T,H,P], final state [B,H,P,N]).
pub(crate) fn forward64(dims: SsdDims, inp: &Inputs64) -> (Vec<f64>, Vec<f64>) {
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
    } = dims;
    let seg = segments_or_single(inp.seq_idx.as_deref(), batch, seqlen);
    let mut y = vec![0f64; dims.x_len()];
    let mut final_state = vec![0f64; dims.state_len()];
    for b in 0..batch {
        for h in 0..heads {
            let g = dims.group_of(h);
            let s_off = (b * heads + h) * p_dim * n_dim;
            let s = &mut final_state[s_off..s_off + p_dim * n_dim];
            if let Some(init) = &inp.init {
                s.copy_from_slice(&init[s_off..s_off + p_dim * n_dim]);
            }
            for t in 0..seqlen {
                let dt = inp.dt[(b * seqlen + t) * heads + h];
                let decay = step_decay(&seg, seqlen, b, t, dt * inp.a[h]);
                let x = &inp.x[((b * seqlen + t) * heads + h) * p_dim..][..p_dim];
                let bc_off = ((b * seqlen + t) * groups + g) * n_dim;
                let bv = &inp.b[bc_off..bc_off + n_dim];
                let cv = &inp.c[bc_off..bc_off + n_dim];
                let yo = &mut y[((b * seqlen + t) * heads + h) * p_dim..][..p_dim];
                for p in 0..p_dim {
                    let row = &mut s[p * n_dim..(p + 1) * n_dim];
                    let mut acc = 0.0;
                    for n in 0..n_dim {
                        row[n] = decay * row[n] + dt * x[p] * bv[n];
                        acc += row[n] * cv[n];
                    }
                    yo[p] = acc + inp.d[h] * x[p];
                }
            }
        }
    }
    (y, final_state)
}

/// One decode step in place: `state` [B,H,P,N] is advanced by one token and y [B,H,P] is returned.
/// Inputs use the [B,1,...] layouts of [`SsdInputs`] (T = 1); `initial_state` and `seq_idx` are ignored.
pub fn ssd_step(dims: SsdDims, inp: SsdInputs, state: &mut [f32]) -> Vec<f32> {
    assert_eq!(dims.seqlen, 1, "ssd_step takes one token");
    inp.check(&dims);
    assert_eq!(state.len(), dims.state_len(), "ssd_step: state length");
    let SsdDims {
        batch,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
        ..
    } = dims;
    let mut y = vec![0f32; batch * heads * p_dim];
    for b in 0..batch {
        for h in 0..heads {
            let g = dims.group_of(h);
            let dt = inp.dt[b * heads + h];
            let decay = (dt * inp.a[h]).exp();
            let x = &inp.x[(b * heads + h) * p_dim..][..p_dim];
            let bv = &inp.b[(b * groups + g) * n_dim..][..n_dim];
            let cv = &inp.c[(b * groups + g) * n_dim..][..n_dim];
            let s = &mut state[(b * heads + h) * p_dim * n_dim..][..p_dim * n_dim];
            for p in 0..p_dim {
                let row = &mut s[p * n_dim..(p + 1) * n_dim];
                let dx = dt * x[p];
                let mut acc = 0.0f32;
                for n in 0..n_dim {
                    row[n] = decay * row[n] + dx * bv[n];
                    acc += row[n] * cv[n];
                }
                y[(b * heads + h) * p_dim + p] = acc + inp.d[h] * x[p];
            }
        }
    }
    y
}
