//! `coil logits`: run a model on given token ids and write logits and loss, for exact comparisons.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use coil_model::{next_token_loss, HybridLm};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Compute logits and the next-token loss of a model on token ids from a safetensors file.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Model directory: HF layout (config.json + model.safetensors or sharded), or a state-spaces Mamba2
    /// directory (config.json + pytorch_model.bin).
    #[arg(long)]
    pub model: PathBuf,
    /// Safetensors file with tensor `input_ids` (i64 [B, T]).
    #[arg(long)]
    pub input: PathBuf,
    /// Safetensors file to write: `logits` (f32 [B, T, V]) and `loss` (f32 [1], mean next-token cross-entropy).
    #[arg(long)]
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = coil_model::device::DEFAULT_DEVICE)]
    pub device: String,
    /// Also write `grad.<name>` (f32) for every parameter: the gradient of `loss`, named as in the checkpoint.
    #[arg(long)]
    pub grads: bool,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let device = coil_model::device::select_device(&args.device)?;
    let ids = read_input_ids(&args.input)?;
    let model = HybridLm::from_dir(&args.model, &device, DType::F32)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let ids = ids.to_device(&device)?;
    let (b, t) = ids.dims2()?;
    if args.grads && t < 2 {
        bail!("--grads needs at least 2 tokens per sequence (the loss is over next-token predictions)");
    }
    // With --grads the parameters become autograd variables and the loss is differentiated.
    let (model, vars) = if args.grads {
        model.trainable()?
    } else {
        (model, Vec::new())
    };
    let logits = model.forward(&ids, None).with_context(|| {
        format!(
            "running {} on {}",
            args.model.display(),
            args.input.display()
        )
    })?;
    let loss = if t >= 2 {
        next_token_loss(&logits, &ids)?.reshape(1)?
    } else {
        Tensor::new(&[f32::NAN], &device)?
    };
    let mut out = HashMap::from([
        (
            "logits".to_string(),
            logits.detach().to_device(&Device::Cpu)?,
        ),
        ("loss".to_string(), loss.detach().to_device(&Device::Cpu)?),
    ]);
    if args.grads {
        let grads = loss.backward().context("differentiating the loss")?;
        for (name, var) in &vars {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.to_dtype(DType::F32)?,
                None => var.as_tensor().zeros_like()?.to_dtype(DType::F32)?,
            };
            out.insert(format!("grad.{name}"), g.to_device(&Device::Cpu)?);
        }
    }
    write_safetensors_atomic(&out, &args.output)?;
    let loss_v = out["loss"].to_vec1::<f32>()?[0];
    let grads_note = if args.grads {
        format!(", {} gradients", vars.len())
    } else {
        String::new()
    };
    eprintln!(
        "wrote {} (logits [{b}, {t}, {}], loss {loss_v:.6}{grads_note})",
        args.output.display(),
        model.config.vocab_size
    );
    Ok(())
}

/// Reads tensor `input_ids` (integer, [B, T]) from a safetensors file.
pub fn read_input_ids(path: &Path) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
    let Some(ids) = tensors.get("input_ids") else {
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        bail!(
            "{}: no tensor `input_ids` (found: {})",
            path.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    if !matches!(ids.dtype(), DType::I64 | DType::U32 | DType::U8) {
        bail!(
            "{}: `input_ids` has dtype {:?}, expected i64",
            path.display(),
            ids.dtype()
        );
    }
    if ids.rank() != 2 {
        bail!(
            "{}: `input_ids` has shape {:?}, expected [batch, time]",
            path.display(),
            ids.dims()
        );
    }
    Ok(ids.to_dtype(DType::I64)?)
}

/// Writes tensors to `path` through a temporary file in the same directory, then renames it into place.
pub fn write_safetensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = candle_core::safetensors::save(tensors, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
