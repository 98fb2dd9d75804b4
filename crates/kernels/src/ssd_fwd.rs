//! Launcher of the fused SSD forward (`cuda/ssd_fwd_sm90.cu` with wgmma on the H100/H200 for head dim 64 and
//! state 128, `cuda/ssd_fwd.cu` with mma.sync for every other case; design and measurements in
//! `notes/ssd_fwd.md`).
//!
//! Computes, for every batch row and head, `dt = clamp(softplus(dt_raw + dt_bias), lo, hi)`, the SSD scan
//! `y = SSD(x, dt, A, B, C) + D·x` and the final state, in one launch: bf16 x, B, C and y, raw dt in bf16 or
//! f32, fp32 parameters, an fp32 state. Head dim and state size 64 or 128, any head count divisible by the
//! group count, any length; `seq_idx` restarts the state wherever it changes.

use crate::module::{function, KernelError, Result, SSD_FWD, SSD_FWD_SM90};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use half::bf16;
use std::sync::{Arc, OnceLock};

const KERNEL: &str = "ssd_fwd";
/// Positions per block of the kernel (its own choice: the result does not depend on it beyond rounding).
pub const BLOCK_LEN: usize = 64;
const THREADS: u32 = 256;

/// Sizes: `B` batch rows, `T` positions, `H` heads of head dim `P`, `G` groups of B/C with state size `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdDims {
    pub batch: usize,
    pub seqlen: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
}

/// A `[B, T, width]` operand inside a device buffer: element `(b, t, i)` is `data[b·batch_stride +
/// t·time_stride + i]` (a column range of a wider row, such as x inside the conv output, is a view that starts
/// at its first column).
pub struct Strided<'a, T> {
    pub data: CudaView<'a, T>,
    pub batch_stride: usize,
    pub time_stride: usize,
}

/// Raw dt (before softplus and bias), `[B, T, H]`.
pub enum DtRaw<'a> {
    Bf16(Strided<'a, bf16>),
    F32(Strided<'a, f32>),
}

/// Inputs of one SSD forward.
pub struct SsdFwdInputs<'a> {
    /// `[B, T, H·P]`, head `h` at columns `h·P ..`.
    pub x: Strided<'a, bf16>,
    /// `[B, T, G·N]`, group `g` at columns `g·N ..`; C must have the same strides.
    pub b: Strided<'a, bf16>,
    pub c: Strided<'a, bf16>,
    pub dt: DtRaw<'a>,
    /// `A = −exp(A_log)`, `[H]`.
    pub a: CudaView<'a, f32>,
    pub dt_bias: Option<CudaView<'a, f32>>,
    pub d: Option<CudaView<'a, f32>>,
    /// `[B, H, P, N]`, contiguous.
    pub initial_state: Option<CudaView<'a, f32>>,
    /// `[B, T]`, contiguous.
    pub seq_idx: Option<CudaView<'a, i32>>,
    /// `(lo, hi)` clamp of dt; `(0, ∞)` for none.
    pub dt_limit: (f32, f32),
    /// Apply softplus to `dt_raw + dt_bias` (mamba_ssm's `dt_softplus`); false takes it as dt already.
    pub dt_softplus: bool,
}

/// Outputs of one SSD forward: `y` [B, T, H, P] (bf16, contiguous) and the final state [B, H, P, N] (f32).
pub struct SsdFwdOutput {
    pub y: CudaSlice<bf16>,
    pub final_state: CudaSlice<f32>,
}

/// The kernel's parameter block: `struct SsdFwdParams` of `cuda/ssd_common.cuh`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Params {
    x: u64,
    b: u64,
    c: u64,
    dt: u64,
    a: u64,
    dt_bias: u64,
    d: u64,
    init_state: u64,
    seq_idx: u64,
    y: u64,
    final_state: u64,
    x_bs: i64,
    x_ts: i64,
    bc_bs: i64,
    bc_ts: i64,
    dt_bs: i64,
    dt_ts: i64,
    y_bs: i64,
    y_ts: i64,
    batch: i32,
    seqlen: i32,
    heads: i32,
    groups: i32,
    dt_lo: f32,
    dt_hi: f32,
    dt_is_f32: i32,
    dt_softplus: i32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter struct.
unsafe impl DeviceRepr for Params {}

