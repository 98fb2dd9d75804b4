//! `exp`, and the functions built on it, over slices, vectorised: the decay factors of the CPU SSD (`exp` of
//! cumulative-sum differences) are tens of thousands per head and chunk, and libm's scalar `expf` was ~40% of the
//! chunked forward; the SiLUs of the conv and the gated norm, and the softmax of the loss, are the other users.
//!
//! [`exp`] is a branch-free polynomial that the compiler vectorises: `x = n·ln2 + r` with `n` the nearest
//! integer to `x/ln2` and `|r| ≤ ln2/2`, `e^r` from a degree-7 Taylor-like polynomial (the Cephes `expf`
//! coefficients), and `2^n` put into the exponent bits. Its error is within 2 ulp of the true value over the
//! normal range (the test below checks it against `f64::exp` on a dense grid); below `MIN_ARG` (where `e^x` is
//! under the smallest normal f32) it returns 0, and the SSD only ever asks for `x ≤ 0`.
//!
//! The slice functions (through `dispatch!`, also used by the other CPU kernels) pick an AVX2+FMA build of the same loop at run time where the CPU has it, so the crate
//! still runs on any x86-64 (and any other target) with the plain build.

/// Below this `e^x` is under f32's smallest normal (≈1.18e-38); the result is 0 there.
const MIN_ARG: f32 = -87.33;
/// Above this `e^x` overflows f32.
const MAX_ARG: f32 = 88.72;

/// `e^x` for one value, written so a loop over it vectorises (no branches, no calls).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n·LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // The nearest integer n to x/ln2, rounded by adding and removing 1.5·2^23 (exact for |n| < 2^22); its value
    // as an integer is then read off the sum's mantissa. Plain adds, so this vectorises on any SIMD (an
    // `as i32` conversion saturates and does not, and a rounding instruction needs SSE4.1).
    const SHIFTER: f32 = 12_582_912.0;
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = xc * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n with n in [-126, 128]: n = 128 (x near MAX_ARG) is split as 2·2^127.
    let ni = shifted.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let half = ni >> 1;
    let scale_a = f32::from_bits(((half + 127) as u32) << 23);
    let scale_b = f32::from_bits(((ni - half + 127) as u32) << 23);
    let y = er * scale_a * scale_b;
    if x < MIN_ARG {
        0.0
    } else if x > MAX_ARG {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Defines `$vis fn $name` running `$body` compiled for AVX2+FMA where the CPU has them, else as plain code: the
/// two builds of one loop.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if $crate::vexp::has_avx2_fma() {
                    // SAFETY: the CPU has the features `wide` was compiled for (checked just above).
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `x·σ(x)`, with [`exp`].
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `d silu / dx = σ(x)·(1 + x·(1 − σ(x)))`, with [`exp`].
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    s * (1.0 + x * (1.0 - s))
}

dispatch!(
    /// `out[i] = scale[i]·e^(top − xs[i])`.
    pub fn exp_diff_scaled(out: &mut [f32], scale: &[f32], top: f32, xs: &[f32]) -> () {
        for ((o, &s), &x) in out.iter_mut().zip(scale).zip(xs) {
            *o = s * exp(top - x);
        }
    }
);

dispatch!(
    /// `out[i] = e^(top − xs[i])`.
    pub fn exp_diff(out: &mut [f32], top: f32, xs: &[f32]) -> () {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = exp(top - x);
        }
    }
);

dispatch!(
    /// `out[i] = scale·e^(xs[i] − shift)`.
    pub fn exp_shifted(out: &mut [f32], xs: &[f32], shift: f32, scale: f32) -> () {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = scale * exp(x - shift);
        }
    }
);

dispatch!(
    /// `Σ e^(xs[i] − shift)`, summed in eight f32 lanes in a fixed order.
    pub fn sum_exp_shifted(xs: &[f32], shift: f32) -> f32 {
        let mut lanes = [0f32; 8];
        let chunks = xs.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - shift)).sum();
        for c in chunks {
            for k in 0..8 {
                lanes[k] += exp(c[k] - shift);
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
);

dispatch!(
    /// `v[i] ← silu(v[i])`.
    pub fn silu_in_place(v: &mut [f32]) -> () {
        for x in v.iter_mut() {
            *x = silu(*x);
        }
    }
);

dispatch!(
    /// `pre[i] ← g[i]·silu'(pre[i])`.
    pub fn silu_grad_times(pre: &mut [f32], g: &[f32]) -> () {
        for (p, &gv) in pre.iter_mut().zip(g) {
            *p = gv * silu_grad(*p);
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `got` and the correctly rounded `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        ((got as f64) - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_the_normal_range() {
        let mut worst = (0.0f64, 0.0f32);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 + (88.0 + 87.0) * i as f32 / steps as f32;
            let e = ulps(exp(x), (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(worst.0 <= 2.0, "exp({}) is {} ulp off", worst.1, worst.0);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!((exp(88.5) / 88.5f32.exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn slice_forms_match_the_scalar() {
        let xs: Vec<f32> = (0..37).map(|i| -0.37 * i as f32).collect();
        let scale: Vec<f32> = (0..37).map(|i| 1.0 + 0.01 * i as f32).collect();
        let top = 0.25;
        let mut got = vec![f32::NAN; 37];
        exp_diff_scaled(&mut got, &scale, top, &xs);
        for i in 0..37 {
            assert_eq!(got[i], scale[i] * exp(top - xs[i]), "scaled, element {i}");
        }
        exp_diff(&mut got, top, &xs);
        for i in 0..37 {
            assert_eq!(got[i], exp(top - xs[i]), "element {i}");
        }
        exp_shifted(&mut got, &xs, top, 0.5);
        for i in 0..37 {
            assert_eq!(got[i], 0.5 * exp(xs[i] - top), "shifted, element {i}");
        }
        let want: f64 = xs.iter().map(|&x| ((x - top) as f64).exp()).sum();
        assert!((sum_exp_shifted(&xs, top) as f64 - want).abs() < 1e-6 * want);
        let mut v = xs.clone();
        silu_in_place(&mut v);
        for i in 0..37 {
            assert_eq!(v[i], silu(xs[i]), "silu, element {i}");
        }
        let mut p = xs.clone();
        silu_grad_times(&mut p, &scale);
        for i in 0..37 {
            assert_eq!(p[i], scale[i] * silu_grad(xs[i]), "silu', element {i}");
        }
    }

    #[test]
    fn silu_and_its_gradient_track_f64() {
        for i in -400..=400 {
            let x = i as f32 * 0.05;
            let xd = x as f64;
            let s = 1.0 / (1.0 + (-xd).exp());
            assert!(
                (silu(x) as f64 - xd * s).abs() <= 1e-6 * (1.0 + (xd * s).abs()),
                "silu({x})"
            );
            let g = s * (1.0 + xd * (1.0 - s));
            assert!(
                (silu_grad(x) as f64 - g).abs() <= 1e-6 * (1.0 + g.abs()),
                "silu'({x})"
            );
        }
    }
}
