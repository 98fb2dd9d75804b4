//! The plain definition in f64, row by row.

/// `y = w ⊙ x / sqrt(mean(x²) + eps)` per row of `x` [rows, d].
pub fn rms_norm_reference(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    x.chunks_exact(d)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, wv)| wv * v * r)
        })
        .collect()
}

/// `(dx, dw)` for the upstream gradient `dy`: with `r` the row's `1/sqrt(mean(x²) + eps)` and `g = w ⊙ dy`,
/// `dx = r·g − r³·x·(g·x)/d` and `dw = Σ_rows dy ⊙ x·r`.
pub fn rms_norm_reference_backward(
    x: &[f64],
    w: &[f64],
    eps: f64,
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let d = w.len();
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; d];
    for (i, row) in x.chunks_exact(d).enumerate() {
        let dyr = &dy[i * d..(i + 1) * d];
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
        let gx: f64 = (0..d).map(|j| w[j] * dyr[j] * row[j]).sum();
        for j in 0..d {
            dx[i * d + j] = r * w[j] * dyr[j] - r * r * r * row[j] * gx / d as f64;
            dw[j] += dyr[j] * row[j] * r;
        }
    }
    (dx, dw)
}
