//! Causal depthwise conv1d over time followed by SiLU (the xBC path of the Mamba2 mixer).
//!
//! `out[b, t, c] = silu(bias[c] + Σ_{k<K} w[c, k] · x[b, t − K + 1 + k, c])`, where positions before the start read
//! the optional `history` (the K−1 raw columns that preceded this call, oldest first) or zero.
//! With `seq_idx` (packed rows, [`crate::packing`]) a tap reads only columns of its own segment: earlier
//! segments count as zero, and the history belongs to segment 0 (the first example continues from it).
//! [`causal_conv1d_silu_backward`] gives the gradients of that map w.r.t. x, w, bias and history.

use crate::packing::segments_or_single;
use rayon::prelude::*;

/// `x` [B,T,C], `w` [C,K], `bias` [C], `history` [B,C,K−1], `seq_idx` [B,T] → [B,T,C].
pub fn causal_conv1d_silu(
    x: &[f32],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seq_idx: Option<&[i32]>,
) -> Vec<f32> {
    let seg = checked_segments(x, (batch, seqlen, ch), w, k, bias, history, seq_idx);
    let mut out = conv_pre(x, (batch, seqlen, ch), w, k, bias, history, &seg);
    out.par_iter_mut().for_each(|v| *v = silu(*v));
    out
}

