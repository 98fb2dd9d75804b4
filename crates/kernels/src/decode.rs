//! Launchers of the single-token decode kernels of a Mamba2 model (`cuda/decode.cu`; measurements and next steps
//! in `notes/decode.md`): the embedding gather, the in_proj GEMV with the RMSNorm, conv window and dt fused in,
//! the SSM update with the gate, the out_proj GEMV with the gated norm and the residual add, and the greedy argmax.
//! Activations and states are f32 `[batch, ld]` row blocks; every launcher checks extents, alignment and sizes
//! before it launches.
//!
//! Every launch goes through `cuLaunchKernelEx`, with programmatic dependent launch when [`Sched::pdl`] is set
//! (compute capability 9.0): the kernel may start while the one before it finishes, fetches what does not depend
//! on it (weights into L2, the SSM state), then waits. The launches are meant to be captured into a CUDA graph
//! once per batch and replayed for every token (`coil_infer::cuda_step`).

use crate::module::{function, KernelError, Result, DECODE};
use candle_core::cuda_backend::cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use candle_core::cuda_backend::cudarc::driver::sys::{
    self, CUdevice_attribute, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchConfig,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut,
};
use half::bf16;
use std::ffi::c_void;
use std::sync::Arc;

const KERNEL: &str = "decode";

/// Sequences per GEMV launch: larger batches take several launches, each streaming the weights once.
pub const MAX_GEMV_BATCH: usize = 8;
/// Norm groups the gated RMSNorm of the out_proj GEMV takes.
pub const MAX_GROUPS: usize = 16;

fn invalid(what: String) -> KernelError {
    KernelError::Invalid {
        kernel: KERNEL,
        what,
    }
}

/// `rows` rows of `width` elements, `ld` apart, fit in `len` elements.
pub(crate) fn check_rows(
    what: &str,
    len: usize,
    rows: usize,
    ld: usize,
    width: usize,
) -> Result<()> {
    if width > ld && rows > 1 {
        return Err(invalid(format!(
            "{what}: width {width} exceeds its row stride {ld}"
        )));
    }
    let need = rows
        .checked_sub(1)
        .and_then(|r| r.checked_mul(ld))
        .and_then(|v| v.checked_add(width));
    match need {
        Some(n) if n <= len => Ok(()),
        None if rows == 0 => Ok(()),
        _ => Err(invalid(format!(
            "{what}: {rows} rows of {width} at stride {ld} do not fit its {len} elements"
        ))),
    }
}

pub(crate) fn check_align(what: &str, ptr: u64, bytes: u64) -> Result<()> {
    if !ptr.is_multiple_of(bytes) {
        return Err(invalid(format!("{what} is not {bytes}-byte aligned")));
    }
    Ok(())
}

pub(crate) fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| invalid(format!("{what} {v} does not fit the kernel's 32-bit sizes")))
}

/// How the decode kernels are launched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sched {
    /// Programmatic dependent launch: each kernel starts while the one before it finishes (sm_90).
    pub pdl: bool,
    /// GEMV grids: CTAs of 256 threads per SM (the grid is at most one such wave; each warp loops over rows).
    pub ctas_per_sm: u32,
    /// GEMVs: how many of each CTA's row iterations it requests into L2 before waiting on earlier kernels.
    pub prefetch_iters: u32,
    /// GEMVs: weights moved into shared memory by bulk copies (the `_tma` kernels, sm_90) instead of loads from
    /// every lane.
    pub tma: bool,
    /// Streaming multiprocessors of the device.
    pub sms: u32,
    /// The batched path's fused launches (a layer's residual add with the next split, a Mamba layer's in_proj
    /// finish and out_proj split inside the SSM update: [`Wide`]); off runs each as its own kernel. Off by default
    /// until they have run on a GPU (`notes/decode.md`): `COIL_DECODE_FUSE=1` turns them on.
    pub fuse_wide: bool,
}

/// Bytes of one row's slice in a bulk-copied tile, and tiles in flight per CTA (`TILE_BYTES`, `STAGES` in
/// `cuda/decode.cu`).
const TMA_TILE_BYTES: u32 = 4096;
const TMA_STAGES: u32 = 3;
/// Dynamic shared memory of a `_tma` GEMV CTA: STAGES tiles of 8 rows.
const TMA_SMEM: u32 = TMA_STAGES * 8 * TMA_TILE_BYTES;

impl Sched {
    /// The measured defaults for the device of `stream` (`notes/decode.md`): plain launches of the lane-streaming
    /// GEMVs, 4 CTAs per SM, no L2 prefetch; on the H100 each alternative measured slower or the same.
    /// `COIL_DECODE_PDL=1`, `COIL_DECODE_TMA=1`, `COIL_DECODE_CTAS=N` and `COIL_DECODE_PREFETCH=N` select them, for
    /// measuring (PDL and the bulk-copy GEMVs need compute capability 9.0); `COIL_DECODE_FUSE=1` fuses the batched
    /// path's launches.
    pub fn for_stream(stream: &Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        let (major, _) = ctx.compute_capability()?;
        let sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        let hopper = major >= 9;
        Ok(Sched {
            pdl: hopper && env("COIL_DECODE_PDL") == Some(1),
            ctas_per_sm: env("COIL_DECODE_CTAS").unwrap_or(4).clamp(1, 8),
            prefetch_iters: if hopper {
                env("COIL_DECODE_PREFETCH").unwrap_or(0)
            } else {
                0
            },
            tma: hopper && env("COIL_DECODE_TMA") == Some(1),
            sms: sms.max(1) as u32,
            fuse_wide: env("COIL_DECODE_FUSE") == Some(1),
        })
    }

    fn gemv_grid(&self, rows: usize) -> u32 {
        // The bulk-copy kernel keeps 96 KB of tiles per CTA: at most two CTAs fit an SM.
        let per_sm = if self.tma {
            self.ctas_per_sm.min(2)
        } else {
            self.ctas_per_sm
        };
        rows.div_ceil(8).clamp(1, (self.sms * per_sm) as usize) as u32
    }

