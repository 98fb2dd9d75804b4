//! The case table of [`ssd::ssd_layer`], the SSD as a Mamba2 layer calls it (raw dt with softplus, bias and clamp
//! inside; x, B and C as column views of one conv output; dt as a column view of the in_proj output), against the
//! sequential f64 reference on fresh random inputs. The sizes are those of real layers (head dim and state 64 or
//! 128), so on a GPU in bf16 this is the fused kernel's table; on the CPU (and in f32 anywhere) the fallback path.
//! Included by `tests/cuda.rs` like the other tables.

use candle_core::{DType, Device, Tensor};
use coil_ops::ssd::{self, SsdDims, SsdInputs};
use coil_testutil::{
    assert_all_ok, packed_seq_idx, rounded, scaled_err, to_tensor, CaseResult, Lcg, Tolerance,
};

/// One layer call: sizes, an initial state, examples per row (1: no `seq_idx`), raw dt in f32 even when the
/// activations are bf16, and a dt clamp.
pub struct Case {
    pub batch: usize,
    pub seqlen: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
    pub chunk: usize,
    pub init: bool,
    pub pieces: usize,
    pub dt_f32: bool,
    pub clamp: bool,
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    Case { batch: 1, seqlen: 1, heads: 4, head_dim: 64, groups: 1, state: 128, chunk: 128, init: false, pieces: 1, dt_f32: false, clamp: false },
    Case { batch: 2, seqlen: 37, heads: 4, head_dim: 64, groups: 2, state: 128, chunk: 64, init: true, pieces: 1, dt_f32: false, clamp: false },
    Case { batch: 2, seqlen: 64, heads: 8, head_dim: 64, groups: 8, state: 64, chunk: 64, init: false, pieces: 1, dt_f32: false, clamp: false },
    Case { batch: 1, seqlen: 200, heads: 4, head_dim: 128, groups: 2, state: 128, chunk: 256, init: true, pieces: 1, dt_f32: true, clamp: true },
    Case { batch: 2, seqlen: 150, heads: 6, head_dim: 64, groups: 3, state: 64, chunk: 128, init: false, pieces: 3, dt_f32: false, clamp: false },
    Case { batch: 1, seqlen: 130, heads: 4, head_dim: 128, groups: 1, state: 64, chunk: 64, init: true, pieces: 2, dt_f32: true, clamp: false },
    // Head dim 64 with state 128 (the wgmma kernel on an H100/H200): packed rows, clamp, ragged blocks.
    Case { batch: 2, seqlen: 300, heads: 8, head_dim: 64, groups: 2, state: 128, chunk: 128, init: true, pieces: 3, dt_f32: true, clamp: true },
    Case { batch: 1, seqlen: 129, heads: 4, head_dim: 64, groups: 4, state: 128, chunk: 256, init: false, pieces: 1, dt_f32: false, clamp: true },
];

/// y and the final state against the f64 reference (`scaled_err`), by the dtype of the activations.
const LAYER_FWD: Tolerance = Tolerance::new(2e-5, 1e-2);

pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    CASES
        .iter()
        .enumerate()
        .flat_map(|(i, case)| run_case(case, 500 + i as u64, dev, dtype))
        .collect()
}

