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

/// [`segment_ids`] of an optional `seq_idx`; `None` (no packing) is one segment per row.
pub(crate) fn segments_or_single(seq_idx: Option<&[i32]>, batch: usize, seqlen: usize) -> Vec<u32> {
    match seq_idx {
        Some(s) => segment_ids(s, batch, seqlen),
        None => vec![0; batch * seqlen],
    }
}

#[cfg(test)]
mod tests;
