//! `coil logits`: run a model on given token ids and write logits and loss, for exact comparisons.

use super::args::{DeviceArgs, ModelDirArgs};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use coil_model::{all_finite, next_token_loss, HybridLm, Trace};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Compute logits and the next-token loss of a model on token ids from a safetensors file.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelDirArgs,
    /// Safetensors file with tensor `input_ids` (i64 [B, T]).
    #[arg(long)]
    pub input: PathBuf,
    /// Safetensors file to write: `logits` (f32 [B, T, V]) and `loss` (f32 [1], mean next-token cross-entropy).
    /// Nothing is written when the logits hold NaN or infinity (the command fails, naming the first layer whose
    /// output is not finite).
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Also write `grad.<name>` (f32) for every parameter: the gradient of `loss`, named as in the checkpoint.
    #[arg(long)]
    pub grads: bool,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let device = args.device.open()?;
    let ids = read_input_ids(&args.input)?;
    let model = args.model.load(&device, DType::F32)?;
    let model_dir = &args.model.model;
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
            model_dir.display(),
            args.input.display()
        )
    })?;
    if !all_finite(&logits)? {
        bail!(
            "{}: the logits on {} hold NaN or infinity ({}); the weights are finite, so the values overflow \
             inside the model (a diverged checkpoint?); nothing was written",
            model_dir.display(),
            args.input.display(),
            first_non_finite_layer(&model, &ids)?
        );
    }
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

/// Where non-finite values first appear in a forward pass over `ids` (run again with every activation kept, which
/// only happens on this failure path): the embeddings, a layer's output (with its kind), or the final norm.
pub fn first_non_finite_layer(model: &HybridLm, ids: &Tensor) -> Result<String> {
    let mut trace = Trace::default();
    model.forward(ids, Some(&mut trace))?;
    let finite = |name: &str| -> Result<bool> {
        match trace.0.get(name) {
            Some(t) => Ok(all_finite(t)?),
            None => Ok(true),
        }
    };
    if !finite("act.embeddings")? {
        return Ok("first non-finite: the embeddings".into());
    }
    for (i, block) in model.blocks.iter().enumerate() {
        if !finite(&format!("act.layers.{i}.out"))? {
            return Ok(format!(
                "first non-finite output: layer {i} ({:?})",
                block.kind
            ));
        }
    }
    if !finite("act.norm_f")? {
        return Ok("first non-finite output: the final norm".into());
    }
    Ok("first non-finite: the LM head".into())
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
