//! RMS norms of the Mamba2 mixer.
//!
//! Gated RMSNorm (HF `MambaRMSNormGated`, mamba_ssm `norm_before_gate=False`): gate first, then normalise each
//! contiguous group of `I/G` channels: `u = y ⊙ silu(z)`, `out = w ⊙ u_g / sqrt(mean(u_g²) + eps)`.
//! [`gated_rmsnorm_backward`] is its gradient (per row and group, in f64).

use crate::conv1d::{silu, silu_grad};
use rayon::prelude::*;

/// `y`, `z` [rows, I], `w` [I] → [rows, I]; `groups` must divide I.
pub fn gated_rmsnorm(y: &[f32], z: &[f32], w: &[f32], groups: usize, eps: f32) -> Vec<f32> {
    let width = w.len();
    assert!(
        groups > 0 && width.is_multiple_of(groups),
        "gated_rmsnorm: {width} channels not divisible by {groups} groups"
    );
    assert_eq!(y.len(), z.len(), "gated_rmsnorm: y and z lengths");
    assert_eq!(y.len() % width, 0, "gated_rmsnorm: rows");
    let gs = width / groups;
    let mut out = vec![0f32; y.len()];
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
    out
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
    let width = w.len();
    assert!(
        groups > 0 && width.is_multiple_of(groups),
        "gated_rmsnorm backward: {width} channels not divisible by {groups} groups"
    );
    assert_eq!(y.len(), z.len(), "gated_rmsnorm backward: y and z lengths");
    assert_eq!(y.len(), dout.len(), "gated_rmsnorm backward: dout length");
    assert_eq!(y.len() % width, 0, "gated_rmsnorm backward: rows");
    let gs = width / groups;
    let mut dy = vec![0f32; y.len()];
    let mut dz = vec![0f32; y.len()];
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
    (dy, dz, dw.iter().map(|&v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, Lcg};

    #[test]
    fn groups_normalise_separately() {
        let mut r = Lcg(3);
        let (rows, width) = (3, 8);
        let y = r.vec(rows * width, -2.0, 2.0);
        let z = r.vec(rows * width, -2.0, 2.0);
        let w = r.vec(width, 0.5, 1.5);
        for groups in [1, 2, 4] {
            let got = gated_rmsnorm(&y, &z, &w, groups, 1e-5);
            let gs = width / groups;
            let mut want = vec![0f32; rows * width];
            for row in 0..rows {
                for g in 0..groups {
                    let idx: Vec<usize> = (0..gs).map(|i| row * width + g * gs + i).collect();
                    let u: Vec<f64> = idx
                        .iter()
                        .map(|&i| y[i] as f64 * silu(z[i]) as f64)
                        .collect();
                    let rms = (u.iter().map(|v| v * v).sum::<f64>() / gs as f64 + 1e-5).sqrt();
                    for (j, &i) in idx.iter().enumerate() {
                        want[i] = (w[g * gs + j] as f64 * u[j] / rms) as f32;
                    }
                }
            }
            assert!(max_abs_diff(&got, &want) < 1e-5, "groups={groups}");
        }
    }

    /// The norm in f64 end to end (for finite differences).
    fn forward64(y: &[f64], z: &[f64], w: &[f64], groups: usize, eps: f64) -> Vec<f64> {
        let width = w.len();
        let gs = width / groups;
        let mut out = vec![0f64; y.len()];
        for (r, o) in out.chunks_mut(width).enumerate() {
            for g in 0..groups {
                let idx = g * gs..(g + 1) * gs;
                let u: Vec<f64> = idx
                    .clone()
                    .map(|j| {
                        let zv = z[r * width + j];
                        y[r * width + j] * zv / (1.0 + (-zv).exp())
                    })
                    .collect();
                let inv = 1.0 / (u.iter().map(|v| v * v).sum::<f64>() / gs as f64 + eps).sqrt();
                for (j, uj) in idx.zip(u) {
                    o[j] = w[j] * uj * inv;
                }
            }
        }
        out
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = Lcg(17);
        let (rows, width) = (3, 8);
        let y = r.vec(rows * width, -2.0, 2.0);
        let z = r.vec(rows * width, -2.0, 2.0);
        let w = r.vec(width, 0.5, 1.5);
        let dout = r.vec(rows * width, -1.0, 1.0);
        let w64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let mut worst = 0f64;
        for groups in [1, 2, 4] {
            let (dy, dz, dw) = gated_rmsnorm_backward(&y, &z, &w, groups, 1e-5, &dout);
            let args = [w64(&y), w64(&z), w64(&w)];
            let loss = |a: &[Vec<f64>; 3]| -> f64 {
                forward64(&a[0], &a[1], &a[2], groups, 1e-5)
                    .iter()
                    .zip(&dout)
                    .map(|(o, &d)| o * d as f64)
                    .sum()
            };
            for (a, grad) in [&dy, &dz, &dw].into_iter().enumerate() {
                for (j, &gj) in grad.iter().enumerate() {
                    let (mut p, mut m) = (args.clone(), args.clone());
                    p[a][j] += 1e-6;
                    m[a][j] -= 1e-6;
                    let fd = (loss(&p) - loss(&m)) / 2e-6;
                    let err = (fd - gj as f64).abs() / (1.0 + fd.abs());
                    worst = worst.max(err);
                    assert!(err < 2e-5, "groups={groups} arg {a}[{j}]: fd {fd} vs {gj}");
                }
            }
        }
        eprintln!("gated_rmsnorm backward vs central differences: max err / (1+|fd|) {worst:e}");
    }
}
