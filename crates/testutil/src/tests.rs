use super::*;
use candle_core::{Device, Tensor};

#[test]
fn metrics_see_nan_on_either_side() {
    let a = [1.0f32, 2.0, 3.0];
    let mut b = poisoned(3);
    assert!(max_abs_diff(&a, &b).is_nan());
    assert!(rel_err(&b, &a).is_nan());
    assert!(scaled_err(&a, &b).is_nan());
    assert!(rel_l2(&a, &b).is_nan());
    assert!(fd_err(&b, &[0.0; 3]).is_nan());
    b.copy_from_slice(&a);
    b[2] = f32::NAN;
    assert!(
        max_abs_diff(&a, &b).is_nan(),
        "a NaN in the last place counts"
    );
    assert!(!CaseResult::new("nan", f32::NAN, 1.0).ok());
}

#[test]
fn metrics_on_slices_and_tensors_agree() {
    let got = vec![1.0f32, -2.5, 4.0];
    let want = vec![1.5f32, -2.0, 2.0];
    assert_eq!(max_abs_diff(&got, &want), 2.0);
    assert_eq!(rel_err(&got, &want), 1.0);
    assert_eq!(scaled_err(&got, &want), 1.0);
    let (gt, wt) = (
        Tensor::new(got.as_slice(), &Device::Cpu).unwrap(),
        Tensor::new(want.as_slice(), &Device::Cpu).unwrap(),
    );
    assert_eq!(max_abs_diff(&gt, &wt), 2.0);
    assert_eq!(max_abs_diff(&gt, &want), 2.0);
    let l2 = (0.25f64 + 0.25 + 4.0).sqrt() / (2.25f64 + 4.0 + 4.0).sqrt();
    assert!((rel_l2(&gt, &wt) - l2).abs() < 1e-12);
    assert!((l2_norm(&wt) - 10.25f64.sqrt()).abs() < 1e-12);
    // scaled_err is absolute below 1; rel_err floors the scale at 1e-3.
    assert_eq!(scaled_err(&[0.5f32], &[0.25f32]), 0.25);
    assert_eq!(rel_err(&[1e-3f32], &[0.0f32]), 1.0);
}

#[test]
#[should_panic(expected = "shapes differ")]
fn tensor_metrics_check_shapes() {
    let a = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    max_abs_diff(&a, &b);
}

#[test]
fn lcg_is_seeded_and_in_range() {
    let (a, b) = (Lcg(7).vec(100, -1.0, 1.0), Lcg(7).vec(100, -1.0, 1.0));
    assert_eq!(a, b);
    assert_ne!(a, Lcg(8).vec(100, -1.0, 1.0));
    assert!(a.iter().all(|&v| (-1.0..1.0).contains(&v)));
    assert!(a.iter().all(|&v| v != 0.0), "never zeros");
    let mut r = Lcg(3);
    assert!((0..100).all(|_| r.below(5) < 5));
}

#[test]
fn tolerances_follow_the_dtype() {
    let t = Tolerance::new(1e-5, 1e-2);
    assert_eq!(t.of(DType::F32), 1e-5);
    assert_eq!(t.of(DType::BF16), 1e-2);
    assert_eq!(t.of(DType::F16), 1e-2);
}

#[test]
fn central_differences_of_a_polynomial() {
    // f(x, y) = x0² · y0 + 3·x1
    let args = vec![vec![1.5, -2.0], vec![0.5]];
    let g = central_differences(&args, 1e-5, |a| a[0][0] * a[0][0] * a[1][0] + 3.0 * a[0][1]);
    assert!((g[0][0] - 1.5).abs() < 1e-8);
    assert!((g[0][1] - 3.0).abs() < 1e-8);
    assert!((g[1][0] - 2.25).abs() < 1e-8);
}

#[test]
fn packed_seq_idx_cuts_rows_differently() {
    let ids = packed_seq_idx(2, 8, 3);
    assert_eq!(&ids[..8], &[0, 0, 1, 1, 2, 2, 2, 2]);
    assert_eq!(&ids[8..], &[0, 0, 0, 1, 1, 1, 2, 2]);
    assert!(packed_seq_idx(1, 5, 1).iter().all(|&v| v == 0));
}