    /// The lane-streaming GEMV's warps per row: 1 (each warp streams whole rows). Splitting rows over 2-8 warps
    /// evens out the grid's work but measured slower on every matrix of Mamba2-2.7B and -130M (H100,
    /// `notes/decode.md`); `COIL_DECODE_SPLIT=S` (2, 4 or 8) selects it, for measuring.
    fn gemv_split(&self) -> i32 {
        std::env::var("COIL_DECODE_SPLIT")
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|s| [1, 2, 4, 8].contains(s))
            .unwrap_or(1)
    }

    /// One wave of `per_sm` CTAs per SM, at most one step of 8 / split rows per CTA.
    fn split_grid(&self, rows: usize, split: i32, per_sm: u32) -> u32 {
        let steps = rows.div_ceil(8 / split as usize);
        steps.clamp(1, (self.sms * per_sm.max(1)) as usize) as u32
    }
}

/// Launches `f` with `params` (pointers to each kernel argument) through `cuLaunchKernelEx`.
///
/// # Safety
/// `params` must match the kernel's parameters, and every pointer inside them must be valid for what the kernel
/// touches at these grid sizes.
pub(crate) unsafe fn launch(
    stream: &CudaStream,
    f: &CudaFunction,
    (grid, block, smem): ((u32, u32), u32, u32),
    params: &mut [*mut c_void],
    pdl: bool,
) -> Result<()> {
    stream.context().bind_to_thread()?;
    // SAFETY: a zeroed launch attribute is a valid value (id 0, value all zero) before it is filled in.
    let mut attr: CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: 1,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(pdl),
    };
    // SAFETY: the configuration and function are valid; the caller vouches for the parameters.
    unsafe {
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()?;
    }
    Ok(())
}

/// The weights of a matrix-vector product or an embedding table: bf16 or f32, `[rows, ld]` row-major.
pub enum Weights<'a> {
    Bf16(CudaView<'a, bf16>),
    F32(CudaView<'a, f32>),
}

impl Weights<'_> {
    fn len(&self) -> usize {
        match self {
            Weights::Bf16(v) => v.len(),
            Weights::F32(v) => v.len(),
        }
    }

    fn elem_bytes(&self) -> usize {
        match self {
            Weights::Bf16(_) => 2,
            Weights::F32(_) => 4,
        }
    }

    fn suffix(&self) -> &'static str {
        match self {
            Weights::Bf16(_) => "bf16",
            Weights::F32(_) => "f32",
        }
    }

    fn ptr(&self, s: &CudaStream) -> u64 {
        match self {
            Weights::Bf16(v) => v.device_ptr(s).0,
            Weights::F32(v) => v.device_ptr(s).0,
        }
    }
}

/// The SSM states of a layer for a batch, `[batch, H, P, N]`: f32 (the CPU engine's and Hugging Face's), or bf16
/// (mamba_ssm's for a bf16 model: half the bytes a large batch's step moves; the update is still computed in f32
/// and rounded to nearest when stored).
pub enum StateBuf {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
}

impl StateBuf {
    pub fn len(&self) -> usize {
        match self {
            StateBuf::F32(v) => v.len(),
            StateBuf::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ptr_mut(&mut self, s: &CudaStream) -> u64 {
        match self {
            StateBuf::F32(v) => v.device_ptr_mut(s).0,
            StateBuf::Bf16(v) => v.device_ptr_mut(s).0,
        }
    }
}

/// Sizes of one matrix-vector product: `y[b, r] = Σ_c W[r, c]·x̂[b, c] (+ bias[r])` for `batch` sequences.
#[derive(Clone, Copy, Debug)]
pub struct GemvDims {
    pub rows: usize,
    pub cols: usize,
    pub batch: usize,
    /// Row strides of W, x and y (elements).
    pub ldw: usize,
    pub ldx: usize,
    pub ldy: usize,
}

/// The conv rows of the in_proj output: rows `first .. first + channels` are the conv's input channels, whose
/// windows (`[batch, channels, k]`, oldest first) take the new value; the row becomes
/// `SiLU(Σ_k w[c, k]·window[k] + bias[c])`.
pub struct ConvRows<'a> {
    pub first: usize,
    pub channels: usize,
    pub k: usize,
    pub window: &'a mut CudaSlice<f32>,
    pub w: &'a CudaView<'a, f32>,
    pub bias: Option<&'a CudaView<'a, f32>>,
}

/// The dt rows of the in_proj output: rows `first ..` become `clamp(softplus(dt + bias), lo, hi)`.
pub struct DtRows<'a> {
    pub first: usize,
    pub bias: Option<&'a CudaView<'a, f32>>,
    pub limit: (f32, f32),
}

/// The argument block of the fused GEMVs; the same fields in the same order as `GemvArgs` in `cuda/decode.cu`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GemvArgs {
    w: u64,
    bias: u64,
    x: u64,
    xw: u64,
    part: u64,
    y: u64,
    window: u64,
    conv_w: u64,
    conv_b: u64,
    dt_bias: u64,
    wide: u64,
    ldw: i64,
    ldx: i64,
    ldy: i64,
    rows: i32,
    cols: i32,
    conv_lo: i32,
    conv_hi: i32,
    k: i32,
    dt_lo: i32,
    heads: i32,
    groups: i32,
    prefetch_iters: i32,
    wide_batch: i32,
    split: i32,
    act: i32,
    eps: f32,
    dt_min: f32,
    dt_max: f32,
}
const _: () = assert!(std::mem::size_of::<GemvArgs>() == 176);

impl GemvArgs {
    /// What every GEMV sets: W, the bias, x, y, their strides and sizes, no conv or dt rows (they start at `rows`),
    /// one norm group; the launcher adds its mode's fields.
    fn base(
        s: &CudaStream,
        sched: &Sched,
        w: &Weights<'_>,
        bias: Option<&CudaView<'_, f32>>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        d: &GemvDims,
    ) -> Self {
        GemvArgs {
            w: w.ptr(s),
            bias: bias.map_or(0, |b| b.device_ptr(s).0),
            x: x.device_ptr(s).0,
            y: y.device_ptr_mut(s).0,
            ldw: d.ldw as i64,
            ldx: d.ldx as i64,
            ldy: d.ldy as i64,
            rows: d.rows as i32,
            cols: d.cols as i32,
            conv_lo: d.rows as i32,
            conv_hi: d.rows as i32,
            dt_lo: d.rows as i32,
            k: 1,
            heads: 1,
            groups: 1,
            prefetch_iters: sched.prefetch_iters as i32,
            ..Default::default()
        }
    }
}

