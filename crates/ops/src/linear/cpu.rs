//! The CPU forward: one `gemm` call over all of rayon's threads (the products inside other ops' kernels use
//! single-threaded `gemm` inside their own rayon tasks instead).

use crate::linalg::{matmul_par, Mat};

/// `y [N, out] = x [N, in] · wᵀ` for `w` [out, in], into `y`, every element of which it writes.
pub fn linear_into(x: &[f32], w: &[f32], d_in: usize, y: &mut [f32]) {
    assert!(d_in > 0, "linear: no input features");
    assert_eq!(x.len() % d_in, 0, "linear: x length");
    assert_eq!(w.len() % d_in, 0, "linear: weight length");
    let (rows, d_out) = (x.len() / d_in, w.len() / d_in);
    assert_eq!(y.len(), rows * d_out, "linear: output length");
    matmul_par(y, Mat::rows(x, rows, d_in), Mat::rows(w, d_out, d_in).t());
}
