//! SSD properties beyond the case table: the chunk size does not change the result (forward and backward), two
//! calls chained by the state equal one, step-by-step decode equals the reference, the reference backward
//! matches central differences of the f64 forward, and strong decay stays finite.

use super::reference::{backward64, loss64, Grads64, Inputs64};
use super::tests::Inputs;
use super::*;
use coil_testutil::{max_abs_diff, rel_err, Lcg};

fn dims(
    batch: usize,
    seqlen: usize,
    heads: usize,
    head_dim: usize,
    groups: usize,
    state: usize,
) -> SsdDims {
    SsdDims {
        batch,
        seqlen,
        heads,
        head_dim,
        groups,
        state,
    }
}

#[test]
fn chunk_size_does_not_change_the_result() {
    let d = dims(2, 45, 4, 8, 2, 8);
    let case = Inputs::new(d, true, 7);
    let base = ssd_chunked(d, case.view(), 45);
    for q in [1, 2, 5, 16, 64] {
        let got = ssd_chunked(d, case.view(), q);
        assert!(max_abs_diff(&got.y, &base.y) < 2e-5, "Q={q}");
        assert!(
            max_abs_diff(&got.final_state, &base.final_state) < 2e-5,
            "Q={q}"
        );
    }
}

#[test]
fn two_calls_chained_by_state_equal_one_call() {
    let full = dims(1, 40, 4, 8, 2, 8);
    let case = Inputs::new(full, true, 9);
    let whole = ssd_chunked(full, case.view(), 16);
    let split = 23;
    let cut =
        |v: &[f32], per_t: usize, from: usize, to: usize| v[from * per_t..to * per_t].to_vec();
    let part = |from: usize, to: usize, init: Option<&[f32]>| {
        let d = dims(1, to - from, 4, 8, 2, 8);
        let (x, dt) = (cut(&case.x, 32, from, to), cut(&case.dt, 4, from, to));
        let (b, c) = (cut(&case.b, 16, from, to), cut(&case.c, 16, from, to));
        let inp = SsdInputs {
            x: &x,
            dt: &dt,
            a: &case.a,
            b: &b,
            c: &c,
            d: &case.d,
            initial_state: init,
            seq_idx: None,
        };
        ssd_chunked(d, inp, 16)
    };
    let first = part(0, split, case.init.as_deref());
    let second = part(split, 40, Some(&first.final_state));
    let joined: Vec<f32> = first.y.iter().chain(&second.y).copied().collect();
    assert!(max_abs_diff(&joined, &whole.y) < 2e-5);
    assert!(max_abs_diff(&second.final_state, &whole.final_state) < 2e-5);
}

#[test]
fn step_by_step_decode_equals_reference() {
    let d = dims(2, 12, 4, 4, 2, 6);
    let case = Inputs::new(d, true, 11);
    let want = ssd_reference(d, case.view());
    let mut state = case.init.clone().unwrap();
    let d1 = SsdDims { seqlen: 1, ..d };
    for t in 0..d.seqlen {
        let pick = |v: &[f32], per_t: usize| -> Vec<f32> {
            (0..d.batch)
                .flat_map(|b| v[(b * d.seqlen + t) * per_t..][..per_t].to_vec())
                .collect()
        };
        let (x, dt, b, c) = (
            pick(&case.x, 16),
            pick(&case.dt, 4),
            pick(&case.b, 12),
            pick(&case.c, 12),
        );
        let inp = SsdInputs {
            x: &x,
            dt: &dt,
            a: &case.a,
            b: &b,
            c: &c,
            d: &case.d,
            initial_state: None,
            seq_idx: None,
        };
        let y = ssd_step(d1, inp, &mut state);
        assert!(max_abs_diff(&y, &pick(&want.y, 16)) < 1e-5, "t={t}");
    }
    assert!(max_abs_diff(&state, &want.final_state) < 1e-5);
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
fn chunked_backward_does_not_depend_on_chunk_size() {
    let d = dims(2, 23, 8, 4, 2, 4);
    let case = Inputs::new(d, true, 5);
    let (dy, dfin) = upstream(d, true, 6);
    let base = ssd_chunked_backward(d, case.view(), 23, &dy, dfin.as_deref());
    for q in [1, 4, 7, 64] {
        let got = ssd_chunked_backward(d, case.view(), q, &dy, dfin.as_deref());
        for ((name, g), (_, w)) in named(&got).into_iter().zip(named(&base)) {
            assert!(rel_err(g, w) < 2e-5, "Q={q}: {name}");
        }
    }
}

/// Central differences of `loss64` for every element of every input, against `backward64`.
fn check_reference_against_fd(d: SsdDims, init: bool, fin: bool, seed: u64) -> f64 {
    let case = Inputs::new(d, init, seed);
    let inp = Inputs64::from_f32(case.view());
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
    let mut case = Inputs::new(d, true, 21);
    case.dt.iter_mut().for_each(|v| *v *= 10.0);
    let (dy, dfin) = upstream(d, true, 22);
    let want = ssd_reference_backward(d, case.view(), &dy, dfin.as_deref());
    let got = ssd_chunked_backward(d, case.view(), 64, &dy, dfin.as_deref());
    for ((name, g), (_, w)) in named(&got).into_iter().zip(named(&want)) {
        assert!(g.iter().all(|v| v.is_finite()), "{name} not finite");
        let e = rel_err(g, w);
        assert!(e < 2e-5, "{name} rel err {e}");
    }
}
