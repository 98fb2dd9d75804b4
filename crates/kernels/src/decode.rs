//! Launchers of the single-token decode kernels of a Mamba2 layer (`cuda/decode.cu`; measurements and next
//! steps in `notes/decode.md`): the weight-streaming matrix-vector product, residual add + RMSNorm, the conv
//! window step, the SSM state update and the gated RMSNorm. Activations and states are f32 `[batch, ld]` row
//! blocks; every launcher checks extents, alignment and sizes before it launches.

use crate::module::{function, KernelError, Result, DECODE};
use candle_core::cuda_backend::cudarc::driver::{
    CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig, PushKernelArg,
};
use half::bf16;
use std::sync::Arc;

const KERNEL: &str = "decode";

fn invalid(what: String) -> KernelError {
    KernelError::Invalid {
        kernel: KERNEL,
        what,
    }
}

/// `rows` rows of `width` elements, `ld` apart, fit in `len` elements.
fn check_rows(what: &str, len: usize, rows: usize, ld: usize, width: usize) -> Result<()> {
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

fn check_align(what: &str, ptr: u64, bytes: u64) -> Result<()> {
    if !ptr.is_multiple_of(bytes) {
        return Err(invalid(format!("{what} is not {bytes}-byte aligned")));
    }
    Ok(())
}

fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| invalid(format!("{what} {v} does not fit the kernel's 32-bit sizes")))
}

/// The weights of a matrix-vector product: bf16 or f32, `[rows, ld]` row-major.
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
}

/// Sizes of one matrix-vector product: `y[b, r] = Σ_c W[r, c]·x[b, c] (+ bias[r])` for `batch` rows.
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

