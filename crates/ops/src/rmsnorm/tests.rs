//! The RMSNorm op against the f64 reference, forward and backward (the CPU kernels, and the op through candle
//! autograd), and the composed fallback for inputs the op does not take.

use super::{cpu, reference, rms_norm};
use candle_core::{DType, Device, Tensor, Var};
use coil_testutil::{narrow, poisoned, scaled_err, vjp, widen, Lcg};

/// (rows, d)
const CASES: &[(usize, usize)] = &[(1, 1), (3, 5), (17, 64), (40, 768), (2, 1001)];

#[test]
fn cpu_kernels_and_the_op_match_the_reference() -> candle_core::Result<()> {
    let eps = 1e-5;
    for (i, &(rows, d)) in CASES.iter().enumerate() {
        let mut r = Lcg(950 + i as u64);
        let (x, w, dy) = (
            r.vec(rows * d, -2.0, 2.0),
            r.vec(d, 0.5, 1.5),
            r.vec(rows * d, -1.0, 1.0),
        );
        let want = narrow(&reference::rms_norm_reference(&widen(&x), &widen(&w), eps));
        let (want_dx, want_dw) =
            reference::rms_norm_reference_backward(&widen(&x), &widen(&w), eps, &widen(&dy));
        let (want_dx, want_dw) = (narrow(&want_dx), narrow(&want_dw));
        let case = format!("rms norm {rows}x{d}");
        let mut y = poisoned(x.len());
        cpu::rms_norm_into(&x, &w, eps as f32, &mut y);
        assert!(scaled_err(&y, &want) < 1e-6, "{case}: cpu");
        let (mut dx, mut dw) = (poisoned(x.len()), poisoned(d));
        cpu::rms_norm_backward_into(&x, &w, eps as f32, &dy, &mut dx, &mut dw);
        assert!(scaled_err(&dx, &want_dx) < 1e-5, "{case}: cpu dx");
        assert!(scaled_err(&dw, &want_dw) < 1e-5, "{case}: cpu dw");

        // The op (contiguous f32) and the composed fallback (a transposed-copy view of x), through autograd.
        for fall_back in [false, true] {
            let dev = Device::Cpu;
            let xv = Var::from_vec(x.clone(), (rows, d), &dev)?;
            let wv = Var::from_vec(w.clone(), d, &dev)?;
            let xin = if fall_back {
                xv.as_tensor().t()?.contiguous()?.t()?
            } else {
                xv.as_tensor().clone()
            };
            let out = rms_norm(&xin, wv.as_tensor(), eps)?;
            let got: Vec<f32> = out.flatten_all()?.to_vec1()?;
            assert!(
                scaled_err(&got, &want) < 1e-6,
                "{case} fallback {fall_back}"
            );
            let [gx, gw] =
                <[Vec<f32>; 2]>::try_from(vjp(&out, &dy, &[&xv, &wv])?).expect("two gradients");
            assert!(
                scaled_err(&gx, &want_dx) < 1e-5,
                "{case} dx fallback {fall_back}"
            );
            assert!(
                scaled_err(&gw, &want_dw) < 1e-5,
                "{case} dw fallback {fall_back}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_weight_that_does_not_fit_is_a_clear_error() {
    let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    let e = rms_norm(&x, &w, 1e-5).unwrap_err().to_string();
    assert!(e.contains("[4]") && e.contains("last dimension 3"), "{e}");
}
