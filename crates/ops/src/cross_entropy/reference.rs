//! The plain per-row cross-entropy in f64, and its gradient.

/// `logsumexp(logits_i) − logits_i[t_i]` for `logits` [N, V].
pub fn row_cross_entropy_reference(logits: &[f64], vocab: usize, targets: &[u32]) -> Vec<f64> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &t)| lse(row) - row[t as usize])
        .collect()
}

/// `g_i · (softmax(logits_i) − onehot(t_i))` [N, V].
pub fn row_cross_entropy_reference_backward(
    logits: &[f64],
    vocab: usize,
    targets: &[u32],
    g: &[f64],
) -> Vec<f64> {
    let mut out = vec![0f64; logits.len()];
    for (i, (row, &t)) in logits.chunks(vocab).zip(targets).enumerate() {
        let l = lse(row);
        for (j, &x) in row.iter().enumerate() {
            let onehot = if j == t as usize { 1.0 } else { 0.0 };
            out[i * vocab + j] = g[i] * ((x - l).exp() - onehot);
        }
    }
    out
}

fn lse(row: &[f64]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    m + row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}
