//! Error metrics on host slices and candle tensors alike. Each returns NaN when either side holds a NaN.

use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;

/// Values a metric can read: f32 slices and vectors, and candle tensors of any float dtype on any device
/// (copied to the host as f32; a metric on two tensors also checks that their shapes agree).
pub trait Values {
    fn values(&self) -> Cow<'_, [f32]>;
    /// The shape, for tensors.
    fn dims(&self) -> Option<&[usize]> {
        None
    }
}

impl Values for [f32] {
    fn values(&self) -> Cow<'_, [f32]> {
        Cow::Borrowed(self)
    }
}

impl Values for Vec<f32> {
    fn values(&self) -> Cow<'_, [f32]> {
        Cow::Borrowed(self)
    }
}

impl<const N: usize> Values for [f32; N] {
    fn values(&self) -> Cow<'_, [f32]> {
        Cow::Borrowed(self)
    }
}

impl Values for Tensor {
    fn values(&self) -> Cow<'_, [f32]> {
        let host = || -> candle_core::Result<Vec<f32>> {
            self.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()
        };
        Cow::Owned(host().unwrap_or_else(|e| panic!("tensor {:?} to host f32: {e}", self.dims())))
    }
    fn dims(&self) -> Option<&[usize]> {
        Some(Tensor::dims(self))
    }
}

impl<T: Values + ?Sized> Values for &T {
    fn values(&self) -> Cow<'_, [f32]> {
        (**self).values()
    }
    fn dims(&self) -> Option<&[usize]> {
        (**self).dims()
    }
}

fn pair<'a, A: Values + ?Sized, B: Values + ?Sized>(
    got: &'a A,
    want: &'a B,
) -> (Cow<'a, [f32]>, Cow<'a, [f32]>) {
    if let (Some(g), Some(w)) = (got.dims(), want.dims()) {
        assert_eq!(g, w, "shapes differ");
    }
    let (g, w) = (got.values(), want.values());
    assert_eq!(g.len(), w.len(), "lengths differ");
    (g, w)
}

/// The largest |x|, NaN if any x is NaN.
fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, &x| {
        if x.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(x.abs())
        }
    })
}

/// The largest |got − want|; NaN if either side holds a NaN (where `f32::max` would drop it).
pub fn max_abs_diff<A: Values + ?Sized, B: Values + ?Sized>(got: &A, want: &B) -> f32 {
    let (g, w) = pair(got, want);
    g.iter().zip(w.iter()).fold(0f32, |m, (a, b)| {
        let d = (a - b).abs();
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

/// The floor of [`rel_err`]'s scale, so all-zero references (an unused gradient) compare absolutely.
pub const REL_ERR_FLOOR: f32 = 1e-3;

/// `max |got − want| / max(max |want|, 1e-3)`: the worst error relative to the reference's largest value.
pub fn rel_err<A: Values + ?Sized, B: Values + ?Sized>(got: &A, want: &B) -> f32 {
    let (g, w) = pair(got, want);
    max_abs_diff(&*g, &*w) / max_abs(&w).max(REL_ERR_FLOOR)
}

/// `max |got − want| / max(1, max |want|)`: absolute for values below 1, relative above.
pub fn scaled_err<A: Values + ?Sized, B: Values + ?Sized>(got: &A, want: &B) -> f32 {
    let (g, w) = pair(got, want);
    max_abs_diff(&*g, &*w) / max_abs(&w).max(1.0)
}

/// `‖v‖₂` over all elements (accumulated in f64).
pub fn l2_norm<A: Values + ?Sized>(v: &A) -> f64 {
    v.values()
        .iter()
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt()
}

/// `‖got − want‖₂ / ‖want‖₂` (the denominator floored at 1e-30).
pub fn rel_l2<A: Values + ?Sized, B: Values + ?Sized>(got: &A, want: &B) -> f64 {
    let (g, w) = pair(got, want);
    let diff: f64 = g
        .iter()
        .zip(w.iter())
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / l2_norm(&*w).max(1e-30)
}

/// `max |got − fd| / (1 + |fd|)`: a gradient against its central-difference estimate.
pub fn fd_err<A: Values + ?Sized>(got: &A, fd: &[f64]) -> f64 {
    let got = got.values();
    assert_eq!(got.len(), fd.len(), "lengths differ");
    got.iter().zip(fd).fold(0f64, |m, (&g, &f)| {
        let e = (g as f64 - f).abs() / (1.0 + f.abs());
        if e.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(e)
        }
    })
}