/// `y = W·x (+ bias)` for up to any batch (launched in groups of at most 8 sequences, each group streaming W once).
pub fn gemv<B, X, Y>(
    stream: &Arc<CudaStream>,
    w: &Weights<'_>,
    bias: Option<&B>,
    x: &X,
    y: &mut Y,
    d: GemvDims,
) -> Result<()>
where
    B: DevicePtr<f32> + DeviceSlice<f32>,
    X: DevicePtr<f32> + DeviceSlice<f32>,
    Y: DevicePtrMut<f32> + DeviceSlice<f32>,
{
    if d.rows == 0 || d.batch == 0 {
        return Ok(());
    }
    let (elem, name) = match w {
        Weights::Bf16(_) => (2usize, "gemv_bf16"),
        Weights::F32(_) => (4usize, "gemv_f32"),
    };
    let per_chunk = 16 / elem;
    if !d.cols.is_multiple_of(per_chunk)
        || !d.ldw.is_multiple_of(per_chunk)
        || !d.ldx.is_multiple_of(4)
    {
        return Err(KernelError::Unsupported(format!(
            "{name}: {} columns (row strides {} and {}) are not whole 16-byte chunks",
            d.cols, d.ldw, d.ldx
        )));
    }
    check_rows("gemv W", w.len(), d.rows, d.ldw, d.cols)?;
    check_rows("gemv x", x.len(), d.batch, d.ldx, d.cols)?;
    check_rows("gemv y", y.len(), d.batch, d.ldy, d.rows)?;
    if let Some(b) = bias {
        check_rows("gemv bias", b.len(), 1, d.rows, d.rows)?;
    }
    let s: &CudaStream = stream;
    let (w_ptr, _gw) = match w {
        Weights::Bf16(v) => v.device_ptr(s),
        Weights::F32(v) => v.device_ptr(s),
    };
    let (x_ptr, _gx) = x.device_ptr(s);
    let bias_g = bias.map(|b| b.device_ptr(s));
    let bias_ptr = bias_g.as_ref().map_or(0, |(p, _)| *p);
    let (y_ptr, _gy) = y.device_ptr_mut(s);
    check_align("gemv W", w_ptr, 16)?;
    check_align("gemv x", x_ptr, 16)?;
    let (rows, cols) = (to_i32("rows", d.rows)?, to_i32("cols", d.cols)?);
    let (ldw, ldx, ldy) = (d.ldw as i64, d.ldx as i64, d.ldy as i64);
    let mut b0 = 0;
    while b0 < d.batch {
        let n = match d.batch - b0 {
            1 => 1,
            2 | 3 => 2,
            4..=7 => 4,
            _ => 8,
        };
        let func = function(stream.context(), &DECODE, kernel_name(name, n), 0)?;
        let xs = x_ptr + (b0 * d.ldx * 4) as u64;
        let ys = y_ptr + (b0 * d.ldy * 4) as u64;
        let cfg = LaunchConfig {
            grid_dim: (d.rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = stream.launch_builder(&func);
        l.arg(&w_ptr)
            .arg(&ldw)
            .arg(&bias_ptr)
            .arg(&xs)
            .arg(&ldx)
            .arg(&ys)
            .arg(&ldy)
            .arg(&rows)
            .arg(&cols);
        // SAFETY: W, x, y and the bias were checked above to hold every element the kernel touches (rows of
        // `cols` at their strides, for sequences b0 .. b0 + n), with 16-byte aligned rows where it loads 16 bytes.
        unsafe { l.launch(cfg) }?;
        b0 += n;
    }
    Ok(())
}

fn kernel_name(name: &str, batch: usize) -> &'static str {
    match (name, batch) {
        ("gemv_bf16", 1) => "gemv_bf16_b1",
        ("gemv_bf16", 2) => "gemv_bf16_b2",
        ("gemv_bf16", 4) => "gemv_bf16_b4",
        ("gemv_bf16", _) => "gemv_bf16_b8",
        (_, 1) => "gemv_f32_b1",
        (_, 2) => "gemv_f32_b2",
        (_, 4) => "gemv_f32_b4",
        _ => "gemv_f32_b8",
    }
}

/// `residual[b] += x[b]` (no addend when `x` is None), then `h[b] = RMSNorm(residual[b])·w`; `[batch, width]`
/// contiguous.
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm<R, X, W, H>(
    stream: &Arc<CudaStream>,
    residual: &mut R,
    x: Option<&X>,
    w: &W,
    h: &mut H,
    batch: usize,
    width: usize,
    eps: f32,
) -> Result<()>
where
    R: DevicePtrMut<f32> + DeviceSlice<f32>,
    X: DevicePtr<f32> + DeviceSlice<f32>,
    W: DevicePtr<f32> + DeviceSlice<f32>,
    H: DevicePtrMut<f32> + DeviceSlice<f32>,
{
    if batch == 0 {
        return Ok(());
    }
    check_rows("norm residual", residual.len(), batch, width, width)?;
    check_rows("norm output", h.len(), batch, width, width)?;
    check_rows("norm weight", w.len(), 1, width, width)?;
    if let Some(x) = x {
        check_rows("norm addend", x.len(), batch, width, width)?;
    }
    let s: &CudaStream = stream;
    let (r_ptr, _gr) = residual.device_ptr_mut(s);
    let x_g = x.map(|v| v.device_ptr(s));
    let x_ptr = x_g.as_ref().map_or(0, |(p, _)| *p);
    let (w_ptr, _gw) = w.device_ptr(s);
    let (h_ptr, _gh) = h.device_ptr_mut(s);
    let (width_i, ld) = (to_i32("width", width)?, width as i64);
    let func = function(stream.context(), &DECODE, "add_rmsnorm", 0)?;
    let cfg = LaunchConfig {
        grid_dim: (batch as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&func);
    l.arg(&r_ptr)
        .arg(&x_ptr)
        .arg(&w_ptr)
        .arg(&h_ptr)
        .arg(&width_i)
        .arg(&ld)
        .arg(&eps);
    // SAFETY: every buffer holds `batch` rows of `width` (checked above); the kernel touches nothing else.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Sizes of a conv step: `channels` channels of window `k` for `batch` sequences.
#[derive(Clone, Copy, Debug)]
pub struct ConvDims {
    pub batch: usize,
    pub channels: usize,
    pub k: usize,
    /// Row strides of the input and output (elements).
    pub ld_in: usize,
    pub ld_out: usize,
}

/// The conv window (`[batch, channels, k]`, oldest first) takes the new input column and
/// `out = SiLU(Σ_k w[c, k]·window[k] + bias[c])`; `w` is `[channels, k]`.
pub fn conv_step<I, Wd, Wt, Bi, O>(
    stream: &Arc<CudaStream>,
    input: &I,
    window: &mut Wd,
    w: &Wt,
    bias: Option<&Bi>,
    out: &mut O,
    d: ConvDims,
) -> Result<()>
where
    I: DevicePtr<f32> + DeviceSlice<f32>,
    Wd: DevicePtrMut<f32> + DeviceSlice<f32>,
    Wt: DevicePtr<f32> + DeviceSlice<f32>,
    Bi: DevicePtr<f32> + DeviceSlice<f32>,
    O: DevicePtrMut<f32> + DeviceSlice<f32>,
{
    if d.batch == 0 || d.channels == 0 {
        return Ok(());
    }
    if d.k == 0 {
        return Err(invalid("conv window of width 0".into()));
    }
    let wc = d.channels * d.k;
    check_rows("conv input", input.len(), d.batch, d.ld_in, d.channels)?;
    check_rows("conv window", window.len(), d.batch, wc, wc)?;
    check_rows("conv weight", w.len(), 1, wc, wc)?;
    check_rows("conv output", out.len(), d.batch, d.ld_out, d.channels)?;
    if let Some(b) = bias {
        check_rows("conv bias", b.len(), 1, d.channels, d.channels)?;
    }
    let s: &CudaStream = stream;
    let (i_ptr, _gi) = input.device_ptr(s);
    let (win_ptr, _gwin) = window.device_ptr_mut(s);
    let (w_ptr, _gw) = w.device_ptr(s);
    let b_g = bias.map(|v| v.device_ptr(s));
    let b_ptr = b_g.as_ref().map_or(0, |(p, _)| *p);
    let (o_ptr, _go) = out.device_ptr_mut(s);
    let (ld_in, ld_out) = (d.ld_in as i64, d.ld_out as i64);
    let (channels, k) = (to_i32("channels", d.channels)?, to_i32("conv width", d.k)?);
    let func = function(stream.context(), &DECODE, "conv_step", 0)?;
    let cfg = LaunchConfig {
        grid_dim: (d.channels.div_ceil(256) as u32, d.batch as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&func);
    l.arg(&i_ptr)
        .arg(&ld_in)
        .arg(&win_ptr)
        .arg(&w_ptr)
        .arg(&b_ptr)
        .arg(&o_ptr)
        .arg(&ld_out)
        .arg(&channels)
        .arg(&k);
    // SAFETY: input, window, weights, bias and output were checked above to hold every element of
    // `batch` x `channels` (x `k` for the window and weights) that the kernel reads or writes.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Sizes of an SSM step.
#[derive(Clone, Copy, Debug)]
pub struct SsmDims {
    pub batch: usize,
    pub heads: usize,
    pub groups: usize,
    pub head_dim: usize,
    pub state: usize,
    /// Row strides of the conv output (x | B | C), of the raw dt columns and of y.
    pub ld_xbc: usize,
    pub ld_dt: usize,
    pub ld_y: usize,
}

/// Whether [`ssm_step`] has a kernel for these sizes.
pub fn ssm_supported(d: &SsmDims) -> bool {
    matches!(d.state, 16 | 32 | 64 | 128)
        && (1..=256).contains(&d.head_dim)
        && d.groups > 0
        && d.heads.is_multiple_of(d.groups)
        && (d.heads * d.head_dim).is_multiple_of(4)
        && d.ld_xbc.is_multiple_of(4)
        && d.batch <= 65_535
}

/// One token's SSM update for every (sequence, head): `dt = clamp(softplus(dt_raw + dt_bias))`,
/// `s ← exp(dt·A)·s + dt·x⊗B`, `y = s·C + D·x`. `xbc` rows hold x (`H·P`), B (`G·N`) and C (`G·N`); `dt`'s rows
/// the raw dt of each head; `state` is `[batch, H, P, N]`.
#[allow(clippy::too_many_arguments)]
pub fn ssm_step<X, T, A, S, Y>(
    stream: &Arc<CudaStream>,
    xbc: &X,
    dt: &T,
    a: &A,
    dt_bias: Option<&A>,
    d_skip: Option<&A>,
    state: &mut S,
    y: &mut Y,
    d: SsmDims,
    dt_limit: (f32, f32),
) -> Result<()>
where
    X: DevicePtr<f32> + DeviceSlice<f32>,
    T: DevicePtr<f32> + DeviceSlice<f32>,
    A: DevicePtr<f32> + DeviceSlice<f32>,
    S: DevicePtrMut<f32> + DeviceSlice<f32>,
    Y: DevicePtrMut<f32> + DeviceSlice<f32>,
{
    if d.batch == 0 || d.heads == 0 {
        return Ok(());
    }
    if !ssm_supported(&d) {
        return Err(KernelError::Unsupported(format!(
            "ssm_step: no kernel for head dim {}, state {}, {} heads in {} groups, conv row stride {}",
            d.head_dim, d.state, d.heads, d.groups, d.ld_xbc
        )));
    }
    let inner = d.heads * d.head_dim;
    let st = d.heads * d.head_dim * d.state;
    check_rows(
        "ssm x|B|C",
        xbc.len(),
        d.batch,
        d.ld_xbc,
        inner + 2 * d.groups * d.state,
    )?;
    check_rows("ssm dt", dt.len(), d.batch, d.ld_dt, d.heads)?;
    check_rows("ssm A", a.len(), 1, d.heads, d.heads)?;
    for (what, v) in [("ssm dt_bias", dt_bias), ("ssm D", d_skip)] {
        if let Some(v) = v {
            check_rows(what, v.len(), 1, d.heads, d.heads)?;
        }
    }
    check_rows("ssm state", state.len(), d.batch, st, st)?;
    check_rows("ssm y", y.len(), d.batch, d.ld_y, inner)?;
    let s: &CudaStream = stream;
    let (x_ptr, _gx) = xbc.device_ptr(s);
    let (t_ptr, _gt) = dt.device_ptr(s);
    let (a_ptr, _ga) = a.device_ptr(s);
    let bias_g = dt_bias.map(|v| v.device_ptr(s));
    let d_g = d_skip.map(|v| v.device_ptr(s));
    let (bias_ptr, d_ptr) = (
        bias_g.as_ref().map_or(0, |(p, _)| *p),
        d_g.as_ref().map_or(0, |(p, _)| *p),
    );
    let (s_ptr, _gs) = state.device_ptr_mut(s);
    let (y_ptr, _gy) = y.device_ptr_mut(s);
    check_align("ssm x|B|C", x_ptr, 16)?;
    check_align("ssm state", s_ptr, 16)?;
    let name = match d.state {
        16 => "ssm_step_n16",
        32 => "ssm_step_n32",
        64 => "ssm_step_n64",
        _ => "ssm_step_n128",
    };
    let func = function(stream.context(), &DECODE, name, 0)?;
    let (ld_xbc, ld_dt, ld_y) = (d.ld_xbc as i64, d.ld_dt as i64, d.ld_y as i64);
    let (heads, groups, head_dim) = (d.heads as i32, d.groups as i32, d.head_dim as i32);
    let (lo, hi) = dt_limit;
    let cfg = LaunchConfig {
        grid_dim: (d.heads as u32, d.batch as u32, 1),
        block_dim: (4 * d.head_dim as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&func);
    l.arg(&x_ptr)
        .arg(&ld_xbc)
        .arg(&t_ptr)
        .arg(&ld_dt)
        .arg(&a_ptr)
        .arg(&bias_ptr)
        .arg(&d_ptr)
        .arg(&s_ptr)
        .arg(&y_ptr)
        .arg(&ld_y)
        .arg(&heads)
        .arg(&groups)
        .arg(&head_dim)
        .arg(&lo)
        .arg(&hi);
    // SAFETY: every buffer was checked above to hold what the kernel reads or writes for `batch` sequences and
    // `heads` heads (x, B, C within the conv rows, 16-byte aligned for its float4 loads; the state contiguous).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Mamba2's gated RMSNorm of one token per sequence: `out = RMSNorm(y·SiLU(z))·w` over groups of `group`
/// channels of a `width`-wide row.
#[allow(clippy::too_many_arguments)]
pub fn gated_rmsnorm<Yv, Z, W, O>(
    stream: &Arc<CudaStream>,
    y: &Yv,
    ld_y: usize,
    z: &Z,
    ld_z: usize,
    w: &W,
    out: &mut O,
    ld_out: usize,
    batch: usize,
    width: usize,
    group: usize,
    eps: f32,
) -> Result<()>
where
    Yv: DevicePtr<f32> + DeviceSlice<f32>,
    Z: DevicePtr<f32> + DeviceSlice<f32>,
    W: DevicePtr<f32> + DeviceSlice<f32>,
    O: DevicePtrMut<f32> + DeviceSlice<f32>,
{
    if batch == 0 || width == 0 {
        return Ok(());
    }
    if group == 0 || !width.is_multiple_of(group) {
        return Err(invalid(format!(
            "gated norm: width {width} is not a multiple of the group {group}"
        )));
    }
    check_rows("gated norm y", y.len(), batch, ld_y, width)?;
    check_rows("gated norm z", z.len(), batch, ld_z, width)?;
    check_rows("gated norm weight", w.len(), 1, width, width)?;
    check_rows("gated norm output", out.len(), batch, ld_out, width)?;
    let s: &CudaStream = stream;
    let (y_ptr, _gy) = y.device_ptr(s);
    let (z_ptr, _gz) = z.device_ptr(s);
    let (w_ptr, _gw) = w.device_ptr(s);
    let (o_ptr, _go) = out.device_ptr_mut(s);
    let (ld_y, ld_z, ld_out) = (ld_y as i64, ld_z as i64, ld_out as i64);
    let group_i = to_i32("group", group)?;
    let func = function(stream.context(), &DECODE, "gated_rmsnorm", 0)?;
    let cfg = LaunchConfig {
        grid_dim: ((width / group) as u32, batch as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&func);
    l.arg(&y_ptr)
        .arg(&ld_y)
        .arg(&z_ptr)
        .arg(&ld_z)
        .arg(&w_ptr)
        .arg(&o_ptr)
        .arg(&ld_out)
        .arg(&group_i)
        .arg(&eps);
    // SAFETY: y, z, the weight and the output hold `batch` rows of `width` at their strides (checked above).
    unsafe { l.launch(cfg) }?;
    Ok(())
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
            ld_xbc: 192,
            ld_dt: 8,
            ld_y: 128,
        };
        assert!(ssm_supported(&d));
        assert!(!ssm_supported(&SsmDims { state: 24, ..d }));
        assert!(!ssm_supported(&SsmDims { groups: 3, ..d }));
        assert!(!ssm_supported(&SsmDims { head_dim: 512, ..d }));
    }
}