/// Dynamic shared memory of the `(P, N)` kernel: mirrors `Layout<P, N>::BYTES` in `cuda/ssd_fwd.cu` (x, B and
/// C double-buffered, M, the bf16 state, a y staging tile when it does not fit in C, two blocks of scalars and
/// two of raw dt / seq_idx words).
fn smem_bytes(p: usize, n: usize) -> u32 {
    let l = BLOCK_LEN;
    let y_stage = if p > n { l * p } else { 0 };
    let bf16_elems = 2 * l * p + 4 * l * n + l * l + p * n + y_stage;
    (bf16_elems * 2 + 2 * (5 * l + 4) * 4 + 2 * 2 * l * 4) as u32
}

fn invalid(what: String) -> KernelError {
    KernelError::Invalid {
        kernel: KERNEL,
        what,
    }
}

/// Checks that `[B, T, width]` at these strides stays inside `len` elements.
fn check_extent(
    what: &str,
    len: usize,
    dims: &SsdDims,
    bs: usize,
    ts: usize,
    width: usize,
) -> Result<()> {
    let last = (dims.batch - 1)
        .checked_mul(bs)
        .and_then(|v| v.checked_add((dims.seqlen - 1).checked_mul(ts)?))
        .and_then(|v| v.checked_add(width));
    match last {
        Some(end) if end <= len => Ok(()),
        _ => Err(invalid(format!(
            "{what}: [{}, {}, {width}] at strides ({bs}, {ts}) does not fit its {len} elements",
            dims.batch, dims.seqlen
        ))),
    }
}

fn check_len(what: &str, len: usize, want: usize) -> Result<()> {
    if len < want {
        return Err(invalid(format!("{what}: {len} elements, need {want}")));
    }
    Ok(())
}

fn check_align(what: &str, ptr: u64, bytes: u64) -> Result<()> {
    if !ptr.is_multiple_of(bytes) {
        return Err(KernelError::Unsupported(format!(
            "{KERNEL}: {what} is not {bytes}-byte aligned"
        )));
    }
    Ok(())
}

/// Dynamic shared memory of the wgmma kernel: mirrors `Sm90Layout::ALLOC` in `cuda/ssd_fwd_sm90.cu` (13 panels
/// of 64 x 64 bf16: x, B and C double-buffered, the bf16 state, M; the scalars and raw words; 1 KB of slack to
/// align the base to the 1024-byte swizzle atom).
const SM90_SMEM_BYTES: u32 =
    (13 * BLOCK_LEN * 64 * 2 + 2 * (5 * BLOCK_LEN + 4) * 4 + 2 * 2 * BLOCK_LEN * 4 + 1024) as u32;

/// The two kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Warpgroup MMAs (`cuda/ssd_fwd_sm90.cu`): compute capability 9.0, head dim 64, state 128.
    Wgmma,
    /// mma.sync (`cuda/ssd_fwd.cu`): every supported size on compute capability 8.x and 9.0.
    MmaSync,
}

/// The kernel [`ssd_fwd`] runs for `dims` on a GPU of compute capability `cc`: the wgmma kernel where it
/// applies, unless `COIL_SSD_KERNEL=mma_sync` is set in the environment (read once; for comparing the two
/// kernels on one GPU, as the CUDA case tables do).
pub fn variant(dims: &SsdDims, cc: (i32, i32)) -> Variant {
    static FORCE_MMA_SYNC: OnceLock<bool> = OnceLock::new();
    let forced = *FORCE_MMA_SYNC
        .get_or_init(|| std::env::var("COIL_SSD_KERNEL").is_ok_and(|v| v == "mma_sync"));
    if !forced && cc == (9, 0) && dims.head_dim == 64 && dims.state == 128 {
        Variant::Wgmma
    } else {
        Variant::MmaSync
    }
}

/// Whether the fused kernel takes these sizes (others go to the portable path).
pub fn supports(dims: &SsdDims) -> bool {
    matches!(dims.head_dim, 64 | 128)
        && matches!(dims.state, 64 | 128)
        && dims.groups > 0
        && dims.heads.is_multiple_of(dims.groups)
        && dims.batch <= 65_535
        && dims.heads <= i32::MAX as usize
        && dims.seqlen <= i32::MAX as usize
}

