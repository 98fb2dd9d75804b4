//! The SSD case table: every implementation against the sequential f64 reference on fresh random inputs (a seed
//! per case), forward and backward, with the CPU kernels' outputs NaN-poisoned first: the chunked CPU kernels,
//! the decode step (T = 1 rows), the composed twin under candle autograd, and the entry point on the device (the
//! CPU kernel on the CPU, `cuda_fwd` on a GPU). Run on the CPU here, and on a CUDA GPU by `tests/cuda.rs`, which
//! includes this file (so it names the crate `coil_ops` and uses only its public items). [`Inputs`] is also the
//! input generator of the SSD's property tests.

use candle_core::{DType, Device, Tensor, Var};
use coil_ops::packing::Segments;
use coil_ops::ssd::{self, composed, cpu, reference, SsdDims, SsdGrads, SsdInputs, SsdOutput};
use coil_testutil::{
    assert_all_ok, max_abs_diff, packed_seq_idx, poisoned, rel_err, rounded, scaled_err, to_tensor,
    CaseResult, Lcg, Tolerance,
};

/// One call: `B`, `T`, `H` heads, `P` head dim, `G` groups, `N` state, `Q` chunk, with an initial state, and
/// examples per row (1: no `seq_idx`).
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
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    // T = 1 (a decode step), with and without a carried state
    Case { batch: 1, seqlen: 1, heads: 2, head_dim: 4, groups: 1, state: 3, chunk: 4, init: false, pieces: 1 },
    Case { batch: 3, seqlen: 1, heads: 4, head_dim: 4, groups: 2, state: 8, chunk: 4, init: true, pieces: 1 },
    // T < Q; T = Q; T not a multiple of Q
    Case { batch: 2, seqlen: 5, heads: 4, head_dim: 3, groups: 2, state: 5, chunk: 8, init: true, pieces: 1 },
    Case { batch: 1, seqlen: 9, heads: 2, head_dim: 4, groups: 1, state: 4, chunk: 16, init: true, pieces: 1 },
    Case { batch: 2, seqlen: 16, heads: 4, head_dim: 4, groups: 1, state: 8, chunk: 16, init: false, pieces: 1 },
    Case { batch: 2, seqlen: 7, heads: 4, head_dim: 4, groups: 2, state: 8, chunk: 4, init: true, pieces: 1 },
    Case { batch: 1, seqlen: 16, heads: 4, head_dim: 8, groups: 2, state: 16, chunk: 8, init: true, pieces: 1 },
    Case { batch: 1, seqlen: 37, heads: 8, head_dim: 16, groups: 2, state: 16, chunk: 16, init: true, pieces: 1 },
    // G = 3; odd chunk with G = H; Q = 1
    Case { batch: 2, seqlen: 64, heads: 6, head_dim: 8, groups: 3, state: 4, chunk: 16, init: true, pieces: 1 },
    Case { batch: 1, seqlen: 100, heads: 4, head_dim: 8, groups: 4, state: 8, chunk: 7, init: false, pieces: 1 },
    Case { batch: 1, seqlen: 6, heads: 2, head_dim: 2, groups: 1, state: 3, chunk: 1, init: true, pieces: 1 },
    // heads per group not a multiple of the backward's block of 4 (6 = 4 + 2; 5 with G = 1)
    Case { batch: 1, seqlen: 20, heads: 12, head_dim: 4, groups: 2, state: 4, chunk: 8, init: true, pieces: 1 },
    Case { batch: 2, seqlen: 9, heads: 5, head_dim: 3, groups: 1, state: 2, chunk: 4, init: false, pieces: 1 },
    // several chunks, G = 1
    Case { batch: 1, seqlen: 300, heads: 8, head_dim: 16, groups: 1, state: 32, chunk: 64, init: true, pieces: 1 },
    // packed rows (seq_idx): boundaries inside chunks, with and without a carried state
    Case { batch: 2, seqlen: 13, heads: 6, head_dim: 4, groups: 3, state: 8, chunk: 5, init: false, pieces: 3 },
    Case { batch: 2, seqlen: 24, heads: 4, head_dim: 4, groups: 2, state: 8, chunk: 4, init: true, pieces: 4 },
    Case { batch: 1, seqlen: 40, heads: 8, head_dim: 16, groups: 2, state: 32, chunk: 16, init: false, pieces: 2 },
    Case { batch: 2, seqlen: 45, heads: 4, head_dim: 8, groups: 1, state: 8, chunk: 8, init: true, pieces: 7 },
    // chunks over 64 steps: the CPU's triangular products run in row blocks of 64 (a partial last block, a short
    // last chunk), packed and not
    Case { batch: 1, seqlen: 250, heads: 4, head_dim: 8, groups: 2, state: 8, chunk: 150, init: true, pieces: 1 },
    Case { batch: 2, seqlen: 200, heads: 4, head_dim: 4, groups: 1, state: 8, chunk: 130, init: false, pieces: 5 },
];

