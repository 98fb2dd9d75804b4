//! The time-step parametrisation: `dt = clamp(softplus(dt_raw + dt_bias), lo, hi)` and `A = −exp(A_log)`,
//! and the backward of the first ([`dt_softplus_backward`]; `dA_log = dA·A` needs no helper).

/// torch's softplus (threshold 20: the identity above it).
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `dt_raw` [rows, H] (any leading shape flattened), `bias` [H] → clamped softplus, same layout.
/// `limit = (lo, hi)`; pass `(0.0, f32::INFINITY)` for no clamp.
pub fn dt_softplus(dt_raw: &[f32], bias: &[f32], (lo, hi): (f32, f32)) -> Vec<f32> {
    let h = bias.len();
    assert!(
        h > 0 && dt_raw.len().is_multiple_of(h),
        "dt: raw length is not a multiple of the head count"
    );
    dt_raw
        .iter()
        .enumerate()
        .map(|(i, &v)| softplus(v + bias[i % h]).clamp(lo, hi))
        .collect()
}

/// Backward of [`dt_softplus`] for the upstream gradient `ddt` (layout of `dt_raw`): returns
/// `(d_dt_raw, d_bias)` with `d_bias` [H] summed over rows. The local derivative is 0 where the clamp is active
/// (softplus outside `[lo, hi]`, as torch's clamp passes the gradient on the bounds), 1 where softplus is the
/// identity (`x > 20`), and `σ(x)` otherwise.
pub fn dt_softplus_backward(
    dt_raw: &[f32],
    bias: &[f32],
    (lo, hi): (f32, f32),
    ddt: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let h = bias.len();
    assert!(
        h > 0 && dt_raw.len().is_multiple_of(h),
        "dt backward: raw length is not a multiple of the head count"
    );
    assert_eq!(ddt.len(), dt_raw.len(), "dt backward: ddt length");
    let mut d_bias = vec![0f64; h];
    let d_raw: Vec<f32> = dt_raw
        .iter()
        .zip(ddt)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let x = v + bias[i % h];
            let sp = softplus(x);
            let local = if sp < lo || sp > hi {
                0.0
            } else if x > 20.0 {
                1.0
            } else {
                1.0 / (1.0 + (-x).exp())
            };
            let d = g * local;
            d_bias[i % h] += d as f64;
            d
        })
        .collect();
    (d_raw, d_bias.iter().map(|&v| v as f32).collect())
}

/// `A = −exp(A_log)`.
pub fn a_from_log(a_log: &[f32]) -> Vec<f32> {
    a_log.iter().map(|v| -v.exp()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_follows_torch_including_threshold_and_clamp() {
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(-30.0) - (-30f32).exp()).abs() < 1e-20);
        let dt = dt_softplus(&[-10.0, 0.0, 30.0, 1.0], &[0.0, 0.0], (1e-3, 5.0));
        assert_eq!(dt[0], 1e-3); // clamped from below
        assert!((dt[1] - std::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(dt[2], 5.0); // clamped from above
        assert!((dt[3] - 1f32.exp().ln_1p()).abs() < 1e-7);
    }

    #[test]
    fn backward_is_sigmoid_one_or_zero_and_matches_finite_differences() {
        let bias = [0.5f32, -1.0];
        let raw = [-12.0f32, 0.3, 25.0, -0.2, 1.0, 40.0];
        let ddt = [1.0f32, 2.0, -1.0, 0.5, 3.0, 1.5];
        let limit = (1e-3, 30.0);
        let (d_raw, d_bias) = dt_softplus_backward(&raw, &bias, limit, &ddt);
        // raw[0] + 0.5 = −11.5: softplus ≈ 1e−5 < lo → clamped, no gradient.
        assert_eq!(d_raw[0], 0.0);
        // raw[2] + 0.5 = 25.5 > 20: identity branch.
        assert_eq!(d_raw[2], -1.0);
        // raw[5] − 1 = 39 > hi = 30: clamped from above.
        assert_eq!(d_raw[5], 0.0);
        for i in [1, 3, 4] {
            let x = (raw[i] + bias[i % 2]) as f64;
            let sig = 1.0 / (1.0 + (-x).exp());
            assert!(
                (d_raw[i] as f64 - ddt[i] as f64 * sig).abs() < 1e-6,
                "i={i}"
            );
            // finite differences of the f32 forward (away from the kinks)
            let f = |v: f32| dt_softplus(&[v], &[bias[i % 2]], limit)[0] as f64;
            let fd = (f(raw[i] + 1e-2) - f(raw[i] - 1e-2)) / 2e-2;
            assert!((fd - sig).abs() < 1e-3, "i={i}: fd {fd} vs {sig}");
        }
        let want_bias = [
            d_raw[0] + d_raw[2] + d_raw[4],
            d_raw[1] + d_raw[3] + d_raw[5],
        ];
        assert!((d_bias[0] - want_bias[0]).abs() < 1e-6 && (d_bias[1] - want_bias[1]).abs() < 1e-6);
    }
}
