//! Device choice, in one place: `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! `auto` (the default of every `--device` flag) is the first GPU when this build has CUDA (`--features cuda`)
//! and one is present, else the CPU.

use crate::error::{ModelError, Result};
use candle_core::Device;

/// The `--device` value commands default to.
pub const DEFAULT_DEVICE: &str = "auto";

/// Parses a device spec: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn select_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    ModelError::Invalid(format!("device {s:?}: expected cuda:N with N a GPU index"))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Unsupported(format!(
                    "device {s:?} in this build (built without CUDA; rebuild with `--features cuda`)"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                ModelError::Unsupported(format!("device {s:?}: no usable CUDA GPU {ordinal} ({e})"))
            })
        }
        other => Err(ModelError::Invalid(format!(
            "unknown device {other:?}; expected auto, cpu, cuda or cuda:N"
        ))),
    }
}

/// `cpu` or `cuda:N`, for logs and benchmark records.
pub fn device_label(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(select_device("cpu").unwrap().is_cpu());
        assert!(select_device("gpu").is_err());
        assert!(select_device("cuda:x").is_err());
        if !candle_core::utils::cuda_is_available() {
            assert!(select_device("auto").unwrap().is_cpu());
            let e = select_device("cuda").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
