//! Dense weight matrices of the decode step and the batched matrix-vector product over them.
//!
//! Decode at small batch is bound by reading the weights, so each matrix is stored once, row-major `[out, in]`
//! (the checkpoint layout), in f32 or bf16, and [`Matrix::matvec`] reads every row exactly once per step for
//! the whole batch. Rows are split into blocks that rayon spreads over the cores; tiny matrices stay on one
//! thread. [`Matrix::matvec_reference`] is the plain definition the fast path is tested against.

use half::bf16;
use rayon::prelude::*;

/// Storage precision of the decode weights (activations and states are always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    /// bf16 weights, rounded to nearest even from the model's f32 values; products accumulate in f32.
    Bf16,
}

impl WeightDtype {
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 => 2,
        }
    }
}

#[derive(Clone, Debug)]
enum Store {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

/// A row-major `[rows, cols]` weight matrix.
#[derive(Clone, Debug)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    store: Store,
}

/// Below this many weights a product runs on the calling thread (rayon's hand-off would cost more).
const PARALLEL_MIN: usize = 1 << 15;

impl Matrix {
    /// `data` is row-major `[rows, cols]`; panics if the length does not match (a caller bug).
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, dtype: WeightDtype) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        let store = match dtype {
            WeightDtype::F32 => Store::F32(data),
            WeightDtype::Bf16 => Store::Bf16(data.iter().map(|&v| bf16::from_f32(v)).collect()),
        };
        Matrix { rows, cols, store }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes one full read of the matrix moves.
    pub fn bytes(&self) -> usize {
        self.rows
            * self.cols
            * match self.store {
                Store::F32(_) => 4,
                Store::Bf16(_) => 2,
            }
    }

    /// Copies row `r` into `out` as f32 (the embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.store {
            Store::F32(d) => out[..c].copy_from_slice(&d[r * c..(r + 1) * c]),
            Store::Bf16(d) => {
                for (o, v) in out[..c].iter_mut().zip(&d[r * c..(r + 1) * c]) {
                    *o = v.to_f32();
                }
            }
        }
    }

    /// `y[b, r] = Σ_c W[r, c] · x[b, c]` for `b < batch`: `x` [batch, cols], `y` [batch, rows].
    /// `yt` is scratch of at least `rows · batch` (used when batch > 1).
    pub fn matvec(&self, x: &[f32], batch: usize, y: &mut [f32], yt: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(x.len() >= batch * cols, "matvec: x too short");
        assert!(y.len() >= batch * rows, "matvec: y too short");
        let x = &x[..batch * cols];
        if batch == 1 {
            self.rows_times(x, 1, &mut y[..rows]);
            return;
        }
        assert!(yt.len() >= batch * rows, "matvec: scratch too short");
        let yt = &mut yt[..batch * rows];
        self.rows_times(x, batch, yt);
        for (r, chunk) in yt.chunks_exact(batch).enumerate() {
            for (b, &v) in chunk.iter().enumerate() {
                y[b * rows + r] = v;
            }
        }
    }

    /// Fills `out` [rows, batch] (row-major by weight row) with the products of every row and every `x` row.
    fn rows_times(&self, x: &[f32], batch: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        // `dispatch` runs the kernel compiled for the widest vector unit this CPU has (AVX2 on x86-64),
        // chosen at run time, so a portable build still vectorises the dot products 8 lanes wide.
        let arch = pulp::Arch::new();
        let bf16_avx2 = bf16_avx2::rows(self);
        let block = |first_row: usize, out: &mut [f32]| match bf16_avx2 {
            Some(rows) => rows.times(x, batch, first_row, out),
            None => arch.dispatch(RowBlock {
                m: self,
                x,
                batch,
                first_row,
                out,
            }),
        };
        if rows * cols < PARALLEL_MIN {
            block(0, out);
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        let rows_per_task = rows.div_ceil(threads * 8).max(4);
        out.par_chunks_mut(rows_per_task * batch)
            .enumerate()
            .for_each(|(i, o)| block(i * rows_per_task, o));
    }

    /// The plain definition (f64 accumulation, one thread) for tests.
    pub fn matvec_reference(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        let w = |r: usize, c: usize| -> f64 {
            match &self.store {
                Store::F32(d) => d[r * cols + c] as f64,
                Store::Bf16(d) => d[r * cols + c].to_f64(),
            }
        };
        let mut y = vec![0f32; batch * rows];
        for b in 0..batch {
            for r in 0..rows {
                y[b * rows + r] = (0..cols)
                    .map(|c| w(r, c) * x[b * cols + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }
}

/// `Σ x`, multithreaded and vectorised like [`Matrix::matvec`]: reading a buffer far larger than the caches
/// measures the memory bandwidth the products can reach.
pub fn parallel_sum(x: &[f32]) -> f32 {
    struct Sum<'a>(&'a [f32]);
    impl pulp::WithSimd for Sum<'_> {
        type Output = f32;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
            let (v, t) = S::as_simd_f32s(self.0);
            let mut acc = [simd.splat_f32s(0.0); 4];
            let (v4, vr) = pulp::as_arrays::<4, _>(v);
            for a in v4 {
                for i in 0..4 {
                    acc[i] = simd.add_f32s(acc[i], a[i]);
                }
            }
            for a in vr {
                acc[0] = simd.add_f32s(acc[0], *a);
            }
            let s = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
            simd.reduce_sum_f32s(s) + t.iter().sum::<f32>()
        }
    }
    let arch = pulp::Arch::new();
    let chunk = x
        .len()
        .div_ceil(rayon::current_num_threads() * 8)
        .max(1 << 12);
    x.par_chunks(chunk).map(|c| arch.dispatch(Sum(c))).sum()
}

/// The products of a block of consecutive weight rows with every `x` row: `out` [rows in block, batch].
struct RowBlock<'a> {
    m: &'a Matrix,
    x: &'a [f32],
    batch: usize,
    first_row: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for RowBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let RowBlock {
            m,
            x,
            batch,
            first_row,
            out,
        } = self;
        let cols = m.cols;
        let mut buf = [0f32; WIDEN];
        for (i, o) in out.chunks_exact_mut(batch).enumerate() {
            let r = first_row + i;
            o.fill(0.0);
            match &m.store {
                Store::F32(d) => row_times(simd, &d[r * cols..(r + 1) * cols], x, cols, 0, o),
                Store::Bf16(d) => {
                    // Widen a slice of the row once, then use it for every sequence of the batch.
                    for (c, wc) in d[r * cols..(r + 1) * cols].chunks(WIDEN).enumerate() {
                        let wf = &mut buf[..wc.len()];
                        for (f, &h) in wf.iter_mut().zip(wc) {
                            *f = widen(h);
                        }
                        row_times(simd, wf, x, cols, c * WIDEN, o);
                    }
                }
            }
        }
    }
}

