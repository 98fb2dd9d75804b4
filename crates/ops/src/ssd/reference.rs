//! Plain sequential SSD: the readable definition every fast path is checked against.

use super::{SsdDims, SsdInputs, SsdOutput};

/// Runs the recurrence one time step at a time, accumulating in f64.
pub fn ssd_reference(dims: SsdDims, inp: SsdInputs) -> SsdOutput {
    inp.check(&dims);
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim: p_dim,
        groups,
        state: n_dim,
    } = dims;
    let mut y = vec![0f32; dims.x_len()];
    let mut final_state = vec![0f32; dims.state_len()];
    for b in 0..batch {
        for h in 0..heads {
            let g = dims.group_of(h);
            let s_off = (b * heads + h) * p_dim * n_dim;
            let mut s: Vec<f64> = match inp.initial_state {
                Some(init) => init[s_off..s_off + p_dim * n_dim]
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
                None => vec![0.0; p_dim * n_dim],
            };
            for t in 0..seqlen {
                let dt = inp.dt[(b * seqlen + t) * heads + h] as f64;
                let decay = (dt * inp.a[h] as f64).exp();
                let x = &inp.x[((b * seqlen + t) * heads + h) * p_dim..][..p_dim];
                let bc_off = ((b * seqlen + t) * groups + g) * n_dim;
                let bv = &inp.b[bc_off..bc_off + n_dim];
                let cv = &inp.c[bc_off..bc_off + n_dim];
                let yo = &mut y[((b * seqlen + t) * heads + h) * p_dim..][..p_dim];
                for p in 0..p_dim {
                    let row = &mut s[p * n_dim..(p + 1) * n_dim];
                    let mut acc = 0.0;
                    for n in 0..n_dim {
                        row[n] = decay * row[n] + dt * x[p] as f64 * bv[n] as f64;
                        acc += row[n] * cv[n] as f64;
                    }
                    yo[p] = (acc + inp.d[h] as f64 * x[p] as f64) as f32;
                }
            }
            for (o, v) in final_state[s_off..s_off + p_dim * n_dim].iter_mut().zip(&s) {
                *o = *v as f32;
            }
        }
    }
    SsdOutput { y, final_state }
}

/// One decode step in place: `state` [B,H,P,N] is advanced by one token and y [B,H,P] is returned.
/// Inputs use the [B,1,...] layouts of [`SsdInputs`] (T = 1); `initial_state` is ignored.
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
