//! The mixer-core case table: every implementation against the f64 reference (the four ops' references chained)
//! on fresh random inputs (a seed per case), forward and backward (the reference gradient by central differences
//! of the f64 reference), with the CPU kernels' outputs NaN-poisoned first: the CPU kernels, the composed chain
//! under candle autograd, and the candle op (CPU kernels and hand-written backward on the CPU; on a GPU its
//! `cuda_fwd` and a recomputing backward). Run on the CPU here, and on a CUDA GPU by `tests/cuda.rs`, which
//! includes this file (so it names the crate `coil_ops` and uses only its public items). [`MixerCase`] is also
//! the input generator of the op's other tests.

use candle_core::{DType, Device, Tensor, Var};
use coil_ops::mixer_core::{
    self, composed, cpu, mixer_core_reference, MixerCoreDims, MixerCoreGrads, MixerParams,
};
use coil_ops::packing::Segments;
use coil_testutil::{
    assert_all_ok, central_differences, fd_err, max_abs_diff, narrow, packed_seq_idx, poisoned,
    rounded, scaled_err, to_tensor, widen, CaseResult, Lcg, Tolerance,
};

/// One call: `B`, `T`, then the mixer's sizes (`H` heads, `P` head dim, `G` groups, `N` state, `K` conv width,
/// `Q` chunk), the dt clamp `(lo, hi)`, and examples per row (1: no `seq_idx`).
pub struct Case {
    pub batch: usize,
    pub seqlen: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
    pub kernel: usize,
    pub chunk: usize,
    pub lo: f32,
    pub hi: f32,
    pub pieces: usize,
}

const INF: f32 = f32::INFINITY;

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    // T = 1; T < Q; G > 1
    Case { batch: 2, seqlen: 1, heads: 4, head_dim: 2, groups: 2, state: 3, kernel: 3, chunk: 2, lo: 0.0, hi: INF, pieces: 1 },
    Case { batch: 2, seqlen: 5, heads: 4, head_dim: 2, groups: 2, state: 3, kernel: 3, chunk: 8, lo: 0.0, hi: INF, pieces: 1 },
    // T not a multiple of Q, without and with the dt clamp
    Case { batch: 2, seqlen: 5, heads: 4, head_dim: 2, groups: 2, state: 3, kernel: 3, chunk: 2, lo: 0.0, hi: INF, pieces: 1 },
    Case { batch: 2, seqlen: 5, heads: 4, head_dim: 2, groups: 2, state: 3, kernel: 3, chunk: 2, lo: 0.05, hi: 0.3, pieces: 1 },
    // several chunks, ragged last one, G = 1
    Case { batch: 1, seqlen: 11, heads: 4, head_dim: 2, groups: 1, state: 3, kernel: 3, chunk: 4, lo: 0.0, hi: INF, pieces: 1 },
    Case { batch: 2, seqlen: 9, heads: 4, head_dim: 4, groups: 2, state: 8, kernel: 4, chunk: 4, lo: 0.0, hi: INF, pieces: 1 },
    Case { batch: 1, seqlen: 20, heads: 2, head_dim: 8, groups: 1, state: 16, kernel: 4, chunk: 8, lo: 0.05, hi: 0.3, pieces: 1 },
    // packed rows: G = H/2, and one example shorter than the conv window
    Case { batch: 2, seqlen: 14, heads: 6, head_dim: 4, groups: 3, state: 8, kernel: 3, chunk: 4, lo: 0.0, hi: INF, pieces: 3 },
    Case { batch: 2, seqlen: 10, heads: 4, head_dim: 2, groups: 2, state: 3, kernel: 4, chunk: 4, lo: 0.05, hi: 0.3, pieces: 5 },
];

/// CPU forward against the f64 reference: max |got − want|.
const CPU_FWD: f32 = 1e-5;
/// CPU backward against central differences: max |got − fd| / (1 + |fd|).
const CPU_BWD: f32 = 1e-4;
/// Composed and op forward (`scaled_err`), by the dtype of the output (the op returns the dtype of `zxbcdt`).
const DEVICE_FWD: Tolerance = Tolerance::new(2e-5, 1e-2);
/// Composed and op backward through candle autograd (`scaled_err` against the central differences), by the
/// dtype of the gradient.
const DEVICE_BWD: Tolerance = Tolerance::new(1e-4, 1e-2);

impl Case {
    fn dims(&self) -> MixerCoreDims {
        MixerCoreDims {
            heads: self.heads,
            head_dim: self.head_dim,
            groups: self.groups,
            state: self.state,
            conv_kernel: self.kernel,
            chunk: self.chunk,
            eps: 1e-5,
            dt_limit: (self.lo, self.hi),
        }
    }
}

/// Runs every case on `dev` with every input in `dtype` (rounded first, so the reference sees them too).
pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    CASES
        .iter()
        .enumerate()
        .flat_map(|(i, case)| run_case(case, 400 + i as u64, dev, dtype))
        .collect()
}

