//! The NCCL backend (`--features cuda`): the same collectives on GPU memory, on a CUDA stream, through NCCL
//! (loaded at run time by cudarc, as the CUDA libraries are).
//!
//! A group forms its communicator from a unique id that its rank 0 creates and sends to the others over a
//! collective they already share (the TCP group of the launch), so NCCL needs no address of its own. The
//! `*_device` methods work on device buffers and only enqueue work on the stream; the [`Collective`]
//! implementation stages host buffers through the device and waits, for the code paths that hold values on
//! the host (loss sums, norms).

use crate::error::{CommError, Result};
use crate::Collective;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Arc;

/// One rank of an NCCL communicator.
pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
}

// A communicator may be used from any thread, one call at a time; the collective is only used through
// `&mut self` (or `&self` for enqueueing on its one stream), so moving it to another thread is sound.
unsafe impl Send for NcclCollective {}

fn nccl<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> CommError + '_ {
    move |e| CommError::Net(format!("NCCL {what}: {e:?}"))
}

impl NcclCollective {
    /// The communicator of the group `boot` connects (same ranks, same size), on `stream`'s device: rank 0
    /// creates the unique id and broadcasts it over `boot`; every rank then joins.
    pub fn new(boot: &mut dyn Collective, stream: Arc<CudaStream>) -> Result<Self> {
        let (rank, world) = (boot.rank(), boot.world_size());
        // The id's 128 bytes travel as f32 values (each exact).
        let mut bytes = vec![0f32; 128];
        if rank == 0 {
            let id = Id::new().map_err(nccl("creating the unique id"))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = f32::from(*c as u8);
            }
        }
        boot.broadcast(&mut bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(&bytes) {
            *c = *b as u8 as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal))
            .map_err(nccl("joining the communicator"))?;
        Ok(NcclCollective { comm, stream })
    }

    /// The stream the collectives run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `buf` ← the sum over ranks, in place on the device.
    pub fn all_reduce_sum_device(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(nccl("all-reduce"))?;
        Ok(())
    }

    /// `out` (world × `local.len()` values) ← every rank's `local`, in rank order.
    pub fn all_gather_device(
        &self,
        local: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.check_len("all-gather", out.len(), local.len() * self.world_size())?;
        self.comm
            .all_gather(local, out)
            .map_err(nccl("all-gather"))?;
        Ok(())
    }

    /// `out` (`buf.len()` / world values) ← this rank's part of the sum over ranks.
    pub fn reduce_scatter_sum_device(
        &self,
        buf: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let world = self.world_size();
        if !buf.len().is_multiple_of(world) {
            return Err(CommError::Invalid(format!(
                "reduce-scatter of {} values over {world} ranks: the length must be a multiple of the group size",
                buf.len()
            )));
        }
        self.check_len("reduce-scatter", out.len(), buf.len() / world)?;
        self.comm
            .reduce_scatter(buf, out, &ReduceOp::Sum)
            .map_err(nccl("reduce-scatter"))?;
        Ok(())
    }

    /// `buf` ← rank `root`'s `buf`, in place on the device.
    pub fn broadcast_device(&self, buf: &mut CudaSlice<f32>, root: usize) -> Result<()> {
        if root >= self.world_size() {
            return Err(CommError::Invalid(format!(
                "broadcast from rank {root} in a group of {}",
                self.world_size()
            )));
        }
        self.comm
            .broadcast_in_place(buf, root as i32)
            .map_err(nccl("broadcast"))?;
        Ok(())
    }

    fn check_len(&self, what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(CommError::Invalid(format!(
                "{what}: the output holds {got} values, expected {want}"
            )));
        }
        Ok(())
    }

    fn to_device(&self, v: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(v).map_err(nccl("copy to the GPU"))
    }

    fn to_host(&self, d: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
        self.stream
            .memcpy_dtoh(d, out)
            .map_err(nccl("copy from the GPU"))?;
        self.stream.synchronize().map_err(nccl("synchronize"))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let mut d = self.to_device(buf)?;
        self.all_reduce_sum_device(&mut d)?;
        self.to_host(&d, buf)
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let mut d = self
            .stream
            .clone_htod(buf)
            .map_err(nccl("copy to the GPU"))?;
        self.comm
            .all_reduce_in_place(&mut d, &ReduceOp::Sum)
            .map_err(nccl("all-reduce"))?;
        self.stream
            .memcpy_dtoh(&d, buf)
            .map_err(nccl("copy from the GPU"))?;
        self.stream.synchronize().map_err(nccl("synchronize"))
    }
    fn all_reduce_max(&mut self, buf: &mut [f32]) -> Result<()> {
        let mut d = self.to_device(buf)?;
        self.comm
            .all_reduce_in_place(&mut d, &ReduceOp::Max)
            .map_err(nccl("all-reduce"))?;
        self.to_host(&d, buf)
    }
    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let d = self.to_device(local)?;
        let n = local.len() * self.world_size();
        let mut out = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(nccl("allocating"))?;
        self.all_gather_device(&d, &mut out)?;
        let mut host = vec![0f32; n];
        self.to_host(&out, &mut host)?;
        Ok(host)
    }
    fn reduce_scatter_sum(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        let d = self.to_device(buf)?;
        let n = buf.len() / self.world_size().max(1);
        let mut out = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(nccl("allocating"))?;
        self.reduce_scatter_sum_device(&d, &mut out)?;
        let mut host = vec![0f32; n];
        self.to_host(&out, &mut host)?;
        Ok(host)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let mut d = self.to_device(buf)?;
        self.broadcast_device(&mut d, root)?;
        self.to_host(&d, buf)
    }
}