/// The activation [`gemv_in`] applies to its rows that are neither conv nor dt rows (an MLP's up_proj): squared
/// ReLU (Nemotron-H) or GELU with erf (Mamba2-Hybrid), computed as the CPU engine computes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Act {
    #[default]
    None,
    Relu2,
    Gelu,
}

impl Act {
    /// `ACT_*` in `cuda/decode.cu`.
    fn code(self) -> i32 {
        match self {
            Act::None => 0,
            Act::Relu2 => 1,
            Act::Gelu => 2,
        }
    }
}

/// The argument block of the SSM update; mirrors `SsmArgs` in `cuda/decode.cu`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SsmArgs {
    proj: u64,
    a: u64,
    d: u64,
    state: u64,
    yg: u64,
    part: u64,
    ld_proj: i64,
    ld_yg: i64,
    xbc_off: i32,
    dt_off: i32,
    heads: i32,
    groups: i32,
    head_dim: i32,
}
const _: () = assert!(std::mem::size_of::<SsmArgs>() == 88);

/// The batched path's extra arguments of the SSM update; mirrors `SsmWide` in `cuda/decode.cu`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SsmWide {
    p2: u64,
    bias: u64,
    window: u64,
    conv_w: u64,
    conv_b: u64,
    dt_bias: u64,
    count: u64,
    x2: u64,
    norm_w: u64,
    rows: i64,
    batch: i32,
    k: i32,
    conv: i32,
    dt_min: f32,
    dt_max: f32,
    eps: f32,
}
const _: () = assert!(std::mem::size_of::<SsmWide>() == 104);

/// What [`ssm_gate`] needs on the batched path: the `Wide` whose in_proj it finishes, and out_proj's gated norm
/// (weight and epsilon), whose split it forms.
pub struct WideSsm<'w, 'a> {
    pub wide: &'w mut Wide<'a>,
    pub norm_w: &'w CudaView<'w, f32>,
    pub eps: f32,
}

/// Checks what both GEMVs need of W, x, y and the norm weight and returns the 16-byte chunk width.
fn check_gemv(
    name: &str,
    w: &Weights<'_>,
    x_len: usize,
    xw_len: usize,
    y_len: usize,
    d: &GemvDims,
) -> Result<()> {
    let per_chunk = 16 / w.elem_bytes();
    if !d.cols.is_multiple_of(per_chunk)
        || !d.ldw.is_multiple_of(per_chunk)
        || !d.ldx.is_multiple_of(4)
    {
        return Err(KernelError::Unsupported(format!(
            "{name}: {} columns (row strides {} and {}) are not whole 16-byte chunks",
            d.cols, d.ldw, d.ldx
        )));
    }
    check_rows(&format!("{name} W"), w.len(), d.rows, d.ldw, d.cols)?;
    check_rows(&format!("{name} x"), x_len, d.batch, d.ldx, d.cols)?;
    check_rows(&format!("{name} norm weight"), xw_len, 1, d.cols, d.cols)?;
    check_rows(&format!("{name} y"), y_len, d.batch, d.ldy, d.rows)?;
    to_i32("rows", d.rows)?;
    to_i32("cols", d.cols)?;
    Ok(())
}

/// The GEMV kernel for `mode` ("in", "out" or "plain"), these weights and a group of `n` sequences (1, 2, 4 or 8):
/// named `gemv_{mode}[_tma]_{bf16|f32}_b{n}` in `cuda/decode.cu` (no bulk-copy kernel for "plain").
fn gemv_name(mode: &str, weights: &str, n: usize, tma: bool) -> String {
    let tma = if tma { "_tma" } else { "" };
    format!("gemv_{mode}{tma}_{weights}_b{n}")
}

fn gemv_function(
    stream: &Arc<CudaStream>,
    mode: &str,
    w: &Weights<'_>,
    n: usize,
    tma: bool,
) -> Result<CudaFunction> {
    let smem = if tma { TMA_SMEM } else { 0 };
    function(
        stream.context(),
        &DECODE,
        &gemv_name(mode, w.suffix(), n, tma),
        smem,
    )
}

/// Launches a GEMV over the batch in groups of at most [`MAX_GEMV_BATCH`] sequences; `shift` moves the per-
/// sequence pointers of `args` to the group starting at sequence `b0`.
fn launch_gemv_groups(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    mode: &str,
    w: &Weights<'_>,
    d: &GemvDims,
    args: GemvArgs,
    shift: impl Fn(&mut GemvArgs, usize),
) -> Result<()> {
    let tma = sched.tma && mode != "plain";
    let mut b0 = 0;
    while b0 < d.batch {
        let n = match d.batch - b0 {
            1 => 1,
            2 | 3 => 2,
            4..=7 => 4,
            _ => 8,
        };
        let f = gemv_function(stream, mode, w, n, tma)?;
        let mut a = args;
        shift(&mut a, b0);
        let grid = if tma {
            a.split = 1;
            sched.gemv_grid(d.rows)
        } else {
            // One wave of the CTAs that fit an SM (fewer at larger batches: more registers per thread).
            let fit = f.occupancy_max_active_blocks_per_multiprocessor(256, 0, None)?;
            a.split = sched.gemv_split();
            sched.split_grid(d.rows, a.split, sched.ctas_per_sm.min(fit))
        };
        let mut params = [(&mut a as *mut GemvArgs).cast::<c_void>()];
        let smem = if tma { TMA_SMEM } else { 0 };
        // SAFETY: the caller checked that W, x, y, the norm weight and the epilogue's buffers hold every element
        // the kernel touches for sequences b0 .. b0 + n (rows of `cols` at their strides, 16-byte aligned where
        // it loads 16 bytes); `a` is the kernel's one argument, laid out as its C struct. The bulk-copy kernels
        // (only with `tma`, which needs sm_90) get their tiles' shared memory.
        unsafe { launch(stream, &f, ((grid, 1), 256, smem), &mut params, sched.pdl)? };
        b0 += n;
    }
    Ok(())
}

/// A cuBLAS handle on the decode stream with its own workspace, so its GEMMs can be captured into a CUDA graph.
pub struct Blas {
    handle: CudaBlas,
    _workspace: CudaSlice<u8>,
}