/// The conv before the SiLU: `bias[c] + Σ_k w[c, k] · x[t − K + 1 + k, c]` ([B,T,C]).
fn conv_pre(
    x: &[f32],
    (_batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seg: &[u32],
) -> Vec<f32> {
    let wt = transpose_weight(w, ch, k);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(ch).enumerate().for_each(|(row, o)| {
        let (b, t) = (row / seqlen, row % seqlen);
        match bias {
            Some(bv) => o.copy_from_slice(bv),
            None => o.fill(0.0),
        }
        let seg_t = seg[row];
        for kk in 0..k {
            let src = t as isize - (k - 1) as isize + kk as isize;
            let wk = &wt[kk * ch..(kk + 1) * ch];
            if src >= 0 && seg[b * seqlen + src as usize] != seg_t {
                continue; // another segment of a packed row
            }
            if src >= 0 {
                let xs = &x[(b * seqlen + src as usize) * ch..][..ch];
                for ((o, &wv), &xv) in o.iter_mut().zip(wk).zip(xs) {
                    *o += wv * xv;
                }
            } else if let (Some(hv), 0) = (history, seg_t) {
                let j = (k as isize - 1 + src) as usize; // index into the K−1 history columns
                for (c, (o, &wv)) in o.iter_mut().zip(wk).enumerate() {
                    *o += wv * hv[(b * ch + c) * (k - 1) + j];
                }
            }
        }
    });
    out
}

/// Weight [C,K] transposed to [K,C] so inner loops run over contiguous channels.
fn transpose_weight(w: &[f32], ch: usize, k: usize) -> Vec<f32> {
    (0..k * ch).map(|i| w[(i % ch) * k + i / ch]).collect()
}

/// Gradients of [`causal_conv1d_silu`]: dx [B,T,C], dw [C,K], dbias [C] (the gradient w.r.t. the bias even when
/// the call had none), dhistory [B,C,K−1] (empty when the call had no history).
#[derive(Clone, Debug)]
pub struct Conv1dGrads {
    pub dx: Vec<f32>,
    pub dw: Vec<f32>,
    pub dbias: Vec<f32>,
    pub dhistory: Vec<f32>,
}

/// Backward of [`causal_conv1d_silu`] for the upstream gradient `dout` [B,T,C]; same other arguments.
/// With `pre` the conv before the SiLU and `dpre = dout · silu'(pre)`:
/// `dx[t − K + 1 + k] += w[c, k]·dpre[t]`, `dw[c, k] = Σ_{b,t} dpre[t]·x[t − K + 1 + k]`, `dbias = Σ_{b,t} dpre`;
/// taps that read before the start land in `dhistory` instead of `dx`; taps masked by `seq_idx` pass nothing.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_silu_backward(
    x: &[f32],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seq_idx: Option<&[i32]>,
    dout: &[f32],
) -> Conv1dGrads {
    assert_eq!(
        dout.len(),
        batch * seqlen * ch,
        "conv1d backward: dout length"
    );
    let seg = checked_segments(x, (batch, seqlen, ch), w, k, bias, history, seq_idx);
    let mut dpre = conv_pre(x, (batch, seqlen, ch), w, k, bias, history, &seg);
    dpre.par_iter_mut()
        .zip(dout.par_iter())
        .for_each(|(p, &g)| *p = g * silu_grad(*p));
    let wt = transpose_weight(w, ch, k);
    let hist_len = batch * ch * (k - 1);

    // dx[b, s] = Σ_k w[:, k] ⊙ dpre[b, s + K − 1 − k] (terms past the end vanish).
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(ch).enumerate().for_each(|(row, o)| {
        let (b, s) = (row / seqlen, row % seqlen);
        for kk in 0..k {
            let t = s + k - 1 - kk;
            if t < seqlen && seg[b * seqlen + t] == seg[row] {
                let dp = &dpre[(b * seqlen + t) * ch..][..ch];
                for ((o, &wv), &g) in o.iter_mut().zip(&wt[kk * ch..(kk + 1) * ch]).zip(dp) {
                    *o += wv * g;
                }
            }
        }
    });

    // dw and dbias: sums over (b, t), in f64 per rayon split, as [K, C] then [C].
    let (dwt, dbias) = (0..batch * seqlen)
        .into_par_iter()
        .fold(
            || (vec![0f64; k * ch], vec![0f64; ch]),
            |(mut dwt, mut db), row| {
                let (b, t) = (row / seqlen, row % seqlen);
                let dp = &dpre[row * ch..(row + 1) * ch];
                for (o, &g) in db.iter_mut().zip(dp) {
                    *o += g as f64;
                }
                let seg_t = seg[row];
                for kk in 0..k {
                    let src = t as isize - (k - 1) as isize + kk as isize;
                    let acc = &mut dwt[kk * ch..(kk + 1) * ch];
                    if src >= 0 && seg[b * seqlen + src as usize] != seg_t {
                        continue;
                    }
                    if src >= 0 {
                        let xs = &x[(b * seqlen + src as usize) * ch..][..ch];
                        for ((o, &g), &xv) in acc.iter_mut().zip(dp).zip(xs) {
                            *o += (g * xv) as f64;
                        }
                    } else if let (Some(hv), 0) = (history, seg_t) {
                        let j = (k as isize - 1 + src) as usize;
                        for (c, (o, &g)) in acc.iter_mut().zip(dp).enumerate() {
                            *o += (g * hv[(b * ch + c) * (k - 1) + j]) as f64;
                        }
                    }
                }
                (dwt, db)
            },
        )
        .reduce(
            || (vec![0f64; k * ch], vec![0f64; ch]),
            |(mut a, mut b), (a2, b2)| {
                a.iter_mut().zip(&a2).for_each(|(x, y)| *x += y);
                b.iter_mut().zip(&b2).for_each(|(x, y)| *x += y);
                (a, b)
            },
        );
    let dw = (0..ch * k)
        .map(|i| dwt[(i % k) * ch + i / k] as f32)
        .collect();

    // dhistory[b, c, j]: history column j is read at time t ≤ j by tap K-index j − t.
    let mut dhistory = vec![0f32; if history.is_some() { hist_len } else { 0 }];
    if history.is_some() {
        for b in 0..batch {
            for c in 0..ch {
                for j in 0..k - 1 {
                    let mut acc = 0f32;
                    for t in 0..(j + 1).min(seqlen) {
                        if seg[b * seqlen + t] == 0 {
                            acc += w[c * k + j - t] * dpre[(b * seqlen + t) * ch + c];
                        }
                    }
                    dhistory[(b * ch + c) * (k - 1) + j] = acc;
                }
            }
        }
    }
    Conv1dGrads {
        dx,
        dw,
        dbias: dbias.iter().map(|&v| v as f32).collect(),
        dhistory,
    }
}

/// Argument checks shared by the forward and backward; returns the segment ids [B,T] (all 0 without packing).
fn checked_segments(
    x: &[f32],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seq_idx: Option<&[i32]>,
) -> Vec<u32> {
    assert_eq!(x.len(), batch * seqlen * ch, "conv1d: x length");
    assert!(k > 0, "conv1d: kernel width must be positive");
    assert_eq!(w.len(), ch * k, "conv1d: weight length");
    if let Some(bv) = bias {
        assert_eq!(bv.len(), ch, "conv1d: bias length");
    }
    if let Some(hv) = history {
        assert_eq!(hv.len(), batch * ch * (k - 1), "conv1d: history length");
    }
    if let Some(s) = seq_idx {
        assert_eq!(s.len(), batch * seqlen, "conv1d: seq_idx length");
    }
    segments_or_single(seq_idx, batch, seqlen)
}

