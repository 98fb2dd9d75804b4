//! Flags several subcommands share, declared once and flattened into each (`#[command(flatten)]`), so a flag
//! has one spelling, one default and one help text everywhere.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use coil_model::{presets, HybridLm, ModelConfig};
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

    /// Loads this rank's slices of the model for the tensor-parallel group `tp` (the whole model when `None`).
    pub fn load_split(
        &self,
        device: &Device,
        dtype: DType,
        tp: Option<coil_model::parallel::TensorParallel>,
    ) -> Result<HybridLm> {
        let Some(tp) = tp else {
            return self.load(device, dtype);
        };
        let ctx = || format!("--model {}: loading the model", self.model.display());
        let config = coil_model::hf_config::read_config(&self.model).with_context(ctx)?;
        let src = coil_model::weights::open_dir(&self.model).with_context(ctx)?;
        HybridLm::load_parallel(&config, src.as_ref(), device, dtype, Some(tp)).with_context(ctx)
    }
}

/// `--preset NAME [--chunk-size Q]`: a model shape for the benchmarks.
#[derive(Args, Debug, Clone)]
pub struct PresetArgs {
    /// Model shape, a preset name (see `coil recipes`), e.g. mamba2_130m.
    #[arg(long, default_value = "mamba2_130m")]
    pub preset: String,
    /// Override the SSD chunk size of the preset (HF's released Mamba2 configs use 256, NeMo 128).
    #[arg(long)]
    pub chunk_size: Option<usize>,
}

impl PresetArgs {
    /// The preset's model config, with the chunk size overridden when asked.
    pub fn config(&self) -> Result<ModelConfig> {
        let Some(p) = presets::preset(&self.preset) else {
            bail!(
                "--preset {:?}: unknown; one of: {}",
                self.preset,
                presets::PRESET_NAMES.join(", ")
            );
        };
        let mut cfg = p.config;
        if let Some(q) = self.chunk_size {
            if q == 0 {
                bail!("--chunk-size must be positive");
            }
            cfg.mamba.chunk_size = q;
        }
        Ok(cfg)
    }
}
