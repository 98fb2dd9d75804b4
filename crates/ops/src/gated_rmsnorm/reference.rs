//! The plain gated RMSNorm in f64: gate, then normalise each group of channels.

/// `y`, `z` [rows, I], `w` [I] → `w ⊙ u_g / sqrt(mean(u_g²) + eps)` with `u = y ⊙ silu(z)`, per row and group.
pub fn gated_rmsnorm_reference(
    y: &[f64],
    z: &[f64],
    w: &[f64],
    groups: usize,
    eps: f64,
) -> Vec<f64> {
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
