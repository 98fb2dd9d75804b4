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
        let block = |first_row: usize, out: &mut [f32]| {
            arch.dispatch(RowBlock {
                m: self,
                x,
                batch,
                first_row,
                out,
            })
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
        match og.len() {
            1 => dots::<S, 1>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            2 => dots::<S, 2>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            3 => dots::<S, 3>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            4 => dots::<S, 4>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            5 => dots::<S, 5>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            6 => dots::<S, 6>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            7 => dots::<S, 7>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
            _ => dots::<S, 8>(simd, w, std::array::from_fn(|k| xs(b0 + k)), og),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matvec_matches_reference_for_both_dtypes_batches_and_sizes() {
        // Small (one thread), odd widths (remainder lanes) and large (parallel blocks).
        for &(rows, cols) in &[(3, 5), (37, 19), (300, 257), (1031, 96)] {
            for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
                let m = Matrix::new(lcg(rows * cols, 7), rows, cols, dtype);
                for batch in [1, 3, 8, 11] {
                    let x = lcg(batch * cols, 11);
                    let mut y = vec![0f32; batch * rows];
                    let mut yt = vec![0f32; batch * rows];
                    m.matvec(&x, batch, &mut y, &mut yt);
                    let want = m.matvec_reference(&x, batch);
                    let err = y
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(err < 1e-4, "{rows}x{cols} {dtype:?} batch {batch}: {err}");
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
