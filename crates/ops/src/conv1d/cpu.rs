//! The fast CPU causal conv1d + SiLU on f32 slices: rayon over (b, t) rows with the weight transposed so inner
//! loops run over contiguous channels, and its backward ([`causal_conv1d_silu_backward`]; weight and bias sums in
//! f64).

use crate::packing::segments_or_single;
use crate::vexp;
pub use crate::vexp::{silu, silu_grad};
use rayon::prelude::*;

/// Elements per rayon task of the elementwise passes.
const ELEMWISE_CHUNK: usize = 1 << 14;

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
    let mut out = vec![0f32; x.len()];
    causal_conv1d_silu_into(
        x,
        (batch, seqlen, ch),
        w,
        k,
        bias,
        history,
        seq_idx,
        &mut out,
    );
    out
}

/// [`causal_conv1d_silu`] into `out` [B,T,C], every element of which it writes.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_silu_into(
    x: &[f32],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seq_idx: Option<&[i32]>,
    out: &mut [f32],
) {
    let seg = checked_segments(x, (batch, seqlen, ch), w, k, bias, history, seq_idx);
    assert_eq!(out.len(), x.len(), "conv1d: output length");
    conv_pre(x, (batch, seqlen, ch), w, k, bias, history, &seg, out);
    out.par_chunks_mut(ELEMWISE_CHUNK)
        .for_each(vexp::silu_in_place);
}

/// The conv before the SiLU into `out`: `bias[c] + Σ_k w[c, k] · x[t − K + 1 + k, c]` ([B,T,C]).
#[allow(clippy::too_many_arguments)]
fn conv_pre(
    x: &[f32],
    (_batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seg: &[u32],
    out: &mut [f32],
) {
    let wt = transpose_weight(w, ch, k);
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
    let mut out = Conv1dGrads {
        dx: vec![0.0; x.len()],
        dw: vec![0.0; w.len()],
        dbias: vec![0.0; ch],
        dhistory: vec![0.0; history.map_or(0, <[f32]>::len)],
    };
    causal_conv1d_silu_backward_into(
        x,
        (batch, seqlen, ch),
        w,
        k,
        bias,
        history,
        seq_idx,
        dout,
        &mut out,
    );
    out
}

/// [`causal_conv1d_silu_backward`] into `out` (sized as it returns them), every element of which it writes.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_silu_backward_into(
    x: &[f32],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
    seq_idx: Option<&[i32]>,
    dout: &[f32],
    out: &mut Conv1dGrads,
) {
    assert_eq!(
        dout.len(),
        batch * seqlen * ch,
        "conv1d backward: dout length"
    );
    let seg = checked_segments(x, (batch, seqlen, ch), w, k, bias, history, seq_idx);
    let hist_len = batch * ch * (k - 1);
    assert_eq!(out.dx.len(), x.len(), "conv1d backward: dx length");
    assert_eq!(out.dw.len(), w.len(), "conv1d backward: dw length");
    assert_eq!(out.dbias.len(), ch, "conv1d backward: dbias length");
    let want_hist = if history.is_some() { hist_len } else { 0 };
    assert_eq!(
        out.dhistory.len(),
        want_hist,
        "conv1d backward: dhistory length"
    );
    let mut dpre = vec![0f32; x.len()];
    conv_pre(x, (batch, seqlen, ch), w, k, bias, history, &seg, &mut dpre);
    dpre.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(dout.par_chunks(ELEMWISE_CHUNK))
        .for_each(|(p, g)| vexp::silu_grad_times(p, g));
    let wt = transpose_weight(w, ch, k);

    // dx[b, s] = Σ_k w[:, k] ⊙ dpre[b, s + K − 1 − k] (terms past the end vanish).
    out.dx.par_chunks_mut(ch).enumerate().for_each(|(row, o)| {
        let (b, s) = (row / seqlen, row % seqlen);
        o.fill(0.0);
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
    for (i, o) in out.dw.iter_mut().enumerate() {
        *o = dwt[(i % k) * ch + i / k] as f32;
    }
    for (o, &v) in out.dbias.iter_mut().zip(&dbias) {
        *o = v as f32;
    }

    // dhistory[b, c, j]: history column j is read at time t ≤ j by tap K-index j − t.
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
                    out.dhistory[(b * ch + c) * (k - 1) + j] = acc;
                }
            }
        }
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