/// CPU forward against the f64 reference: max |got − want|.
const CPU_FWD: f32 = 2e-5;
/// The decode step against the f64 reference: max |got − want|.
const STEP: f32 = 1e-5;
/// CPU backward against the f64 reference backward: `rel_err`.
const CPU_BWD: f32 = 2e-5;
/// Composed and device forward (`scaled_err`), by the dtype of the output.
const DEVICE_FWD: Tolerance = Tolerance::new(2e-5, 1e-2);
/// Composed backward through candle autograd (`rel_err`), by the dtype of the gradient.
const DEVICE_BWD: Tolerance = Tolerance::new(2e-5, 1e-2);

impl Case {
    pub fn dims(&self) -> SsdDims {
        SsdDims {
            batch: self.batch,
            seqlen: self.seqlen,
            heads: self.heads,
            head_dim: self.head_dim,
            groups: self.groups,
            state: self.state,
        }
    }
}

/// Random, well-conditioned inputs of one call (dt in (0.001, 0.3), A in (−4, −0.5)) and upstream gradients.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub x: Vec<f32>,
    pub dt: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub d: Vec<f32>,
    pub init: Option<Vec<f32>>,
    pub seq_idx: Option<Vec<i32>>,
    pub dy: Vec<f32>,
    pub d_final: Vec<f32>,
}

impl Inputs {
    pub fn new(dims: SsdDims, with_init: bool, seed: u64) -> Self {
        let mut r = Lcg(seed);
        Inputs {
            x: r.vec(dims.x_len(), -1.0, 1.0),
            dt: r.vec(dims.dt_len(), 0.001, 0.3),
            a: r.vec(dims.heads, -4.0, -0.5),
            b: r.vec(dims.bc_len(), -1.0, 1.0),
            c: r.vec(dims.bc_len(), -1.0, 1.0),
            d: r.vec(dims.heads, -1.0, 1.0),
            init: with_init.then(|| r.vec(dims.state_len(), -1.0, 1.0)),
            seq_idx: None,
            dy: r.vec(dims.x_len(), -1.0, 1.0),
            d_final: r.vec(dims.state_len(), -1.0, 1.0),
        }
    }

    /// x, dt, B and C rounded to `dtype` (the tensors a device path gets in `dtype`; A, D and the state stay f32).
    pub fn rounded(mut self, dtype: DType) -> Self {
        for v in [&mut self.x, &mut self.dt, &mut self.b, &mut self.c] {
            *v = rounded(std::mem::take(v), dtype);
        }
        self
    }

    pub fn view(&self) -> SsdInputs<'_> {
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

fn poisoned_grads(dims: SsdDims) -> SsdGrads {
    let z = SsdGrads::zeros(dims);
    SsdGrads {
        dx: poisoned(z.dx.len()),
        ddt: poisoned(z.ddt.len()),
        da: poisoned(z.da.len()),
        db: poisoned(z.db.len()),
        dc: poisoned(z.dc.len()),
        dd: poisoned(z.dd.len()),
        d_initial_state: poisoned(z.d_initial_state.len()),
    }
}

/// Runs every case on `dev` with x, dt, B and C in `dtype` (rounded first, so the reference sees them too).
pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    CASES
        .iter()
        .enumerate()
        .flat_map(|(i, case)| run_case(case, 100 + i as u64, dev, dtype))
        .collect()
}

