use super::*;
use crate::testutil::{max_abs_diff, Lcg};

/// Random but well-conditioned inputs: dt in (0.001, 0.3), A in (-4, -0.5).
pub(crate) struct Case {
    pub x: Vec<f32>,
    pub dt: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub d: Vec<f32>,
    pub init: Option<Vec<f32>>,
    pub seq_idx: Option<Vec<i32>>,
}

impl Case {
    pub fn new(dims: SsdDims, with_init: bool, seed: u64) -> Self {
        let mut r = Lcg(seed);
        Case {
            x: r.vec(dims.x_len(), -1.0, 1.0),
            dt: r.vec(dims.dt_len(), 0.001, 0.3),
            a: r.vec(dims.heads, -4.0, -0.5),
            b: r.vec(dims.bc_len(), -1.0, 1.0),
            c: r.vec(dims.bc_len(), -1.0, 1.0),
            d: r.vec(dims.heads, -1.0, 1.0),
            init: with_init.then(|| r.vec(dims.state_len(), -1.0, 1.0)),
            seq_idx: None,
        }
    }
    pub fn inputs(&self) -> SsdInputs<'_> {
        SsdInputs {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: &self.d,
            initial_state: self.init.as_deref(),
            seq_idx: self.seq_idx.as_deref(),
        }
    }
}

pub(crate) fn dims(
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

/// The shared case table: (dims, chunk, with initial state).
pub(crate) fn case_table() -> Vec<(SsdDims, usize, bool)> {
    vec![
        (dims(1, 1, 2, 4, 1, 3), 4, false),     // T = 1
        (dims(2, 5, 4, 3, 2, 5), 8, true),      // T < Q, G > 1
        (dims(2, 16, 4, 4, 1, 8), 16, false),   // T = Q
        (dims(1, 37, 8, 16, 2, 16), 16, true),  // T not a multiple of Q (fixture shape)
        (dims(2, 64, 6, 8, 3, 4), 16, true),    // T multiple of Q, G = 3
        (dims(1, 100, 4, 8, 4, 8), 7, false),   // odd chunk, G = H
        (dims(1, 300, 8, 16, 1, 32), 64, true), // several chunks, G = 1
    ]
}

/// The backward case table: (dims, chunk, with initial state, with a gradient into the final state). Every
/// forward case both with and without `d_final_state`, plus head counts that leave the last backward task of a
/// group part-full (heads per group not a multiple of `HEADS_PER_TASK`) and a chunk of 1.
pub(crate) fn backward_case_table() -> Vec<(SsdDims, usize, bool, bool)> {
    let mut v: Vec<_> = case_table()
        .into_iter()
        .flat_map(|(d, q, init)| [(d, q, init, true), (d, q, init, false)])
        .collect();
    v.push((dims(1, 20, 12, 4, 2, 4), 8, true, true)); // 6 heads per group: blocks of 4 + 2
    v.push((dims(2, 9, 5, 3, 1, 2), 4, false, true)); // 5 heads, G = 1
    v.push((dims(1, 6, 2, 2, 1, 3), 1, true, true)); // Q = 1
    v
}

#[test]
fn chunked_matches_sequential_reference_over_case_table() {
    for (i, (d, q, init)) in case_table().into_iter().enumerate() {
        let case = Case::new(d, init, 100 + i as u64);
        let want = ssd_reference(d, case.inputs());
        let got = ssd_chunked(d, case.inputs(), q);
        let ey = max_abs_diff(&got.y, &want.y);
        let es = max_abs_diff(&got.final_state, &want.final_state);
        assert!(
            ey < 2e-5 && es < 2e-5,
            "case {i} {d:?} Q={q}: y err {ey}, state err {es}"
        );
    }
}

#[test]
fn chunk_size_does_not_change_the_result() {
    let d = dims(2, 45, 4, 8, 2, 8);
    let case = Case::new(d, true, 7);
    let base = ssd_chunked(d, case.inputs(), 45);
    for q in [1, 2, 5, 16, 64] {
        let got = ssd_chunked(d, case.inputs(), q);
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
    let case = Case::new(full, true, 9);
    let whole = ssd_chunked(full, case.inputs(), 16);
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
    let case = Case::new(d, true, 11);
    let want = ssd_reference(d, case.inputs());
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
