//! RMS norms of the Mamba2 mixer.
//!
//! Gated RMSNorm (HF `MambaRMSNormGated`, mamba_ssm `norm_before_gate=False`): gate first, then normalise each
//! contiguous group of `I/G` channels: `u = y ⊙ silu(z)`, `out = w ⊙ u_g / sqrt(mean(u_g²) + eps)`.

use crate::conv1d::silu;
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
}
