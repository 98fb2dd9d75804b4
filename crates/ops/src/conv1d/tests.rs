//! The conv1d case table: every implementation against the f64 reference on fresh random inputs (a seed per
//! case), forward and backward (the reference gradient by central differences of the f64 reference), with the
//! CPU kernels' outputs NaN-poisoned first. Run on the CPU here, and on a CUDA GPU by `tests/cuda.rs`, which
//! includes this file (so it names the crate `coil_ops` and uses only its public items).

use candle_core::{DType, Device, Tensor, Var};
use coil_ops::conv1d::{self, composed, Conv1dGrads};
use coil_ops::packing::Segments;
use coil_testutil::{
    assert_all_ok, central_differences, fd_err, max_abs_diff, narrow, packed_seq_idx, poisoned,
    rounded, scaled_err, to_tensor, widen, CaseResult, Lcg, Tolerance,
};

/// One call: `B`, `T`, `C` channels, `K` taps, with a bias, with a carried-in history, examples per row
/// (1: no `seq_idx`).
pub struct Case {
    pub batch: usize,
    pub seqlen: usize,
    pub channels: usize,
    pub kernel: usize,
    pub bias: bool,
    pub history: bool,
    pub pieces: usize,
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    Case { batch: 1, seqlen: 1, channels: 3, kernel: 4, bias: true, history: false, pieces: 1 },  // T = 1
    Case { batch: 1, seqlen: 1, channels: 3, kernel: 4, bias: true, history: true, pieces: 1 },   // a decode step
    Case { batch: 2, seqlen: 7, channels: 5, kernel: 4, bias: true, history: false, pieces: 1 },
    Case { batch: 2, seqlen: 7, channels: 5, kernel: 4, bias: true, history: true, pieces: 1 },
    Case { batch: 2, seqlen: 2, channels: 6, kernel: 3, bias: true, history: true, pieces: 1 },   // T = K − 1
    Case { batch: 1, seqlen: 2, channels: 4, kernel: 4, bias: true, history: true, pieces: 1 },   // T < K − 1
    Case { batch: 1, seqlen: 20, channels: 8, kernel: 2, bias: true, history: false, pieces: 1 },
    Case { batch: 1, seqlen: 20, channels: 8, kernel: 2, bias: false, history: true, pieces: 1 }, // no bias
    Case { batch: 2, seqlen: 6, channels: 3, kernel: 4, bias: true, history: true, pieces: 1 },
    Case { batch: 2, seqlen: 5, channels: 2, kernel: 3, bias: false, history: false, pieces: 1 },
    Case { batch: 1, seqlen: 4, channels: 3, kernel: 1, bias: true, history: false, pieces: 1 },  // K = 1
    Case { batch: 2, seqlen: 9, channels: 5, kernel: 4, bias: true, history: true, pieces: 1 },
    Case { batch: 2, seqlen: 11, channels: 4, kernel: 3, bias: true, history: true, pieces: 3 },  // packed rows
    Case { batch: 1, seqlen: 6, channels: 8, kernel: 2, bias: true, history: false, pieces: 2 },
    Case { batch: 2, seqlen: 13, channels: 3, kernel: 4, bias: true, history: true, pieces: 5 },  // pieces < K
];

/// CPU forward against the f64 reference: max |got − want|.
const CPU_FWD: f32 = 1e-6;
/// CPU backward against central differences: max |got − fd| / (1 + |fd|).
const CPU_BWD: f32 = 2e-5;
/// Composed and device forward: `scaled_err`, by the dtype of the output.
const DEVICE_FWD: Tolerance = Tolerance::new(2e-5, 1e-2);
/// Composed backward (candle autograd): `fd_err`, by the dtype of the gradient.
const DEVICE_BWD: Tolerance = Tolerance::new(2e-5, 1e-2);

/// Runs every case on `dev` with the activations (x) in `dtype`, rounded first so the reference sees them too.
pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    CASES
        .iter()
        .enumerate()
        .flat_map(|(i, case)| run_case(case, 200 + i as u64, dev, dtype))
        .collect()
}

