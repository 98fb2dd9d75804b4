//! Launchers of the single-token attention decode kernels of the hybrid models' attention layers
//! (`cuda/attn_decode.cu`): each step appends this token's k and v to the layer's KV cache and attends over every
//! cached position, split over positions (flash-decoding) and merged by a second kernel; once per step, after the
//! last attention layer, [`attn_advance_lens`] moves every sequence's length on by one. The same arithmetic as the
//! CPU engine's attention (`coil_infer::step`, f32 throughout), summed in another (fixed) order: the result is
//! bitwise the same on every run.
//!
//! The launches are meant to be captured into the step's CUDA graph: the grid is fixed by the sizes (the split
//! count from `max_len`, the batch and the GPU, [`attn_plan`]), the sequence lengths are read from device memory
//! (`lens`), so one graph serves every step until a sequence reaches `max_len` (the caller never lets one go past
//! it; the kernels then neither append nor touch anything outside the caches).

use crate::decode::{check_align, check_rows, launch, to_i32, Sched};
use crate::module::{function, KernelError, Result, ATTN_DECODE};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::c_void;
use std::sync::Arc;

/// Threads of a split CTA (`THREADS` in `cuda/attn_decode.cu`) and its warps.
const ATTN_THREADS: u32 = 128;
const ATTN_WARPS: usize = ATTN_THREADS as usize / 32;
/// Positions whose scores a split CTA holds in shared memory at once (`SUB`).
const ATTN_SUB: usize = 256;
/// Query heads whose output sums a lane keeps in registers in one pass over the V rows (`Rows::GT`).
const ATTN_HEADS_PER_PASS: usize = 8;
/// Dynamic shared memory the split kernels may use: within every 8.x and 9.0 GPU's per-block limit (99 KB on
/// sm_86/89). Groups needing more are [`KernelError::Unsupported`].
const ATTN_SMEM_MAX: u32 = 96 * 1024;

/// The split rule (`crates/kernels/dev/attn_lab.cu time` prints the alternatives):
/// - a split's positions are a multiple of [`MIN_CHUNK`]: a sequence of n positions spreads over
///   ceil(n / splits) rounded up to it, so a short sequence takes few splits and the rest exit at once;
/// - at most ceil(max_len / [`TARGET_CHUNK`]) splits (and [`MAX_SPLITS`]): no split shorter than TARGET_CHUNK
///   positions when the sequence is at max_len;
/// - and no more than [`CTAS_PER_SM`] CTAs per SM over the batch's (sequence, kv head) pairs: a large batch needs
///   few splits for parallelism, and fewer splits leave fewer partials to merge.
///
/// Measured on the H100 (NH-4B's 32/8 heads of 128, max_len 10240, split + combine from a graph): batch 1 takes
/// 40 splits of 256 (17 / 20 / 57 µs at lens 200 / 1000 / 10000; 20 splits 15 / 18 / 74, 80 splits of 128 no
/// faster); batch 64 takes 9 (about 10 splits: 59 / 239 / 1900 µs, 2.76 TB/s at 10000; 2 splits 59 / 229 / 2070,
/// the second wave of CTAs only half full; 40 splits 82 / 258 / 2099).
pub const MIN_CHUNK: usize = 64;
/// Positions of a full split (see [`MIN_CHUNK`]).
pub const TARGET_CHUNK: usize = 256;
/// The most splits of a (sequence, kv head).
pub const MAX_SPLITS: usize = 128;
/// The split CTAs per SM the batch's (sequence, kv head) pairs should fill (see [`MIN_CHUNK`]).
pub const CTAS_PER_SM: usize = 32;

/// Sizes of one attention layer's decode step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub batch: usize,
    /// Query heads, and K/V heads (each serves heads / kv_heads query heads).
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions each sequence's cache holds.
    pub max_len: usize,
    /// Row strides of the qkv projection (q | k | v) and of the output (elements).
    pub ld_qkv: usize,
    pub ld_out: usize,
    /// Of the scores: 1/sqrt(head_dim).
    pub scale: f32,
}

