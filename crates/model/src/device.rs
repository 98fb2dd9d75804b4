//! Device choice, in one place: `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! `auto` (the default of every `--device` flag) is the first GPU when this build has CUDA (`--features cuda`)
//! and one is present, else the CPU.

use crate::error::{ModelError, Result};
use candle_core::Device;

/// The `--device` value commands default to.
pub const DEFAULT_DEVICE: &str = "auto";

/// Checks the spelling of a device spec (`auto`, `cpu`, `cuda` or `cuda:N`) without opening the device.
pub fn check_spec(spec: &str) -> Result<()> {
    match spec {
        "cpu" | "auto" | "cuda" => Ok(()),
        s => match s.strip_prefix("cuda:") {
            Some(n) if n.parse::<usize>().is_ok() => Ok(()),
            Some(_) => Err(ModelError::Device(format!(
                "device {s:?}: expected cuda:N with N a GPU index"
            ))),
            None => Err(ModelError::Device(format!(
                "unknown device {s:?}; expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// Parses a device spec: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn select_device(spec: &str) -> Result<Device> {
    let dev = parse_device(spec)?;
    coil_ops::prepare_device(&dev)
        .map_err(|e| ModelError::Unsupported(format!("device {spec:?}: {e}")))?;
    Ok(dev)
}

fn parse_device(spec: &str) -> Result<Device> {
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
                    ModelError::Device(format!("device {s:?}: expected cuda:N with N a GPU index"))
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
        other => Err(ModelError::Device(format!(
            "unknown device {other:?}; expected auto, cpu, cuda or cuda:N"
        ))),
    }
}

/// The device spec for local rank `local_rank` of a multi-process launch: `auto` and `cuda` become that rank's own
/// GPU (`cuda:<local_rank>`, as torchrun's LOCAL_RANK maps ranks to GPUs) when this build and machine have CUDA,
/// `auto` stays on the CPU otherwise; `cpu` and an explicit `cuda:N` are kept as given.
pub fn for_local_rank(spec: &str, local_rank: usize) -> String {
    match spec {
        "cuda" => format!("cuda:{local_rank}"),
        "auto" if candle_core::utils::cuda_is_available() => format!("cuda:{local_rank}"),
        "auto" => "cpu".into(),
        other => other.into(),
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
    fn ranks_get_their_own_gpu() {
        assert_eq!(for_local_rank("cuda", 3), "cuda:3");
        assert_eq!(for_local_rank("cpu", 3), "cpu");
        assert_eq!(for_local_rank("cuda:1", 3), "cuda:1");
        let auto = for_local_rank("auto", 2);
        let want = if candle_core::utils::cuda_is_available() {
            "cuda:2"
        } else {
            "cpu"
        };
        assert_eq!(auto, want);
    }

    #[test]
    fn specs() {
        assert!(select_device("cpu").unwrap().is_cpu());
        for good in ["auto", "cpu", "cuda", "cuda:3"] {
            assert!(check_spec(good).is_ok(), "{good}");
        }
        for bad in ["tpu", "cuda:x", "cuda:", ""] {
            assert!(check_spec(bad).is_err(), "{bad}");
        }
        assert!(select_device("gpu").is_err());
        assert!(select_device("cuda:x").is_err());
        if !candle_core::utils::cuda_is_available() {
            assert!(select_device("auto").unwrap().is_cpu());
            let e = select_device("cuda").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
