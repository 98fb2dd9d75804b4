//! Packing tests: for every op that mixes time steps, a packed call (`seq_idx`) equals running each packed
//! example alone — outputs, final states and every gradient — over a case table with segments shorter than the
//! conv width, boundaries at and inside chunk edges, one-step segments, and a carried-in state or history
//! (which only the first example sees).

use super::*;
use crate::conv1d::cpu::{causal_conv1d_silu, causal_conv1d_silu_backward};
use crate::mixer_core::tests::{tiny_dims, MixerCase};
use crate::mixer_core::{mixer_core_backward, mixer_core_forward, MixerCoreDims, MixerParams};
use crate::ssd::{
    ssd_chunked, ssd_chunked_backward, ssd_reference, ssd_reference_backward, SsdDims, SsdGrads,
    SsdInputs,
};
use coil_testutil::{max_abs_diff, rel_err, Lcg};

#[test]
fn segment_ids_count_changes_per_row() {
    let seq = [0, 0, 1, 1, 1, 2, 7, 7, 3, 3, 3, 3];
    assert_eq!(
        segment_ids(&seq, 2, 6),
        vec![0, 0, 1, 1, 1, 2, 0, 0, 1, 1, 1, 1]
    );
    // A value that comes back after a change is a new segment.
    assert_eq!(segment_ids(&[4, 5, 4], 1, 3), vec![0, 1, 2]);
}

/// Packed rows given by their examples' lengths (every row sums to the same T): `seq_idx` [B,T] with arbitrary
/// increasing labels, and T.
fn layout(rows: &[&[usize]]) -> (Vec<i32>, usize) {
    let t = rows[0].iter().sum::<usize>();
    let mut seq = vec![];
    for row in rows {
        assert_eq!(row.iter().sum::<usize>(), t, "rows must have one length");
        for (k, &n) in row.iter().enumerate() {
            seq.extend(std::iter::repeat_n(3 * k as i32 + 1, n));
        }
    }
    (seq, t)
}

/// The examples of a layout: (row, index in the row, first position, end position).
fn examples(rows: &[&[usize]]) -> Vec<(usize, usize, usize, usize)> {
    let mut out = vec![];
    for (b, row) in rows.iter().enumerate() {
        let mut t0 = 0;
        for (k, &n) in row.iter().enumerate() {
            out.push((b, k, t0, t0 + n));
            t0 += n;
        }
    }
    out
}

/// Positions `t0..t1` of row `b` of a [B,T,W] array, `bt` = (B, T).
fn cut(v: &[f32], (batch, t_len): (usize, usize), b: usize, (t0, t1): (usize, usize)) -> Vec<f32> {
    let w = v.len() / (batch * t_len);
    v[(b * t_len + t0) * w..(b * t_len + t1) * w].to_vec()
}

/// Writes `part` ([1, t1−t0, W]) into positions `t0..t1` of row `b` of `dst` ([B,T,W]).
fn paste(dst: &mut [f32], (batch, t_len): (usize, usize), b: usize, t0: usize, part: &[f32]) {
    let w = dst.len() / (batch * t_len);
    dst[(b * t_len + t0) * w..][..part.len()].copy_from_slice(part);
}

fn add(dst: &mut [f32], part: &[f32]) {
    dst.iter_mut().zip(part).for_each(|(a, b)| *a += b);
}

// ---------------------------------------------------------------------------------------------------- SSD

/// One packed SSD call: random inputs, a row layout, the chunk size and whether a state is carried in.
struct SsdCase {
    dims: SsdDims,
    rows: Vec<Vec<usize>>,
    chunk: usize,
    x: Vec<f32>,
    dt: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    init: Option<Vec<f32>>,
    seq: Vec<i32>,
    dy: Vec<f32>,
    d_final: Vec<f32>,
}

