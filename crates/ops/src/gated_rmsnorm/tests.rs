//! The gated RMSNorm case table: every implementation against the f64 reference on fresh random inputs (a seed
//! per case), forward and backward (the reference gradient by central differences of the f64 reference), with
//! the CPU kernels' outputs NaN-poisoned first. Run on the CPU here, and on a CUDA GPU by `tests/cuda.rs`, which
//! includes this file.

use candle_core::{DType, Device, Tensor, Var};
use coil_ops::gated_rmsnorm::{self, composed, cpu};
use coil_testutil::{
    assert_all_ok, central_differences, fd_err, max_abs_diff, narrow, poisoned, rounded,
    scaled_err, to_tensor, widen, CaseResult, Lcg, Tolerance,
};

/// `rows` positions of `width` channels normalised in `groups` groups.
pub struct Case {
    pub rows: usize,
    pub width: usize,
    pub groups: usize,
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    Case { rows: 3, width: 8, groups: 1 },
    Case { rows: 3, width: 8, groups: 2 },
    Case { rows: 3, width: 8, groups: 4 },
    Case { rows: 7, width: 12, groups: 3 },
    Case { rows: 7, width: 32, groups: 4 },
    Case { rows: 1, width: 64, groups: 8 },
    Case { rows: 5, width: 6, groups: 6 },  // groups of one channel
    Case { rows: 4, width: 40, groups: 2 }, // groups of 20: two 8-lane blocks and a tail
];

const EPS: f64 = 1e-5;
/// CPU forward against the f64 reference: max |got − want|.
const CPU_FWD: f32 = 1e-5;
/// CPU backward against central differences: max |got − fd| / (1 + |fd|).
const CPU_BWD: f32 = 2e-5;
/// Composed and device forward (`scaled_err`), by the dtype of the output.
const DEVICE_FWD: Tolerance = Tolerance::new(2e-5, 1e-2);
/// Composed backward through candle autograd (`fd_err`), by the dtype of the gradient.
const DEVICE_BWD: Tolerance = Tolerance::new(2e-5, 1e-2);

/// Runs every case on `dev` with `y` and `z` in `dtype` (rounded first, so the reference sees them too).
pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let mut res = vec![];
    for (i, case) in CASES.iter().enumerate() {
        let &Case {
            rows,
            width,
            groups,
        } = case;
        let mut r = Lcg(350 + i as u64);
        let y = rounded(r.vec(rows * width, -2.0, 2.0), dtype);
        let z = rounded(r.vec(rows * width, -3.0, 3.0), dtype);
        let w = r.vec(width, 0.5, 1.5);
        let dout = r.vec(rows * width, -1.0, 1.0);
        let name = format!("gated_rmsnorm rows {rows} I{width} G{groups} {dtype:?}");
        let mut check = |what: &str, err: f32, tol: f32| {
            res.push(CaseResult::new(format!("{name}: {what}"), err, tol));
        };
        let reference = |a: &[Vec<f64>]| {
            gated_rmsnorm::gated_rmsnorm_reference(&a[0], &a[1], &a[2], groups, EPS)
        };
        let args = [widen(&y), widen(&z), widen(&w)];
        let want = narrow(&reference(&args));
        let fd = central_differences(&args, 1e-6, |a| {
            reference(a)
                .iter()
                .zip(&dout)
                .map(|(o, &d)| o * d as f64)
                .sum()
        });

        let mut got = poisoned(y.len());
        cpu::gated_rmsnorm_into(&y, &z, &w, groups, EPS as f32, &mut got);
        check("cpu forward", max_abs_diff(&got, &want), CPU_FWD);
        let (mut dy, mut dz, mut dw) = (poisoned(y.len()), poisoned(y.len()), poisoned(width));
        let grads = (&mut dy[..], &mut dz[..], &mut dw[..]);
        cpu::gated_rmsnorm_backward_into(&y, &z, &w, groups, EPS as f32, &dout, grads);
        for (what, g, fd) in [
            ("dy", &dy, &fd[0]),
            ("dz", &dz, &fd[1]),
            ("dw", &dw, &fd[2]),
        ] {
            check(&format!("cpu {what}"), fd_err(g, fd) as f32, CPU_BWD);
        }

        let var = |v: &[f32], shape: &[usize], dt: DType| {
            Var::from_tensor(&to_tensor(v, shape, dt, dev)).expect("var")
        };
        let (yv, zv) = (
            var(&y, &[rows, width], dtype),
            var(&z, &[rows, width], dtype),
        );
        let wv = var(&w, &[width], DType::F32);
        let out =
            composed::gated_rmsnorm(yv.as_tensor(), zv.as_tensor(), wv.as_tensor(), groups, EPS)
                .expect("composed gated_rmsnorm");
        check(
            "composed forward",
            scaled_err(&out, &want),
            DEVICE_FWD.of(out.dtype()),
        );
        let grads = (out * to_tensor(&dout, &[rows, width], DType::F32, dev))
            .and_then(|l| l.sum_all()?.backward())
            .expect("backward");
        for (what, v, fd) in [
            ("dy", &yv, &fd[0]),
            ("dz", &zv, &fd[1]),
            ("dw", &wv, &fd[2]),
        ] {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            let tol = DEVICE_BWD.of(g.dtype());
            check(&format!("composed {what}"), fd_err(g, fd) as f32, tol);
        }

        let out = gated_rmsnorm::gated_rmsnorm(
            yv.as_tensor(),
            zv.as_tensor(),
            wv.as_tensor(),
            groups,
            EPS,
        )
        .expect("gated_rmsnorm entry point");
        check(
            "op forward",
            scaled_err(&out, &want),
            DEVICE_FWD.of(out.dtype()),
        );
        // A bf16 y gives a bf16 output: the f32 computation rounded once, the same bits as the f32 path on the
        // same values followed by a cast (on a GPU: the kernel's bf16 instance against its f32 one), also with z a
        // column range of a wider tensor (as the in_proj output's z is).
        if dtype == DType::BF16 {
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).expect("f32");
            let wide = Tensor::cat(&[zv.as_tensor(), yv.as_tensor()], 1).expect("cat");
            let z_view = wide.narrow(1, 0, width).expect("narrow");
            let op = |y: &Tensor, z: &Tensor| {
                gated_rmsnorm::gated_rmsnorm(y, z, wv.as_tensor(), groups, EPS)
                    .expect("entry point")
            };
            let got = op(yv.as_tensor(), &z_view);
            assert_eq!(got.dtype(), DType::BF16, "{name}: output dtype");
            let want32 = op(&f32(yv.as_tensor()), &f32(zv.as_tensor()))
                .to_dtype(DType::BF16)
                .expect("bf16");
            check("op bf16 = op f32 rounded", max_abs_diff(&got, &want32), 0.0);
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
