//! Device choice, in one place: `cpu`, `cuda` or `cuda:N`.

use crate::error::{ModelError, Result};
use candle_core::Device;

/// Parses a device spec. CUDA needs a build with `--features cuda` (a later issue); until then it is a clear error.
pub fn select_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    ModelError::Invalid(format!("device {s:?}: expected cuda:N with N a GPU index"))
                })?,
                None => 0,
            };
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(ordinal)?)
            } else {
                Err(ModelError::Unsupported(format!("device {s:?} in this build (built without CUDA; rebuild with `--features cuda`)")))
            }
        }
        other => Err(ModelError::Invalid(format!(
            "unknown device {other:?}; expected cpu, cuda or cuda:N"
        ))),
    }
}