impl Blas {
    const WORKSPACE: usize = 32 << 20;

    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let handle = CudaBlas::new(stream.clone()).map_err(blas_err)?;
        let workspace = stream.alloc_zeros::<u8>(Self::WORKSPACE)?;
        let ptr = workspace.device_ptr(stream).0;
        // SAFETY: the workspace lives as long as the handle (both are fields of `Blas`; the handle is dropped
        // first) and is not used by anything else.
        unsafe {
            blas_sys::cublasSetWorkspace_v2(*handle.handle(), ptr as *mut c_void, Self::WORKSPACE)
                .result()
                .map_err(blas_err)?;
        }
        Ok(Blas {
            handle,
            _workspace: workspace,
        })
    }
}

fn blas_err(e: blas_result::CublasError) -> KernelError {
    KernelError::Blas(format!("{e:?}"))
}

/// The batched path of [`gemv_in`], [`gemv_out`] and [`gemv_plain`] for many sequences (bf16 weights): x̂ split
/// into two bf16 rows per sequence (`x2`: `[2·batch, cols]`), one cuBLAS GEMM into `p2` (`[2·batch, rows]` f32),
/// then the halves added and finished as the fused kernels finish a row.
///
/// The finish of a GEMM that adds into the residual stream (out, plain) is left pending: the next [`gemv_in`] on
/// that stream does it in the same launch as its own split (`wide_add_split_in`), one kernel boundary fewer per
/// layer. Until then the residual stream lacks that GEMM's sum: call [`Wide::flush`] before anything else reads it
/// (every batched launcher flushes what it cannot fuse first).
///
/// A Mamba layer's in_proj (a [`gemv_in`] with conv rows) leaves its row epilogues to [`ssm_gate`], which must come
/// next with the same `Wide`: it reads the GEMM's products itself and also forms out_proj's input, so the layer is
/// four launches (split, GEMM, SSM update, GEMM) instead of seven.
pub struct Wide<'a> {
    blas: &'a Blas,
    x2: &'a mut CudaSlice<bf16>,
    p2: &'a mut CudaSlice<f32>,
    /// Zeroed counters, one per sequence (the SSM update's last-CTA election).
    count: &'a mut CudaSlice<u32>,
    /// The finish of the last out or plain GEMM, not launched yet.
    pending: Option<GemvArgs>,
    /// A Mamba in_proj's arguments whose row epilogues [`ssm_gate`] does.
    raw_in: Option<GemvArgs>,
    /// `x2` already holds out_proj's split input for this many (sequences, columns) (written by [`ssm_gate`]).
    out_ready: Option<(usize, usize)>,
}

impl<'a> Wide<'a> {
    /// `count` holds at least one zeroed u32 per sequence; every launch leaves it zeroed.
    pub fn new(
        blas: &'a Blas,
        x2: &'a mut CudaSlice<bf16>,
        p2: &'a mut CudaSlice<f32>,
        count: &'a mut CudaSlice<u32>,
    ) -> Self {
        Wide {
            blas,
            x2,
            p2,
            count,
            pending: None,
            raw_in: None,
            out_ready: None,
        }
    }

    /// Launches the pending finish, if any (the residual stream is complete after it).
    pub fn flush(&mut self, stream: &Arc<CudaStream>, sched: &Sched) -> Result<()> {
        match self.pending.take() {
            // `a` was checked by the launcher that left it pending; p2 and y are still borrowed by `self`.
            Some(a) => launch_finish(stream, sched, "wide_finish_plain", a),
            None => Ok(()),
        }
    }
}

/// Launches a batched finish kernel (`wide_finish_in`, or `wide_finish_plain` for out and plain) over `a`, whose
/// `wide` is the GEMM's products; grid (ceil(rows / 256), batch).
fn launch_finish(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    name: &str,
    mut a: GemvArgs,
) -> Result<()> {
    let f = function(stream.context(), &DECODE, name, 0)?;
    let mut params = [(&mut a as *mut GemvArgs).cast::<c_void>()];
    let grid = ((a.rows as u32).div_ceil(256), a.wide_batch as u32);
    // SAFETY: the launcher checked `a`: p2 holds 2·batch rows of `rows`, y and the epilogue's buffers `batch` rows.
    unsafe { launch(stream, &f, (grid, 256, 0), &mut params, sched.pdl) }
}

/// Runs `a` (arguments checked by the caller) on the batched path.
fn launch_wide(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    mode: &str,
    w: &Weights<'_>,
    d: &GemvDims,
    mut a: GemvArgs,
    wide: &mut Wide<'_>,
) -> Result<()> {
    let Weights::Bf16(_) = w else {
        return Err(KernelError::Unsupported(
            "the batched decode path takes bf16 weights".into(),
        ));
    };
    let m2 = 2 * d.batch;
    check_rows("batched x̂", wide.x2.len(), m2, d.cols, d.cols)?;
    check_rows("batched products", wide.p2.len(), m2, d.rows, d.rows)?;
    let (m2_i, rows, cols, ldw) = (
        to_i32("batch", m2)?,
        to_i32("rows", d.rows)?,
        to_i32("cols", d.cols)?,
        to_i32("W row stride", d.ldw)?,
    );
    if wide.raw_in.is_some() {
        return Err(invalid(
            "batched decode: a Mamba in_proj's epilogue is pending (ssm_gate must follow gemv_in)"
                .into(),
        ));
    }
    let s: &CudaStream = stream;
    let x2 = wide.x2.device_ptr_mut(s).0;
    let p2 = wide.p2.device_ptr_mut(s).0;
    a.wide_batch = d.batch as i32;
    a.wide = x2;
    let ready = wide.out_ready.take();
    // The pending finish of the last adding GEMM goes with this split when this GEMM normalises the row it added
    // into; otherwise it runs alone first.
    let fuse = match &wide.pending {
        Some(p) => {
            mode == "in"
                && p.y == a.x
                && p.ldy == a.ldx
                && p.rows == a.cols
                && p.wide_batch == a.wide_batch
        }
        None => false,
    };
    if mode == "out" && ready == Some((d.batch, d.cols)) {
        // ssm_gate wrote this split already.
        wide.flush(stream, sched)?;
    } else {
        let mut prev = if fuse {
            wide.pending.take()
        } else {
            wide.flush(stream, sched)?;
            None
        };
        let split = match (&prev, mode) {
            (Some(_), _) => "wide_add_split_in",
            (None, "in") => "wide_split_in",
            (None, "out") => "wide_split_out",
            _ => "wide_split_plain",
        };
        let f = function(stream.context(), &DECODE, split, 0)?;
        let mut params: Vec<*mut c_void> = prev
            .iter_mut()
            .map(|p| (p as *mut GemvArgs).cast())
            .collect();
        params.push((&mut a as *mut GemvArgs).cast());
        // SAFETY: x holds `batch` rows of `cols` (checked by the caller), x2 2·batch rows of `cols` (checked above);
        // `prev` (wide_add_split_in's first argument) was checked by its launcher (p2 holds 2·batch rows of its
        // `rows`, its y `batch` rows) and its y is this GEMV's x (same stride, `cols` = its `rows`).
        unsafe {
            launch(
                stream,
                &f,
                ((d.batch as u32, 1), 256, 0),
                &mut params,
                sched.pdl,
            )?
        };
    }
    let (one, zero) = (1f32, 0f32);
    // SAFETY: W holds `rows` rows of `cols` at stride ldw, x2 2·batch rows of `cols`, p2 2·batch rows of `rows`
    // (checked above and by the caller); the handle runs on `stream` with its own workspace.
    unsafe {
        blas_result::gemm_ex(
            *wide.blas.handle.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            rows,
            m2_i,
            cols,
            (&one as *const f32).cast(),
            a.w as *const c_void,
            blas_sys::cudaDataType_t::CUDA_R_16BF,
            ldw,
            x2 as *const c_void,
            blas_sys::cudaDataType_t::CUDA_R_16BF,
            cols,
            (&zero as *const f32).cast(),
            p2 as *mut c_void,
            blas_sys::cudaDataType_t::CUDA_R_32F,
            rows,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err)?;
    }
    a.wide = p2;
    if sched.fuse_wide && mode == "in" && a.window != 0 {
        // A Mamba in_proj: ssm_gate finishes the rows it reads.
        wide.raw_in = Some(a);
        return Ok(());
    }
    if sched.fuse_wide && mode != "in" {
        // out and plain add into y: left for the next split or a flush.
        wide.pending = Some(a);
        return Ok(());
    }
    let finish = if mode == "in" {
        "wide_finish_in"
    } else {
        "wide_finish_plain"
    };
    launch_finish(stream, sched, finish, a)
}