impl SsdCase {
    /// (H, P, G, N) and the row layout; B and T come from the layout.
    fn new(
        (heads, head_dim, groups, state): (usize, usize, usize, usize),
        rows: &[&[usize]],
        chunk: usize,
        with_init: bool,
        seed: u64,
    ) -> Self {
        let (seq, seqlen) = layout(rows);
        let dims = SsdDims {
            batch: rows.len(),
            seqlen,
            heads,
            head_dim,
            groups,
            state,
        };
        let mut r = Lcg(seed);
        SsdCase {
            rows: rows.iter().map(|r| r.to_vec()).collect(),
            chunk,
            x: r.vec(dims.x_len(), -1.0, 1.0),
            dt: r.vec(dims.dt_len(), 0.001, 0.5),
            a: r.vec(heads, -2.0, -0.3),
            b: r.vec(dims.bc_len(), -1.0, 1.0),
            c: r.vec(dims.bc_len(), -1.0, 1.0),
            d: r.vec(heads, -1.0, 1.0),
            init: with_init.then(|| r.vec(dims.state_len(), -1.0, 1.0)),
            seq,
            dy: r.vec(dims.x_len(), -1.0, 1.0),
            d_final: r.vec(dims.state_len(), -1.0, 1.0),
            dims,
        }
    }

    fn packed(&self) -> SsdInputs<'_> {
        SsdInputs {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: &self.d,
            initial_state: self.init.as_deref(),
            seq_idx: Some(&self.seq),
        }
    }

    /// Each example alone through the sequential reference: (y, final state, gradients) assembled into the
    /// packed layouts. The carried-in state goes to each row's first example; the final state and its gradient
    /// belong to its last.
    fn separately(&self) -> (Vec<f32>, Vec<f32>, SsdGrads) {
        let d = self.dims;
        let t_len = (d.batch, d.seqlen);
        let pn = d.head_dim * d.state;
        let hpn = d.heads * pn;
        let mut y = vec![0f32; d.x_len()];
        let mut fin = vec![0f32; d.state_len()];
        let mut g = SsdGrads {
            dx: vec![0.0; d.x_len()],
            ddt: vec![0.0; d.dt_len()],
            da: vec![0.0; d.heads],
            db: vec![0.0; d.bc_len()],
            dc: vec![0.0; d.bc_len()],
            dd: vec![0.0; d.heads],
            d_initial_state: vec![0.0; d.state_len()],
        };
        let rows = self.rows.iter().map(Vec::as_slice).collect::<Vec<_>>();
        for (b, k, t0, t1) in examples(&rows) {
            let last = k + 1 == self.rows[b].len();
            let span = (t0, t1);
            let (x, dt) = (cut(&self.x, t_len, b, span), cut(&self.dt, t_len, b, span));
            let (bm, cm) = (cut(&self.b, t_len, b, span), cut(&self.c, t_len, b, span));
            let init = self
                .init
                .as_ref()
                .filter(|_| k == 0)
                .map(|s| s[b * hpn..(b + 1) * hpn].to_vec());
            let d1 = SsdDims {
                batch: 1,
                seqlen: t1 - t0,
                ..d
            };
            let inp = SsdInputs {
                x: &x,
                dt: &dt,
                a: &self.a,
                b: &bm,
                c: &cm,
                d: &self.d,
                initial_state: init.as_deref(),
                seq_idx: None,
            };
            let out = ssd_reference(d1, inp);
            paste(&mut y, t_len, b, t0, &out.y);
            let dfin = &self.d_final[b * hpn..(b + 1) * hpn];
            if last {
                fin[b * hpn..(b + 1) * hpn].copy_from_slice(&out.final_state);
            }
            let dy = cut(&self.dy, t_len, b, span);
            let gb = ssd_reference_backward(d1, inp, &dy, last.then_some(dfin));
            paste(&mut g.dx, t_len, b, t0, &gb.dx);
            paste(&mut g.ddt, t_len, b, t0, &gb.ddt);
            paste(&mut g.db, t_len, b, t0, &gb.db);
            paste(&mut g.dc, t_len, b, t0, &gb.dc);
            add(&mut g.da, &gb.da);
            add(&mut g.dd, &gb.dd);
            if init.is_some() {
                g.d_initial_state[b * hpn..(b + 1) * hpn].copy_from_slice(&gb.d_initial_state);
            }
        }
        (y, fin, g)
    }
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

/// (H, P, G, N), row layout, chunk, carried-in state.
type SsdRow = (
    (usize, usize, usize, usize),
    &'static [&'static [usize]],
    usize,
    bool,
);

