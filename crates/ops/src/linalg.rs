//! A bounds-checked view over the `gemm` crate for the dense products of the CPU kernels: the small ones inside
//! their rayon tasks, and the large one of [`crate::linear`].

/// A strided, read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major contiguous view.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst[m, n] = alpha * dst + a[m, k] · b[k, n]` with `dst` row-major contiguous; `alpha = None` overwrites.
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, alpha: Option<f32>) {
    matmul_rs(dst, b.cols, a, b, alpha)
}

/// [`matmul`] into a row-major `dst` whose rows are `dst_rs` elements apart (`dst_rs ≥ n`): a block of a larger
/// matrix.
pub fn matmul_rs(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, alpha: Option<f32>) {
    product(dst, dst_rs, a, b, alpha, gemm::Parallelism::None)
}

/// [`matmul_rs`] (overwriting) over all of rayon's threads: one large product, not one inside a rayon task.
pub fn matmul_par(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    product(dst, dst_rs, a, b, None, par)
}

fn product(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat,
    b: Mat,
    alpha: Option<f32>,
    par: gemm::Parallelism,
) {
    a.check();
    b.check();
    assert_eq!(a.cols, b.rows, "matmul inner dimensions");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n, "matmul destination row stride below its width");
    assert!(
        dst.len() >= (m - 1) * dst_rs + n,
        "matmul destination too small"
    );
    if k == 0 {
        for row in dst.chunks_mut(dst_rs).take(m) {
            match alpha {
                None => row[..n].fill(0.0),
                Some(s) => row[..n].iter_mut().for_each(|v| *v *= s),
            }
        }
        return;
    }
    // SAFETY: every view was bounds-checked above, `dst` holds its m rows of n elements `dst_rs` apart, and the
    // views do not alias `dst` (it is borrowed mutably while they are shared borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            alpha.is_some(),
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            alpha.unwrap_or(0.0),
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `Σ a_i·b_i` with the products and the sum in f64, over eight fixed lanes: it vectorises, and the order (so the
/// result) depends on nothing but the length.
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot_f64: lengths");
    let mut lanes = [0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = (ac.remainder().iter().zip(bc.remainder()))
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            lanes[k] += x[k] as f64 * y[k] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_f64_matches_the_plain_sum() {
        let a: Vec<f32> = (0..21).map(|i| 0.1 * i as f32 - 1.0).collect();
        let b: Vec<f32> = (0..21).map(|i| 1.5 - 0.07 * i as f32).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((dot_f64(&a, &b) - want).abs() < 1e-12);
    }

    #[test]
    fn matmul_matches_loops_with_transposes_and_accumulate() {
        let a: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect(); // 3x4
        let b: Vec<f32> = (0..8).map(|v| 1.0 - v as f32 * 0.25).collect(); // 4x2
        let mut want = [0f32; 6];
        for i in 0..3 {
            for j in 0..2 {
                want[i * 2 + j] = (0..4).map(|k| a[i * 4 + k] * b[k * 2 + j]).sum();
            }
        }
        let mut got = [1f32; 6];
        matmul(&mut got, Mat::rows(&a, 3, 4), Mat::rows(&b, 4, 2), None);
        assert_eq!(got, want);
        // bᵀ stored as 2x4, used through a transposed view; accumulate onto 2·dst.
        let bt: Vec<f32> = (0..8).map(|i| b[(i % 4) * 2 + i / 4]).collect();
        let mut acc = [1f32; 6];
        matmul(
            &mut acc,
            Mat::rows(&a, 3, 4),
            Mat::rows(&bt, 2, 4).t(),
            Some(2.0),
        );
        for i in 0..6 {
            assert!((acc[i] - (2.0 + want[i])).abs() < 1e-5);
        }
        // The same product into the left 3x2 block of a 3x5 matrix: the other columns stay untouched.
        let mut wide = [7f32; 15];
        matmul_rs(&mut wide, 5, Mat::rows(&a, 3, 4), Mat::rows(&b, 4, 2), None);
        for i in 0..3 {
            assert_eq!(wide[i * 5..i * 5 + 2], want[i * 2..i * 2 + 2]);
            assert_eq!(wide[i * 5 + 2..i * 5 + 5], [7.0; 3]);
        }
    }
}
