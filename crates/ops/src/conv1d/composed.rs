//! The causal conv1d + SiLU composed from candle tensor ops: one shifted multiply-add per tap, in f32, on any
//! device, differentiable through candle autograd (no backward of its own). Packed rows enter as 0/1 masks on
//! the taps, built on the host.

use crate::packing::Segments;
use candle_core::{bail, DType, Result, Tensor};

/// `x` [B,T,C], `w` [C,K] (or [C,1,K]), `bias` [C], `history` [B,C,K−1] (the raw columns before `x`, oldest
/// first) → `silu(conv(x) + bias)` [B,T,C], f32. With `segments`, taps that reach into another example read 0.
pub fn causal_conv1d_silu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
    segments: Option<&Segments>,
) -> Result<Tensor> {
    let (batch, seqlen, ch) = x.dims3()?;
    let k = *w.dims().last().unwrap_or(&0);
    if k == 0 || w.elem_count() != ch * k {
        bail!("conv1d: weight {:?} does not match {ch} channels", w.dims());
    }
    let x = x.to_dtype(DType::F32)?;
    let w = w.to_dtype(DType::F32)?.reshape((ch, k))?;
    let dev = x.device();
    let hist = match history {
        Some(h) => h.to_dtype(DType::F32)?.transpose(1, 2)?,
        None => Tensor::zeros((batch, k - 1, ch), DType::F32, dev)?,
    };
    let xp = Tensor::cat(&[&hist, &x], 1)?; // [B, T+K−1, C]
    let mut acc: Option<Tensor> = None;
    for tap in 0..k {
        let back = k - 1 - tap; // how far before t this tap reads
        let wk = w.narrow(1, tap, 1)?.reshape((1, 1, ch))?;
        let mut term = xp.narrow(1, tap, seqlen)?.broadcast_mul(&wk)?;
        if let (Some(seg), true) = (segments, back > 0) {
            let mask: Vec<f32> = (0..batch)
                .flat_map(|b| {
                    (0..seqlen).map(move |t| {
                        let same = t >= back && seg.id(b, t - back) == seg.id(b, t);
                        // Taps before t = 0 read the history, which only exists for the first example.
                        let from_history = t < back && seg.id(b, 0) == seg.id(b, t);
                        if same || from_history {
                            1.0
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            term = term.broadcast_mul(&Tensor::from_vec(mask, (batch, seqlen, 1), dev)?)?;
        }
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    let mut out = acc.expect("k > 0");
    if let Some(b) = bias {
        out = out.broadcast_add(&b.to_dtype(DType::F32)?.reshape((1, 1, ch))?)?;
    }
    silu(&out)
}

/// `x · sigmoid(x)` from elementary ops, so its gradient comes from candle autograd on every device.
pub(crate) fn silu(x: &Tensor) -> Result<Tensor> {
    let sig = (x.neg()?.exp()? + 1.0)?.recip()?;
    x * sig
}
