//! The SSD composed from candle tensor ops: the path for every device without a hand-written kernel (CUDA
//! today), and differentiable through candle autograd with no backward of its own.
//!
//! Everything runs in f32 (inputs are converted on entry, so bf16 activations get f32 arithmetic and an f32
//! state). It is the chunked matmul form of docs/numerics.md §3.2, written with whole-tensor ops:
//!
//! ```text
//! per chunk z (Q positions), head h:   dA = dt·A,  s = cumsum(dA)                     [B,Z,H,Q]
//!   intra-chunk   Y_d  = (C·Bᵀ ⊙ exp(s_i − s_j)[j≤i] ⊙ dt_j) · x                     [B,Z,H,Q,P]
//!   chunk state   S_z  = Σ_j exp(s_last − s_j)·dt_j · x_jᵀ B_j                          [B,Z,H,P,N]
//!   between       S_in = D · [init | S_0 … S_{Z−1}],  D[z,k] = exp(c_z − c_k)[k≤z],  c = cumsum of chunk totals
//!   inter-chunk   Y_o  = exp(s_i) · C_i · S_in[z]                                        [B,Z,H,Q,P]
//! ```
//!
//! Packed rows (`seq_idx`) only change masks, built on the host: a decay between two positions (or chunk ends) of
//! different examples is `exp(−∞) = 0`. Masks enter as additive `0 / −∞` biases before `exp`, so no `exp` ever
//! sees a positive argument it could overflow on.

use crate::packing::Segments;
use candle_core::{bail, DType, Device, Result, Tensor};

const NEG_INF: f32 = f32::NEG_INFINITY;

