//! The dt case table: every implementation against the f64 reference on fresh random inputs (a seed per case,
//! spread over both clamp bounds and softplus's identity branch), forward and backward, with the CPU kernels'
//! outputs NaN-poisoned first; and torch's conventions at the threshold and the bounds. Run on the CPU here, and
//! on a CUDA GPU by `tests/cuda.rs`, which includes this file.

use candle_core::{DType, Device, Var};
use coil_ops::dt::{self, composed, cpu};
use coil_testutil::{
    assert_all_ok, narrow, poisoned, rounded, scaled_err, to_tensor, widen, CaseResult, Lcg,
    Tolerance,
};

/// `rows` positions of `heads` heads, with the clamp `(lo, hi)` (`(0, ∞)`: none).
pub struct Case {
    pub rows: usize,
    pub heads: usize,
    pub lo: f32,
    pub hi: f32,
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    Case { rows: 7, heads: 6, lo: 0.0, hi: f32::INFINITY },
    Case { rows: 7, heads: 6, lo: 0.05, hi: 0.3 },  // both bounds active
    Case { rows: 1, heads: 1, lo: 0.0, hi: f32::INFINITY },
    Case { rows: 40, heads: 8, lo: 1e-3, hi: 5.0 },
    Case { rows: 3, heads: 24, lo: 0.0, hi: 0.1 },  // upper bound only
];

/// CPU against the f64 reference (`scaled_err`), forward and backward.
const CPU: f32 = 1e-6;
/// Composed and device forward (`scaled_err`), by the dtype of the output.
const DEVICE_FWD: Tolerance = Tolerance::new(2e-5, 1e-2);
/// Composed backward through candle autograd (`scaled_err`), by the dtype of the gradient.
const DEVICE_BWD: Tolerance = Tolerance::new(2e-5, 1e-2);

/// Runs every case on `dev` with `dt_raw` in `dtype` (rounded first, so the reference sees it too).
pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let mut res = vec![];
    for (i, case) in CASES.iter().enumerate() {
        let &Case {
            rows,
            heads: h,
            lo,
            hi,
        } = case;
        let limit = (lo, hi);
        let mut r = Lcg(300 + i as u64);
        let raw = rounded(r.vec(rows * h, -8.0, 24.0), dtype);
        let bias = r.vec(h, -1.0, 1.0);
        let ddt = r.vec(rows * h, -1.0, 1.0);
        let name = format!("dt B·T={rows} H{h} limit ({lo}, {hi}) {dtype:?}");
        let mut check = |what: &str, err: f32, tol: f32| {
            res.push(CaseResult::new(format!("{name}: {what}"), err, tol));
        };
        let lim64 = (lo as f64, hi as f64);
        let want = narrow(&dt::dt_softplus_reference(
            &widen(&raw),
            &widen(&bias),
            lim64,
        ));
        let (want_raw, want_bias) =
            dt::dt_softplus_reference_backward(&widen(&raw), &widen(&bias), lim64, &widen(&ddt));
        let (want_raw, want_bias) = (narrow(&want_raw), narrow(&want_bias));

        let mut got = poisoned(raw.len());
        cpu::dt_softplus_into(&raw, &bias, limit, &mut got);
        check("cpu forward", scaled_err(&got, &want), CPU);
        let (mut d_raw, mut d_bias) = (poisoned(raw.len()), poisoned(h));
        cpu::dt_softplus_backward_into(&raw, &bias, limit, &ddt, &mut d_raw, &mut d_bias);
        check("cpu d_raw", scaled_err(&d_raw, &want_raw), CPU);
        check("cpu d_bias", scaled_err(&d_bias, &want_bias), CPU);

        let raw_v = Var::from_tensor(&to_tensor(&raw, &[rows, h], dtype, dev)).expect("var");
        let bias_v = Var::from_tensor(&to_tensor(&bias, &[h], DType::F32, dev)).expect("var");
        let y = composed::dt_softplus(raw_v.as_tensor(), bias_v.as_tensor(), limit)
            .expect("composed dt");
        check(
            "composed forward",
            scaled_err(&y, &want),
            DEVICE_FWD.of(y.dtype()),
        );
        let grads = (y * to_tensor(&ddt, &[rows, h], DType::F32, dev))
            .and_then(|l| l.sum_all()?.backward())
            .expect("backward");
        for (what, v, want) in [
            ("composed d_raw", &raw_v, &want_raw),
            ("composed d_bias", &bias_v, &want_bias),
        ] {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            check(what, scaled_err(g, want), DEVICE_BWD.of(g.dtype()));
        }

        let y = dt::dt_softplus(raw_v.as_tensor(), bias_v.as_tensor(), limit).expect("dt entry");
        check(
            "op forward",
            scaled_err(&y, &want),
            DEVICE_FWD.of(y.dtype()),
        );
    }
    res
}

#[test]
fn case_table_on_cpu_f32() {
    assert_all_ok(&run(&Device::Cpu, DType::F32));
}

#[test]
fn case_table_on_cpu_bf16() {
    assert_all_ok(&run(&Device::Cpu, DType::BF16));
}

#[test]
fn softplus_follows_torch_including_threshold_and_clamp() {
    assert!((cpu::softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
    assert_eq!(cpu::softplus(25.0), 25.0);
    assert!((cpu::softplus(-30.0) - (-30f32).exp()).abs() < 1e-20);
    let dt = cpu::dt_softplus(&[-10.0, 0.0, 30.0, 1.0], &[0.0, 0.0], (1e-3, 5.0));
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
    let (d_raw, d_bias) = cpu::dt_softplus_backward(&raw, &bias, limit, &ddt);
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
        let f = |v: f32| cpu::dt_softplus(&[v], &[bias[i % 2]], limit)[0] as f64;
        let fd = (f(raw[i] + 1e-2) - f(raw[i] - 1e-2)) / 2e-2;
        assert!((fd - sig).abs() < 1e-3, "i={i}: fd {fd} vs {sig}");
    }
    let want_bias = [
        d_raw[0] + d_raw[2] + d_raw[4],
        d_raw[1] + d_raw[3] + d_raw[5],
    ];
    assert!((d_bias[0] - want_bias[0]).abs() < 1e-6 && (d_bias[1] - want_bias[1]).abs() < 1e-6);
}