/// The fused in_proj GEMV: `y = W·(RMSNorm(x)·norm_w) (+ bias)` for every sequence, then the conv rows and dt rows
/// transformed as [`ConvRows`] and [`DtRows`] say, the other rows through `act`. With neither and no activation
/// it is the final norm + LM head (or an attention layer's qkv projection). On the batched path with conv rows
/// (a Mamba layer), `y` is not written: [`ssm_gate`] must follow with the same [`Wide`] and finishes the rows.
#[allow(clippy::too_many_arguments)]
pub fn gemv_in(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    w: &Weights<'_>,
    bias: Option<&CudaView<'_, f32>>,
    x: &CudaSlice<f32>,
    norm_w: &CudaView<'_, f32>,
    eps: f32,
    y: &mut CudaSlice<f32>,
    d: GemvDims,
    conv: Option<ConvRows<'_>>,
    dt: Option<DtRows<'_>>,
    act: Act,
    wide: Option<&mut Wide<'_>>,
) -> Result<()> {
    if d.rows == 0 || d.batch == 0 {
        return Ok(());
    }
    check_gemv("gemv_in", w, x.len(), norm_w.len(), y.len(), &d)?;
    if let Some(b) = bias {
        check_rows("gemv_in bias", b.len(), 1, d.rows, d.rows)?;
    }
    let s: &CudaStream = stream;
    let mut a = GemvArgs {
        xw: norm_w.device_ptr(s).0,
        act: act.code(),
        eps,
        ..GemvArgs::base(s, sched, w, bias, x, y, &d)
    };
    let mut window_stride = 0;
    if let Some(c) = conv {
        if c.k == 0 || c.first + c.channels > d.rows {
            return Err(invalid(format!(
                "gemv_in: conv rows {}..{} (window {}) outside the {} rows",
                c.first,
                c.first + c.channels,
                c.k,
                d.rows
            )));
        }
        let wc = c.channels * c.k;
        check_rows("conv window", c.window.len(), d.batch, wc, wc)?;
        check_rows("conv weight", c.w.len(), 1, wc, wc)?;
        if let Some(b) = c.bias {
            check_rows("conv bias", b.len(), 1, c.channels, c.channels)?;
            a.conv_b = b.device_ptr(s).0;
        }
        a.window = c.window.device_ptr_mut(s).0;
        a.conv_w = c.w.device_ptr(s).0;
        a.conv_lo = c.first as i32;
        a.conv_hi = (c.first + c.channels) as i32;
        a.k = to_i32("conv width", c.k)?;
        window_stride = wc;
    }
    if let Some(t) = dt {
        if t.first > d.rows {
            return Err(invalid(format!(
                "gemv_in: dt rows from {} outside the {} rows",
                t.first, d.rows
            )));
        }
        if let Some(b) = t.bias {
            check_rows("dt bias", b.len(), 1, d.rows - t.first, d.rows - t.first)?;
            a.dt_bias = b.device_ptr(s).0;
        }
        a.dt_lo = t.first as i32;
        (a.dt_min, a.dt_max) = t.limit;
    }
    check_align("gemv_in W", a.w, 16)?;
    check_align("gemv_in x", a.x, 16)?;
    check_align("gemv_in norm weight", a.xw, 16)?;
    if let Some(wide) = wide {
        return launch_wide(stream, sched, "in", w, &d, a, wide);
    }
    let (ldx, ldy) = (d.ldx as u64 * 4, d.ldy as u64 * 4);
    let (x0, y0, win0) = (a.x, a.y, a.window);
    launch_gemv_groups(stream, sched, "in", w, &d, a, |a, b0| {
        let b0 = b0 as u64;
        a.x = x0 + b0 * ldx;
        a.y = y0 + b0 * ldy;
        if win0 != 0 {
            a.window = win0 + b0 * window_stride as u64 * 4;
        }
    })
}

/// Sizes of the gated RMSNorm in the out_proj GEMV's prologue: `groups` groups of `cols / groups` columns, each the
/// output of `heads / groups` heads whose sums of squares the SSM update left in `part` (`[batch, heads]`).
#[derive(Clone, Copy, Debug)]
pub struct GatedNorm {
    pub heads: usize,
    pub groups: usize,
    pub eps: f32,
}