fn run_case(case: &Case, seed: u64, dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let dims = SsdDims {
        batch: case.batch,
        seqlen: case.seqlen,
        heads: case.heads,
        head_dim: case.head_dim,
        groups: case.groups,
        state: case.state,
    };
    let (b, t, h, p, g, n) = (
        case.batch,
        case.seqlen,
        case.heads,
        case.head_dim,
        case.groups,
        case.state,
    );
    let (hp, gn) = (h * p, g * n);
    let dt_dtype = if case.dt_f32 { DType::F32 } else { dtype };
    let limit = if case.clamp {
        (0.01, 0.05)
    } else {
        (0.0, f32::INFINITY)
    };
    let mut r = Lcg(seed);
    let x = rounded(r.vec(dims.x_len(), -1.0, 1.0), dtype);
    let bm = rounded(r.vec(dims.bc_len(), -1.0, 1.0), dtype);
    let cm = rounded(r.vec(dims.bc_len(), -1.0, 1.0), dtype);
    let dt_raw = rounded(r.vec(dims.dt_len(), -4.0, 0.0), dt_dtype);
    let dt_bias = r.vec(h, -1.0, 1.0);
    let a = r.vec(h, -4.0, -0.5);
    let d = r.vec(h, -1.0, 1.0);
    let init = case.init.then(|| r.vec(dims.state_len(), -1.0, 1.0));
    let seq_idx = (case.pieces > 1).then(|| packed_seq_idx(b, t, case.pieces));

    let dt = ssd_dt(&dt_raw, &dt_bias, limit);
    let want = ssd::ssd_reference(
        dims,
        SsdInputs {
            x: &x,
            dt: &dt,
            a: &a,
            b: &bm,
            c: &cm,
            d: &d,
            initial_state: init.as_deref(),
            seq_idx: seq_idx.as_deref(),
        },
    );

    // One conv output [B,T,H·P + 2·G·N] and one in_proj-like row [B,T,1 + H + 2] holding dt, as a layer has them.
    let rows = b * t;
    let mut xbc = Vec::with_capacity(rows * (hp + 2 * gn));
    let mut zdt = Vec::with_capacity(rows * (h + 3));
    for row in 0..rows {
        xbc.extend_from_slice(&x[row * hp..(row + 1) * hp]);
        xbc.extend_from_slice(&bm[row * gn..(row + 1) * gn]);
        xbc.extend_from_slice(&cm[row * gn..(row + 1) * gn]);
        zdt.push(7.0);
        zdt.extend_from_slice(&dt_raw[row * h..(row + 1) * h]);
        zdt.extend_from_slice(&[7.0, 7.0]);
    }
    let xbc = to_tensor(&xbc, &[b, t, hp + 2 * gn], dtype, dev);
    let zdt = to_tensor(&zdt, &[b, t, h + 3], dt_dtype, dev);
    let f32_ = |v: &[f32], shape: &[usize]| to_tensor(v, shape, DType::F32, dev);
    let (dt_bias_t, a_t, d_t) = (f32_(&dt_bias, &[h]), f32_(&a, &[h]), f32_(&d, &[h]));
    let init_t = init.as_ref().map(|s| f32_(s, &[b, h, p, n]));
    // Freed NaN memory of y's size first, so that a GPU allocator that hands it back shows unwritten elements.
    drop(Tensor::full(f32::NAN, (b, t, hp), dev).and_then(|t| t.to_dtype(dtype)));
    let narrow = |t: &Tensor, start, len| t.narrow(2, start, len).expect("narrow");
    let (y, fin) = ssd::ssd_layer(&ssd::LayerSsd {
        x: &narrow(&xbc, 0, hp),
        b: &narrow(&xbc, hp, gn),
        c: &narrow(&xbc, hp + gn, gn),
        dt_raw: &narrow(&zdt, 1, h),
        dt_bias: &dt_bias_t,
        a: &a_t,
        d: &d_t,
        initial_state: init_t.as_ref(),
        seq_idx: seq_idx.as_deref(),
        heads: h,
        groups: g,
        chunk: case.chunk,
        dt_limit: limit,
        dtype,
    })
    .expect("ssd_layer");
    let name = format!(
        "ssd_layer B{b} T{t} H{h} P{p} G{g} N{n} Q{} init={} pieces={} dt_f32={} clamp={} {dtype:?} on {:?}",
        case.chunk, case.init, case.pieces, case.dt_f32, case.clamp, dev
    );
    let tol = LAYER_FWD.of(dtype);
    vec![
        CaseResult::new(format!("{name}: y"), scaled_err(&y, &want.y), tol),
        CaseResult::new(
            format!("{name}: final state"),
            scaled_err(&fin, &want.final_state),
            tol,
        ),
    ]
}

/// `clamp(softplus(raw + bias), lo, hi)` in f64 (the dt reference), as the f32 dt the SSD reference takes.
fn ssd_dt(raw: &[f32], bias: &[f32], (lo, hi): (f32, f32)) -> Vec<f32> {
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    coil_ops::dt::reference::dt_softplus_reference(&wide(raw), &wide(bias), (lo as f64, hi as f64))
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

#[test]
fn layer_case_table_on_cpu_f32() {
    assert_all_ok(&run(&Device::Cpu, DType::F32));
}

#[test]
fn layer_case_table_on_cpu_bf16() {
    assert_all_ok(&run(&Device::Cpu, DType::BF16));
}
