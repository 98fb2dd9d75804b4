//! Collectives: what the ranks of one run exchange. Training uses them for data parallelism (gradient sums),
//! the model for tensor and sequence parallelism (activation sums, gathers and scatters inside the forward and
//! backward passes).
//!
//! [`Collective`] is the interface; [`SingleProcess`] is the one-rank case and [`TcpCollective`] runs over TCP
//! connections (a star around the group's rank 0), so every parallel layout can run, and be tested, on the CPU.
//! With `--features cuda`, `NcclCollective` runs the same operations through NCCL on GPU memory.
//! Reductions sum in rank order on the group's rank 0 and send that one result back, so every rank holds
//! bit-identical values, and a reduce-scatter gives exactly the slice of the all-reduce.

mod error;
mod layout;
#[cfg(feature = "cuda")]
mod nccl;
mod tcp;

pub use error::{CommError, Result};
pub use layout::Layout;
#[cfg(feature = "cuda")]
pub use nccl::NcclCollective;
pub use tcp::{loopback_group, loopback_layout, TcpCollective};

/// Element-wise exchanges among the ranks of one group. Every rank of the group calls the same operations in
/// the same order with buffers of the same length (a mismatch is an error naming the ranks and lengths).
pub trait Collective: Send {
    /// This process's rank in the group, `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces `buf` on every rank with the element-wise sum of every rank's `buf`, summed in rank order.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// The same for f64 values (loss sums and token counts).
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank with the element-wise maximum over the ranks.
    fn all_reduce_max(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Every rank's `local` (the same length everywhere), concatenated in rank order, on every rank.
    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>>;
    /// The rank-order sum of every rank's `buf` (length a multiple of the group size), of which this rank keeps
    /// piece `rank()`: elements `rank·n/size .. (rank+1)·n/size`, bit-identical to that slice of
    /// [`all_reduce_sum`](Self::all_reduce_sum).
    fn reduce_scatter_sum(&mut self, buf: &[f32]) -> Result<Vec<f32>>;
    /// Replaces `buf` on every rank with rank `root`'s `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
}

/// One rank: every exchange returns the rank's own values.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_max(&mut self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        Ok(local.to_vec())
    }
    fn reduce_scatter_sum(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        Ok(buf.to_vec())
    }
    fn broadcast(&mut self, _: &mut [f32], root: usize) -> Result<()> {
        if root != 0 {
            return Err(CommError::Invalid(format!(
                "broadcast from rank {root} in a group of 1"
            )));
        }
        Ok(())
    }
}
