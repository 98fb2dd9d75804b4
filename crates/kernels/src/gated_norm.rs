//! Launcher of the prefill's gated RMSNorm (`cuda/gated_norm.cu`): `rows` positions, y and z read with their row
//! strides (z in the in_proj output's layout), the output `[rows, width]` in their element type (f32 or bf16).

use crate::module::{function, Act, KernelError, Result, GATED_NORM};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// `out = w·(v / sqrt(mean_group(v²) + eps))` with `v = y·SiLU(z)`, per row and group of `width / groups` channels.
/// Computed in f32; a bf16 output is rounded to nearest once.
#[allow(clippy::too_many_arguments)]
pub fn gated_rmsnorm<T: Act>(
    stream: &Arc<CudaStream>,
    (y, ld_y): (&CudaView<'_, T>, usize),
    (z, ld_z): (&CudaView<'_, T>, usize),
    w: &CudaView<'_, f32>,
    out: &mut CudaSlice<T>,
    rows: usize,
    groups: usize,
    eps: f32,
) -> Result<()> {
    let width = w.len();
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let invalid = |what: String| KernelError::Invalid {
        kernel: "gated_norm",
        what,
    };
    if groups == 0 || !width.is_multiple_of(groups) {
        return Err(invalid(format!("{width} channels in {groups} groups")));
    }
    let fits = |len: usize, ld: usize| width <= ld && (rows - 1) * ld + width <= len;
    if !fits(y.len(), ld_y) || !fits(z.len(), ld_z) || out.len() < rows * width {
        return Err(invalid(format!(
            "y, z or the output do not hold {rows} rows of {width}"
        )));
    }
    let (width_i, group_i) = (
        i32::try_from(width).map_err(|_| invalid("width exceeds 32 bits".into()))?,
        (width / groups) as i32,
    );
    let rows_u = u32::try_from(rows).map_err(|_| invalid("rows exceed 32 bits".into()))?;
    let s: &CudaStream = stream;
    let (y_ptr, _gy) = y.device_ptr(s);
    let (z_ptr, _gz) = z.device_ptr(s);
    let (w_ptr, _gw) = w.device_ptr(s);
    let (o_ptr, _go) = out.device_ptr_mut(s);
    let (ld_y, ld_z) = (ld_y as i64, ld_z as i64);
    let name = format!("gated_rmsnorm_rows{}", T::SUFFIX);
    let f = function(stream.context(), &GATED_NORM, &name, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (rows_u, groups as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&f);
    l.arg(&y_ptr)
        .arg(&ld_y)
        .arg(&z_ptr)
        .arg(&ld_z)
        .arg(&w_ptr)
        .arg(&o_ptr)
        .arg(&width_i)
        .arg(&group_i)
        .arg(&eps);
    // SAFETY: y and z hold `rows` rows of `width` at their strides, the weight `width` and the output rows·width
    // elements (checked above).
    unsafe { l.launch(cfg) }?;
    Ok(())
}