impl AttnDims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }
}

/// How a launch splits each (sequence, kv head): `splits` CTAs of at most `chunk` positions (splits·chunk ≥
/// max_len), each taking a multiple of `min_chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnPlan {
    pub splits: usize,
    pub chunk: usize,
    pub min_chunk: usize,
}

/// The most splits a cache of `max_len` positions gets (what [`attn_scratch_len`] sizes the partials for).
fn max_splits(max_len: usize) -> usize {
    max_len.div_ceil(TARGET_CHUNK).clamp(1, MAX_SPLITS)
}

fn plan_with(max_len: usize, splits: usize, min_chunk: usize) -> AttnPlan {
    let splits = splits.clamp(1, max_splits(max_len));
    let min_chunk = min_chunk.max(1);
    let chunk = max_len.max(1).div_ceil(splits).div_ceil(min_chunk) * min_chunk;
    AttnPlan {
        splits,
        chunk,
        min_chunk,
    }
}

/// The split rule (see [`MIN_CHUNK`]) for these sizes on a GPU of `sms` SMs.
pub fn attn_plan(d: &AttnDims, sms: u32) -> AttnPlan {
    let pairs = (d.batch * d.kv_heads).max(1);
    let by_grid = (CTAS_PER_SM * sms.max(1) as usize).div_ceil(pairs);
    plan_with(d.max_len, by_grid.min(max_splits(d.max_len)), MIN_CHUNK)
}

/// [`attn_plan`], or for measuring, `COIL_ATTN_SPLITS=N` (at most ceil(max_len / 256)) and `COIL_ATTN_MIN_CHUNK=M`.
fn plan_for(d: &AttnDims, sched: &Sched) -> AttnPlan {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let rule = attn_plan(d, sched.sms);
    match (env("COIL_ATTN_SPLITS"), env("COIL_ATTN_MIN_CHUNK")) {
        (None, None) => rule,
        (s, m) => plan_with(
            d.max_len,
            s.unwrap_or(rule.splits),
            m.unwrap_or(rule.min_chunk),
        ),
    }
}

/// Elements of the scratch buffer [`attn_decode`] needs for these sizes: each (sequence, head, split)'s
/// unnormalised output (head_dim floats), then its max and sum, for the most splits `max_len` can get.
pub fn attn_scratch_len(d: &AttnDims) -> usize {
    d.batch * d.heads * max_splits(d.max_len) * (d.head_dim + 2)
}

/// Dynamic shared memory of a split CTA (`attn_split_body`): q and the running output of the group's heads, one
/// warp's sums per warp for up to 8 heads, the scores of a sub-chunk, and three floats per head.
fn split_smem_bytes(group: usize, head_dim: usize) -> usize {
    let floats = 2 * group * head_dim
        + ATTN_WARPS * group.min(ATTN_HEADS_PER_PASS) * head_dim
        + group * ATTN_SUB
        + 3 * group;
    (4 * floats).div_ceil(16) * 16
}

/// Whether [`attn_decode`] has a kernel for these sizes: head_dim 16 or a multiple of 32 up to 256, whole groups of
/// query heads (their shared memory within the limit: up to 32 query heads per kv head at head_dim 128, 16 at
/// 256), 16-byte rows of qkv.
pub fn attn_supported(d: &AttnDims) -> bool {
    d.kv_heads > 0
        && d.heads > 0
        && d.heads.is_multiple_of(d.kv_heads)
        && (d.head_dim == 16 || d.head_dim.is_multiple_of(32))
        && (16..=256).contains(&d.head_dim)
        && split_smem_bytes(d.group(), d.head_dim) <= ATTN_SMEM_MAX as usize
        && d.ld_qkv.is_multiple_of(4)
        && d.max_len > 0
}

