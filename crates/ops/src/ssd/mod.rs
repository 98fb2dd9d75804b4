//! The SSD scan of a Mamba2 mixer (docs/numerics.md §3).
//!
//! Per batch `b` and head `h` (group `g = h / (H/G)`), with state `s` of shape [P, N]:
//! `s_t = exp(dt_t·A_h)·s_{t-1} + dt_t · x_t ⊗ B_t[g]`, `y_t = s_t · C_t[g] + D_h · x_t`.
//!
//! Layouts (row-major): x [B,T,H,P], dt [B,T,H] (already softplus'd and clamped), A [H] (negative), B and C
//! [B,T,G,N], D [H], states [B,H,P,N], y [B,T,H,P], seq_idx [B,T].
//!
//! Packing (see [`crate::packing`]): with `seq_idx`, the state is zeroed before every boundary `t`
//! (`seq_idx[t] != seq_idx[t−1]`), i.e. `exp(dt_t·A)` is replaced by 0 there; the initial state reaches only the
//! first segment, and the final state is that of the last segment. In the chunked algorithm every decay factor
//! between two positions of different segments is 0 (see `cpu.rs`).
//!
//! Implementations, each with an initial state in and the final state out:
//! - [`reference`](mod@reference): the sequential recurrence in f64, forward and backward, and the f32 decode step;
//! - [`cpu`]: the chunked matmul algorithm on f32 slices, forward and backward (prefill and training on the CPU);
//! - [`composed`]: the chunked algorithm from candle tensor ops, differentiable by candle autograd (the path of
//!   every other device until a fused kernel lands there, and a checked twin after);
//! - the fused CUDA forward of `coil-kernels` (`cuda.rs` binds it to candle tensors): bf16 x, B and C, head dim
//!   and state 64 or 128; other inputs on a GPU take the composed twin;
//! - [`ssd`] / [`ssd_packed`] and [`ssd_layer`] (this file): the tensor-level entry points, the one place that
//!   picks among them by device. [`ssd_layer`] takes a layer's raw dt (softplus, bias and clamp inside the
//!   kernel) and strided views of the conv output, so a Mamba2 layer calls it without copies.
//!
//! The training backward runs inside the mixer-core op ([`crate::mixer_core`](mod@crate::mixer_core)); this
//! entry point is forward only (prefill and chained calls).

pub mod composed;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod reference;

pub use cpu::{
    ssd_chunked, ssd_chunked_backward, ssd_chunked_backward_into, ssd_chunked_into, ssd_chunked_y,
    HEADS_PER_TASK,
};
pub use reference::{ssd_reference, ssd_reference_backward, ssd_step};

use crate::host::{dims4, expect_shape, host_f32};
use crate::packing::{seq_idx_host, Segments};
use candle_core::{bail, DType, Device, Result, Tensor};

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

/// Gradients of one SSD call, in the layouts of [`SsdInputs`]: dx [B,T,H,P], ddt [B,T,H], da [H] (w.r.t. the
/// negative `A`, summed over b and t), db, dc [B,T,G,N], dd [H], d_initial_state [B,H,P,N] (zeros when the call
/// had no initial state).
#[derive(Clone, Debug)]
pub struct SsdGrads {
    pub dx: Vec<f32>,
    pub ddt: Vec<f32>,
    pub da: Vec<f32>,
    pub db: Vec<f32>,
    pub dc: Vec<f32>,
    pub dd: Vec<f32>,
    pub d_initial_state: Vec<f32>,
}

impl SsdGrads {
    /// Zero gradients sized for `dims`.
    pub fn zeros(dims: SsdDims) -> Self {
        SsdGrads {
            dx: vec![0.0; dims.x_len()],
            ddt: vec![0.0; dims.dt_len()],
            da: vec![0.0; dims.heads],
            db: vec![0.0; dims.bc_len()],
            dc: vec![0.0; dims.bc_len()],
            dd: vec![0.0; dims.heads],
            d_initial_state: vec![0.0; dims.state_len()],
        }
    }

    /// Panics naming the field when one is not sized for `dims` (a caller bug).
    pub fn check(&self, dims: &SsdDims) {
        assert_eq!(self.dx.len(), dims.x_len(), "ssd grads: dx length");
        assert_eq!(self.ddt.len(), dims.dt_len(), "ssd grads: ddt length");
        assert_eq!(self.da.len(), dims.heads, "ssd grads: dA length");
        assert_eq!(self.db.len(), dims.bc_len(), "ssd grads: dB length");
        assert_eq!(self.dc.len(), dims.bc_len(), "ssd grads: dC length");
        assert_eq!(self.dd.len(), dims.heads, "ssd grads: dD length");
        assert_eq!(
            self.d_initial_state.len(),
            dims.state_len(),
            "ssd grads: d_initial_state length"
        );
    }
}