fn run_case(case: &Case, seed: u64, dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let &Case {
        batch: b,
        seqlen: t,
        channels: ch,
        kernel: k,
        ..
    } = case;
    let dims = (b, t, ch);
    let mut r = Lcg(seed);
    let x = rounded(r.vec(b * t * ch, -1.5, 1.5), dtype);
    let w = r.vec(ch * k, -1.0, 1.0);
    let bias = case.bias.then(|| r.vec(ch, -0.5, 0.5));
    let hist = case.history.then(|| r.vec(b * ch * (k - 1), -1.0, 1.0));
    let dout = r.vec(x.len(), -1.0, 1.0);
    let seq = (case.pieces > 1).then(|| packed_seq_idx(b, t, case.pieces));
    let name = format!(
        "conv1d B{b} T{t} C{ch} K{k} bias={} history={} pieces={} {dtype:?}",
        case.bias, case.history, case.pieces
    );
    let mut res = vec![];
    let mut check = |what: &str, err: f32, tol: f32| {
        res.push(CaseResult::new(format!("{name}: {what}"), err, tol));
    };

    // The reference, and its gradient w.r.t. x, w, bias (zeros stand in for a missing one) and history.
    let want = narrow(&conv1d::causal_conv1d_silu_reference(
        &widen(&x),
        dims,
        &widen(&w),
        k,
        bias.as_deref().map(widen).as_deref(),
        hist.as_deref().map(widen).as_deref(),
        seq.as_deref(),
    ));
    let args = [
        widen(&x),
        widen(&w),
        widen(bias.as_deref().unwrap_or(&vec![0.0; ch])),
        widen(hist.as_deref().unwrap_or(&[])),
    ];
    let fd = central_differences(&args, 1e-6, |a| {
        let h = case.history.then_some(a[3].as_slice());
        conv1d::causal_conv1d_silu_reference(&a[0], dims, &a[1], k, Some(&a[2]), h, seq.as_deref())
            .iter()
            .zip(&dout)
            .map(|(o, &d)| o * d as f64)
            .sum()
    });

    // The CPU kernels, into NaN.
    let mut got = poisoned(x.len());
    conv1d::causal_conv1d_silu_into(
        &x,
        dims,
        &w,
        k,
        bias.as_deref(),
        hist.as_deref(),
        seq.as_deref(),
        &mut got,
    );
    check("cpu forward", max_abs_diff(&got, &want), CPU_FWD);
    let mut g = Conv1dGrads {
        dx: poisoned(x.len()),
        dw: poisoned(w.len()),
        dbias: poisoned(ch),
        dhistory: poisoned(hist.as_ref().map_or(0, Vec::len)),
    };
    conv1d::causal_conv1d_silu_backward_into(
        &x,
        dims,
        &w,
        k,
        bias.as_deref(),
        hist.as_deref(),
        seq.as_deref(),
        &dout,
        &mut g,
    );
    for (what, got, fd) in [
        ("cpu dx", &g.dx, &fd[0]),
        ("cpu dw", &g.dw, &fd[1]),
        ("cpu dbias", &g.dbias, &fd[2]),
        ("cpu dhistory", &g.dhistory, &fd[3]),
    ] {
        check(what, fd_err(got, fd) as f32, CPU_BWD);
    }

    // The composed twin on `dev`, forward and backward through candle autograd.
    let var = |v: &[f32], shape: &[usize], dt: DType| {
        Var::from_tensor(&to_tensor(v, shape, dt, dev)).expect("var")
    };
    let xv = var(&x, &[b, t, ch], dtype);
    let wv = var(&w, &[ch, k], DType::F32);
    let bv = bias.as_ref().map(|v| var(v, &[ch], DType::F32));
    let hv = hist.as_ref().map(|v| var(v, &[b, ch, k - 1], DType::F32));
    let segments = seq.clone().map(|ids| Segments {
        batch: b,
        seqlen: t,
        ids,
    });
    let y = composed::causal_conv1d_silu(
        xv.as_tensor(),
        wv.as_tensor(),
        bv.as_ref().map(Var::as_tensor),
        hv.as_ref().map(Var::as_tensor),
        segments.as_ref(),
    )
    .expect("composed conv1d");
    check(
        "composed forward",
        scaled_err(&y, &want),
        DEVICE_FWD.of(y.dtype()),
    );
    let dout_t = to_tensor(&dout, &[b, t, ch], DType::F32, dev);
    let grads = (y * dout_t)
        .and_then(|l| l.sum_all()?.backward())
        .expect("backward");
    let mut vars = vec![("dx", &xv, &fd[0]), ("dw", &wv, &fd[1])];
    vars.extend(bv.as_ref().map(|v| ("dbias", v, &fd[2])));
    vars.extend(hv.as_ref().map(|v| ("dhistory", v, &fd[3])));
    for (what, v, fd) in vars {
        let gr = grads.get(v.as_tensor()).expect("a gradient");
        let tol = DEVICE_BWD.of(gr.dtype());
        check(&format!("composed {what}"), fd_err(gr, fd) as f32, tol);
    }

    // The entry point on `dev` (the CPU kernel on the CPU, the CUDA path on a GPU).
    let seq_t = seq
        .as_ref()
        .map(|v| Tensor::from_slice(v, (b, t), dev).expect("seq_idx"));
    let y = conv1d::causal_conv1d_silu_packed(
        xv.as_tensor(),
        wv.as_tensor(),
        bv.as_ref().map(Var::as_tensor),
        hv.as_ref().map(Var::as_tensor),
        seq_t.as_ref(),
    )
    .expect("conv1d entry point");
    check(
        "op forward",
        scaled_err(&y, &want),
        DEVICE_FWD.of(y.dtype()),
    );
    // A bf16 x gives a bf16 output: the f32 computation rounded once, the same bits as the f32 path on the same
    // values followed by a cast (on a GPU: the kernel's bf16 instance against its f32 one).
    if dtype == DType::BF16 {
        let y32 = conv1d::causal_conv1d_silu_packed(
            &xv.as_tensor().to_dtype(DType::F32).expect("f32 x"),
            wv.as_tensor(),
            bv.as_ref().map(Var::as_tensor),
            hv.as_ref().map(Var::as_tensor),
            seq_t.as_ref(),
        )
        .and_then(|y| y.to_dtype(DType::BF16))
        .expect("conv1d entry point in f32");
        assert_eq!(y.dtype(), DType::BF16, "{name}: output dtype");
        check("op bf16 = op f32 rounded", max_abs_diff(&y, &y32), 0.0);
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