/// The fused out_proj GEMV: `y += W·(RMSNorm_group(x)·norm_w) (+ bias)` (y is the residual stream).
#[allow(clippy::too_many_arguments)]
pub fn gemv_out(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    w: &Weights<'_>,
    bias: Option<&CudaView<'_, f32>>,
    x: &CudaSlice<f32>,
    part: &CudaSlice<f32>,
    norm_w: &CudaView<'_, f32>,
    norm: GatedNorm,
    y: &mut CudaSlice<f32>,
    d: GemvDims,
    wide: Option<&mut Wide<'_>>,
) -> Result<()> {
    if d.rows == 0 || d.batch == 0 {
        return Ok(());
    }
    check_gemv("gemv_out", w, x.len(), norm_w.len(), y.len(), &d)?;
    let per_chunk = 16 / w.elem_bytes();
    let GatedNorm { heads, groups, eps } = norm;
    if groups == 0
        || groups > MAX_GROUPS
        || !heads.is_multiple_of(groups)
        || !d.cols.is_multiple_of(groups)
        || !(d.cols / groups).is_multiple_of(per_chunk)
    {
        return Err(KernelError::Unsupported(format!(
            "gemv_out: {groups} norm groups of {heads} heads over {} columns (at most {MAX_GROUPS} groups of whole \
             16-byte chunks)",
            d.cols
        )));
    }
    check_rows("gemv_out head sums", part.len(), d.batch, heads, heads)?;
    if let Some(b) = bias {
        check_rows("gemv_out bias", b.len(), 1, d.rows, d.rows)?;
    }
    let s: &CudaStream = stream;
    let a = GemvArgs {
        xw: norm_w.device_ptr(s).0,
        part: part.device_ptr(s).0,
        heads: to_i32("heads", heads)?,
        groups: groups as i32,
        eps,
        ..GemvArgs::base(s, sched, w, bias, x, y, &d)
    };
    check_align("gemv_out W", a.w, 16)?;
    check_align("gemv_out x", a.x, 16)?;
    check_align("gemv_out norm weight", a.xw, 16)?;
    if let Some(wide) = wide {
        return launch_wide(stream, sched, "out", w, &d, a, wide);
    }
    let (ldx, ldy) = (d.ldx as u64 * 4, d.ldy as u64 * 4);
    let (x0, y0, p0) = (a.x, a.y, a.part);
    launch_gemv_groups(stream, sched, "out", w, &d, a, |a, b0| {
        let b0 = b0 as u64;
        a.x = x0 + b0 * ldx;
        a.y = y0 + b0 * ldy;
        a.part = p0 + b0 * heads as u64 * 4;
    })
}

/// The GEMV on an activation as it is: `y += W·x (+ bias)` (y is the residual stream): an MLP's down_proj, an
/// attention layer's o_proj.
#[allow(clippy::too_many_arguments)]
pub fn gemv_plain(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    w: &Weights<'_>,
    bias: Option<&CudaView<'_, f32>>,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    d: GemvDims,
    wide: Option<&mut Wide<'_>>,
) -> Result<()> {
    if d.rows == 0 || d.batch == 0 {
        return Ok(());
    }
    // No norm weight: its check is given the size it would need.
    check_gemv("gemv_plain", w, x.len(), d.cols, y.len(), &d)?;
    if let Some(b) = bias {
        check_rows("gemv_plain bias", b.len(), 1, d.rows, d.rows)?;
    }
    let a = GemvArgs::base(stream, sched, w, bias, x, y, &d);
    check_align("gemv_plain W", a.w, 16)?;
    check_align("gemv_plain x", a.x, 16)?;
    if let Some(wide) = wide {
        return launch_wide(stream, sched, "plain", w, &d, a, wide);
    }
    let (ldx, ldy) = (d.ldx as u64 * 4, d.ldy as u64 * 4);
    let (x0, y0) = (a.x, a.y);
    launch_gemv_groups(stream, sched, "plain", w, &d, a, |a, b0| {
        let b0 = b0 as u64;
        a.x = x0 + b0 * ldx;
        a.y = y0 + b0 * ldy;
    })
}

/// Sizes of an SSM step.
#[derive(Clone, Copy, Debug)]
pub struct SsmDims {
    pub batch: usize,
    pub heads: usize,
    pub groups: usize,
    pub head_dim: usize,
    pub state: usize,
    /// Row stride of the in_proj output (z | x B C | dt) and where x|B|C and dt start in a row.
    pub ld_proj: usize,
    pub xbc_off: usize,
    pub dt_off: usize,
    /// Row stride of the gated output.
    pub ld_y: usize,
}

/// Whether [`ssm_gate`] has a kernel for these sizes.
pub fn ssm_supported(d: &SsmDims) -> bool {
    matches!(d.state, 16 | 32 | 64 | 128)
        && (1..=128).contains(&d.head_dim)
        && d.groups > 0
        && d.groups <= MAX_GROUPS
        && d.heads.is_multiple_of(d.groups)
        && (d.heads * d.head_dim).is_multiple_of(4)
        && d.ld_proj.is_multiple_of(4)
        && d.xbc_off.is_multiple_of(4)
        && d.batch <= 65_535
}