pub(crate) fn check_grads_in(dims: &SsdDims, inp: &SsdInputs, dy: &[f32], d_final: Option<&[f32]>) {
    inp.check(dims);
    assert_eq!(dy.len(), dims.x_len(), "ssd backward: dy length");
    if let Some(s) = d_final {
        assert_eq!(
            s.len(),
            dims.state_len(),
            "ssd backward: d_final_state length"
        );
    }
}

/// Chunked SSD on tensors. `x` [B,T,H,P], `dt` [B,T,H], `a` [H], `b`/`c` [B,T,G,N], `d` [H], `initial_state`
/// [B,H,P,N], any float dtype. Returns `(y [B,T,H,P], final_state [B,H,P,N])`, both f32.
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
) -> Result<(Tensor, Tensor)> {
    ssd_packed(x, dt, a, b, c, d, initial_state, None, chunk)
}

/// [`ssd`] for packed rows: `seq_idx` [B,T] (any integer dtype) names the example of every position, and the
/// state restarts wherever it changes ([`crate::packing`]). `None` is [`ssd`].
#[allow(clippy::too_many_arguments)]
pub fn ssd_packed(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    initial_state: Option<&Tensor>,
    seq_idx: Option<&Tensor>,
    chunk: usize,
) -> Result<(Tensor, Tensor)> {
    let dims = check_shapes(x, dt, a, b, c, d, initial_state, chunk)?;
    let seq_idx = seq_idx
        .map(|s| seq_idx_host(s, dims.batch, dims.seqlen))
        .transpose()?;
    let args = Args {
        x,
        dt,
        a,
        b,
        c,
        d,
        initial_state,
    };
    match x.device() {
        Device::Cpu => cpu_fwd(dims, args, seq_idx.as_deref(), chunk),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda_fwd(dims, args, seq_idx, chunk),
        _ => composed_fwd(dims, args, seq_idx, chunk),
    }
}

/// The tensor arguments of one call, shapes checked.
#[derive(Clone, Copy)]
struct Args<'a> {
    x: &'a Tensor,
    dt: &'a Tensor,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    d: &'a Tensor,
    initial_state: Option<&'a Tensor>,
}

#[allow(clippy::too_many_arguments)]
fn check_shapes(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    initial_state: Option<&Tensor>,
    chunk: usize,
) -> Result<SsdDims> {
    let (batch, seqlen, heads, head_dim) = dims4(x, "ssd x")?;
    let (_, _, groups, state) = dims4(b, "ssd B")?;
    if groups == 0 || heads % groups != 0 {
        bail!("ssd: {heads} heads not divisible by {groups} groups");
    }
    if chunk == 0 {
        bail!("ssd: chunk size must be positive");
    }
    expect_shape(dt, &[batch, seqlen, heads], "ssd dt")?;
    expect_shape(a, &[heads], "ssd A")?;
    expect_shape(b, &[batch, seqlen, groups, state], "ssd B")?;
    expect_shape(c, &[batch, seqlen, groups, state], "ssd C")?;
    expect_shape(d, &[heads], "ssd D")?;
    if let Some(s) = initial_state {
        expect_shape(s, &[batch, heads, head_dim, state], "ssd initial state")?;
    }
    Ok(SsdDims {
        batch,
        seqlen,
        heads,
        head_dim,
        groups,
        state,
    })
}

/// The CPU path: [`cpu::ssd_chunked`] on host copies.
fn cpu_fwd(
    dims: SsdDims,
    t: Args,
    seq_idx: Option<&[i32]>,
    chunk: usize,
) -> Result<(Tensor, Tensor)> {
    let op = "ssd";
    let (xv, dtv, av, bv, cv, dv) = (
        host_f32(t.x, op)?,
        host_f32(t.dt, op)?,
        host_f32(t.a, op)?,
        host_f32(t.b, op)?,
        host_f32(t.c, op)?,
        host_f32(t.d, op)?,
    );
    let init = t.initial_state.map(|s| host_f32(s, op)).transpose()?;
    let inp = SsdInputs {
        x: &xv,
        dt: &dtv,
        a: &av,
        b: &bv,
        c: &cv,
        d: &dv,
        initial_state: init.as_deref(),
        seq_idx,
    };
    let out = ssd_chunked(dims, inp, chunk);
    let dev = t.x.device();
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim,
        state,
        ..
    } = dims;
    Ok((
        Tensor::from_vec(out.y, (batch, seqlen, heads, head_dim), dev)?,
        Tensor::from_vec(out.final_state, (batch, heads, head_dim, state), dev)?,
    ))
}

