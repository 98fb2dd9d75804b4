//! The linear op against the f64 reference, forward and backward through candle autograd, on contiguous f32
//! CPU tensors (the op) and on the cases that fall back to candle's `matmul` (bf16, a transposed view).

use super::{cpu, linear, reference};
use candle_core::{DType, Device, Tensor, Var};
use coil_testutil::{narrow, poisoned, scaled_err, vjp, widen, Lcg};

/// (rows, in, out); the last runs in column blocks.
const CASES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 7),
    (17, 64, 33),
    (64, 96, 300),
    (5, 16, 4500),
];

#[test]
fn cpu_kernel_and_autograd_match_the_reference() -> candle_core::Result<()> {
    for (i, &(rows, d_in, d_out)) in CASES.iter().enumerate() {
        let mut r = Lcg(900 + i as u64);
        let (x, w, dy) = (
            r.vec(rows * d_in, -1.0, 1.0),
            r.vec(d_out * d_in, -1.0, 1.0),
            r.vec(rows * d_out, -1.0, 1.0),
        );
        let want = narrow(&reference::linear_reference(&widen(&x), &widen(&w), d_in));
        let (want_dx, want_dw) =
            reference::linear_reference_backward(&widen(&x), &widen(&w), d_in, &widen(&dy));
        let mut y = poisoned(rows * d_out);
        cpu::linear_into(&x, &w, d_in, &mut y);
        let case = format!("linear {rows}x{d_in} -> {d_out}");
        assert!(scaled_err(&y, &want) < 1e-6, "{case}: cpu");

        for fall_back in [false, true] {
            let dev = Device::Cpu;
            let xv = Var::from_vec(x.clone(), (rows, d_in), &dev)?;
            // The fallback: the weight as the transpose of a transposed copy (not contiguous).
            let wv = Var::from_vec(w.clone(), (d_out, d_in), &dev)?;
            let wt = if fall_back {
                wv.as_tensor().t()?.contiguous()?.t()?
            } else {
                wv.as_tensor().clone()
            };
            let out = linear(xv.as_tensor(), &wt)?;
            assert_eq!(out.dims(), [rows, d_out]);
            let got: Vec<f32> = out.flatten_all()?.to_vec1()?;
            assert!(
                scaled_err(&got, &want) < 1e-6,
                "{case} fallback {fall_back}"
            );
            let [dx, dw] =
                <[Vec<f32>; 2]>::try_from(vjp(&out, &dy, &[&xv, &wv])?).expect("two gradients");
            assert!(
                scaled_err(&dx, &narrow(&want_dx)) < 1e-6,
                "{case} dx {fall_back}"
            );
            assert!(
                scaled_err(&dw, &narrow(&want_dw)) < 1e-6,
                "{case} dw {fall_back}"
            );
        }
    }
    Ok(())
}

#[test]
fn bf16_falls_back_to_matmul_and_shape_errors_are_clear() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::ones((2, 3), DType::BF16, &dev)?;
    let w = Tensor::ones((4, 3), DType::BF16, &dev)?;
    let y = linear(&x, &w)?;
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(
        y.to_dtype(DType::F32)?.to_vec2::<f32>()?,
        vec![vec![3f32; 4]; 2]
    );
    let bad = Tensor::ones((4, 5), DType::F32, &dev)?;
    let e = linear(&x.to_dtype(DType::F32)?, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 features") && e.contains("[4, 5]"), "{e}");
    Ok(())
}