/// One token's SSM update for every (sequence, head), dt already softplus'd and clamped by [`gemv_in`]:
/// `s ← exp(dt·A)·s + dt·x⊗B`, `y = s·C + D·x`, `yg = y·SiLU(z)`, and each head's `Σ yg²` into `part`
/// (`[batch, heads]`). `state` is `[batch, H, P, N]`, f32 or bf16.
///
/// With `wide` (the batched path, right after the in_proj [`gemv_in`] on the same `Wide`) when that in_proj left its
/// rows unfinished (fused launches, [`Sched::fuse_wide`]), `proj` is not read: the kernel finishes the in_proj rows
/// it needs from the GEMM's products (conv windows, dt), and the sequence's last CTA also writes out_proj's split
/// input, so the [`gemv_out`] that follows launches its GEMM alone.
#[allow(clippy::too_many_arguments)]
pub fn ssm_gate(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    proj: &CudaSlice<f32>,
    a: &CudaView<'_, f32>,
    d_skip: Option<&CudaView<'_, f32>>,
    state: &mut StateBuf,
    yg: &mut CudaSlice<f32>,
    part: &mut CudaSlice<f32>,
    d: SsmDims,
    wide: Option<WideSsm<'_, '_>>,
) -> Result<()> {
    if d.batch == 0 || d.heads == 0 {
        return Ok(());
    }
    if !ssm_supported(&d) {
        return Err(KernelError::Unsupported(format!(
            "ssm_gate: no kernel for head dim {}, state {}, {} heads in {} groups, row stride {}",
            d.head_dim, d.state, d.heads, d.groups, d.ld_proj
        )));
    }
    let inner = d.heads * d.head_dim;
    let row_need = (d.xbc_off + inner + 2 * d.groups * d.state)
        .max(d.dt_off + d.heads)
        .max(inner);
    // The fused kernel when gemv_in left its in_proj to this update (the batched path, fused launches on).
    let wide = wide.filter(|w| w.wide.raw_in.is_some());
    if wide.is_none() {
        check_rows(
            "ssm in_proj output",
            proj.len(),
            d.batch,
            d.ld_proj,
            row_need,
        )?;
    }
    check_rows("ssm A", a.len(), 1, d.heads, d.heads)?;
    if let Some(v) = d_skip {
        check_rows("ssm D", v.len(), 1, d.heads, d.heads)?;
    }
    let st = inner * d.state;
    check_rows("ssm state", state.len(), d.batch, st, st)?;
    check_rows("ssm y", yg.len(), d.batch, d.ld_y, inner)?;
    check_rows("ssm head sums", part.len(), d.batch, d.heads, d.heads)?;
    let s: &CudaStream = stream;
    let mut args = SsmArgs {
        proj: proj.device_ptr(s).0,
        a: a.device_ptr(s).0,
        d: d_skip.map_or(0, |v| v.device_ptr(s).0),
        state: state.ptr_mut(s),
        yg: yg.device_ptr_mut(s).0,
        part: part.device_ptr_mut(s).0,
        ld_proj: d.ld_proj as i64,
        ld_yg: d.ld_y as i64,
        xbc_off: to_i32("x|B|C offset", d.xbc_off)?,
        dt_off: to_i32("dt offset", d.dt_off)?,
        heads: to_i32("heads", d.heads)?,
        groups: d.groups as i32,
        head_dim: d.head_dim as i32,
    };
    let (kind, align) = match state {
        StateBuf::F32(_) => ("", 16),
        StateBuf::Bf16(_) => ("bf16_", 8),
    };
    check_align("ssm state", args.state, align)?;
    let grid = ((d.heads as u32, d.batch as u32), 4 * d.head_dim as u32, 0);
    if let Some(w) = wide {
        let mut extra = ssm_wide_args(s, &d, w, row_need)?;
        let name = format!("ssm_wide_{kind}n{}", d.state);
        let f = function(stream.context(), &DECODE, &name, 0)?;
        let mut params = [
            (&mut args as *mut SsmArgs).cast::<c_void>(),
            (&mut extra as *mut SsmWide).cast::<c_void>(),
        ];
        // SAFETY: as below for A, D, the state, yg and the head sums; `ssm_wide_args` checked the GEMM's products
        // (2·batch rows of the in_proj rows, which cover x|B|C, z and dt), the conv windows, weights and biases,
        // the counters and out_proj's split input and norm weight; both blocks are laid out as the kernel's C
        // structs.
        return unsafe { launch(stream, &f, grid, &mut params, sched.pdl) };
    }
    check_align("ssm in_proj output", args.proj, 16)?;
    let name = format!("ssm_gate_{kind}n{}", d.state);
    let f = function(stream.context(), &DECODE, &name, 0)?;
    let mut params = [(&mut args as *mut SsmArgs).cast::<c_void>()];
    // SAFETY: every buffer was checked above to hold what the kernel reads or writes for `batch` sequences and
    // `heads` heads (x, B, C, z and dt within the in_proj rows, 16-byte aligned for its float4 loads; the state
    // contiguous); `args` is laid out as the kernel's C struct.
    unsafe { launch(stream, &f, grid, &mut params, sched.pdl) }
}

/// Checks the batched path's buffers for [`ssm_gate`] and takes the in_proj arguments `gemv_in` left in `w.wide`;
/// records that out_proj's split is written.
fn ssm_wide_args(
    s: &CudaStream,
    d: &SsmDims,
    w: WideSsm<'_, '_>,
    row_need: usize,
) -> Result<SsmWide> {
    let WideSsm { wide, norm_w, eps } = w;
    let Some(a) = wide.raw_in.take() else {
        return Err(invalid(
            "ssm_gate on the batched path: no in_proj GEMM to finish (gemv_in with the conv rows comes first)"
                .into(),
        ));
    };
    let inner = d.heads * d.head_dim;
    let conv = (a.conv_hi - a.conv_lo) as usize;
    if a.wide_batch as usize != d.batch
        || a.conv_lo as usize != d.xbc_off
        || conv != inner + 2 * d.groups * d.state
        || a.dt_lo as usize != d.dt_off
        || (a.rows as usize) < row_need
        || !inner.is_multiple_of(d.groups)
    {
        return Err(invalid(format!(
            "ssm_gate on the batched path: the in_proj left by gemv_in (batch {}, conv rows {}..{}, dt from {}, {} \
             rows) does not match the update's sizes (batch {}, x|B|C at {} with {} channels, dt at {})",
            a.wide_batch,
            a.conv_lo,
            a.conv_hi,
            a.dt_lo,
            a.rows,
            d.batch,
            d.xbc_off,
            inner + 2 * d.groups * d.state,
            d.dt_off
        )));
    }
    check_rows("batched x̂", wide.x2.len(), 2 * d.batch, inner, inner)?;
    check_rows("gated norm weight", norm_w.len(), 1, inner, inner)?;
    check_rows("sequence counters", wide.count.len(), 1, d.batch, d.batch)?;
    wide.out_ready = Some((d.batch, inner));
    Ok(SsmWide {
        p2: a.wide,
        bias: a.bias,
        window: a.window,
        conv_w: a.conv_w,
        conv_b: a.conv_b,
        dt_bias: a.dt_bias,
        count: wide.count.device_ptr_mut(s).0,
        x2: wide.x2.device_ptr_mut(s).0,
        norm_w: norm_w.device_ptr(s).0,
        rows: a.rows as i64,
        batch: a.wide_batch,
        k: a.k,
        conv: conv as i32,
        dt_min: a.dt_min,
        dt_max: a.dt_max,
        eps,
    })
}

