//! Causal depthwise conv1d over time followed by SiLU (the xBC path of the Mamba2 mixer).
//!
//! `out[b, t, c] = silu(bias[c] + Σ_{k<K} w[c, k] · x[b, t − K + 1 + k, c])`, where positions before the start read
//! the optional `history` (the K−1 raw columns that preceded this call, oldest first) or zero.

use rayon::prelude::*;

/// `x` [B,T,C], `w` [C,K], `bias` [C], `history` [B,C,K−1] → [B,T,C].
pub fn causal_conv1d_silu(
    x: &[f32],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    history: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * seqlen * ch, "conv1d: x length");
    assert_eq!(w.len(), ch * k, "conv1d: weight length");
    if let Some(bv) = bias {
        assert_eq!(bv.len(), ch, "conv1d: bias length");
    }
    if let Some(hv) = history {
        assert_eq!(hv.len(), batch * ch * (k - 1), "conv1d: history length");
    }
    // Weight transposed to [K, C] so the inner loop runs over contiguous channels.
    let wt: Vec<f32> = (0..k * ch).map(|i| w[(i % ch) * k + i / ch]).collect();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(ch).enumerate().for_each(|(row, o)| {
        let (b, t) = (row / seqlen, row % seqlen);
        match bias {
            Some(bv) => o.copy_from_slice(bv),
            None => o.fill(0.0),
        }
        for kk in 0..k {
            let src = t as isize - (k - 1) as isize + kk as isize;
            let wk = &wt[kk * ch..(kk + 1) * ch];
            if src >= 0 {
                let xs = &x[(b * seqlen + src as usize) * ch..][..ch];
                for ((o, &wv), &xv) in o.iter_mut().zip(wk).zip(xs) {
                    *o += wv * xv;
                }
            } else if let Some(hv) = history {
                let j = (k as isize - 1 + src) as usize; // index into the K−1 history columns
                for (c, (o, &wv)) in o.iter_mut().zip(wk).enumerate() {
                    *o += wv * hv[(b * ch + c) * (k - 1) + j];
                }
            }
        }
        o.iter_mut().for_each(|v| *v = silu(*v));
    });
    out
}

/// `x·σ(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, Lcg};

    /// Direct transcription of the definition, one output at a time.
    fn naive(
        x: &[f32],
        (bsz, t_len, ch): (usize, usize, usize),
        w: &[f32],
        k: usize,
        bias: &[f32],
        hist: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for b in 0..bsz {
            for t in 0..t_len {
                for c in 0..ch {
                    let mut acc = bias[c] as f64;
                    for kk in 0..k {
                        let s = t as isize - (k as isize - 1) + kk as isize;
                        let v = if s >= 0 {
                            x[(b * t_len + s as usize) * ch + c]
                        } else {
                            hist.map_or(0.0, |h| {
                                h[(b * ch + c) * (k - 1) + (k as isize - 1 + s) as usize]
                            })
                        };
                        acc += w[c * k + kk] as f64 * v as f64;
                    }
                    out[(b * t_len + t) * ch + c] = silu(acc as f32);
                }
            }
        }
        out
    }

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
                let got = causal_conv1d_silu(&x, (bsz, t_len, ch), &w, k, Some(&bias), h);
                let want = naive(&x, (bsz, t_len, ch), &w, k, &bias, h);
                assert!(max_abs_diff(&got, &want) < 1e-6, "case {i}");
            }
        }
    }
}
