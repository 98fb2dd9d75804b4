//! The fast CPU gated RMSNorm on f32 slices (rayon over rows), and its gradient [`gated_rmsnorm_backward`] (per
//! row and group: the group's two sums in f64, the elementwise terms in f32).

use crate::vexp;
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
        gate(o, yr, zr);
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
            || (vec![0f64; width], vec![0f32; 3 * gs]),
            |(mut dw, mut scratch), (r, (dyr, dzr))| {
                let span = r * width..(r + 1) * width;
                let (yr, zr, dr) = (&y[span.clone()], &z[span.clone()], &dout[span]);
                for g in 0..groups {
                    let ch = g * gs..(g + 1) * gs;
                    let io = GroupIo {
                        y: &yr[ch.clone()],
                        z: &zr[ch.clone()],
                        w: &w[ch.clone()],
                        d: &dr[ch.clone()],
                        dy: &mut dyr[ch.clone()],
                        dz: &mut dzr[ch.clone()],
                        dw: &mut dw[ch],
                    };
                    group_backward(io, eps, &mut scratch);
                }
                (dw, scratch)
            },
        )
        .map(|(dw, _)| dw)
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

vexp::dispatch!(
    /// `o = y·silu(z)`.
    fn gate(o: &mut [f32], y: &[f32], z: &[f32]) -> () {
        for (ov, (&yv, &zv)) in o.iter_mut().zip(y.iter().zip(z)) {
            *ov = yv * vexp::silu(zv);
        }
    }
);

/// One row's group for [`group_backward`]: inputs y, z, w, dout and outputs dy, dz, and the f64 dw accumulator.
struct GroupIo<'a> {
    y: &'a [f32],
    z: &'a [f32],
    w: &'a [f32],
    d: &'a [f32],
    dy: &'a mut [f32],
    dz: &'a mut [f32],
    dw: &'a mut [f64],
}

vexp::dispatch!(
    /// One row's group: `u = y·silu(z)`, `r = 1/sqrt(mean(u²) + eps)`, `g = w·dout`, `k = r³·(g·u)/|group|`;
    /// `dy = (r·g − k·u)·silu(z)`, `dz = (r·g − k·u)·y·silu'(z)`, and `dw += dout·u·r`. The two sums are taken in
    /// f64 over eight fixed lanes; `scratch` holds 3·|group| floats.
    fn group_backward(io: GroupIo<'_>, eps: f32, scratch: &mut [f32]) -> () {
        let GroupIo {
            y,
            z,
            w,
            d,
            dy,
            dz,
            dw,
        } = io;
        let n = y.len();
        let (u, rest) = scratch.split_at_mut(n);
        let (s, sg) = rest.split_at_mut(n);
        for j in 0..n {
            let sig = 1.0 / (1.0 + vexp::exp(-z[j]));
            s[j] = z[j] * sig;
            sg[j] = sig * (1.0 + z[j] * (1.0 - sig));
            u[j] = y[j] * s[j];
        }
        let (mut sq, mut gu) = ([0f64; 8], [0f64; 8]);
        for (uc, (wc, dc)) in u
            .chunks_exact(8)
            .zip(w.chunks_exact(8).zip(d.chunks_exact(8)))
        {
            for k in 0..8 {
                let uk = uc[k] as f64;
                sq[k] += uk * uk;
                gu[k] += wc[k] as f64 * dc[k] as f64 * uk;
            }
        }
        let (mut sq_t, mut gu_t) = (sq.iter().sum::<f64>(), gu.iter().sum::<f64>());
        for j in n - n % 8..n {
            let uj = u[j] as f64;
            sq_t += uj * uj;
            gu_t += w[j] as f64 * d[j] as f64 * uj;
        }
        let inv = 1.0 / (sq_t / n as f64 + eps as f64).sqrt();
        let k = inv * inv * inv * gu_t / n as f64;
        let (inv32, k32) = (inv as f32, k as f32);
        for j in 0..n {
            dw[j] += (d[j] * u[j]) as f64 * inv;
            let du = inv32 * (w[j] * d[j]) - k32 * u[j];
            dy[j] = du * s[j];
            dz[j] = du * y[j] * sg[j];
        }
    }
);
