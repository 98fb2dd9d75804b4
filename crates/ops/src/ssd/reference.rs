//! The plain SSD: the sequential recurrence, the readable definition every other path is checked against.
//!
//! [`ssd_reference`] runs it one time step at a time in f64; [`ssd_reference_backward`] is plain reverse-mode
//! through it (f64, every state kept); [`ssd_step`] is one decode step in f32. The f64 forms ([`Inputs64`],
//! [`forward64`], [`backward64`], [`loss64`]) are public so tests can take finite differences end to end in f64.

use super::{check_grads_in, SsdDims, SsdGrads, SsdInputs, SsdOutput};
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
pub struct Inputs64 {
    pub x: Vec<f64>,
    pub dt: Vec<f64>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub d: Vec<f64>,
    pub init: Option<Vec<f64>>,
    pub seq_idx: Option<Vec<i32>>,
}

fn widen(v: &[f32]) -> Vec<f64> {
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
fn step_decay(seg: &[u32], seqlen: usize, b: usize, t: usize, dt_a: f64) -> f64 {
    if t > 0 && seg[b * seqlen + t] != seg[b * seqlen + t - 1] {
        0.0
    } else {
        dt_a.exp()
    }
}

/// The sequential recurrence in f64: returns (y [B,T,H,P], final state [B,H,P,N]).
pub fn forward64(dims: SsdDims, inp: &Inputs64) -> (Vec<f64>, Vec<f64>) {
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
pub struct Grads64 {
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
pub fn backward64(dims: SsdDims, inp: &Inputs64, dy: &[f64], d_final: Option<&[f64]>) -> Grads64 {
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

/// The f64 loss `Σ dy·y + Σ d_final·final_state` whose gradient [`backward64`] is (for finite differences).
pub fn loss64(dims: SsdDims, inp: &Inputs64, dy: &[f64], d_final: Option<&[f64]>) -> f64 {
    let (y, fin) = forward64(dims, inp);
    let mut l: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    if let Some(df) = d_final {
        l += fin.iter().zip(df).map(|(a, b)| a * b).sum::<f64>();
    }
    l
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
