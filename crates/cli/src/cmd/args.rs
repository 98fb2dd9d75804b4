//! Flags several subcommands share, declared once and flattened into each (`#[command(flatten)]`), so a flag
//! has one spelling, one default and one help text everywhere.

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use coil_model::HybridLm;
use std::path::PathBuf;

/// `--device`.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Device: auto (a GPU when this build has CUDA and one is present, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = coil_model::device::DEFAULT_DEVICE)]
    pub device: String,
}

impl DeviceArgs {
    /// Opens the device.
    pub fn open(&self) -> Result<Device> {
        coil_model::device::select_device(&self.device)
            .with_context(|| format!("--device {}", self.device))
    }
}

/// `--model DIR`: a model to load.
#[derive(Args, Debug, Clone)]
pub struct ModelDirArgs {
    /// Model directory: HF layout (config.json + model.safetensors, or shards with
    /// model.safetensors.index.json; a Coil checkpoint is one), or a state-spaces Mamba2 directory (config.json
    /// + pytorch_model.bin).
    #[arg(long, alias = "model_path", alias = "model-path")]
    pub model: PathBuf,
}

impl ModelDirArgs {
    /// Loads the model (refusing weights that hold NaN or infinity).
    pub fn load(&self, device: &Device, dtype: DType) -> Result<HybridLm> {
        HybridLm::from_dir(&self.model, device, dtype)
            .with_context(|| format!("--model {}: loading the model", self.model.display()))
    }
}