/// `x·σ(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `d silu / dx = σ(x)·(1 + x·(1 − σ(x)))`.
#[inline]
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, Lcg};

    #[test]
    fn matches_naive_definition_with_and_without_history() {
        for (i, &(bsz, t_len, ch, k)) in [(1, 1, 3, 4), (2, 7, 5, 4), (2, 2, 6, 3), (1, 20, 8, 2)]
            .iter()
            .enumerate()
        {
            let mut r = Lcg(i as u64 + 1);
            let x = r.vec(bsz * t_len * ch, -1.0, 1.0);
            let w = r.vec(ch * k, -1.0, 1.0);
            let bias = r.vec(ch, -0.5, 0.5);
            let hist = r.vec(bsz * ch * (k - 1), -1.0, 1.0);
            for h in [None, Some(hist.as_slice())] {
                let got = causal_conv1d_silu(&x, (bsz, t_len, ch), &w, k, Some(&bias), h, None);
                let h64 = h.map(w64);
                let want = forward64(
                    &w64(&x),
                    (bsz, t_len, ch),
                    &w64(&w),
                    k,
                    &w64(&bias),
                    h64.as_deref(),
                );
                let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                assert!(max_abs_diff(&got, &want) < 1e-6, "case {i}");
            }
        }
    }

    fn w64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&a| a as f64).collect()
    }

    /// Direct transcription of the definition in f64, one output at a time (the reference for the
    /// kernel and for finite differences).
    fn forward64(
        x: &[f64],
        (bsz, t_len, ch): (usize, usize, usize),
        w: &[f64],
        k: usize,
        bias: &[f64],
        hist: Option<&[f64]>,
    ) -> Vec<f64> {
        let mut out = vec![0f64; x.len()];
        for b in 0..bsz {
            for t in 0..t_len {
                for c in 0..ch {
                    let mut acc = bias[c];
                    for kk in 0..k {
                        let s = t as isize - (k as isize - 1) + kk as isize;
                        let v = if s >= 0 {
                            x[(b * t_len + s as usize) * ch + c]
                        } else {
                            hist.map_or(0.0, |h| {
                                h[(b * ch + c) * (k - 1) + (k as isize - 1 + s) as usize]
                            })
                        };
                        acc += w[c * k + kk] * v;
                    }
                    out[(b * t_len + t) * ch + c] = acc / (1.0 + (-acc).exp());
                }
            }
        }
        out
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut worst = 0f64;
        for (i, &(bsz, t_len, ch, k, with_hist)) in [
            (2, 6, 3, 4, true),
            (1, 2, 4, 4, true), // T < K − 1: history taps beyond the sequence
            (2, 5, 2, 3, false),
            (1, 4, 3, 1, false), // K = 1
        ]
        .iter()
        .enumerate()
        {
            let dims = (bsz, t_len, ch);
            let mut r = Lcg(50 + i as u64);
            let x = r.vec(bsz * t_len * ch, -1.5, 1.5);
            let w = r.vec(ch * k, -1.0, 1.0);
            let bias = r.vec(ch, -0.5, 0.5);
            let hist = r.vec(bsz * ch * (k - 1), -1.0, 1.0);
            let dout = r.vec(x.len(), -1.0, 1.0);
            let h = with_hist.then_some(hist.as_slice());
            let g = causal_conv1d_silu_backward(&x, dims, &w, k, Some(&bias), h, None, &dout);
            assert_eq!(g.dhistory.len(), if with_hist { hist.len() } else { 0 });
            let args = [w64(&x), w64(&w), w64(&bias), w64(&hist)];
            let loss = |a: &[Vec<f64>; 4]| -> f64 {
                let hs = with_hist.then_some(a[3].as_slice());
                forward64(&a[0], dims, &a[1], k, &a[2], hs)
                    .iter()
                    .zip(&dout)
                    .map(|(o, &d)| o * d as f64)
                    .sum()
            };
            let grads: [&[f32]; 4] = [&g.dx, &g.dw, &g.dbias, &g.dhistory];
            let n_args = if with_hist { 4 } else { 3 };
            for (a, grad) in grads.iter().enumerate().take(n_args) {
                for j in 0..args[a].len() {
                    let (mut p, mut m) = (args.clone(), args.clone());
                    p[a][j] += 1e-6;
                    m[a][j] -= 1e-6;
                    let fd = (loss(&p) - loss(&m)) / 2e-6;
                    let err = (fd - grad[j] as f64).abs() / (1.0 + fd.abs());
                    worst = worst.max(err);
                    assert!(err < 2e-5, "case {i} arg {a}[{j}]: fd {fd} vs {}", grad[j]);
                }
            }
        }
        eprintln!("conv1d backward vs central differences: max err / (1+|fd|) {worst:e}");
    }
}
