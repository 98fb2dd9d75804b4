//! The plain causal conv1d + SiLU: the definition, one output at a time, in f64.
//!
//! `out[b, t, c] = silu(bias[c] + Σ_{k<K} w[c, k] · x[b, t − K + 1 + k, c])`, where positions before the start read
//! the optional `history` (the K−1 raw columns that preceded this call, oldest first) or zero. With `seq_idx`
//! (packed rows, [`crate::packing`]) a tap reads only columns of its own segment: earlier segments count as
//! zero, and the history belongs to segment 0 (the first example continues from it).

use crate::packing::segments_or_single;

/// `x` [B,T,C], `w` [C,K], `bias` [C], `history` [B,C,K−1], `seq_idx` [B,T] → [B,T,C], all in f64.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_silu_reference(
    x: &[f64],
    (batch, seqlen, ch): (usize, usize, usize),
    w: &[f64],
    k: usize,
    bias: Option<&[f64]>,
    history: Option<&[f64]>,
    seq_idx: Option<&[i32]>,
) -> Vec<f64> {
    assert_eq!(x.len(), batch * seqlen * ch, "conv1d reference: x length");
    assert_eq!(w.len(), ch * k, "conv1d reference: weight length");
    let seg = segments_or_single(seq_idx, batch, seqlen);
    let mut out = vec![0f64; x.len()];
    for b in 0..batch {
        for t in 0..seqlen {
            let seg_t = seg[b * seqlen + t];
            for c in 0..ch {
                let mut acc = bias.map_or(0.0, |bv| bv[c]);
                for kk in 0..k {
                    let s = t as isize - (k as isize - 1) + kk as isize;
                    let v = if s >= 0 {
                        let s = s as usize;
                        if seg[b * seqlen + s] == seg_t {
                            x[(b * seqlen + s) * ch + c]
                        } else {
                            0.0 // another example of a packed row
                        }
                    } else if seg_t == 0 {
                        history.map_or(0.0, |h| {
                            h[(b * ch + c) * (k - 1) + (k as isize - 1 + s) as usize]
                        })
                    } else {
                        0.0
                    };
                    acc += w[c * k + kk] * v;
                }
                out[(b * seqlen + t) * ch + c] = acc / (1.0 + (-acc).exp());
            }
        }
    }
    out
}
