//! The time-step parametrisation: `dt = clamp(softplus(dt_raw + dt_bias), lo, hi)` and `A = −exp(A_log)`.

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
}