fn run_case(case: &Case, seed: u64, dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let dims = case.dims();
    let SsdDims {
        batch: b,
        seqlen: t,
        heads: h,
        head_dim: p,
        groups: g,
        state: n,
    } = dims;
    let q = case.chunk;
    let mut inp = Inputs::new(dims, case.init, seed).rounded(dtype);
    inp.seq_idx = (case.pieces > 1).then(|| packed_seq_idx(b, t, case.pieces));
    let name = format!(
        "ssd B{b} T{t} H{h} P{p} G{g} N{n} Q{q} init={} pieces={} {dtype:?}",
        case.init, case.pieces
    );
    let mut res = vec![];
    let mut check = |what: &str, err: f32, tol: f32| {
        res.push(CaseResult::new(format!("{name}: {what}"), err, tol));
    };
    let want = ssd::ssd_reference(dims, inp.view());

    // The CPU kernels, into NaN.
    let mut got = SsdOutput {
        y: poisoned(dims.x_len()),
        final_state: poisoned(dims.state_len()),
    };
    cpu::ssd_chunked_into(dims, inp.view(), q, &mut got);
    check("cpu y", max_abs_diff(&got.y, &want.y), CPU_FWD);
    let err = max_abs_diff(&got.final_state, &want.final_state);
    check("cpu final state", err, CPU_FWD);
    let y_only = cpu::ssd_chunked_y(dims, inp.view(), q);
    check("cpu y alone = y", max_abs_diff(&y_only, &got.y), 0.0);
    for d_final in [None, Some(inp.d_final.as_slice())] {
        let tag = if d_final.is_some() { "+ d_final" } else { "" };
        let want_g = ssd::ssd_reference_backward(dims, inp.view(), &inp.dy, d_final);
        let mut got_g = poisoned_grads(dims);
        cpu::ssd_chunked_backward_into(dims, inp.view(), q, &inp.dy, d_final, &mut got_g);
        for ((what, gv), (_, wv)) in named(&got_g).into_iter().zip(named(&want_g)) {
            check(&format!("cpu {what} {tag}"), rel_err(gv, wv), CPU_BWD);
        }
        if !case.init {
            let zeros = vec![0.0; dims.state_len()];
            let err = max_abs_diff(&got_g.d_initial_state, &zeros);
            check(&format!("cpu dh0 = 0 without a state {tag}"), err, 0.0);
        }
    }
    if t == 1 && inp.seq_idx.is_none() {
        let mut state = inp
            .init
            .clone()
            .unwrap_or_else(|| vec![0.0; dims.state_len()]);
        let y = reference::ssd_step(dims, inp.view(), &mut state);
        check("decode step y", max_abs_diff(&y, &want.y), STEP);
        let err = max_abs_diff(&state, &want.final_state);
        check("decode step state", err, STEP);
    }

    // The composed twin on `dev`, forward and backward through candle autograd (loss Σ dy·y + Σ d_final·state).
    let var = |v: &[f32], shape: &[usize], dt: DType| {
        Var::from_tensor(&to_tensor(v, shape, dt, dev)).expect("var")
    };
    let f32_ = DType::F32;
    let vars = [
        var(&inp.x, &[b, t, h, p], dtype),
        var(&inp.dt, &[b, t, h], dtype),
        var(&inp.a, &[h], f32_),
        var(&inp.b, &[b, t, g, n], dtype),
        var(&inp.c, &[b, t, g, n], dtype),
        var(&inp.d, &[h], f32_),
    ];
    let init = inp.init.as_ref().map(|s| var(s, &[b, h, p, n], f32_));
    let [x_t, dt_t, a_t, b_t, c_t, d_t] = vars.each_ref().map(Var::as_tensor);
    let init_t = init.as_ref().map(Var::as_tensor);
    let segments = inp.seq_idx.clone().map(|ids| Segments {
        batch: b,
        seqlen: t,
        ids,
    });
    let (y, fin) = composed::ssd(x_t, dt_t, a_t, b_t, c_t, d_t, init_t, q, segments.as_ref())
        .expect("composed ssd");
    check(
        "composed y",
        scaled_err(&y, &want.y),
        DEVICE_FWD.of(y.dtype()),
    );
    let tol = DEVICE_FWD.of(fin.dtype());
    check(
        "composed final state",
        scaled_err(&fin, &want.final_state),
        tol,
    );
    let dy = to_tensor(&inp.dy, &[b, t, h, p], f32_, dev);
    let dfin = to_tensor(&inp.d_final, &[b, h, p, n], f32_, dev);
    let loss = (y * dy)
        .and_then(|l| l.sum_all()? + (fin * dfin)?.sum_all()?)
        .expect("loss");
    let grads = loss.backward().expect("backward");
    let want_g = ssd::ssd_reference_backward(dims, inp.view(), &inp.dy, Some(&inp.d_final));
    let mut all = vars.iter().collect::<Vec<_>>();
    all.extend(init.as_ref());
    for (v, (what, wv)) in all.into_iter().zip(named(&want_g)) {
        // An input the graph never reached (A without a state to decay, at T = 1) has gradient 0.
        let err = match grads.get(v.as_tensor()) {
            Some(gr) => rel_err(gr, wv),
            None => rel_err(&vec![0.0; wv.len()], wv),
        };
        let tol = DEVICE_BWD.of(v.dtype());
        check(&format!("composed {what}"), err, tol);
    }

    // The entry point on `dev`.
    let seq_t = inp
        .seq_idx
        .as_ref()
        .map(|v| Tensor::from_slice(v, (b, t), dev).expect("seq_idx"));
    let (y, fin) = ssd::ssd_packed(x_t, dt_t, a_t, b_t, c_t, d_t, init_t, seq_t.as_ref(), q)
        .expect("ssd entry point");
    check("op y", scaled_err(&y, &want.y), DEVICE_FWD.of(y.dtype()));
    let tol = DEVICE_FWD.of(fin.dtype());
    check("op final state", scaled_err(&fin, &want.final_state), tol);
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