/// The argument block of the attention kernels; the same fields in the same order as `AttnArgs` in
/// `cuda/attn_decode.cu`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AttnArgs {
    qkv: u64,
    k_cache: u64,
    v_cache: u64,
    lens: u64,
    out: u64,
    part_o: u64,
    part_ml: u64,
    ld_qkv: i64,
    ld_out: i64,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    max_len: i32,
    splits: i32,
    chunk: i32,
    min_chunk: i32,
    scale: f32,
}
const _: () = assert!(std::mem::size_of::<AttnArgs>() == 104);

/// The split kernel for a head dim (`COIL_ATTN_SPLIT` in `cuda/attn_decode.cu`).
fn split_name(head_dim: usize) -> String {
    format!("attn_decode_split_hd{head_dim}")
}

fn invalid(what: String) -> KernelError {
    KernelError::Invalid {
        kernel: "attn_decode",
        what,
    }
}

/// One attention layer's decode step for every sequence of the batch: appends this token's k and v (from `qkv`,
/// `[batch, ld_qkv]`: q | k | v) to `k_cache` / `v_cache` (`[batch, kv_heads, max_len, head_dim]` each) at position
/// `lens[b]`, then writes `out[b, h·hd ..] = softmax_t((q_h · k_t)·scale) · v` over the lens[b] + 1 positions.
/// `lens` is not changed (see [`attn_advance_lens`]); `scratch` holds [`attn_scratch_len`] floats of partials.
#[allow(clippy::too_many_arguments)]
pub fn attn_decode(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    qkv: &CudaSlice<f32>,
    k_cache: &mut CudaSlice<f32>,
    v_cache: &mut CudaSlice<f32>,
    lens: &CudaSlice<u32>,
    out: &mut CudaSlice<f32>,
    scratch: &mut CudaSlice<f32>,
    d: AttnDims,
) -> Result<()> {
    if d.batch == 0 {
        return Ok(());
    }
    if !attn_supported(&d) {
        return Err(KernelError::Unsupported(format!(
            "attn_decode: no kernel for {} heads over {} kv heads of dim {}, cache of {}, qkv row stride {}",
            d.heads, d.kv_heads, d.head_dim, d.max_len, d.ld_qkv
        )));
    }
    let hd = d.head_dim;
    let row = (d.heads + 2 * d.kv_heads) * hd;
    check_rows("attn_decode qkv", qkv.len(), d.batch, d.ld_qkv, row)?;
    check_rows(
        "attn_decode out",
        out.len(),
        d.batch,
        d.ld_out,
        d.heads * hd,
    )?;
    let cache = d
        .batch
        .checked_mul(d.kv_heads)
        .and_then(|v| v.checked_mul(d.max_len))
        .and_then(|v| v.checked_mul(hd))
        .ok_or_else(|| invalid(format!("a cache of {d:?} does not fit in memory")))?;
    check_rows("attn_decode k cache", k_cache.len(), 1, cache, cache)?;
    check_rows("attn_decode v cache", v_cache.len(), 1, cache, cache)?;
    check_rows("attn_decode lens", lens.len(), 1, d.batch, d.batch)?;
    let need = attn_scratch_len(&d);
    check_rows("attn_decode scratch", scratch.len(), 1, need, need)?;
    let plan = plan_for(&d, sched);
    let pairs = to_i32("sequences x kv heads", d.batch * d.kv_heads)?;
    let rows = to_i32("sequences x heads", d.batch * d.heads)?;
    to_i32("split positions", plan.splits * plan.chunk)?;
    let s: &CudaStream = stream;
    let part_o = scratch.device_ptr_mut(s).0;
    let mut args = AttnArgs {
        qkv: qkv.device_ptr(s).0,
        k_cache: k_cache.device_ptr_mut(s).0,
        v_cache: v_cache.device_ptr_mut(s).0,
        lens: lens.device_ptr(s).0,
        out: out.device_ptr_mut(s).0,
        part_o,
        part_ml: part_o + 4 * (d.batch * d.heads * max_splits(d.max_len) * hd) as u64,
        ld_qkv: d.ld_qkv as i64,
        ld_out: d.ld_out as i64,
        heads: to_i32("heads", d.heads)?,
        kv_heads: to_i32("kv heads", d.kv_heads)?,
        head_dim: hd as i32,
        max_len: to_i32("max_len", d.max_len)?,
        splits: plan.splits as i32,
        chunk: plan.chunk as i32,
        min_chunk: to_i32("min chunk", plan.min_chunk)?,
        scale: d.scale,
    };
    check_align("attn_decode qkv", args.qkv, 16)?;
    check_align("attn_decode k cache", args.k_cache, 16)?;
    check_align("attn_decode v cache", args.v_cache, 16)?;
    check_align("attn_decode scratch", args.part_o, 16)?;
    let smem = split_smem_bytes(d.group(), hd) as u32;
    let f = function(
        stream.context(),
        &ATTN_DECODE,
        &split_name(hd),
        ATTN_SMEM_MAX,
    )?;
    let mut params = [(&mut args as *mut AttnArgs).cast::<c_void>()];
    // SAFETY: qkv holds `batch` rows of q | k | v at its stride and the caches `batch·kv_heads` heads of
    // `max_len` rows (checked above; all 16-byte aligned for the kernel's float4 accesses, head_dim a multiple of
    // 32); the kernel reads and writes cache rows below max_len only, whatever lens holds. The scratch holds the
    // partials of `splits` ≤ max_splits(max_len) splits per (sequence, head), part_ml past the last of part_o's
    // rows; the shared memory is what `split_smem_bytes` computes (within the limit set at load); `args` is laid
    // out as the kernel's C struct.
    unsafe {
        launch(
            stream,
            &f,
            ((pairs as u32, plan.splits as u32), ATTN_THREADS, smem),
            &mut params,
            sched.pdl,
        )?
    };
    let f = function(stream.context(), &ATTN_DECODE, "attn_decode_combine", 0)?;
    let mut params = [(&mut args as *mut AttnArgs).cast::<c_void>()];
    // SAFETY: the partials the split kernel wrote (every (sequence, head, split) has its max and sum; the outputs of
    // non-empty splits), and `out`'s `batch` rows of heads·head_dim (checked above); one thread per element.
    unsafe {
        launch(
            stream,
            &f,
            ((rows as u32, 1), hd as u32, 0),
            &mut params,
            sched.pdl,
        )
    }
}