/// Chunked SSD. `x` [B,T,H,P], `dt` [B,T,H] (after softplus), `a` [H], `b`/`c` [B,T,G,N], `d` [H],
/// `initial_state` [B,H,P,N] → `(y [B,T,H,P], final_state [B,H,P,N])`, f32.
#[allow(clippy::too_many_arguments)]
pub fn ssd(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    initial_state: Option<&Tensor>,
    chunk: usize,
    segments: Option<&Segments>,
) -> Result<(Tensor, Tensor)> {
    let (batch, seqlen, heads, hd) = x.dims4()?;
    let (_, _, groups, n) = b.dims4()?;
    if chunk == 0 || groups == 0 || heads % groups != 0 {
        bail!("ssd: chunk {chunk}, {heads} heads and {groups} groups do not fit");
    }
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let dev = x.device().clone();
    if seqlen == 1 {
        return ssd_step(x, dt, a, b, c, d, initial_state);
    }
    let q = chunk.min(seqlen.max(1));
    let nz = seqlen.div_ceil(q);
    let pad = nz * q - seqlen;
    let padded = |t: Tensor| -> Result<Tensor> {
        if pad == 0 {
            Ok(t)
        } else {
            t.pad_with_zeros(1, 0, pad)
        }
    };
    let hg = heads / groups;
    // Chunked layouts: heads before positions.
    let xc = padded(f(x)?)?
        .reshape((batch, nz, q, heads, hd))?
        .permute((0, 1, 3, 2, 4))?
        .contiguous()?; // [B,Z,H,Q,P]
    let dtc = padded(f(dt)?)?
        .reshape((batch, nz, q, heads))?
        .permute((0, 1, 3, 2))?
        .contiguous()?; // [B,Z,H,Q]
    let bc = padded(f(b)?)?
        .reshape((batch, nz, q, groups, n))?
        .permute((0, 1, 3, 2, 4))?
        .contiguous()?; // [B,Z,G,Q,N]
    let cc = padded(f(c)?)?
        .reshape((batch, nz, q, groups, n))?
        .permute((0, 1, 3, 2, 4))?
        .contiguous()?; // [B,Z,G,Q,N]
    let da = dtc.broadcast_mul(&f(a)?.reshape((1, 1, heads, 1))?)?;
    let s = cumsum_last(&da)?; // [B,Z,H,Q]
    let masks = Masks::new(batch, nz, q, segments, &dev)?;

    // Intra-chunk: L[i,j] = exp(s_i − s_j) for j ≤ i (same example), scaled by dt_j, times C_i·B_j.
    let seg = s
        .unsqueeze(4)?
        .broadcast_sub(&s.unsqueeze(3)?)?
        .broadcast_add(&masks.intra)?; // [B,Z,H,Q,Q]
    let l = seg.exp()?.broadcast_mul(&dtc.unsqueeze(3)?)?;
    let cb = mm(&cc, &bc.transpose(3, 4)?)?; // [B,Z,G,Q,Q]
    let m = l
        .reshape((batch, nz, groups, hg, q, q))?
        .broadcast_mul(&cb.unsqueeze(3)?)?
        .reshape((batch, nz, heads, q, q))?;
    let y_diag = mm(&m, &xc)?; // [B,Z,H,Q,P]

    // Chunk states: S_z = Σ_j exp(s_last − s_j)·dt_j · x_jᵀ B_j (end-of-chunk example only).
    let s_last = s.narrow(3, q - 1, 1)?; // [B,Z,H,1]
    let mut wgt = (s_last.broadcast_sub(&s)?.exp()? * &dtc)?;
    if let Some(end) = &masks.end {
        wgt = wgt.broadcast_mul(end)?;
    }
    let xw = xc.broadcast_mul(&wgt.unsqueeze(4)?)?; // [B,Z,H,Q,P]
    let xw_t = xw
        .reshape((batch, nz, groups, hg, q, hd))?
        .permute((0, 1, 2, 3, 5, 4))?
        .reshape((batch, nz, groups, hg * hd, q))?;
    let states = mm(&xw_t, &bc)? // [B,Z,G,hg·P,N]
        .reshape((batch, nz, heads, hd * n))?
        .permute((0, 2, 1, 3))?; // [B,H,Z,P·N]

    // Between chunks: S_in[z] = Σ_{k≤z} exp(c_z − c_k) · slot_k, slots = [init, S_0, …, S_{Z−1}].
    let init = match initial_state {
        Some(s0) => f(s0)?.reshape((batch, heads, 1, hd * n))?,
        None => Tensor::zeros((batch, heads, 1, hd * n), DType::F32, &dev)?,
    };
    let slots = Tensor::cat(&[&init, &states], 2)?.contiguous()?; // [B,H,Z+1,P·N]
    let totals = s_last.squeeze(3)?.permute((0, 2, 1))?; // [B,H,Z]
    let c_cum = Tensor::cat(
        &[
            &Tensor::zeros((batch, heads, 1), DType::F32, &dev)?,
            &cumsum_last(&totals)?,
        ],
        2,
    )?; // [B,H,Z+1]
    let between = c_cum
        .unsqueeze(3)?
        .broadcast_sub(&c_cum.unsqueeze(2)?)?
        .broadcast_add(&masks.between)?
        .exp()?; // [B,H,Z+1,Z+1]
    let s_in = mm(&between, &slots)?; // [B,H,Z+1,P·N]
    let final_state = s_in.narrow(2, nz, 1)?.reshape((batch, heads, hd, n))?;

    // Inter-chunk output: Y_o[i] = exp(s_i) · C_i · S_in[z].
    let s_start = s_in
        .narrow(2, 0, nz)?
        .reshape((batch, heads, nz, hd, n))?
        .permute((0, 2, 1, 4, 3))? // [B,Z,H,N,P]
        .reshape((batch, nz, groups, hg, n, hd))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((batch, nz, groups, n, hg * hd))?;
    let y_off = mm(&cc, &s_start)? // [B,Z,G,Q,hg·P]
        .reshape((batch, nz, groups, q, hg, hd))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((batch, nz, heads, q, hd))?;
    let mut decay_in = s.exp()?; // [B,Z,H,Q]
    if let Some(start) = &masks.start {
        decay_in = decay_in.broadcast_mul(start)?;
    }
    let y_off = y_off.broadcast_mul(&decay_in.unsqueeze(4)?)?;

    let y = (y_diag + y_off)?
        .permute((0, 1, 3, 2, 4))?
        .reshape((batch, nz * q, heads, hd))?
        .narrow(1, 0, seqlen)?;
    let y = (y + f(x)?.broadcast_mul(&f(d)?.reshape((1, 1, heads, 1))?)?)?;
    Ok((y, final_state))
}

/// Inclusive cumulative sum over the last dimension, as one 2-D matmul with an upper-triangular matrix of ones
/// (candle's own `cumsum` hands strided inputs to a CUDA matmul that rejects them).
fn cumsum_last(t: &Tensor) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let n = *dims.last().unwrap_or(&1);
    let rows = t.elem_count() / n.max(1);
    let triu = Tensor::triu2(n, DType::F32, t.device())?;
    t.contiguous()?
        .reshape((rows, n))?
        .matmul(&triu)?
        .reshape(dims)
}

/// Batched matmul over equal leading dims, flattened to one batch dim (candle's kernels take at most two
/// batch dims) on contiguous operands.
fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let r = ad.len();
    if r < 2 || bd.len() != r || ad[..r - 2] != bd[..r - 2] {
        bail!("composed matmul: shapes {ad:?} and {bd:?} do not pair");
    }
    let batch: usize = ad[..r - 2].iter().product();
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    let out = a
        .contiguous()?
        .reshape((batch, m, k))?
        .matmul(&b.contiguous()?.reshape((batch, k, n))?)?;
    let mut dims = ad[..r - 2].to_vec();
    dims.extend([m, n]);
    out.reshape(dims)
}