/// `resid[b, :cols] = table[ids[b], :cols]` as f32. The ids must be below the table's `rows` (the caller checks them).
#[allow(clippy::too_many_arguments)]
pub fn embed(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    table: &Weights<'_>,
    rows: usize,
    ld_table: usize,
    ids: &CudaSlice<u32>,
    resid: &mut CudaSlice<f32>,
    batch: usize,
    cols: usize,
) -> Result<()> {
    if batch == 0 || cols == 0 {
        return Ok(());
    }
    // The kernel also reads ids at a stride (an argmax output holds id, flag pairs); the step uploads them packed.
    let mut stride = 1i32;
    check_rows("embedding table", table.len(), rows, ld_table, cols)?;
    check_rows("embedding ids", ids.len(), batch, 1, 1)?;
    check_rows("embedding output", resid.len(), batch, cols, cols)?;
    let s: &CudaStream = stream;
    let mut t_ptr = table.ptr(s);
    let mut i_ptr = ids.device_ptr(s).0;
    let mut r_ptr = resid.device_ptr_mut(s).0;
    let (mut ld_t, mut ld_r, mut n) = (ld_table as i64, cols as i64, to_i32("cols", cols)?);
    let name = match table {
        Weights::Bf16(_) => "embed_bf16",
        Weights::F32(_) => "embed_f32",
    };
    let f = function(stream.context(), &DECODE, name, 0)?;
    let mut params = [
        (&mut t_ptr as *mut u64).cast::<c_void>(),
        (&mut ld_t as *mut i64).cast(),
        (&mut i_ptr as *mut u64).cast(),
        (&mut stride as *mut i32).cast(),
        (&mut r_ptr as *mut u64).cast(),
        (&mut ld_r as *mut i64).cast(),
        (&mut n as *mut i32).cast(),
    ];
    // SAFETY: the table holds `rows` rows of `cols` at stride `ld_table`, the ids `batch` entries at their stride
    // (each below `rows`, the caller's contract) and the output `batch` rows of `cols`; the parameters match the
    // kernel's.
    unsafe {
        launch(
            stream,
            &f,
            ((batch as u32, 1), 256, 0),
            &mut params,
            sched.pdl,
        )
    }
}

/// Greedy choice per sequence: `out[2b]` = the first index of the largest of `logits[b, :n]` (0 when none is above
/// -inf, as the CPU's argmax), `out[2b + 1]` = 1 when a logit of the row is NaN or infinite.
pub fn argmax(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    logits: &CudaSlice<f32>,
    ld: usize,
    n: usize,
    batch: usize,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    if batch == 0 {
        return Ok(());
    }
    check_rows("argmax logits", logits.len(), batch, ld, n)?;
    check_rows("argmax output", out.len(), 1, 2 * batch, 2 * batch)?;
    let s: &CudaStream = stream;
    let mut l_ptr = logits.device_ptr(s).0;
    let mut o_ptr = out.device_ptr_mut(s).0;
    let (mut ld, mut n) = (ld as i64, to_i32("logits", n)?);
    let f = function(stream.context(), &DECODE, "argmax_rows", 0)?;
    let mut params = [
        (&mut l_ptr as *mut u64).cast::<c_void>(),
        (&mut ld as *mut i64).cast(),
        (&mut n as *mut i32).cast(),
        (&mut o_ptr as *mut u64).cast(),
    ];
    // SAFETY: the logits hold `batch` rows of `n` at stride `ld` and the output 2·batch entries (checked above).
    unsafe {
        launch(
            stream,
            &f,
            ((batch as u32, 1), 1024, 0),
            &mut params,
            sched.pdl,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_extents() {
        assert!(check_rows("t", 10, 2, 5, 5).is_ok());
        assert!(check_rows("t", 9, 2, 5, 5).is_err());
        assert!(check_rows("t", 7, 2, 4, 3).is_ok());
        assert!(check_rows("t", 0, 0, 4, 3).is_ok());
        assert!(check_rows("t", 100, 2, 3, 4).is_err());
    }

    #[test]
    fn ssm_sizes() {
        let d = SsmDims {
            batch: 1,
            heads: 8,
            groups: 2,
            head_dim: 16,
            state: 16,
            ld_proj: 420,
            xbc_off: 128,
            dt_off: 412,
            ld_y: 128,
        };
        assert!(ssm_supported(&d));
        assert!(!ssm_supported(&SsmDims { state: 24, ..d }));
        assert!(!ssm_supported(&SsmDims { groups: 3, ..d }));
        assert!(!ssm_supported(&SsmDims { head_dim: 256, ..d }));
        assert!(!ssm_supported(&SsmDims { ld_proj: 418, ..d }));
    }

    #[test]
    fn gemv_kernel_names_follow_the_cuda_macro() {
        // COIL_GEMV in cuda/decode.cu defines gemv_{in,out}[_tma]_{bf16,f32}_b{1,2,4,8}.
        let src = include_str!("../cuda/decode.cu");
        assert!(
            src.contains("gemv_in_##NAME##_b##B") && src.contains("gemv_out_tma_##NAME##_b##B")
        );
        assert!(
            src.contains("COIL_GEMV(bf16, __nv_bfloat16, 1)")
                && src.contains("COIL_GEMV(f32, float, 8)")
        );
        assert_eq!(gemv_name("in", "bf16", 1, false), "gemv_in_bf16_b1");
        assert_eq!(gemv_name("out", "f32", 8, true), "gemv_out_tma_f32_b8");
    }

    #[test]
    fn gemv_grid_is_one_wave_at_most() {
        let s = Sched {
            pdl: true,
            ctas_per_sm: 4,
            prefetch_iters: 1,
            tma: false,
            sms: 132,
            fuse_wide: true,
        };
        assert_eq!(s.gemv_grid(10576), 528);
        assert_eq!(s.gemv_grid(100), 13);
        assert_eq!(s.gemv_grid(0), 1);
        let t = Sched { tma: true, ..s };
        assert_eq!(t.gemv_grid(10576), 264);
        // Whole rows per warp: one wave of 4 CTAs per SM, or fewer CTAs for few rows.
        assert_eq!(s.split_grid(10576, 1, 4), 528);
        assert_eq!(s.split_grid(100, 1, 4), 13);
        // Two CTAs fit where the kernel needs more registers; 8 warps per row: one row per CTA step.
        assert_eq!(s.split_grid(10576, 1, 2), 264);
        assert_eq!(s.split_grid(200, 8, 4), 200);
    }
}