/// `lens[b] += 1` for every sequence of the batch (never beyond `max_len`): once per step, after the step's last
/// attention layer (every attention layer of a step reads the same lens).
pub fn attn_advance_lens(
    stream: &Arc<CudaStream>,
    sched: &Sched,
    lens: &mut CudaSlice<u32>,
    batch: usize,
    max_len: usize,
) -> Result<()> {
    if batch == 0 {
        return Ok(());
    }
    check_rows("attn_advance_lens lens", lens.len(), 1, batch, batch)?;
    let s: &CudaStream = stream;
    let mut ptr = lens.device_ptr_mut(s).0;
    let (mut b, mut m) = (to_i32("batch", batch)?, to_i32("max_len", max_len)?);
    let f = function(stream.context(), &ATTN_DECODE, "attn_advance_lens", 0)?;
    let mut params = [
        (&mut ptr as *mut u64).cast::<c_void>(),
        (&mut b as *mut i32).cast(),
        (&mut m as *mut i32).cast(),
    ];
    // SAFETY: lens holds `batch` entries (checked above); the parameters match the kernel's.
    unsafe {
        launch(
            stream,
            &f,
            ((batch.div_ceil(256) as u32, 1), 256, 0),
            &mut params,
            sched.pdl,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nh4b(batch: usize, max_len: usize) -> AttnDims {
        AttnDims {
            batch,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            max_len,
            ld_qkv: 48 * 128,
            ld_out: 32 * 128,
            scale: 1.0 / (128f32).sqrt(),
        }
    }

    #[test]
    fn split_rule() {
        // Batch 1: 40 splits of 256 over a 10240-position cache (by the length, not the 32 CTAs per SM).
        let p = attn_plan(&nh4b(1, 10240), 132);
        assert_eq!((p.splits, p.chunk, p.min_chunk), (40, 256, 64));
        // Batch 64: 512 (sequence, kv head) pairs x 9 splits reach 132 SMs x 32 CTAs.
        let p = attn_plan(&nh4b(64, 10240), 132);
        assert_eq!((p.splits, p.chunk), (9, 1152));
        // A short cache: one split; a long one: at most MAX_SPLITS, chunks a multiple of MIN_CHUNK.
        assert_eq!(attn_plan(&nh4b(1, 100), 132).splits, 1);
        let p = attn_plan(&nh4b(1, 1 << 20), 132);
        assert_eq!(p.splits, MAX_SPLITS);
        assert!(p.splits * p.chunk >= 1 << 20 && p.chunk.is_multiple_of(MIN_CHUNK));
        // Every plan covers the cache and fits the scratch.
        for max_len in [1, 63, 64, 65, 1000, 4096, 10240, 100_000] {
            for batch in [1, 3, 64] {
                let d = nh4b(batch, max_len);
                let p = attn_plan(&d, 132);
                assert!(p.splits * p.chunk >= max_len && p.splits <= max_splits(max_len));
                let q = plan_with(max_len, 1000, 256);
                assert!(q.splits * q.chunk >= max_len && q.chunk.is_multiple_of(256));
            }
        }
        assert_eq!(attn_scratch_len(&nh4b(2, 10240)), 2 * 32 * 40 * 130);
    }

    #[test]
    fn supported_sizes() {
        let d = nh4b(1, 4096);
        assert!(attn_supported(&d));
        assert!(attn_supported(&AttnDims { head_dim: 64, ..d }));
        assert!(attn_supported(&AttnDims { head_dim: 96, ..d }));
        assert!(attn_supported(&AttnDims { head_dim: 16, ..d }));
        assert!(!attn_supported(&AttnDims { head_dim: 8, ..d }));
        assert!(!attn_supported(&AttnDims { head_dim: 48, ..d }));
        assert!(!attn_supported(&AttnDims { head_dim: 80, ..d }));
        assert!(!attn_supported(&AttnDims { head_dim: 288, ..d }));
        assert!(!attn_supported(&AttnDims { kv_heads: 5, ..d }));
        assert!(!attn_supported(&AttnDims { ld_qkv: 6146, ..d }));
        assert!(!attn_supported(&AttnDims { max_len: 0, ..d }));
        // Groups of 16 at head dim 256 and 32 at 128 fit the shared memory; 64 does not.
        let mqa = |heads, head_dim| AttnDims {
            heads,
            kv_heads: 1,
            head_dim,
            ..d
        };
        assert!(attn_supported(&mqa(16, 256)));
        assert!(attn_supported(&mqa(32, 128)));
        assert!(!attn_supported(&mqa(64, 128)));
        assert_eq!(split_smem_bytes(4, 128), 4 * (1024 + 2048 + 1024 + 12));
    }

    #[test]
    fn kernel_names_follow_the_cuda_source() {
        let src = include_str!("../cuda/attn_decode.cu");
        for hd in std::iter::once(16).chain((32..=256).step_by(32)) {
            assert!(src.contains(&format!("COIL_ATTN_SPLIT({hd})")), "{hd}");
        }
        assert!(src.contains("attn_decode_split_hd##HD"));
        assert_eq!(split_name(128), "attn_decode_split_hd128");
        assert!(src.contains("void __launch_bounds__(256) attn_decode_combine(const AttnArgs a)"));
        assert!(src.contains("attn_advance_lens(unsigned* lens, int batch, int max_len)"));
        assert!(
            src.contains("constexpr int THREADS = 128;")
                && src.contains("constexpr int SUB = 256;")
        );
        assert!(src.contains("static constexpr int GT = 8;"));
    }
}
