//! The CPU RMSNorm on f32 slices: rayon over rows, each row's sums in f64 over eight fixed lanes (the order, and
//! so the result, does not depend on the number of threads), the elementwise terms in f32.

use crate::linalg::dot_f64;
use rayon::prelude::*;

/// `1/sqrt(mean(x²) + eps)` of one row.
fn inv_rms(row: &[f32], eps: f32) -> f64 {
    1.0 / (dot_f64(row, row) / row.len() as f64 + eps as f64).sqrt()
}

fn check(x: &[f32], w: &[f32]) {
    assert!(!w.is_empty(), "rms norm: empty weight");
    assert_eq!(
        x.len() % w.len(),
        0,
        "rms norm: x is not rows of the weight's length"
    );
}

/// `y = w ⊙ x / sqrt(mean(x²) + eps)` per row of `x` [rows, d] into `y`, every element of which it writes.
pub fn rms_norm_into(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    check(x, w);
    assert_eq!(y.len(), x.len(), "rms norm: output length");
    let d = w.len();
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(yr, xr)| {
            let r = inv_rms(xr, eps) as f32;
            for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *o = wv * (v * r);
            }
        });
}

/// The backward for the upstream gradient `dy` into `dx` (like `x`) and `dw` (like `w`), every element of which
/// it writes; the formulas are [`super::reference::rms_norm_reference_backward`]'s.
pub fn rms_norm_backward_into(
    x: &[f32],
    w: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    check(x, w);
    assert_eq!(dy.len(), x.len(), "rms norm backward: dy length");
    assert_eq!(dx.len(), x.len(), "rms norm backward: dx length");
    assert_eq!(dw.len(), w.len(), "rms norm backward: dw length");
    let d = w.len();
    // Rows in fixed blocks, each summing its share of dw in f64; blocks are added in order.
    const ROWS_PER_TASK: usize = 16;
    let partial: Vec<Vec<f64>> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(dy.par_chunks(d * ROWS_PER_TASK))
        .map(|((dxb, xb), dyb)| {
            let mut acc = vec![0f64; d];
            let mut g = vec![0f32; d];
            for ((dxr, xr), dyr) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(dyb.chunks(d)) {
                let r = inv_rms(xr, eps);
                for ((gv, &wv), &dv) in g.iter_mut().zip(w).zip(dyr) {
                    *gv = wv * dv;
                }
                let k = (r * r * r * dot_f64(&g, xr) / d as f64) as f32;
                let r32 = r as f32;
                for j in 0..d {
                    dxr[j] = r32 * g[j] - k * xr[j];
                    acc[j] += (dyr[j] * xr[j]) as f64 * r;
                }
            }
            acc
        })
        .collect();
    for (j, o) in dw.iter_mut().enumerate() {
        *o = partial.iter().map(|p| p[j]).sum::<f64>() as f32;
    }
}