/// Columns of a bf16 row widened at a time (on the stack).
const WIDEN: usize = 512;
/// Sequences whose dot products share one pass over a weight row (accumulators held in registers).
const GROUP: usize = 8;

/// `o[b] += Σ_j w[j] · x[b, start + j]` for every sequence `b` (x rows are `cols` apart).
#[inline(always)]
fn row_times<S: pulp::Simd>(
    simd: S,
    w: &[f32],
    x: &[f32],
    cols: usize,
    start: usize,
    o: &mut [f32],
) {
    let n = w.len();
    let xs = |b: usize| &x[b * cols + start..b * cols + start + n];
    if o.len() == 1 {
        o[0] += dot(simd, w, xs(0));
        return;
    }
    for (g, og) in o.chunks_mut(GROUP).enumerate() {
        let b0 = g * GROUP;
        by_group_len!(og.len(), B => dots::<S, B>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og));
    }
}

/// Runs `$body` with the const `$b` = `$len` (1 to [`GROUP`]): the group kernels keep `B` accumulators in
/// registers, so their width is a compile-time constant.
macro_rules! by_group_len {
    ($len:expr, $b:ident => $body:expr) => {
        match $len {
            1 => {
                const $b: usize = 1;
                $body
            }
            2 => {
                const $b: usize = 2;
                $body
            }
            3 => {
                const $b: usize = 3;
                $body
            }
            4 => {
                const $b: usize = 4;
                $body
            }
            5 => {
                const $b: usize = 5;
                $body
            }
            6 => {
                const $b: usize = 6;
                $body
            }
            7 => {
                const $b: usize = 7;
                $body
            }
            _ => {
                const $b: usize = 8;
                $body
            }
        }
    };
}
use by_group_len;

