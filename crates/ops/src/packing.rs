//! What `seq_idx` means to every op: sequence packing with per-example resets.
//!
//! A packed row holds several examples one after another; `seq_idx` [B,T] names the example of every position.
//! A **boundary** is a position `t > 0` with `seq_idx[t] != seq_idx[t−1]`: there the SSD state restarts from
//! zero, the causal conv window stops reading earlier columns, and attention does not look back across it.
//! Only changes matter (not the values), so each op works on [`segment_ids`]: the number of boundaries at or
//! before each position. Two positions of one row interact iff their segment ids are equal, which is the same
//! as "no boundary between them" for any `seq_idx` (non-decreasing or not).
//!
//! A state or conv history carried in from a previous call (a cache) belongs to segment 0: it reaches the
//! first example of the row and nothing after the first boundary.

use crate::host::expect_shape;
use candle_core::{bail, DType, Device, Result, Tensor};

/// Segment ids [B,T] of `seq_idx` [B,T]: per row, the count of boundaries at or before each position.
pub fn segment_ids(seq_idx: &[i32], batch: usize, seqlen: usize) -> Vec<u32> {
    assert_eq!(
        seq_idx.len(),
        batch * seqlen,
        "seq_idx length {} is not B·T = {batch}·{seqlen}",
        seq_idx.len()
    );
    let mut out = vec![0u32; seq_idx.len()];
    for (ids, seg) in seq_idx
        .chunks_exact(seqlen.max(1))
        .zip(out.chunks_exact_mut(seqlen.max(1)))
    {
        for t in 1..ids.len() {
            seg[t] = seg[t - 1] + u32::from(ids[t] != ids[t - 1]);
        }
    }
    out
}

/// `seq_idx` [B,T] (any integer dtype, any device) as host `i32`s, checked against (B, T).
pub fn seq_idx_host(seq_idx: &Tensor, batch: usize, seqlen: usize) -> Result<Vec<i32>> {
    expect_shape(seq_idx, &[batch, seqlen], "seq_idx")?;
    if seq_idx.dtype().is_float() {
        bail!(
            "seq_idx: expected an integer tensor, got {:?}",
            seq_idx.dtype()
        );
    }
    // On the host first: not every device has a cast kernel for every integer pair (CUDA lacks i32 → i64).
    let v = seq_idx
        .to_device(&Device::Cpu)?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    v.into_iter()
        .map(|x| {
            i32::try_from(x)
                .map_err(|_| candle_core::Error::Msg(format!("seq_idx: {x} does not fit i32")))
        })
        .collect()
}

/// Host-side `seq_idx` [B,T] as `i32`, for the composed ops that build their masks from it.
#[derive(Clone, Debug)]
pub struct Segments {
    pub batch: usize,
    pub seqlen: usize,
    pub ids: Vec<i32>,
}

impl Segments {
    pub(crate) fn id(&self, b: usize, t: usize) -> i32 {
        // Padding past the end continues the last example.
        self.ids[b * self.seqlen + t.min(self.seqlen - 1)]
    }
}

/// [`segment_ids`] of an optional `seq_idx`; `None` (no packing) is one segment per row.
pub(crate) fn segments_or_single(seq_idx: Option<&[i32]>, batch: usize, seqlen: usize) -> Vec<u32> {
    match seq_idx {
        Some(s) => segment_ids(s, batch, seqlen),
        None => vec![0; batch * seqlen],
    }
}

#[cfg(test)]
mod tests;