/// Runs the fused SSD forward on `stream` and returns its outputs (allocated on `stream`).
pub fn ssd_fwd(
    stream: &Arc<CudaStream>,
    dims: SsdDims,
    inp: &SsdFwdInputs<'_>,
) -> Result<SsdFwdOutput> {
    if !supports(&dims) {
        return Err(KernelError::Unsupported(format!(
            "{KERNEL}: no kernel for head dim {} and state {} (64 or 128), {} heads in {} groups, batch {}",
            dims.head_dim, dims.state, dims.heads, dims.groups, dims.batch
        )));
    }
    let state_len = dims.batch * dims.heads * dims.head_dim * dims.state;
    let y_len = dims.batch * dims.seqlen * dims.heads * dims.head_dim;
    if y_len == 0 {
        return Ok(SsdFwdOutput {
            y: stream.alloc_zeros(y_len)?,
            final_state: match &inp.initial_state {
                Some(s) => stream.clone_dtod(s)?,
                None => stream.alloc_zeros(state_len)?,
            },
        });
    }
    let SsdDims {
        batch,
        seqlen,
        heads,
        head_dim: p,
        groups,
        state: n,
    } = dims;
    let (hp, gn) = (heads * p, groups * n);
    check_extent(
        "x",
        inp.x.data.len(),
        &dims,
        inp.x.batch_stride,
        inp.x.time_stride,
        hp,
    )?;
    check_extent(
        "B",
        inp.b.data.len(),
        &dims,
        inp.b.batch_stride,
        inp.b.time_stride,
        gn,
    )?;
    check_extent(
        "C",
        inp.c.data.len(),
        &dims,
        inp.c.batch_stride,
        inp.c.time_stride,
        gn,
    )?;
    if (inp.b.batch_stride, inp.b.time_stride) != (inp.c.batch_stride, inp.c.time_stride) {
        return Err(invalid("B and C must have the same strides".into()));
    }
    let (dt_len, dt_bs, dt_ts) = match &inp.dt {
        DtRaw::Bf16(s) => (s.data.len(), s.batch_stride, s.time_stride),
        DtRaw::F32(s) => (s.data.len(), s.batch_stride, s.time_stride),
    };
    check_extent("dt", dt_len, &dims, dt_bs, dt_ts, heads)?;
    check_len("A", inp.a.len(), heads)?;
    if let Some(v) = &inp.dt_bias {
        check_len("dt_bias", v.len(), heads)?;
    }
    if let Some(v) = &inp.d {
        check_len("D", v.len(), heads)?;
    }
    if let Some(v) = &inp.initial_state {
        check_len("initial state", v.len(), state_len)?;
    }
    if let Some(v) = &inp.seq_idx {
        check_len("seq_idx", v.len(), batch * seqlen)?;
    }
    // 16-byte copies of x, B and C rows.
    for (what, bs, ts) in [
        ("x", inp.x.batch_stride, inp.x.time_stride),
        ("B/C", inp.b.batch_stride, inp.b.time_stride),
    ] {
        // The kernel keeps offsets within one block of 64 rows in 32-bit integers.
        if ts.saturating_mul(BLOCK_LEN) > i32::MAX as usize {
            return Err(KernelError::Unsupported(format!(
                "{KERNEL}: {what} time stride {ts} is too large"
            )));
        }
        if bs % 8 != 0 || ts % 8 != 0 {
            return Err(KernelError::Unsupported(format!(
                "{KERNEL}: {what} strides ({bs}, {ts}) are not multiples of 8 elements"
            )));
        }
    }

    let (cubins, name, smem) = match variant(&dims, stream.context().compute_capability()?) {
        Variant::Wgmma => (&SSD_FWD_SM90, "ssd_fwd_sm90_p64_n128", SM90_SMEM_BYTES),
        Variant::MmaSync => (
            &SSD_FWD,
            match (p, n) {
                (64, 64) => "ssd_fwd_p64_n64",
                (64, 128) => "ssd_fwd_p64_n128",
                (128, 64) => "ssd_fwd_p128_n64",
                _ => "ssd_fwd_p128_n128",
            },
            smem_bytes(p, n),
        ),
    };
    let func = function(stream.context(), cubins, name, smem)?;

    // SAFETY: the kernel writes every element of both outputs (every position, head and column of y; every
    // state element of every (batch row, head)) before anything reads them.
    let mut y = unsafe { stream.alloc::<bf16>(y_len) }?;
    let mut fin = unsafe { stream.alloc::<f32>(state_len) }?;
    let s: &CudaStream = stream;
    let (x_ptr, _gx) = inp.x.data.device_ptr(s);
    let (b_ptr, _gb) = inp.b.data.device_ptr(s);
    let (c_ptr, _gc) = inp.c.data.device_ptr(s);
    let (dt_ptr, _gdt) = match &inp.dt {
        DtRaw::Bf16(v) => v.data.device_ptr(s),
        DtRaw::F32(v) => v.data.device_ptr(s),
    };
    let (a_ptr, _ga) = inp.a.device_ptr(s);
    let bias = inp.dt_bias.as_ref().map(|v| v.device_ptr(s));
    let d = inp.d.as_ref().map(|v| v.device_ptr(s));
    let init = inp.initial_state.as_ref().map(|v| v.device_ptr(s));
    let seq = inp.seq_idx.as_ref().map(|v| v.device_ptr(s));
    let (y_ptr, _gy) = y.device_ptr_mut(s);
    let (fin_ptr, _gf) = fin.device_ptr_mut(s);
    let ptr_of = |o: &Option<(u64, _)>| o.as_ref().map_or(0, |(p, _)| *p);
    // The kernel reads bf16 dt as the aligned 4-byte word around each element: the last element must not be the
    // low half of a word that runs past the view.
    if let DtRaw::Bf16(v) = &inp.dt {
        let last = (batch - 1) * dt_bs + (seqlen - 1) * dt_ts + heads - 1;
        if (dt_ptr + 2 * last as u64).is_multiple_of(4) && last + 1 >= v.data.len() {
            return Err(KernelError::Unsupported(format!(
                "{KERNEL}: bf16 dt ends on the low half of a 4-byte word"
            )));
        }
    }
    for (what, ptr) in [("x", x_ptr), ("B", b_ptr), ("C", c_ptr)] {
        check_align(what, ptr, 16)?;
    }
    check_align("initial state", ptr_of(&init), 8)?;

    let params = Params {
        x: x_ptr,
        b: b_ptr,
        c: c_ptr,
        dt: dt_ptr,
        a: a_ptr,
        dt_bias: ptr_of(&bias),
        d: ptr_of(&d),
        init_state: ptr_of(&init),
        seq_idx: ptr_of(&seq),
        y: y_ptr,
        final_state: fin_ptr,
        x_bs: inp.x.batch_stride as i64,
        x_ts: inp.x.time_stride as i64,
        bc_bs: inp.b.batch_stride as i64,
        bc_ts: inp.b.time_stride as i64,
        dt_bs: dt_bs as i64,
        dt_ts: dt_ts as i64,
        y_bs: (seqlen * hp) as i64,
        y_ts: hp as i64,
        batch: batch as i32,
        seqlen: seqlen as i32,
        heads: heads as i32,
        groups: groups as i32,
        dt_lo: inp.dt_limit.0,
        dt_hi: inp.dt_limit.1,
        dt_is_f32: matches!(inp.dt, DtRaw::F32(_)) as i32,
        dt_softplus: inp.dt_softplus as i32,
    };
    let cfg = LaunchConfig {
        grid_dim: (heads as u32, batch as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem,
    };
    let mut launch = stream.launch_builder(&func);
    launch.arg(&params);
    // SAFETY: every pointer in `params` comes from a live device view on this stream, and the checks above
    // bound every element the kernel reads or writes (extents, strides, alignment) inside those views; the
    // views' guards stay alive until the launch is queued.
    unsafe { launch.launch(cfg) }?;
    drop((_gy, _gf));
    Ok(SsdFwdOutput {
        y,
        final_state: fin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_match_the_c_layout() {
        // 11 pointers, 8 strides, 4 ints, 2 floats, 2 ints: no padding anywhere.
        assert_eq!(
            std::mem::size_of::<Params>(),
            11 * 8 + 8 * 8 + 4 * 4 + 2 * 4 + 2 * 4
        );
    }

    #[test]
    fn shared_memory_fits_hopper_and_two_ctas_of_head_dim_64() {
        assert!(smem_bytes(128, 128) <= 227 * 1024);
        assert!(2 * (smem_bytes(64, 128) + 1024) <= 228 * 1024);
        assert_eq!(SM90_SMEM_BYTES, 111_136);
    }

    // The wgmma kernel's shared memory leaves room for two CTAs per SM (checked at compile time).
    const _: () = assert!(2 * (SM90_SMEM_BYTES + 1024) <= 228 * 1024);

    #[test]
    fn wgmma_only_for_hopper_head_dim_64_state_128() {
        let dims = |head_dim, state| SsdDims {
            batch: 1,
            seqlen: 8,
            heads: 2,
            head_dim,
            groups: 1,
            state,
        };
        if std::env::var_os("COIL_SSD_KERNEL").is_none() {
            assert_eq!(variant(&dims(64, 128), (9, 0)), Variant::Wgmma);
        }
        assert_eq!(variant(&dims(64, 128), (8, 0)), Variant::MmaSync);
        assert_eq!(variant(&dims(64, 128), (10, 0)), Variant::MmaSync);
        assert_eq!(variant(&dims(128, 128), (9, 0)), Variant::MmaSync);
        assert_eq!(variant(&dims(64, 64), (9, 0)), Variant::MmaSync);
    }
}