/// One weight row against `B` vectors: each vector of weights is loaded once and used `B` times.
#[inline(always)]
fn dots<S: pulp::Simd, const B: usize>(simd: S, w: &[f32], xs: [&[f32]; B], o: &mut [f32]) {
    let (wv, wt) = S::as_simd_f32s(w);
    let n = wv.len();
    let xv: [&[S::f32s]; B] = std::array::from_fn(|b| &S::as_simd_f32s(xs[b]).0[..n]);
    let mut acc = [simd.splat_f32s(0.0); B];
    for (j, &a) in wv.iter().enumerate() {
        for b in 0..B {
            acc[b] = simd.mul_add_e_f32s(a, xv[b][j], acc[b]);
        }
    }
    let tail = wt.len();
    for b in 0..B {
        let xt = &xs[b][xs[b].len() - tail..];
        o[b] += simd.reduce_sum_f32s(acc[b]) + wt.iter().zip(xt).map(|(p, q)| p * q).sum::<f32>();
    }
}

/// `Σ w·x` with four vector accumulators (fused multiply-add where the CPU has it).
#[inline(always)]
fn dot<S: pulp::Simd>(simd: S, w: &[f32], x: &[f32]) -> f32 {
    let (wv, wt) = S::as_simd_f32s(w);
    let (xv, xt) = S::as_simd_f32s(x);
    let zero = simd.splat_f32s(0.0);
    let mut acc = [zero; 4];
    let (w4, wr) = pulp::as_arrays::<4, _>(wv);
    let (x4, xr) = pulp::as_arrays::<4, _>(xv);
    for (a, b) in w4.iter().zip(x4) {
        for i in 0..4 {
            acc[i] = simd.mul_add_e_f32s(a[i], b[i], acc[i]);
        }
    }
    for (a, b) in wr.iter().zip(xr) {
        acc[0] = simd.mul_add_e_f32s(*a, *b, acc[0]);
    }
    let s = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    let mut total = simd.reduce_sum_f32s(s);
    for (a, b) in wt.iter().zip(xt) {
        total += a * b;
    }
    total
}

/// bf16 → f32 is exact: the bf16 bits are the high half of the f32.
#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

/// bf16 rows on x86-64 with AVX2 and FMA: the weights are widened in registers as they are loaded, eight at
/// a time, so a row streams from memory once and is never stored widened (the portable path widens 512
/// columns into a stack buffer and reads them back). Other CPUs take the portable path.
#[cfg(target_arch = "x86_64")]
mod bf16_avx2 {
    use super::{Matrix, Store, GROUP};
    use half::slice::HalfFloatSliceExt;
    use std::arch::x86_64::*;

    /// A bf16 matrix's bits, when this CPU has AVX2 and FMA.
    #[derive(Clone, Copy)]
    pub struct Rows<'a> {
        bits: &'a [u16],
        cols: usize,
    }

    pub fn rows(m: &Matrix) -> Option<Rows<'_>> {
        match &m.store {
            Store::Bf16(d)
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") =>
            {
                Some(Rows {
                    bits: d.reinterpret_cast(),
                    cols: m.cols,
                })
            }
            _ => None,
        }
    }

    impl Rows<'_> {
        /// `out` [rows in block, batch] = the rows from `first_row` times every `x` row.
        pub fn times(self, x: &[f32], batch: usize, first_row: usize, out: &mut [f32]) {
            let cols = self.cols;
            assert!(x.len() >= batch * cols, "matvec: x too short");
            for (i, o) in out.chunks_exact_mut(batch).enumerate() {
                let r = first_row + i;
                let w = &self.bits[r * cols..(r + 1) * cols];
                // SAFETY: `rows` checked that the CPU has AVX2 and FMA; the kernels read `cols` values from
                // `w` and from each `x` row, which the slices above and the assert guarantee.
                unsafe {
                    if batch == 1 {
                        o[0] = dot(w, &x[..cols]);
                        continue;
                    }
                    o.fill(0.0); // the group kernels add to it
                    for (g, og) in o.chunks_mut(GROUP).enumerate() {
                        let b0 = g * GROUP;
                        let xs = |k: usize| &x[(b0 + k) * cols..(b0 + k + 1) * cols];
                        by_group_len!(og.len(), B => dots::<B>(w, std::array::from_fn(xs), og));
                    }
                }
            }
        }
    }

    /// Eight bf16 values widened to f32 (exact: a bf16 is the high half of an f32).
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p.cast());
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    fn widen(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    /// `Σ w·x` with four accumulators (FMA latency hidden); `x` as long as `w`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = j + 8 * k;
                *a = _mm256_fmadd_ps(load8(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
            }
            j += 32;
        }
        while j + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load8(wp.add(j)), _mm256_loadu_ps(xp.add(j)), acc[0]);
            j += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(s) + (j..n).map(|t| widen(w[t]) * x[t]).sum::<f32>()
    }

    /// `o[b] += Σ_j w[j]·xs[b][j]`: each widened weight vector is used for all `B` sequences.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots<const B: usize>(w: &[u16], xs: [&[f32]; B], o: &mut [f32]) {
        let n = w.len();
        let wp = w.as_ptr();
        let mut acc = [_mm256_setzero_ps(); B];
        let mut j = 0;
        while j + 8 <= n {
            let a = load8(wp.add(j));
            for b in 0..B {
                acc[b] = _mm256_fmadd_ps(a, _mm256_loadu_ps(xs[b].as_ptr().add(j)), acc[b]);
            }
            j += 8;
        }
        for b in 0..B {
            o[b] += hsum(acc[b]) + (j..n).map(|t| widen(w[t]) * xs[b][t]).sum::<f32>();
        }
    }
}