fn ssd_case_table() -> Vec<SsdRow> {
    vec![
        ((4, 4, 2, 4), &[&[3, 1, 5, 7]], 4, true), // boundaries inside a chunk and at its edge (t = 4)
        ((2, 3, 1, 2), &[&[1, 1, 1, 1, 1, 1]], 4, true), // one-step examples
        ((4, 2, 2, 3), &[&[8, 8, 8], &[5, 11, 8]], 8, false), // at chunk edges; rows laid out differently
        ((4, 4, 1, 4), &[&[20, 3, 17]], 8, true),             // examples spanning several chunks
        ((2, 2, 2, 2), &[&[2, 9], &[11]], 1, true),           // Q = 1; a row of one example
        ((6, 4, 3, 4), &[&[5, 4, 7, 1, 3]], 7, true),         // odd chunk, G = 3
        ((8, 16, 2, 16), &[&[37]], 16, true), // seq_idx without a boundary = no packing
        (
            (4, 8, 2, 8),
            &[&[1, 63, 1, 15], &[16, 16, 16, 32]],
            16,
            true,
        ), // longer rows
    ]
}

#[test]
fn packed_ssd_equals_each_example_alone_forward_and_backward() {
    let mut worst = [0f32; 9];
    for (i, (hpgn, rows, q, init)) in ssd_case_table().into_iter().enumerate() {
        let case = SsdCase::new(hpgn, rows, q, init, 500 + i as u64);
        let (want_y, want_fin, want_g) = case.separately();
        let d = case.dims;
        for (name, out) in [
            ("reference", ssd_reference(d, case.packed())),
            ("chunked", ssd_chunked(d, case.packed(), case.chunk)),
        ] {
            let (ey, es) = (
                max_abs_diff(&out.y, &want_y),
                max_abs_diff(&out.final_state, &want_fin),
            );
            worst[0] = worst[0].max(ey);
            worst[1] = worst[1].max(es);
            assert!(
                ey < 2e-5 && es < 2e-5,
                "case {i} {rows:?} Q={q} {name}: y err {ey}, final state err {es}"
            );
        }
        let dfin = Some(case.d_final.as_slice());
        for (name, got) in [
            (
                "reference",
                ssd_reference_backward(d, case.packed(), &case.dy, dfin),
            ),
            (
                "chunked",
                ssd_chunked_backward(d, case.packed(), case.chunk, &case.dy, dfin),
            ),
        ] {
            for (k, ((g_name, g), (_, w))) in
                named(&got).into_iter().zip(named(&want_g)).enumerate()
            {
                let e = rel_err(g, w);
                worst[2 + k] = worst[2 + k].max(e);
                assert!(
                    e < 2e-5,
                    "case {i} {rows:?} Q={q} init={init} {name}: {g_name} rel err {e}"
                );
            }
        }
    }
    eprintln!(
        "packed SSD vs examples alone, max err [y fin | rel dx ddt dA dB dC dD dh0]: {worst:?}"
    );
}

