//! Backward tests: the chunked backward against the reference over the backward case table, and the
//! reference against central finite differences of the f64 forward.

use super::backward::{backward64, loss64, Grads64};
use super::reference::Inputs64;
use super::tests::{backward_case_table, dims, Case};
use super::*;
use crate::testutil::Lcg;

/// max |got − want| / max |want| (with a floor so all-zero gradients compare absolutely).
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn upstream(dims: SsdDims, with_final: bool, seed: u64) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut r = Lcg(seed);
    let dy = r.vec(dims.x_len(), -1.0, 1.0);
    (dy, with_final.then(|| r.vec(dims.state_len(), -1.0, 1.0)))
}

fn named(g: &SsdGrads) -> [(&'static str, &[f32]); 7] {
    [
        ("dx", &g.dx),
        ("ddt", &g.ddt),
        ("dA", &g.da),
        ("dB", &g.db),
        ("dC", &g.dc),
        ("dD", &g.dd),
        ("dh0", &g.d_initial_state),
    ]
}

#[test]
fn chunked_backward_matches_reference_over_backward_case_table() {
    let mut worst = [0f32; 7];
    for (i, (d, q, init, fin)) in backward_case_table().into_iter().enumerate() {
        let case = Case::new(d, init, 300 + i as u64);
        let (dy, dfin) = upstream(d, fin, 900 + i as u64);
        let want = ssd_reference_backward(d, case.inputs(), &dy, dfin.as_deref());
        let got = ssd_chunked_backward(d, case.inputs(), q, &dy, dfin.as_deref());
        for (k, ((name, g), (_, w))) in named(&got).into_iter().zip(named(&want)).enumerate() {
            let e = rel_err(g, w);
            worst[k] = worst[k].max(e);
            assert!(
                e < 2e-5,
                "case {i} {d:?} Q={q} init={init} d_final={fin}: {name} rel err {e}"
            );
        }
        if !init {
            assert!(got.d_initial_state.iter().all(|&v| v == 0.0));
        }
    }
    eprintln!("chunked vs reference backward, max rel err [dx ddt dA dB dC dD dh0]: {worst:?}");
}

#[test]
fn chunked_backward_does_not_depend_on_chunk_size() {
    let d = dims(2, 23, 8, 4, 2, 4);
    let case = Case::new(d, true, 5);
    let (dy, dfin) = upstream(d, true, 6);
    let base = ssd_chunked_backward(d, case.inputs(), 23, &dy, dfin.as_deref());
    for q in [1, 4, 7, 64] {
        let got = ssd_chunked_backward(d, case.inputs(), q, &dy, dfin.as_deref());
        for ((name, g), (_, w)) in named(&got).into_iter().zip(named(&base)) {
            assert!(rel_err(g, w) < 2e-5, "Q={q}: {name}");
        }
    }
}

/// Central differences of `loss64` for every element of every input, against `backward64`.
fn check_reference_against_fd(d: SsdDims, init: bool, fin: bool, seed: u64) -> f64 {
    let case = Case::new(d, init, seed);
    let inp = Inputs64::from_f32(case.inputs());
    let (dy, dfin) = upstream(d, fin, seed + 1);
    let dy: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
    let dfin: Option<Vec<f64>> = dfin.map(|v| v.iter().map(|&x| x as f64).collect());
    let g: Grads64 = backward64(d, &inp, &dy, dfin.as_deref());
    let h = 1e-6;
    let mut worst = 0f64;
    type Field = fn(&mut Inputs64) -> &mut Vec<f64>;
    let fields: [(&str, Field, &[f64]); 7] = [
        ("x", |i| &mut i.x, &g.dx),
        ("dt", |i| &mut i.dt, &g.ddt),
        ("A", |i| &mut i.a, &g.da),
        ("B", |i| &mut i.b, &g.db),
        ("C", |i| &mut i.c, &g.dc),
        ("D", |i| &mut i.d, &g.dd),
        (
            "h0",
            |i| i.init.as_mut().expect("only with init"),
            &g.d_initial_state,
        ),
    ];
    for (name, field, grad) in fields {
        if name == "h0" && !init {
            assert!(grad.iter().all(|&v| v == 0.0));
            continue;
        }
        assert_eq!(field(&mut inp.clone()).len(), grad.len(), "d{name} length");
        for (k, &gk) in grad.iter().enumerate() {
            let (mut plus, mut minus) = (inp.clone(), inp.clone());
            field(&mut plus)[k] += h;
            field(&mut minus)[k] -= h;
            let fd = (loss64(d, &plus, &dy, dfin.as_deref())
                - loss64(d, &minus, &dy, dfin.as_deref()))
                / (2.0 * h);
            let err = (fd - gk).abs() / (1.0 + gk.abs());
            worst = worst.max(err);
            assert!(
                err < 1e-7,
                "{d:?} init={init} d_final={fin}: d{name}[{k}] fd {fd} vs backward {gk}"
            );
        }
    }
    worst
}

#[test]
fn reference_backward_matches_finite_differences() {
    let mut worst = 0f64;
    for (i, (d, init, fin)) in [
        (dims(2, 5, 4, 2, 2, 3), true, true),
        (dims(1, 1, 2, 3, 1, 2), true, false),
        (dims(1, 7, 3, 2, 3, 2), false, true),
        (dims(2, 4, 2, 2, 1, 2), false, false),
    ]
    .into_iter()
    .enumerate()
    {
        worst = worst.max(check_reference_against_fd(d, init, fin, 40 + 2 * i as u64));
    }
    eprintln!("reference backward vs central differences (f64), max err / (1+|g|): {worst:e}");
}

#[test]
fn chunked_backward_is_stable_under_strong_decay() {
    // dt up to 3 and A down to −4: the in-chunk cumsum reaches about −400 within a chunk of 64, so most
    // exp(acs) factors underflow to 0; nothing may overflow or turn into NaN.
    let d = dims(1, 150, 4, 8, 2, 8);
    let mut case = Case::new(d, true, 21);
    case.dt.iter_mut().for_each(|v| *v *= 10.0);
    let (dy, dfin) = upstream(d, true, 22);
    let want = ssd_reference_backward(d, case.inputs(), &dy, dfin.as_deref());
    let got = ssd_chunked_backward(d, case.inputs(), 64, &dy, dfin.as_deref());
    for ((name, g), (_, w)) in named(&got).into_iter().zip(named(&want)) {
        assert!(g.iter().all(|v| v.is_finite()), "{name} not finite");
        let e = rel_err(g, w);
        assert!(e < 2e-5, "{name} rel err {e}");
    }
}