/// The CUDA path: the fused kernel where it applies (bf16 x, B and C; dt taken as given), else the composed twin
/// (which the case table checks the kernel against). Both return f32.
#[cfg(feature = "cuda")]
fn cuda_fwd(
    dims: SsdDims,
    t: Args,
    seq_idx: Option<Vec<i32>>,
    chunk: usize,
) -> Result<(Tensor, Tensor)> {
    let fused = cuda::Fused {
        dims,
        x: t.x,
        b: t.b,
        c: t.c,
        dt: cuda::DtSpec {
            dt: t.dt,
            bias: None,
            softplus: false,
            limit: (0.0, f32::INFINITY),
        },
        a: t.a,
        d: t.d,
        initial_state: t.initial_state,
        seq_idx: seq_idx.as_deref(),
    };
    match cuda::fused(&fused)? {
        Some((y, fin)) => Ok((y.to_dtype(candle_core::DType::F32)?, fin)),
        None => composed_fwd(dims, t, seq_idx, chunk),
    }
}

/// The SSD of one Mamba2 layer with its time-step parametrisation: `dt = clamp(softplus(dt_raw + dt_bias), lo,
/// hi)`, then the scan with the D skip. Fields are the layer's own tensors, views welcome (column ranges of the
/// conv and in_proj outputs: any batch and time strides, the rest contiguous).
pub struct LayerSsd<'a> {
    /// [B,T,H·P]
    pub x: &'a Tensor,
    /// [B,T,G·N], and C likewise.
    pub b: &'a Tensor,
    pub c: &'a Tensor,
    /// [B,T,H], before softplus and bias.
    pub dt_raw: &'a Tensor,
    /// [H] each; `a` = A = −exp(A_log).
    pub dt_bias: &'a Tensor,
    pub a: &'a Tensor,
    pub d: &'a Tensor,
    /// [B,H,P,N], the state before the first position.
    pub initial_state: Option<&'a Tensor>,
    /// [B·T] example ids of packed rows (host).
    pub seq_idx: Option<&'a [i32]>,
    pub heads: usize,
    pub groups: usize,
    /// The chunk size of the chunked algorithm (changes rounding only).
    pub chunk: usize,
    /// `(lo, hi)` clamp of dt; `(0, ∞)` for none.
    pub dt_limit: (f32, f32),
    /// The layer's activation dtype. A bf16 layer on a GPU runs the fused bf16 kernel (x, B and C rounded to bf16
    /// first if they come in f32); other layers and devices compute in f32.
    pub dtype: DType,
}

/// Whether a bf16 layer's inference chain on a GPU keeps its activations in bf16 ([`ssd_input_dtype`]). Off by
/// default until it has run on a GPU (written 2026-12-07 without one; `crates/kernels/notes/decode.md`):
/// `COIL_PREFILL_BF16=1` or [`set_prefill_bf16`] turns it on. Both give the same bits by construction (each kernel
/// computes in f32 and rounds once where the f32 chain's casts round), which the CUDA tests check.
pub fn prefill_bf16() -> bool {
    use std::sync::atomic::Ordering;
    match PREFILL_BF16.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("COIL_PREFILL_BF16").is_ok_and(|v| v.trim() == "1");
            PREFILL_BF16.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        v => v == 2,
    }
}