#[test]
fn chunked_packed_ssd_does_not_depend_on_chunk_size() {
    let case = SsdCase::new((4, 4, 2, 4), &[&[3, 9, 1, 10]], 1, true, 77);
    let d = case.dims;
    let dfin = Some(case.d_final.as_slice());
    let base = ssd_chunked(d, case.packed(), 23);
    let base_g = ssd_chunked_backward(d, case.packed(), 23, &case.dy, dfin);
    for q in [1, 2, 3, 4, 9, 64] {
        let got = ssd_chunked(d, case.packed(), q);
        assert!(max_abs_diff(&got.y, &base.y) < 2e-5, "Q={q}");
        let g = ssd_chunked_backward(d, case.packed(), q, &case.dy, dfin);
        for ((name, a), (_, b)) in named(&g).into_iter().zip(named(&base_g)) {
            assert!(rel_err(a, b) < 2e-5, "Q={q}: {name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------- conv

#[test]
fn packed_conv_equals_each_example_alone_forward_and_backward() {
    let ch = 3;
    let cases: [(usize, &[&[usize]], bool); 5] = [
        (4, &[&[1, 2, 5, 3]], true), // examples shorter than the window
        (4, &[&[3, 3], &[6]], true),
        (3, &[&[1, 1, 1, 1]], true),
        (2, &[&[4, 1, 2]], false),
        (1, &[&[2, 3]], true), // K = 1: no history columns
    ];
    let mut worst = 0f32;
    for (i, (k, rows, with_hist)) in cases.into_iter().enumerate() {
        let (seq, t_len) = layout(rows);
        let batch = rows.len();
        let mut r = Lcg(600 + i as u64);
        let x = r.vec(batch * t_len * ch, -1.5, 1.5);
        let w = r.vec(ch * k, -1.0, 1.0);
        let bias = r.vec(ch, -0.5, 0.5);
        let hist_all = r.vec(batch * ch * (k - 1), -1.0, 1.0);
        let dout = r.vec(x.len(), -1.0, 1.0);
        let hist = with_hist.then_some(hist_all.as_slice());
        let dims = (batch, t_len, ch);
        let bt = (batch, t_len);
        let got = causal_conv1d_silu(&x, dims, &w, k, Some(&bias), hist, Some(&seq));
        let got_g =
            causal_conv1d_silu_backward(&x, dims, &w, k, Some(&bias), hist, Some(&seq), &dout);

        let mut want = vec![0f32; x.len()];
        let mut want_dx = vec![0f32; x.len()];
        let (mut want_dw, mut want_db) = (vec![0f32; w.len()], vec![0f32; ch]);
        let mut want_dh = vec![0f32; if with_hist { hist_all.len() } else { 0 }];
        let hl = ch * (k - 1);
        for (b, e, t0, t1) in examples(rows) {
            let xs = cut(&x, bt, b, (t0, t1));
            let h = hist
                .filter(|_| e == 0)
                .map(|h| h[b * hl..(b + 1) * hl].to_vec());
            let d1 = (1, t1 - t0, ch);
            paste(
                &mut want,
                bt,
                b,
                t0,
                &causal_conv1d_silu(&xs, d1, &w, k, Some(&bias), h.as_deref(), None),
            );
            let ds = cut(&dout, bt, b, (t0, t1));
            let g =
                causal_conv1d_silu_backward(&xs, d1, &w, k, Some(&bias), h.as_deref(), None, &ds);
            paste(&mut want_dx, bt, b, t0, &g.dx);
            add(&mut want_dw, &g.dw);
            add(&mut want_db, &g.dbias);
            if h.is_some() {
                want_dh[b * hl..(b + 1) * hl].copy_from_slice(&g.dhistory);
            }
        }
        for (name, g, wv) in [
            ("out", &got, &want),
            ("dx", &got_g.dx, &want_dx),
            ("dw", &got_g.dw, &want_dw),
            ("dbias", &got_g.dbias, &want_db),
            ("dhistory", &got_g.dhistory, &want_dh),
        ] {
            let e = max_abs_diff(g, wv);
            worst = worst.max(e);
            assert!(e < 1e-5, "case {i} K={k} {rows:?}: {name} err {e}");
        }
    }
    eprintln!("packed conv vs examples alone: max abs err {worst:e}");
}

// ---------------------------------------------------------------------------------------------- mixer core

fn mixer_case_table() -> Vec<(MixerCoreDims, &'static [&'static [usize]])> {
    let free = tiny_dims((0.0, f32::INFINITY)); // K = 3, Q = 2
    vec![
        (free, &[&[1, 4, 2], &[3, 3, 1]]),
        (tiny_dims((0.05, 0.3)), &[&[2, 1, 1, 3]]),
        (
            MixerCoreDims {
                groups: 1,
                chunk: 4,
                conv_kernel: 4,
                ..free
            },
            &[&[5, 1, 6], &[4, 4, 4]],
        ),
    ]
}

#[test]
fn packed_mixer_core_equals_each_example_alone_forward_and_backward() {
    let mut worst = [0f32; 4];
    for (i, (dims, rows)) in mixer_case_table().into_iter().enumerate() {
        let (seq, t_len) = layout(rows);
        let case = MixerCase::new(dims, (rows.len(), t_len), 700 + i as u64);
        let p = MixerParams::unpack(&dims, &case.params);
        let got = mixer_core_forward(dims, case.bt, &case.zx, &case.conv_w, p, Some(&seq));
        let got_g = mixer_core_backward(
            dims,
            case.bt,
            &case.zx,
            &case.conv_w,
            p,
            Some(&seq),
            &case.dout,
        );
        let mut want = vec![0f32; got.len()];
        let mut want_dzx = vec![0f32; case.zx.len()];
        let mut want_dw = vec![0f32; case.conv_w.len()];
        let mut want_dp = vec![0f32; case.params.len()];
        for (b, _, t0, t1) in examples(rows) {
            let zx = cut(&case.zx, case.bt, b, (t0, t1));
            let bt = (1, t1 - t0);
            let out = mixer_core_forward(dims, bt, &zx, &case.conv_w, p, None);
            paste(&mut want, case.bt, b, t0, &out);
            let dout = cut(&case.dout, case.bt, b, (t0, t1));
            let g = mixer_core_backward(dims, bt, &zx, &case.conv_w, p, None, &dout);
            paste(&mut want_dzx, case.bt, b, t0, &g.d_zxbcdt);
            add(&mut want_dw, &g.d_conv_w);
            add(&mut want_dp, &g.packed_params());
        }
        let e_out = max_abs_diff(&got, &want);
        assert!(e_out < 1e-5, "case {i} {rows:?}: forward err {e_out}");
        worst[0] = worst[0].max(e_out);
        for (k, (name, g, w)) in [
            ("zxbcdt", &got_g.d_zxbcdt, &want_dzx),
            ("conv_w", &got_g.d_conv_w, &want_dw),
            ("params", &got_g.packed_params(), &want_dp),
        ]
        .into_iter()
        .enumerate()
        {
            let e = rel_err(g, w);
            worst[1 + k] = worst[1 + k].max(e);
            assert!(e < 2e-5, "case {i} {rows:?}: d{name} rel err {e}");
        }
    }
    eprintln!(
        "packed mixer core vs examples alone, max err [out | rel dzx dconv_w dparams]: {worst:?}"
    );
}

#[test]
fn candle_op_with_seq_idx_runs_the_packed_slice_op_and_checks_seq_idx() -> candle_core::Result<()> {
    use crate::mixer_core::{mixer_core_packed, pack_mixer_params};
    use candle_core::{DType, Device, Tensor, Var};
    let dims = tiny_dims((0.0, f32::INFINITY));
    let rows: &[&[usize]] = &[&[2, 1, 3], &[6]];
    let (seq, t_len) = layout(rows);
    let case = MixerCase::new(dims, (2, t_len), 800);
    let dev = &Device::Cpu;
    let zx = Var::from_tensor(&Tensor::from_vec(
        case.zx.clone(),
        (2, t_len, dims.in_width()),
        dev,
    )?)?;
    let w = Var::from_tensor(&Tensor::from_vec(
        case.conv_w.clone(),
        (dims.conv_channels(), dims.conv_kernel),
        dev,
    )?)?;
    let p = MixerParams::unpack(&dims, &case.params);
    let pieces = [p.conv_bias, p.dt_bias, p.a_log, p.d, p.norm_w]
        .map(|v| Var::from_tensor(&Tensor::new(v, dev)?))
        .into_iter()
        .collect::<candle_core::Result<Vec<_>>>()?;
    let params = pack_mixer_params(
        pieces[0].as_tensor(),
        pieces[1].as_tensor(),
        pieces[2].as_tensor(),
        pieces[3].as_tensor(),
        pieces[4].as_tensor(),
    )?;
    let seq_t = Tensor::from_vec(seq.iter().map(|&v| v as i64).collect(), (2, t_len), dev)?;
    let out = mixer_core_packed(zx.as_tensor(), w.as_tensor(), &params, dims, Some(&seq_t))?;
    let want = mixer_core_forward(dims, case.bt, &case.zx, &case.conv_w, p, Some(&seq));
    assert_eq!(out.flatten_all()?.to_vec1::<f32>()?, want);
    let dout = Tensor::from_vec(case.dout.clone(), out.shape(), dev)?;
    let grads = out.mul(&dout)?.sum_all()?.backward()?;
    let g = mixer_core_backward(
        dims,
        case.bt,
        &case.zx,
        &case.conv_w,
        p,
        Some(&seq),
        &case.dout,
    );
    let flat = |v: &Var| -> candle_core::Result<Vec<f32>> {
        grads
            .get(v.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1()
    };
    assert_eq!(flat(&zx)?, g.d_zxbcdt);
    assert_eq!(flat(&w)?, g.d_conv_w);
    let mut dp = vec![];
    for v in &pieces {
        dp.extend(flat(v)?);
    }
    assert_eq!(dp, g.packed_params());
    // Wrong shape or a float tensor: errors, not panics.
    let (zt, wt) = (zx.as_tensor(), w.as_tensor());
    assert!(mixer_core_packed(zt, wt, &params, dims, Some(&seq_t.narrow(1, 0, 3)?)).is_err());
    assert!(mixer_core_packed(zt, wt, &params, dims, Some(&seq_t.to_dtype(DType::F32)?)).is_err());
    Ok(())
}