/// One recurrence step (T = 1, a decode step): `s' = exp(dt·A)·s + dt·x ⊗ B`, `y = s'·C + D·x`.
fn ssd_step(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    initial_state: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (batch, _, heads, hd) = x.dims4()?;
    let (_, _, groups, n) = b.dims4()?;
    let hg = heads / groups;
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let xs = f(x)?.reshape((batch, heads, hd))?;
    let dts = f(dt)?.reshape((batch, heads))?;
    let decay = dts
        .broadcast_mul(&f(a)?.reshape((1, heads))?)?
        .exp()?
        .reshape((batch, heads, 1, 1))?;
    // B and C of each head's group: [B,H,N].
    let per_head = |t: &Tensor| -> Result<Tensor> {
        f(t)?
            .reshape((batch, groups, 1, n))?
            .broadcast_as((batch, groups, hg, n))?
            .contiguous()?
            .reshape((batch, heads, n))
    };
    let (bh, ch) = (per_head(b)?, per_head(c)?);
    let upd = (&xs * dts.unsqueeze(2)?.broadcast_as((batch, heads, hd))?)?
        .unsqueeze(3)?
        .broadcast_mul(&bh.unsqueeze(2)?)?; // [B,H,P,N]
    let state = match initial_state {
        Some(s0) => (f(s0)?.broadcast_mul(&decay)? + upd)?,
        None => upd,
    };
    let y = mm(&state, &ch.unsqueeze(3)?)?.squeeze(3)?; // [B,H,P]
    let y = (y + xs.broadcast_mul(&f(d)?.reshape((1, heads, 1))?)?)?;
    Ok((y.reshape((batch, 1, heads, hd))?, state))
}

/// The additive (0 / −∞) and multiplicative (0 / 1) masks of one chunked SSD call.
struct Masks {
    /// [1 or B, 1 or Z, 1, Q, Q]: 0 where position j may reach position i (j ≤ i, same example), else −∞.
    intra: Tensor,
    /// [B,1,Z+1,Z+1]-broadcastable: 0 where slot k reaches chunk start z, else −∞.
    between: Tensor,
    /// [B,Z,1,Q]: 1 where position j belongs to the example at its chunk's end (packed rows only).
    end: Option<Tensor>,
    /// [B,Z,1,Q]: 1 where position i belongs to the example the incoming state carries (packed rows only).
    start: Option<Tensor>,
}

impl Masks {
    fn new(
        batch: usize,
        nz: usize,
        q: usize,
        segments: Option<&Segments>,
        dev: &Device,
    ) -> Result<Self> {
        let causal = |i: usize, j: usize| if j <= i { 0.0 } else { NEG_INF };
        let Some(seg) = segments else {
            let intra: Vec<f32> = (0..q * q).map(|e| causal(e / q, e % q)).collect();
            let between: Vec<f32> = (0..(nz + 1) * (nz + 1))
                .map(|e| causal(e / (nz + 1), e % (nz + 1)))
                .collect();
            return Ok(Masks {
                intra: Tensor::from_vec(intra, (1, 1, 1, q, q), dev)?,
                between: Tensor::from_vec(between, (1, 1, nz + 1, nz + 1), dev)?,
                end: None,
                start: None,
            });
        };
        let id = |b: usize, t: usize| seg.id(b, t);
        let mut intra = Vec::with_capacity(batch * nz * q * q);
        let mut end = Vec::with_capacity(batch * nz * q);
        let mut start = Vec::with_capacity(batch * nz * q);
        let mut between = Vec::with_capacity(batch * (nz + 1) * (nz + 1));
        for b in 0..batch {
            // resets[z]: chunks before z that contain a boundary (R of the module doc).
            let mut resets = vec![0usize; nz + 1];
            for z in 0..nz {
                let has = (z * q..(z + 1) * q).any(|t| t > 0 && id(b, t) != id(b, t - 1));
                resets[z + 1] = resets[z] + has as usize;
                let last = id(b, (z + 1) * q - 1);
                let carried = if z == 0 { id(b, 0) } else { id(b, z * q - 1) };
                for i in 0..q {
                    let ti = z * q + i;
                    end.push((id(b, ti) == last) as u8 as f32);
                    start.push((id(b, ti) == carried) as u8 as f32);
                    for j in 0..q {
                        let same = id(b, z * q + j) == id(b, ti);
                        intra.push(if same { causal(i, j) } else { NEG_INF });
                    }
                }
            }
            for z in 0..=nz {
                for k in 0..=nz {
                    let ok = k <= z && resets[z] == resets[k];
                    between.push(if ok { 0.0 } else { NEG_INF });
                }
            }
        }
        Ok(Masks {
            intra: Tensor::from_vec(intra, (batch, nz, 1, q, q), dev)?,
            between: Tensor::from_vec(between, (batch, 1, nz + 1, nz + 1), dev)?,
            end: Some(Tensor::from_vec(end, (batch, nz, 1, q), dev)?),
            start: Some(Tensor::from_vec(start, (batch, nz, 1, q), dev)?),
        })
    }
}
