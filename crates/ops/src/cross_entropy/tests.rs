//! The cross-entropy case table: every implementation against the f64 reference on fresh random logits (a seed
//! per case), forward and backward, with the CPU kernels' outputs NaN-poisoned first; and the op against the
//! composed ops directly, and its errors. Run on the CPU here, and on a CUDA GPU by `tests/cuda.rs`, which
//! includes this file.

use candle_core::{DType, Device, Tensor, Var};
use coil_ops::cross_entropy::{self, composed, cpu, row_cross_entropy};
use coil_testutil::{
    assert_all_ok, narrow, poisoned, rounded, scaled_err, to_tensor, widen, CaseResult, Lcg,
    Tolerance,
};

/// `rows` rows of `vocab` logits.
pub struct Case {
    pub rows: usize,
    pub vocab: usize,
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    Case { rows: 7, vocab: 301 },
    Case { rows: 1, vocab: 2 },
    Case { rows: 33, vocab: 1000 },
    Case { rows: 4, vocab: 50_280 },  // a real vocabulary
];

/// CPU against the f64 reference (`scaled_err`), forward and backward.
const CPU: f32 = 1e-5;
/// Composed and op forward (`scaled_err`; both return f32).
const DEVICE_FWD: Tolerance = Tolerance::new(1e-5, 1e-2);
/// Composed and op backward (`scaled_err`), by the dtype of the gradient (that of the logits).
const DEVICE_BWD: Tolerance = Tolerance::new(1e-5, 1e-2);

/// Runs every case on `dev` with the logits in `dtype` (rounded first, so the reference sees them too).
pub fn run(dev: &Device, dtype: DType) -> Vec<CaseResult> {
    let mut res = vec![];
    for (i, case) in CASES.iter().enumerate() {
        let Case { rows, vocab: v } = *case;
        let mut r = Lcg(500 + i as u64);
        let x = rounded(r.vec(rows * v, -6.0, 6.0), dtype);
        let targets: Vec<u32> = (0..rows).map(|_| r.below(v as u64) as u32).collect();
        let g = r.vec(rows, 0.0, 2.0);
        let name = format!("cross entropy N{rows} V{v} {dtype:?}");
        let mut check = |what: &str, err: f32, tol: f32| {
            res.push(CaseResult::new(format!("{name}: {what}"), err, tol));
        };
        let want = narrow(&cross_entropy::row_cross_entropy_reference(
            &widen(&x),
            v,
            &targets,
        ));
        let want_dx = narrow(&cross_entropy::row_cross_entropy_reference_backward(
            &widen(&x),
            v,
            &targets,
            &widen(&g),
        ));

        let mut ce = poisoned(rows);
        cpu::row_cross_entropy_into(&x, v, &targets, &mut ce);
        check("cpu forward", scaled_err(&ce, &want), CPU);
        let mut dx = poisoned(x.len());
        cpu::row_cross_entropy_backward_into(&x, v, &targets, &g, &mut dx);
        check("cpu backward", scaled_err(&dx, &want_dx), CPU);

        for route in ["composed", "op"] {
            let xv = Var::from_tensor(&to_tensor(&x, &[rows, v], dtype, dev)).expect("var");
            let ce = match route {
                "composed" => composed::row_cross_entropy(xv.as_tensor(), &targets),
                _ => row_cross_entropy(xv.as_tensor(), &targets),
            }
            .expect("cross entropy forward");
            check(
                &format!("{route} forward"),
                scaled_err(&ce, &want),
                DEVICE_FWD.of(ce.dtype()),
            );
            let grads = (ce * to_tensor(&g, &[rows], DType::F32, dev))
                .and_then(|l| l.sum_all()?.backward())
                .expect("backward");
            let dx = grads.get(xv.as_tensor()).expect("a gradient");
            let tol = DEVICE_BWD.of(dx.dtype());
            check(&format!("{route} backward"), scaled_err(dx, &want_dx), tol);
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

#[test]
fn fused_matches_composed_in_value_and_gradient() -> candle_core::Result<()> {
    let (rows, v) = (7, 301);
    let mut r = Lcg(9);
    let x = r.vec(rows * v, -6.0, 6.0);
    let targets: Vec<u32> = (0..rows).map(|i| ((i * 97 + 5) % v) as u32).collect();
    let g = r.vec(rows, 0.0, 2.0);
    for dtype in [DType::F32, DType::BF16] {
        let run = |fused: bool| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let var = Var::from_tensor(
                &Tensor::from_slice(&x, (rows, v), &Device::Cpu)?.to_dtype(dtype)?,
            )?;
            let ce = if fused {
                row_cross_entropy(var.as_tensor(), &targets)?
            } else {
                composed::row_cross_entropy(var.as_tensor(), &targets)?
            };
            let gt = Tensor::from_slice(&g, rows, &Device::Cpu)?;
            let grads = (&ce * gt)?.sum_all()?.backward()?;
            let dx = grads.get(var.as_tensor()).expect("gradient");
            assert_eq!(dx.dtype(), dtype);
            Ok((
                ce.to_vec1()?,
                dx.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            ))
        };
        let (ce_f, dx_f) = run(true)?;
        let (ce_c, dx_c) = run(false)?;
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        assert!(scaled_err(&ce_f, &ce_c) < 1e-5, "{dtype:?} values");
        assert!(scaled_err(&dx_f, &dx_c) < tol, "{dtype:?} gradients");
        // and by hand for row 0: ce = lse − x[t]
        let row = &x[..v];
        let want = cpu::row_lse(row) - row[targets[0] as usize];
        if dtype == DType::F32 {
            assert!((ce_f[0] - want).abs() < 1e-5);
        }
    }
    Ok(())
}

#[test]
fn bad_targets_are_clear_errors() {
    let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let e = row_cross_entropy(&x, &[0, 5]).unwrap_err().to_string();
    assert!(e.contains("target 5"), "{e}");
    let e = row_cross_entropy(&x, &[0]).unwrap_err().to_string();
    assert!(e.contains("1 targets for 2 rows"), "{e}");
}
