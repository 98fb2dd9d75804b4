//! The plain dt parametrisation in f64: `dt = clamp(softplus(dt_raw + dt_bias), lo, hi)` and its derivative.

/// torch's softplus (threshold 20: the identity above it), in f64.
pub fn softplus_reference(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `dt_raw` [rows, H], `bias` [H] → `clamp(softplus(dt_raw + bias), lo, hi)` [rows, H].
pub fn dt_softplus_reference(dt_raw: &[f64], bias: &[f64], (lo, hi): (f64, f64)) -> Vec<f64> {
    let h = bias.len();
    dt_raw
        .iter()
        .enumerate()
        .map(|(i, &v)| softplus_reference(v + bias[i % h]).clamp(lo, hi))
        .collect()
}

/// The gradients `(d_dt_raw, d_bias)` for the upstream gradient `ddt`: the local derivative is 0 where the
/// clamp holds softplus outside `[lo, hi]` (on the bounds the gradient passes, as torch's clamp does), 1 where
/// softplus is the identity, `σ(x)` elsewhere; `d_bias` sums over rows.
pub fn dt_softplus_reference_backward(
    dt_raw: &[f64],
    bias: &[f64],
    (lo, hi): (f64, f64),
    ddt: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let h = bias.len();
    let mut d_bias = vec![0f64; h];
    let d_raw = dt_raw
        .iter()
        .zip(ddt)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let x = v + bias[i % h];
            let sp = softplus_reference(x);
            let local = if sp < lo || sp > hi {
                0.0
            } else if x > 20.0 {
                1.0
            } else {
                1.0 / (1.0 + (-x).exp())
            };
            d_bias[i % h] += g * local;
            g * local
        })
        .collect();
    (d_raw, d_bias)
}
