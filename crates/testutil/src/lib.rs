//! Coil's test helpers, a dev-dependency of the other crates and never a dependency of their libraries.
//!
//! Owns what every numerical test needs and used to copy: the seeded generator ([`Lcg`]), the error metrics
//! ([`max_abs_diff`], [`rel_err`], [`scaled_err`], [`rel_l2`], [`fd_err`]) on slices and on candle tensors alike
//! ([`Values`]), per-dtype tolerances ([`Tolerance`]), NaN poison for outputs a fast path must overwrite
//! ([`poisoned`]), central finite differences ([`central_differences`]) and the case-table report
//! ([`CaseResult`], [`assert_all_ok`]).
//!
//! Key design decision: every metric is NaN-aware. A NaN anywhere in `got` or `want` makes the error NaN, and
//! every tolerance check (`err <= tol`, [`CaseResult::ok`]) fails on NaN, so a poisoned element that a kernel
//! never wrote cannot hide behind `f32::max` (which drops NaN).

mod metrics;
mod rng;

pub use metrics::{
    fd_err, l2_norm, max_abs_diff, rel_err, rel_l2, scaled_err, Values, REL_ERR_FLOOR,
};
pub use rng::{packed_seq_idx, Lcg};

use candle_core::{DType, Device, Tensor};

/// A tolerance per floating dtype of the values compared (the dtype a path *returns*, so an f32 output computed
/// from bf16 inputs is held to the f32 bound).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub f32: f32,
    pub bf16: f32,
    pub f16: f32,
}

impl Tolerance {
    /// One bound for f32 (and f64) values, one for the 16-bit floats (bf16 and f16).
    pub const fn new(f32: f32, half: f32) -> Self {
        Tolerance {
            f32,
            bf16: half,
            f16: half,
        }
    }

    /// The bound for values of `dtype`. Panics on integer dtypes (a test bug).
    pub fn of(&self, dtype: DType) -> f32 {
        match dtype {
            DType::F32 | DType::F64 => self.f32,
            DType::BF16 => self.bf16,
            DType::F16 => self.f16,
            other => panic!("no tolerance for {other:?} values"),
        }
    }
}

/// `v` rounded to `dtype` and widened back to f32: the values a path handed `v` in `dtype` computes with, so the
/// reference can start from the same inputs.
pub fn rounded(v: Vec<f32>, dtype: DType) -> Vec<f32> {
    if dtype == DType::F32 {
        return v;
    }
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype)?.to_dtype(DType::F32)?.to_vec1())
        .unwrap_or_else(|e| panic!("rounding to {dtype:?}: {e}"))
}

/// `v` as a tensor of `shape` in `dtype` on `dev`.
pub fn to_tensor(v: &[f32], shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype)?.to_device(dev))
        .unwrap_or_else(|e| panic!("tensor {shape:?} {dtype:?} on {dev:?}: {e}"))
}

/// `n` NaNs: the output buffer handed to a kernel that promises to write every element.
pub fn poisoned(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// One check of a case table: the error of one output of one implementation against the reference.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub err: f32,
    pub tol: f32,
}

impl CaseResult {
    pub fn new(name: impl Into<String>, err: f32, tol: f32) -> Self {
        CaseResult {
            name: name.into(),
            err,
            tol,
        }
    }

    /// Within tolerance and finite (NaN from a poisoned element fails).
    pub fn ok(&self) -> bool {
        self.err <= self.tol && self.err.is_finite()
    }
}

/// Prints every check (with `--nocapture`) and fails listing every one that missed its tolerance.
pub fn assert_all_ok(results: &[CaseResult]) {
    assert!(!results.is_empty(), "a case table with no checks");
    for r in results {
        eprintln!(
            "{:<110} err {:.2e} (tol {:.0e}){}",
            r.name,
            r.err,
            r.tol,
            if r.ok() { "" } else { "  FAIL" }
        );
    }
    let bad: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(bad.is_empty(), "{} check(s) failed: {bad:#?}", bad.len());
}

/// Central differences `(f(a + h·e_j) − f(a − h·e_j)) / 2h` of a scalar `loss` for every element `j` of every
/// argument in `args` (in f64; each evaluation gets the full argument list with one element moved).
pub fn central_differences(
    args: &[Vec<f64>],
    h: f64,
    loss: impl Fn(&[Vec<f64>]) -> f64,
) -> Vec<Vec<f64>> {
    let mut work = args.to_vec();
    (0..args.len())
        .map(|a| {
            (0..args[a].len())
                .map(|j| {
                    let x = args[a][j];
                    work[a][j] = x + h;
                    let up = loss(&work);
                    work[a][j] = x - h;
                    let down = loss(&work);
                    work[a][j] = x;
                    (up - down) / (2.0 * h)
                })
                .collect()
        })
        .collect()
}

/// `v` widened to f64.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `v` narrowed to f32.
pub fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[cfg(test)]
mod tests;

/// The gradients of `Σ out ⊙ dy` (candle autograd) w.r.t. each of `vars`, flattened to f32; `dy` has `out`'s
/// element count. Panics naming the variable's index when one got no gradient.
pub fn vjp(
    out: &Tensor,
    dy: &[f32],
    vars: &[&candle_core::Var],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let dy = Tensor::from_vec(dy.to_vec(), out.shape(), out.device())?.to_dtype(out.dtype())?;
    let grads = (out * dy)?.sum_all()?.backward()?;
    vars.iter()
        .enumerate()
        .map(|(i, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for variable {i}"));
            g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        })
        .collect()
}
