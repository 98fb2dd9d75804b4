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
/// Lanes of the unrolled dot product (several independent accumulators so the compiler vectorises).
const LANES: usize = 16;

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
        let work = |first_row: usize, out: &mut [f32]| {
            for (i, o) in out.chunks_exact_mut(batch).enumerate() {
                let r = first_row + i;
                match &self.store {
                    Store::F32(d) => {
                        let w = &d[r * cols..(r + 1) * cols];
                        for (b, ob) in o.iter_mut().enumerate() {
                            *ob = dot_f32(w, &x[b * cols..(b + 1) * cols]);
                        }
                    }
                    Store::Bf16(d) => {
                        let w = &d[r * cols..(r + 1) * cols];
                        for (b, ob) in o.iter_mut().enumerate() {
                            *ob = dot_bf16(w, &x[b * cols..(b + 1) * cols]);
                        }
                    }
                }
            }
        };
        if rows * cols < PARALLEL_MIN {
            work(0, out);
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        let block = rows.div_ceil(threads * 8).max(4);
        out.par_chunks_mut(block * batch)
            .enumerate()
            .for_each(|(i, o)| work(i * block, o));
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

#[inline]
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (wc, xc) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for i in 0..LANES {
            acc[i] += a[i] * b[i];
        }
    }
    let mut tail = 0f32;
    for (a, b) in wr.iter().zip(xr) {
        tail += a * b;
    }
    acc.iter().sum::<f32>() + tail
}

/// bf16 → f32 is exact: the bf16 bits are the high half of the f32.
#[inline(always)]
fn widen(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

#[inline]
fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (wc, xc) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for i in 0..LANES {
            acc[i] += widen(a[i]) * b[i];
        }
    }
    let mut tail = 0f32;
    for (a, b) in wr.iter().zip(xr) {
        tail += widen(*a) * b;
    }
    acc.iter().sum::<f32>() + tail
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
                for batch in [1, 3, 8] {
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
