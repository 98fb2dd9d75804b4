//! Launcher of the prefill's causal conv1d + SiLU (`cuda/conv1d.cu`): a whole sequence per call, x read in place
//! with its row strides (the in_proj output's layout), the output `[B, T, C]` in x's element type (f32 or bf16).

use crate::module::{function, Act, KernelError, Result, CONV1D};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// Sizes and strides of one call: `x[b, t, c]` at `b·ld_b + t·ld_t + c`.
#[derive(Clone, Copy, Debug)]
pub struct Conv1dDims {
    pub batch: usize,
    pub seqlen: usize,
    pub channels: usize,
    pub k: usize,
    pub ld_b: usize,
    pub ld_t: usize,
}

fn invalid(what: String) -> KernelError {
    KernelError::Invalid {
        kernel: "conv1d",
        what,
    }
}

/// `out[b, t, c] = SiLU(Σ_j w[c, j]·x[b, t − (K−1) + j, c] + bias[c])`, history `[B, C, K−1]` before t = 0 (or 0).
/// Computed in f32; a bf16 output is rounded to nearest once.
pub fn conv1d_silu<T: Act>(
    stream: &Arc<CudaStream>,
    x: &CudaView<'_, T>,
    history: Option<&CudaView<'_, f32>>,
    w: &CudaView<'_, f32>,
    bias: Option<&CudaView<'_, f32>>,
    out: &mut CudaSlice<T>,
    d: Conv1dDims,
) -> Result<()> {
    let Conv1dDims {
        batch,
        seqlen,
        channels,
        k,
        ld_b,
        ld_t,
    } = d;
    if batch == 0 || seqlen == 0 || channels == 0 {
        return Ok(());
    }
    if !(1..=4).contains(&k) {
        return Err(KernelError::Unsupported(format!(
            "conv1d: no kernel for a width of {k}"
        )));
    }
    let name = format!("conv1d_silu{}_k{k}", T::SUFFIX);
    // The last element x touches, and every other buffer's extent.
    let x_need = (batch - 1) * ld_b + (seqlen - 1) * ld_t + channels;
    if channels > ld_t || x_need > x.len() {
        return Err(invalid(format!(
            "x: {batch}x{seqlen}x{channels} at strides ({ld_b}, {ld_t}) do not fit its {} elements",
            x.len()
        )));
    }
    if w.len() < channels * k
        || bias.is_some_and(|b| b.len() < channels)
        || history.is_some_and(|h| h.len() < batch * channels * (k - 1))
        || out.len() < batch * seqlen * channels
    {
        return Err(invalid(format!(
            "weight, bias, history or output smaller than {batch}x{seqlen}x{channels} (width {k}) needs"
        )));
    }
    let to_i32 = |v: usize| i32::try_from(v).map_err(|_| invalid(format!("{v} exceeds 32 bits")));
    let (t_i, c_i) = (to_i32(seqlen)?, to_i32(channels)?);
    let s: &CudaStream = stream;
    let (x_ptr, _gx) = x.device_ptr(s);
    let h_g = history.map(|h| h.device_ptr(s));
    let h_ptr = h_g.as_ref().map_or(0, |(p, _)| *p);
    let (w_ptr, _gw) = w.device_ptr(s);
    let b_g = bias.map(|b| b.device_ptr(s));
    let b_ptr = b_g.as_ref().map_or(0, |(p, _)| *p);
    let (o_ptr, _go) = out.device_ptr_mut(s);
    let (ld_b, ld_t) = (ld_b as i64, ld_t as i64);
    let f = function(stream.context(), &CONV1D, &name, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (
            channels.div_ceil(128) as u32,
            batch as u32,
            seqlen.div_ceil(64) as u32,
        ),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&f);
    l.arg(&x_ptr)
        .arg(&ld_b)
        .arg(&ld_t)
        .arg(&h_ptr)
        .arg(&w_ptr)
        .arg(&b_ptr)
        .arg(&o_ptr)
        .arg(&t_i)
        .arg(&c_i);
    // SAFETY: x holds every (b, t, c) at its strides, the history B·C·(K−1), the weight C·K, the bias C and the
    // output B·T·C elements (checked above).
    unsafe { l.launch(cfg) }?;
    Ok(())
}
