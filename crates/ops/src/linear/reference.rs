//! The plain definition: `y[n, o] = Σ_i x[n, i]·w[o, i]` and its gradients, in f64.

/// `y [N, out]` for `x` [N, in] (row-major) and `w` [out, in].
pub fn linear_reference(x: &[f64], w: &[f64], d_in: usize) -> Vec<f64> {
    let (rows, d_out) = (x.len() / d_in, w.len() / d_in);
    let mut y = vec![0.0; rows * d_out];
    for n in 0..rows {
        for o in 0..d_out {
            y[n * d_out + o] = (0..d_in).map(|i| x[n * d_in + i] * w[o * d_in + i]).sum();
        }
    }
    y
}

/// `(dx [N, in], dw [out, in])` for the upstream gradient `dy` [N, out].
pub fn linear_reference_backward(
    x: &[f64],
    w: &[f64],
    d_in: usize,
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (rows, d_out) = (x.len() / d_in, w.len() / d_in);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for n in 0..rows {
        for o in 0..d_out {
            let g = dy[n * d_out + o];
            for i in 0..d_in {
                dx[n * d_in + i] += g * w[o * d_in + i];
                dw[o * d_in + i] += g * x[n * d_in + i];
            }
        }
    }
    (dx, dw)
}
