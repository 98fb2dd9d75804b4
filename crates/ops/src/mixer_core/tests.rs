//! Mixer core tests: the slice forward against an f64 composition of the definitions, and the slice backward
//! against central finite differences of that f64 path. The f64 path and the cases are shared with the candle
//! op's tests in `tensor`.

use super::*;
use crate::ssd::{forward64 as ssd_forward64, Inputs64};
use crate::testutil::{max_abs_diff, Lcg};

/// One tiny mixer call: dims, (B, T), inputs and an upstream gradient.
pub(crate) struct MixerCase {
    pub dims: MixerCoreDims,
    pub bt: (usize, usize),
    pub zx: Vec<f32>,
    pub conv_w: Vec<f32>,
    pub params: Vec<f32>,
    pub dout: Vec<f32>,
}

impl MixerCase {
    /// Random inputs with `softplus(dt_raw + dt_bias)` spread over about (0.02, 0.7), so a `dt_limit` such as
    /// (0.05, 0.3) clamps some steps from each side.
    pub fn new(dims: MixerCoreDims, bt: (usize, usize), seed: u64) -> Self {
        let mut r = Lcg(seed);
        let rows = bt.0 * bt.1;
        let (i_dim, ch, h) = (dims.inner(), dims.conv_channels(), dims.heads);
        let zx = r.vec(rows * dims.in_width(), -1.0, 1.0);
        let conv_w = r.vec(ch * dims.conv_kernel, -0.5, 0.5);
        let mut params = r.vec(ch, -0.2, 0.2); // conv bias
        params.extend(r.vec(h, -3.0, -1.0)); // dt bias
        params.extend(r.vec(h, -1.0, 1.0)); // A_log
        params.extend(r.vec(h, -1.0, 1.0)); // D
        params.extend(r.vec(i_dim, 0.5, 1.5)); // norm weight
        let dout = r.vec(rows * i_dim, -1.0, 1.0);
        MixerCase {
            dims,
            bt,
            zx,
            conv_w,
            params,
            dout,
        }
    }
    pub fn forward(&self) -> Vec<f32> {
        let p = MixerParams::unpack(&self.dims, &self.params);
        mixer_core_forward(self.dims, self.bt, &self.zx, &self.conv_w, p, None)
    }
    pub fn backward(&self) -> MixerCoreGrads {
        let p = MixerParams::unpack(&self.dims, &self.params);
        mixer_core_backward(
            self.dims,
            self.bt,
            &self.zx,
            &self.conv_w,
            p,
            None,
            &self.dout,
        )
    }
}