fn run_case(case: &Case, seed: u64, dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let dims = case.dims();
    let (b, t) = (case.batch, case.seqlen);
    let mc = MixerCase::new(dims, (b, t), seed).rounded(dtype);
    let seq = (case.pieces > 1).then(|| packed_seq_idx(b, t, case.pieces));
    let name = format!(
        "mixer core B{b} T{t} H{} P{} G{} N{} K{} Q{} limit ({}, {}) pieces={} {dtype:?}",
        case.heads,
        case.head_dim,
        case.groups,
        case.state,
        case.kernel,
        case.chunk,
        case.lo,
        case.hi,
        case.pieces
    );
    let mut res = vec![];
    let mut check = |what: &str, err: f32, tol: f32| {
        res.push(CaseResult::new(format!("{name}: {what}"), err, tol));
    };
    let want = narrow(&mc.reference(seq.as_deref()));
    let fd = mc.fd_grads(seq.as_deref());

    // The CPU kernels, into NaN.
    let p = MixerParams::unpack(&dims, &mc.params);
    let mut got = poisoned(want.len());
    cpu::mixer_core_forward_into(
        dims,
        (b, t),
        &mc.zx,
        &mc.conv_w,
        p,
        seq.as_deref(),
        &mut got,
    );
    check("cpu forward", max_abs_diff(&got, &want), CPU_FWD);
    let zeros = MixerCoreGrads::zeros(&dims, (b, t));
    let mut g = MixerCoreGrads {
        d_zxbcdt: poisoned(zeros.d_zxbcdt.len()),
        d_conv_w: poisoned(zeros.d_conv_w.len()),
        d_conv_bias: poisoned(zeros.d_conv_bias.len()),
        d_dt_bias: poisoned(zeros.d_dt_bias.len()),
        d_a_log: poisoned(zeros.d_a_log.len()),
        d_d: poisoned(zeros.d_d.len()),
        d_norm_w: poisoned(zeros.d_norm_w.len()),
    };
    let (zx, w) = (&mc.zx, &mc.conv_w);
    cpu::mixer_core_backward_into(dims, (b, t), zx, w, p, seq.as_deref(), &mc.dout, &mut g);
    for (what, got, fd) in [
        ("cpu d zxbcdt", &g.d_zxbcdt, &fd[0]),
        ("cpu d conv_w", &g.d_conv_w, &fd[1]),
        ("cpu d params", &g.packed_params(), &fd[2]),
    ] {
        check(what, fd_err(got, fd) as f32, CPU_BWD);
    }

    // The composed chain and the op on `dev`, each forward and backward through candle autograd.
    let segments = seq.clone().map(|ids| Segments {
        batch: b,
        seqlen: t,
        ids,
    });
    let seq_t = seq
        .as_ref()
        .map(|v| Tensor::from_slice(v, (b, t), dev).expect("seq_idx"));
    for route in ["composed", "op"] {
        let var = |v: &[f32], shape: &[usize]| {
            Var::from_tensor(&to_tensor(v, shape, dtype, dev)).expect("var")
        };
        let zx_v = var(&mc.zx, &[b, t, dims.in_width()]);
        let w_v = var(&mc.conv_w, &[dims.conv_channels(), dims.conv_kernel]);
        let p_v = var(&mc.params, &[dims.params_len()]);
        let (zt, wt, pt) = (zx_v.as_tensor(), w_v.as_tensor(), p_v.as_tensor());
        let out = match route {
            "composed" => composed::mixer_core(zt, wt, pt, dims, segments.as_ref()),
            _ => mixer_core::mixer_core_packed(zt, wt, pt, dims, seq_t.as_ref()),
        }
        .expect("mixer core forward");
        check(
            &format!("{route} forward"),
            scaled_err(&out, &want),
            DEVICE_FWD.of(out.dtype()),
        );
        let dout = to_tensor(&mc.dout, &[b, t, dims.inner()], DType::F32, dev);
        let grads = (out.to_dtype(DType::F32).expect("f32") * dout)
            .and_then(|l| l.sum_all()?.backward())
            .expect("backward");
        for (what, v, fd) in [
            ("d zxbcdt", &zx_v, &fd[0]),
            ("d conv_w", &w_v, &fd[1]),
            ("d params", &p_v, &fd[2]),
        ] {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            let tol = DEVICE_BWD.of(g.dtype());
            check(&format!("{route} {what}"), scaled_err(g, &narrow(fd)), tol);
        }
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

/// One tiny mixer call: dims, (B, T), inputs and an upstream gradient.
pub struct MixerCase {
    pub dims: MixerCoreDims,
    pub bt: (usize, usize),
    pub zx: Vec<f32>,
    pub conv_w: Vec<f32>,
    pub params: Vec<f32>,
    pub dout: Vec<f32>,
}

impl MixerCase {
    /// Random inputs with `softplus(dt_raw + dt_bias)` spread over about (0.02, 0.7), so a `dt_limit` such as
    /// (0.05, 0.3) clamps some steps from each side.
    pub fn new(dims: MixerCoreDims, bt: (usize, usize), seed: u64) -> Self {
        let mut r = Lcg(seed);
        let rows = bt.0 * bt.1;
        let (i_dim, ch, h) = (dims.inner(), dims.conv_channels(), dims.heads);
        let zx = r.vec(rows * dims.in_width(), -1.0, 1.0);
        let conv_w = r.vec(ch * dims.conv_kernel, -0.5, 0.5);
        let mut params = r.vec(ch, -0.2, 0.2); // conv bias
        params.extend(r.vec(h, -3.0, -1.0)); // dt bias
        params.extend(r.vec(h, -1.0, 1.0)); // A_log
        params.extend(r.vec(h, -1.0, 1.0)); // D
        params.extend(r.vec(i_dim, 0.5, 1.5)); // norm weight
        let dout = r.vec(rows * i_dim, -1.0, 1.0);
        MixerCase {
            dims,
            bt,
            zx,
            conv_w,
            params,
            dout,
        }
    }
    /// The inputs rounded to `dtype`, so the reference sees what a path handed them in `dtype` sees.
    pub fn rounded(mut self, dtype: DType) -> Self {
        for v in [&mut self.zx, &mut self.conv_w, &mut self.params] {
            *v = rounded(std::mem::take(v), dtype);
        }
        self
    }
    pub fn backward(&self) -> MixerCoreGrads {
        let p = MixerParams::unpack(&self.dims, &self.params);
        cpu::mixer_core_backward(
            self.dims,
            self.bt,
            &self.zx,
            &self.conv_w,
            p,
            None,
            &self.dout,
        )
    }
    /// The f64 reference forward.
    pub fn reference(&self, seq_idx: Option<&[i32]>) -> Vec<f64> {
        let args = [widen(&self.zx), widen(&self.conv_w), widen(&self.params)];
        mixer_core_reference(&self.dims, self.bt, &args[0], &args[1], &args[2], seq_idx)
    }
    /// Central differences (in f64) of `Σ dout·reference` w.r.t. zxbcdt, conv_w and the packed params.
    pub fn fd_grads(&self, seq_idx: Option<&[i32]>) -> Vec<Vec<f64>> {
        let args = [widen(&self.zx), widen(&self.conv_w), widen(&self.params)];
        central_differences(&args, 1e-6, |a| {
            mixer_core_reference(&self.dims, self.bt, &a[0], &a[1], &a[2], seq_idx)
                .iter()
                .zip(&self.dout)
                .map(|(o, &d)| o * d as f64)
                .sum()
        })
    }
}

/// H=4, P=2, G=2, N=3, K=3, Q=2 (I=8, C=20, zxbcdt width 32).
pub fn tiny_dims(dt_limit: (f32, f32)) -> MixerCoreDims {
    MixerCoreDims {
        heads: 4,
        head_dim: 2,
        groups: 2,
        state: 3,
        conv_kernel: 3,
        chunk: 2,
        eps: 1e-5,
        dt_limit,
    }
}

#[test]
fn backward_matches_finite_differences_and_the_dt_clamp_stops_exactly_the_clamped_steps() {
    let mut worst = 0f64;
    for (limit, seed) in [((0.0, f32::INFINITY), 2), ((0.05, 0.3), 3)] {
        let case = MixerCase::new(tiny_dims(limit), (2, 5), seed);
        let g = case.backward();
        let fd = case.fd_grads(None);
        for (name, got, fd) in [
            ("zxbcdt", &g.d_zxbcdt, &fd[0]),
            ("conv_w", &g.d_conv_w, &fd[1]),
            ("params", &g.packed_params(), &fd[2]),
        ] {
            let e = fd_err(got, fd);
            worst = worst.max(e);
            assert!(e < 1e-4, "limit {limit:?}: d{name} err {e}");
        }
        // dt_raw columns: zero exactly where the clamp is active.
        let (w, h) = (case.dims.in_width(), case.dims.heads);
        let d_dt_raw: Vec<f32> = g
            .d_zxbcdt
            .chunks_exact(w)
            .flat_map(|row| row[w - h..].to_vec())
            .collect();
        let zeros = d_dt_raw.iter().filter(|&&v| v == 0.0).count();
        if limit.0 > 0.0 {
            assert!(
                zeros > 0 && zeros < d_dt_raw.len(),
                "clamp should be active on some steps only"
            );
        } else {
            assert_eq!(zeros, 0, "no clamp: every dt_raw gets a gradient");
        }
    }
    eprintln!("mixer core backward vs f64 central differences: max err / (1+|fd|) {worst:e}");
}