/// Non-x86 CPUs: always the portable path.
#[cfg(not(target_arch = "x86_64"))]
mod bf16_avx2 {
    use super::Matrix;

    #[derive(Clone, Copy)]
    pub enum Rows {}

    pub fn rows(_: &Matrix) -> Option<Rows> {
        None
    }

    impl Rows {
        pub fn times(self, _: &[f32], _: usize, _: usize, _: &mut [f32]) {
            match self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use coil_testutil::{max_abs_diff, Lcg};

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        Lcg(seed).vec(n, -1.0, 1.0)
    }

    #[test]
    fn matvec_matches_reference_for_both_dtypes_batches_and_sizes() {
        // Small (one thread), odd widths (remainder lanes) and large (parallel blocks).
        for &(rows, cols) in &[(3, 5), (37, 19), (300, 257), (1031, 96)] {
            for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
                let m = Matrix::new(lcg(rows * cols, 7), rows, cols, dtype);
                for batch in [1, 3, 8, 11] {
                    let x = lcg(batch * cols, 11);
                    // Scratch and output hold garbage, as they do between decode steps.
                    let mut y = vec![f32::NAN; batch * rows];
                    let mut yt = vec![f32::NAN; batch * rows];
                    m.matvec(&x, batch, &mut y, &mut yt);
                    m.matvec(&x, batch, &mut y, &mut yt); // and again over the first result
                    let want = m.matvec_reference(&x, batch);
                    let err = max_abs_diff(&y, &want);
                    assert!(err < 1e-4, "{rows}x{cols} {dtype:?} batch {batch}: {err}");
                }
            }
        }
    }

    /// `matvec` picks one bf16 kernel per CPU; both must match the reference wherever they can run.
    #[test]
    fn portable_and_avx2_bf16_kernels_match_the_reference() {
        for &(rows, cols) in &[(3, 5), (37, 19), (40, 96), (9, 257)] {
            let m = Matrix::new(lcg(rows * cols, 3), rows, cols, WeightDtype::Bf16);
            for batch in [1, 2, 8, 11] {
                let x = lcg(batch * cols, 5);
                let want = m.matvec_reference(&x, batch); // [batch, rows]
                                                          // Outputs start as garbage: the kernels must overwrite, not add to, what is there.
                let mut paths = vec![("portable", vec![f32::NAN; rows * batch])];
                pulp::Arch::new().dispatch(RowBlock {
                    m: &m,
                    x: &x,
                    batch,
                    first_row: 0,
                    out: &mut paths[0].1,
                });
                if let Some(fast) = bf16_avx2::rows(&m) {
                    let mut out = vec![f32::NAN; rows * batch];
                    fast.times(&x, batch, 0, &mut out);
                    paths.push(("avx2", out));
                }
                for (name, out) in paths {
                    // `out` is [rows, batch]
                    let out: Vec<f32> = (0..rows * batch)
                        .map(|i| out[(i % rows) * batch + i / rows])
                        .collect();
                    let err = max_abs_diff(&out, &want);
                    assert!(err < 1e-4, "{name} {rows}x{cols} batch {batch}: {err}");
                }
            }
        }
    }

    #[test]
    fn bf16_storage_rounds_and_widens_exactly() {
        let m = Matrix::new(
            vec![1.0, 1.0 + 1.0 / 256.0, -3.5, 1e-3],
            2,
            2,
            WeightDtype::Bf16,
        );
        let mut row = [0f32; 2];
        m.row_into(1, &mut row);
        assert_eq!(row[0], -3.5);
        assert_eq!(row[1], bf16::from_f32(1e-3).to_f32());
        assert_eq!(m.bytes(), 8);
    }
}
