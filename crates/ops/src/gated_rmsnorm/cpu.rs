//! The fast CPU gated RMSNorm on f32 slices (rayon over rows), and its gradient [`gated_rmsnorm_backward`] (per
//! row and group, in f64).

use crate::conv1d::{silu, silu_grad};
use rayon::prelude::*;

/// `y`, `z` [rows, I], `w` [I] → [rows, I]; `groups` must divide I.
pub fn gated_rmsnorm(y: &[f32], z: &[f32], w: &[f32], groups: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; y.len()];
    gated_rmsnorm_into(y, z, w, groups, eps, &mut out);
    out
}

/// [`gated_rmsnorm`] into `out` [rows, I], every element of which it writes.
pub fn gated_rmsnorm_into(
    y: &[f32],
    z: &[f32],
    w: &[f32],
    groups: usize,
    eps: f32,
    out: &mut [f32],
) {
    let width = w.len();
    assert!(
        groups > 0 && width.is_multiple_of(groups),
        "gated_rmsnorm: {width} channels not divisible by {groups} groups"
    );
    assert_eq!(y.len(), z.len(), "gated_rmsnorm: y and z lengths");
    assert_eq!(y.len() % width, 0, "gated_rmsnorm: rows");
    assert_eq!(out.len(), y.len(), "gated_rmsnorm: output length");
    let gs = width / groups;
    out.par_chunks_mut(width).enumerate().for_each(|(r, o)| {
        let (yr, zr) = (
            &y[r * width..(r + 1) * width],
            &z[r * width..(r + 1) * width],
        );
        for (ov, (&yv, &zv)) in o.iter_mut().zip(yr.iter().zip(zr)) {
            *ov = yv * silu(zv);
        }
        for g in 0..groups {
            let seg = &mut o[g * gs..(g + 1) * gs];
            let ms = seg.iter().map(|v| v * v).sum::<f32>() / gs as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (v, &wv) in seg.iter_mut().zip(&w[g * gs..(g + 1) * gs]) {
                *v = wv * (*v * inv);
            }
        }
    });
}

/// Backward of [`gated_rmsnorm`] for the upstream gradient `dout` [rows, I]: returns `(dy, dz, dw)`.
/// Per row and group, with `r = 1/sqrt(mean(u²) + eps)` and `g = w ⊙ dout`:
/// `du = r·g − r³·u·(g·u)/|group|`, `dw += dout ⊙ u·r`, `dy = du ⊙ silu(z)`, `dz = du ⊙ y ⊙ silu'(z)`.
pub fn gated_rmsnorm_backward(
    y: &[f32],
    z: &[f32],
    w: &[f32],
    groups: usize,
    eps: f32,
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut dy, mut dz, mut dw) = (
        vec![0f32; y.len()],
        vec![0f32; y.len()],
        vec![0f32; w.len()],
    );
    gated_rmsnorm_backward_into(y, z, w, groups, eps, dout, (&mut dy, &mut dz, &mut dw));
    (dy, dz, dw)
}

/// [`gated_rmsnorm_backward`] into `(dy, dz, dw)`, every element of which it writes.
pub fn gated_rmsnorm_backward_into(
    y: &[f32],
    z: &[f32],
    w: &[f32],
    groups: usize,
    eps: f32,
    dout: &[f32],
    (dy, dz, dw_out): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let width = w.len();
    assert!(
        groups > 0 && width.is_multiple_of(groups),
        "gated_rmsnorm backward: {width} channels not divisible by {groups} groups"
    );
    assert_eq!(y.len(), z.len(), "gated_rmsnorm backward: y and z lengths");
    assert_eq!(y.len(), dout.len(), "gated_rmsnorm backward: dout length");
    assert_eq!(y.len() % width, 0, "gated_rmsnorm backward: rows");
    assert_eq!(dy.len(), y.len(), "gated_rmsnorm backward: dy length");
    assert_eq!(dz.len(), y.len(), "gated_rmsnorm backward: dz length");
    assert_eq!(dw_out.len(), width, "gated_rmsnorm backward: dw length");
    let gs = width / groups;
    let dw = dy
        .par_chunks_mut(width)
        .zip(dz.par_chunks_mut(width))
        .enumerate()
        .fold(
            || vec![0f64; width],
            |mut dw, (r, (dyr, dzr))| {
                let span = r * width..(r + 1) * width;
                let (yr, zr, dr) = (&y[span.clone()], &z[span.clone()], &dout[span]);
                for g in 0..groups {
                    let ch = g * gs..(g + 1) * gs;
                    let u: Vec<f64> = ch
                        .clone()
                        .map(|j| yr[j] as f64 * silu(zr[j]) as f64)
                        .collect();
                    let ms = u.iter().map(|v| v * v).sum::<f64>() / gs as f64;
                    let inv = 1.0 / (ms + eps as f64).sqrt();
                    let gu: f64 = ch
                        .clone()
                        .zip(&u)
                        .map(|(j, uj)| w[j] as f64 * dr[j] as f64 * uj)
                        .sum();
                    let k = inv * inv * inv * gu / gs as f64;
                    for (j, &uj) in ch.zip(&u) {
                        let gj = w[j] as f64 * dr[j] as f64;
                        dw[j] += dr[j] as f64 * uj * inv;
                        let du = inv * gj - k * uj;
                        dyr[j] = (du * silu(zr[j]) as f64) as f32;
                        dzr[j] = (du * yr[j] as f64 * silu_grad(zr[j]) as f64) as f32;
                    }
                }
                dw
            },
        )
        .reduce(
            || vec![0f64; width],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    for (o, &v) in dw_out.iter_mut().zip(&dw) {
        *o = v as f32;
    }
}
