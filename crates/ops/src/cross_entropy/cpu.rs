//! The fast CPU per-row cross-entropy on f32 slices: one read of the logits forward (a max and an exp-sum per
//! row), one backward, rayon over rows, nothing of the logits' size allocated but the gradient itself.

use crate::vexp;
use rayon::prelude::*;

/// `max + log Σ exp(x − max)` of one row.
pub fn row_lse(row: &[f32]) -> f32 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if !m.is_finite() {
        return m;
    }
    m + vexp::sum_exp_shifted(row, m).ln()
}

fn check(logits: &[f32], vocab: usize, targets: &[u32]) {
    assert!(vocab > 0, "cross entropy: empty vocabulary");
    assert_eq!(
        logits.len(),
        targets.len() * vocab,
        "cross entropy: logits length"
    );
}

/// `out[i] = logsumexp(logits_i) − logits_i[t_i]` for `logits` [N, V]; writes every element of `out` [N].
pub fn row_cross_entropy_into(logits: &[f32], vocab: usize, targets: &[u32], out: &mut [f32]) {
    check(logits, vocab, targets);
    assert_eq!(out.len(), targets.len(), "cross entropy: output length");
    out.par_iter_mut()
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .for_each(|(o, (row, &t))| *o = row_lse(row) - row[t as usize]);
}

/// `dlogits_i = g_i · (softmax(logits_i) − onehot(t_i))` into `out` [N, V], every element of which it writes.
pub fn row_cross_entropy_backward_into(
    logits: &[f32],
    vocab: usize,
    targets: &[u32],
    g: &[f32],
    out: &mut [f32],
) {
    check(logits, vocab, targets);
    assert_eq!(
        g.len(),
        targets.len(),
        "cross entropy backward: gradient length"
    );
    assert_eq!(
        out.len(),
        logits.len(),
        "cross entropy backward: output length"
    );
    out.par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter().zip(g.par_iter()))
        .for_each(|((o, row), (&t, &gi))| {
            vexp::exp_shifted(o, row, row_lse(row), gi);
            o[t as usize] -= gi;
        });
}