/// Sets [`prefill_bf16`] for this process (for measuring and tests).
pub fn set_prefill_bf16(on: bool) {
    PREFILL_BF16.store(if on { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
}

/// 0: not read from the environment yet; 1: off; 2: on.
static PREFILL_BF16: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The dtype in which [`ssd_layer`] wants x, B and C for a layer of `dtype` on `device` with these sizes: bf16
/// where the fused GPU kernel takes them (a bf16 layer on a GPU with a kernel for its head and state sizes; it
/// would round f32 inputs to bf16 first) and [`prefill_bf16`] is on, f32 everywhere else. A prefill produces
/// them in this dtype directly, so nothing is converted twice.
pub fn ssd_input_dtype(
    dtype: DType,
    device: &Device,
    heads: usize,
    head_dim: usize,
    groups: usize,
    state: usize,
) -> DType {
    #[cfg(feature = "cuda")]
    if dtype == DType::BF16
        && matches!(device, Device::Cuda(_))
        && prefill_bf16()
        && coil_kernels::ssd_fwd::supports(&coil_kernels::ssd_fwd::SsdDims {
            batch: 1,
            seqlen: 1,
            heads,
            head_dim,
            groups,
            state,
        })
    {
        return DType::BF16;
    }
    let _ = (dtype, device, heads, head_dim, groups, state);
    DType::F32
}

/// [`LayerSsd`] → `(y [B,T,H·P], final_state [B,H,P,N] f32)`. A bf16 layer on a GPU gets the fused kernel (one
/// launch) and a bf16 y; elsewhere y is f32 from [`ssd_packed`] after [`crate::dt::dt_softplus`].
pub fn ssd_layer(l: &LayerSsd) -> Result<(Tensor, Tensor)> {
    let (batch, seqlen, hp) = l.x.dims3()?;
    let (_, _, gn) = l.b.dims3()?;
    if l.heads == 0 || hp % l.heads != 0 || l.groups == 0 || gn % l.groups != 0 {
        bail!(
            "ssd layer: x [.., {hp}] and B [.., {gn}] do not split into {} heads and {} groups",
            l.heads,
            l.groups
        );
    }
    let (head_dim, state) = (hp / l.heads, gn / l.groups);
    #[cfg(feature = "cuda")]
    {
        let dims = SsdDims {
            batch,
            seqlen,
            heads: l.heads,
            head_dim,
            groups: l.groups,
            state,
        };
        expect_shape(l.dt_raw, &[batch, seqlen, l.heads], "ssd layer dt")?;
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16);
        let on_gpu_bf16 = l.dtype == DType::BF16 && matches!(l.x.device(), Device::Cuda(_));
        let (x, b, c) = if on_gpu_bf16 {
            (bf16(l.x)?, bf16(l.b)?, bf16(l.c)?)
        } else {
            (l.x.clone(), l.b.clone(), l.c.clone())
        };
        let fused = cuda::Fused {
            dims,
            x: &x,
            b: &b,
            c: &c,
            dt: cuda::DtSpec {
                dt: l.dt_raw,
                bias: Some(l.dt_bias),
                softplus: true,
                limit: l.dt_limit,
            },
            a: l.a,
            d: l.d,
            initial_state: l.initial_state,
            seq_idx: l.seq_idx,
        };
        if let Some((y, fin)) = cuda::fused(&fused)? {
            return Ok((y.reshape((batch, seqlen, hp))?, fin));
        }
    }
    // The f32 chain (inputs that came in bf16 for a kernel that then could not run are widened).
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let x = f32(l.x)?.reshape((batch, seqlen, l.heads, head_dim))?;
    let b = f32(l.b)?.reshape((batch, seqlen, l.groups, state))?;
    let c = f32(l.c)?.reshape((batch, seqlen, l.groups, state))?;
    let dt = crate::dt::dt_softplus(&f32(l.dt_raw)?, l.dt_bias, l.dt_limit)?;
    let seq_idx = l
        .seq_idx
        .map(|ids| Tensor::from_slice(ids, (batch, seqlen), &Device::Cpu))
        .transpose()?;
    let (y, fin) = ssd_packed(
        &x,
        &dt,
        l.a,
        &b,
        &c,
        l.d,
        l.initial_state,
        seq_idx.as_ref(),
        l.chunk,
    )?;
    Ok((y.reshape((batch, seqlen, hp))?, fin))
}

/// Any other device: [`composed::ssd`].
fn composed_fwd(
    dims: SsdDims,
    t: Args,
    seq_idx: Option<Vec<i32>>,
    chunk: usize,
) -> Result<(Tensor, Tensor)> {
    let segments = seq_idx.map(|ids| Segments {
        batch: dims.batch,
        seqlen: dims.seqlen,
        ids,
    });
    composed::ssd(
        t.x,
        t.dt,
        t.a,
        t.b,
        t.c,
        t.d,
        t.initial_state,
        chunk,
        segments.as_ref(),
    )
}

#[cfg(test)]
pub(crate) mod layer_tests;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
pub(crate) mod tests;