/// H=4, P=2, G=2, N=3, K=3, Q=2 (I=8, C=20, zxbcdt width 32).
pub(crate) fn tiny_dims(dt_limit: (f32, f32)) -> MixerCoreDims {
    MixerCoreDims {
        heads: 4,
        head_dim: 2,
        groups: 2,
        state: 3,
        conv_kernel: 3,
        chunk: 2,
        eps: 1e-5,
        dt_limit,
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The mixer core in f64, written out from the definitions (docs/numerics.md §2) on top of the f64 SSD recurrence.
pub(crate) fn forward64(
    dims: &MixerCoreDims,
    (batch, seqlen): (usize, usize),
    zx: &[f64],
    conv_w: &[f64],
    params: &[f64],
) -> Vec<f64> {
    let (i_dim, ch, gn, w, h, k) = (
        dims.inner(),
        dims.conv_channels(),
        dims.bc_width(),
        dims.in_width(),
        dims.heads,
        dims.conv_kernel,
    );
    let (conv_b, rest) = params.split_at(ch);
    let (dt_b, rest) = rest.split_at(h);
    let (a_log, rest) = rest.split_at(h);
    let (d, norm_w) = rest.split_at(h);
    let rows = batch * seqlen;
    let (mut x, mut bm, mut cm) = (vec![], vec![], vec![]);
    let mut dt = vec![];
    for b in 0..batch {
        for t in 0..seqlen {
            let row = &zx[(b * seqlen + t) * w..][..w];
            for c in 0..ch {
                let mut acc = conv_b[c];
                for kk in 0..k {
                    let s = t as isize - (k as isize - 1) + kk as isize;
                    if s >= 0 {
                        acc += conv_w[c * k + kk] * zx[(b * seqlen + s as usize) * w + i_dim + c];
                    }
                }
                let v = acc / (1.0 + (-acc).exp());
                match c {
                    c if c < i_dim => x.push(v),
                    c if c < i_dim + gn => bm.push(v),
                    _ => cm.push(v),
                }
            }
            for hh in 0..h {
                let v = row[i_dim + ch + hh] + dt_b[hh];
                let sp = if v > 20.0 { v } else { v.exp().ln_1p() };
                dt.push(sp.clamp(dims.dt_limit.0 as f64, dims.dt_limit.1 as f64));
            }
        }
    }
    let inp = Inputs64 {
        x,
        dt,
        a: a_log.iter().map(|v| -v.exp()).collect(),
        b: bm,
        c: cm,
        d: d.to_vec(),
        init: None,
        seq_idx: None,
    };
    let (y, _) = ssd_forward64(dims.ssd_dims(batch, seqlen), &inp);
    let gs = i_dim / dims.groups;
    let mut out = vec![0f64; rows * i_dim];
    for r in 0..rows {
        for g in 0..dims.groups {
            let idx = r * i_dim + g * gs..r * i_dim + (g + 1) * gs;
            let u: Vec<f64> = idx
                .clone()
                .map(|j| {
                    let z = zx[r * w + j - r * i_dim];
                    y[j] * z / (1.0 + (-z).exp())
                })
                .collect();
            let ms = u.iter().map(|v| v * v).sum::<f64>() / gs as f64;
            let inv = 1.0 / (ms + dims.eps as f64).sqrt();
            for (j, uj) in idx.zip(u) {
                out[j] = norm_w[j - r * i_dim] * uj * inv;
            }
        }
    }
    out
}

/// Central differences (in f64) of `Σ dout·forward64` w.r.t. zxbcdt, conv_w and the packed params.
pub(crate) fn fd_grads(case: &MixerCase) -> [Vec<f64>; 3] {
    let args = [widen(&case.zx), widen(&case.conv_w), widen(&case.params)];
    let loss = |a: &[Vec<f64>; 3]| -> f64 {
        forward64(&case.dims, case.bt, &a[0], &a[1], &a[2])
            .iter()
            .zip(&case.dout)
            .map(|(o, &d)| o * d as f64)
            .sum()
    };
    let h = 1e-6;
    std::array::from_fn(|a| {
        (0..args[a].len())
            .map(|j| {
                let (mut p, mut m) = (args.clone(), args.clone());
                p[a][j] += h;
                m[a][j] -= h;
                (loss(&p) - loss(&m)) / (2.0 * h)
            })
            .collect()
    })
}

/// max over elements of |got − fd| / (1 + |fd|).
pub(crate) fn fd_err(got: &[f32], fd: &[f64]) -> f64 {
    assert_eq!(got.len(), fd.len(), "length mismatch");
    got.iter()
        .zip(fd)
        .map(|(&g, &f)| (g as f64 - f).abs() / (1.0 + f.abs()))
        .fold(0.0, f64::max)
}

#[test]
fn forward_matches_f64_definition() {
    for limit in [(0.0, f32::INFINITY), (0.05, 0.3)] {
        let case = MixerCase::new(tiny_dims(limit), (2, 5), 1);
        let want = forward64(
            &case.dims,
            case.bt,
            &widen(&case.zx),
            &widen(&case.conv_w),
            &widen(&case.params),
        );
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        let err = max_abs_diff(&case.forward(), &want);
        assert!(err < 1e-5, "limit {limit:?}: forward err {err}");
    }
}

#[test]
fn backward_matches_finite_differences_with_and_without_dt_clamp() {
    let mut worst = 0f64;
    for (limit, seed) in [((0.0, f32::INFINITY), 2), ((0.05, 0.3), 3)] {
        let case = MixerCase::new(tiny_dims(limit), (2, 5), seed);
        let g = case.backward();
        let [fd_zx, fd_w, fd_p] = fd_grads(&case);
        for (name, got, fd) in [
            ("zxbcdt", &g.d_zxbcdt, &fd_zx),
            ("conv_w", &g.d_conv_w, &fd_w),
            ("params", &g.packed_params(), &fd_p),
        ] {
            let e = fd_err(got, fd);
            worst = worst.max(e);
            assert!(e < 1e-4, "limit {limit:?}: d{name} err {e}");
        }
        // dt_raw columns: zero exactly where the clamp is active.
        let (w, h) = (case.dims.in_width(), case.dims.heads);
        let d_dt_raw: Vec<f32> = g
            .d_zxbcdt
            .chunks_exact(w)
            .flat_map(|row| row[w - h..].to_vec())
            .collect();
        let zeros = d_dt_raw.iter().filter(|&&v| v == 0.0).count();
        if limit.0 > 0.0 {
            assert!(
                zeros > 0 && zeros < d_dt_raw.len(),
                "clamp should be active on some steps only"
            );
        } else {
            assert_eq!(zeros, 0, "no clamp: every dt_raw gets a gradient");
        }
    }
    eprintln!("mixer core backward vs f64 central differences: max err / (1+|fd|) {worst:e}");
}

#[test]
fn longer_sequence_with_several_chunks_matches_finite_differences_on_params() {
    // T = 11 with Q = 4 (ragged last chunk), G = 1; the params and conv weight are the small inputs to check.
    let dims = MixerCoreDims {
        groups: 1,
        chunk: 4,
        ..tiny_dims((0.0, f32::INFINITY))
    };
    let case = MixerCase::new(dims, (1, 11), 4);
    let g = case.backward();
    let [fd_zx, fd_w, fd_p] = fd_grads(&case);
    assert!(fd_err(&g.d_zxbcdt, &fd_zx) < 1e-4);
    assert!(fd_err(&g.d_conv_w, &fd_w) < 1e-4);
    assert!(fd_err(&g.packed_params(), &fd_p) < 1e-4);
}
