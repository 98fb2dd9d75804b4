//! The dt parametrisation on f32 slices: `dt = clamp(softplus(dt_raw + dt_bias), lo, hi)`, its backward, and
//! `A = −exp(A_log)` (whose backward `dA_log = dA·A` needs no helper).

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
pub fn dt_softplus(dt_raw: &[f32], bias: &[f32], limit: (f32, f32)) -> Vec<f32> {
    let mut out = vec![0f32; dt_raw.len()];
    dt_softplus_into(dt_raw, bias, limit, &mut out);
    out
}

/// [`dt_softplus`] into `out` (the layout of `dt_raw`), every element of which it writes.
pub fn dt_softplus_into(dt_raw: &[f32], bias: &[f32], (lo, hi): (f32, f32), out: &mut [f32]) {
    let h = bias.len();
    assert!(
        h > 0 && dt_raw.len().is_multiple_of(h),
        "dt: raw length is not a multiple of the head count"
    );
    assert_eq!(out.len(), dt_raw.len(), "dt: output length");
    for (i, (o, &v)) in out.iter_mut().zip(dt_raw).enumerate() {
        *o = softplus(v + bias[i % h]).clamp(lo, hi);
    }
}

/// Backward of [`dt_softplus`] for the upstream gradient `ddt` (layout of `dt_raw`): returns
/// `(d_dt_raw, d_bias)` with `d_bias` [H] summed over rows. The local derivative is 0 where the clamp is active
/// (softplus outside `[lo, hi]`, as torch's clamp passes the gradient on the bounds), 1 where softplus is the
/// identity (`x > 20`), and `σ(x)` otherwise.
pub fn dt_softplus_backward(
    dt_raw: &[f32],
    bias: &[f32],
    limit: (f32, f32),
    ddt: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (mut d_raw, mut d_bias) = (vec![0f32; dt_raw.len()], vec![0f32; bias.len()]);
    dt_softplus_backward_into(dt_raw, bias, limit, ddt, &mut d_raw, &mut d_bias);
    (d_raw, d_bias)
}

/// [`dt_softplus_backward`] into `d_raw` (the layout of `dt_raw`) and `d_bias` [H], every element of which it
/// writes.
pub fn dt_softplus_backward_into(
    dt_raw: &[f32],
    bias: &[f32],
    (lo, hi): (f32, f32),
    ddt: &[f32],
    d_raw: &mut [f32],
    d_bias_out: &mut [f32],
) {
    let h = bias.len();
    assert!(
        h > 0 && dt_raw.len().is_multiple_of(h),
        "dt backward: raw length is not a multiple of the head count"
    );
    assert_eq!(ddt.len(), dt_raw.len(), "dt backward: ddt length");
    assert_eq!(d_raw.len(), dt_raw.len(), "dt backward: d_raw length");
    assert_eq!(d_bias_out.len(), h, "dt backward: d_bias length");
    let mut d_bias = vec![0f64; h];
    for (i, ((o, &v), &g)) in d_raw.iter_mut().zip(dt_raw).zip(ddt).enumerate() {
        let x = v + bias[i % h];
        let sp = softplus(x);
        let local = if sp < lo || sp > hi {
            0.0
        } else if x > 20.0 {
            1.0
        } else {
            1.0 / (1.0 + (-x).exp())
        };
        *o = g * local;
        d_bias[i % h] += *o as f64;
    }
    for (o, &v) in d_bias_out.iter_mut().zip(&d_bias) {
        *o = v as f32;
    }
}

/// `A = −exp(A_log)`.
pub fn a_from_log(a_log: &[f32]) -> Vec<f32> {
    a_log.iter().map(|v| -v.exp()).collect()
}
