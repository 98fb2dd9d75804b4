//! The SSD scan of a Mamba2 mixer (docs/numerics.md §3).
//!
//! Per batch `b` and head `h` (group `g = h / (H/G)`), with state `s` of shape [P, N]:
//! `s_t = exp(dt_t·A_h)·s_{t-1} + dt_t · x_t ⊗ B_t[g]`, `y_t = s_t · C_t[g] + D_h · x_t`.
//!
//! [`ssd_reference`] runs that recurrence step by step (in f64); [`ssd_chunked`] is the matmul-based chunked
//! algorithm used for prefill and training. Both take an initial state and return the final state.
//! [`ssd_reference_backward`] and [`ssd_chunked_backward`] are their gradients (docs/numerics.md §3.3).
//!
//! Layouts (row-major): x [B,T,H,P], dt [B,T,H] (already softplus'd and clamped), A [H] (negative), B and C
//! [B,T,G,N], D [H], states [B,H,P,N], y [B,T,H,P], seq_idx [B,T].
//!
//! Packing (see [`crate::packing`]): with `seq_idx`, the state is zeroed before every boundary `t`
//! (`seq_idx[t] != seq_idx[t−1]`), i.e. `exp(dt_t·A)` is replaced by 0 there; the initial state reaches only the
//! first segment, and the final state is that of the last segment. In the chunked algorithm every decay factor
//! between two positions of different segments is 0 (see `chunked.rs`).

mod backward;
mod chunked;
mod reference;

pub use backward::{ssd_chunked_backward, ssd_reference_backward, SsdGrads, HEADS_PER_TASK};
pub use chunked::ssd_chunked;
#[cfg(test)]
pub(crate) use reference::{forward64, Inputs64};
pub use reference::{ssd_reference, ssd_step};

/// Sizes of one SSD call: `B` batch, `T` time, `H` heads, `P` head dim, `G` groups, `N` state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdDims {
    pub batch: usize,
    pub seqlen: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
}

impl SsdDims {
    pub fn x_len(&self) -> usize {
        self.batch * self.seqlen * self.heads * self.head_dim
    }
    pub fn dt_len(&self) -> usize {
        self.batch * self.seqlen * self.heads
    }
    pub fn bc_len(&self) -> usize {
        self.batch * self.seqlen * self.groups * self.state
    }
    pub fn state_len(&self) -> usize {
        self.batch * self.heads * self.head_dim * self.state
    }
    /// The B/C group that head `h` reads.
    pub fn group_of(&self, h: usize) -> usize {
        h / (self.heads / self.groups)
    }
}

/// Borrowed inputs of one SSD call; see the module doc for layouts.
#[derive(Clone, Copy)]
pub struct SsdInputs<'a> {
    pub x: &'a [f32],
    pub dt: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub c: &'a [f32],
    pub d: &'a [f32],
    pub initial_state: Option<&'a [f32]>,
    /// [B,T] example ids of packed rows; `None` = one sequence per row.
    pub seq_idx: Option<&'a [i32]>,
}

impl SsdInputs<'_> {
    /// Panics with a message naming the argument when a slice does not fit `dims` (a caller bug, never user input).
    pub fn check(&self, dims: &SsdDims) {
        assert!(
            dims.groups > 0 && dims.heads.is_multiple_of(dims.groups),
            "ssd: heads {} not divisible by groups {}",
            dims.heads,
            dims.groups
        );
        assert_eq!(self.x.len(), dims.x_len(), "ssd: x length");
        assert_eq!(self.dt.len(), dims.dt_len(), "ssd: dt length");
        assert_eq!(self.a.len(), dims.heads, "ssd: A length");
        assert_eq!(self.d.len(), dims.heads, "ssd: D length");
        assert_eq!(self.b.len(), dims.bc_len(), "ssd: B length");
        assert_eq!(self.c.len(), dims.bc_len(), "ssd: C length");
        if let Some(s) = self.initial_state {
            assert_eq!(s.len(), dims.state_len(), "ssd: initial state length");
        }
        if let Some(s) = self.seq_idx {
            assert_eq!(s.len(), dims.batch * dims.seqlen, "ssd: seq_idx length");
        }
    }
}

/// Result of an SSD call: y [B,T,H,P] (including the D skip) and the final state [B,H,P,N].
#[derive(Clone, Debug)]
pub struct SsdOutput {
    pub y: Vec<f32>,
    pub final_state: Vec<f32>,
}

#[cfg(test)]
mod backward_tests;
#[cfg(test)]
mod tests;
