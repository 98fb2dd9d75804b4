//! Checkpoints: `<run>/checkpoints/step-<N>/` holding `config.json` + `model.safetensors` (HF layout, f32 master
//! weights: `coil logits`, `coil generate` and HF transformers load it directly and compute the same function),
//! the tokenizer's files (`tokenizer.json` + `tokenizer_config.json` for HF-style and byte tokenizers, see
//! `coil_data::Tokenizer::model_dir_files`), `optimizer.safetensors` (AdamW moments), `trainer_state.json`
//! (step, consumed samples, seed, losses) and `recipe.toml`.
//!
//! A checkpoint is written into `step-<N>.tmp-<pid>` and renamed into place when complete, so a kill at any
//! moment leaves the previous checkpoints intact; leftover temporary directories are ignored and removed.

use crate::error::{io, Result, TrainError};
use candle_core::{Device, Tensor};
use coil_data::tokenizer::ModelDirFile;
use coil_model::ModelConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Samples of the global training stream consumed (the data cursor).
    pub consumed_samples: u64,
    /// Seed the run was started with (initialisation and data order).
    pub seed: u64,
    /// Training loss of the last step.
    pub train_loss: Option<f64>,
    /// Validation loss at this step, when computed.
    pub val_loss: Option<f64>,
}

/// Everything a checkpoint holds, in memory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub state: TrainerState,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Completed checkpoints of a run as (step, dir), oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = step_of(&name) {
            if entry.path().join("trainer_state.json").is_file() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes temporary directories left by interrupted writes.
pub fn remove_stale_temporaries(run_dir: &Path) -> Result<()> {
    let dir = checkpoints_dir(run_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

/// Writes a checkpoint atomically (temporary directory, then rename). Returns its directory. `tokenizer_files`
/// (from the run's tokenizer) go beside the weights.
pub fn save(
    run_dir: &Path,
    config: &ModelConfig,
    weights: &[(String, Tensor)],
    optimizer: &HashMap<String, Tensor>,
    state: &TrainerState,
    recipe_toml: &str,
    tokenizer_files: &[ModelDirFile],
) -> Result<PathBuf> {
    let parent = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let final_dir = parent.join(format!("step-{}", state.step));
    let tmp = parent.join(format!("step-{}.tmp-{}", state.step, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = || -> Result<()> {
        let cfg = coil_model::hf_config::config_json(config)?;
        let p = tmp.join("config.json");
        std::fs::write(&p, cfg).map_err(io(&p))?;
        let w: HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        candle_core::safetensors::save(&w, tmp.join("model.safetensors"))?;
        candle_core::safetensors::save(optimizer, tmp.join("optimizer.safetensors"))?;
        let p = tmp.join("recipe.toml");
        std::fs::write(&p, recipe_toml).map_err(io(&p))?;
        for f in tokenizer_files {
            let p = tmp.join(&f.name);
            std::fs::write(&p, &f.contents).map_err(io(&p))?;
        }
        // trainer_state.json last: its presence marks a complete checkpoint.
        let p = tmp.join("trainer_state.json");
        let s = serde_json::to_string_pretty(state)
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        std::fs::write(&p, s).map_err(io(&p))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    Ok(final_dir)
}

/// Reads a checkpoint directory written by [`save`]; refuses one holding a non-finite weight or moment.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let what = dir.display().to_string();
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
    let config = coil_model::hf_config::read_config(dir)?;
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), device)
        .map_err(|e| TrainError::Checkpoint(format!("{what}/model.safetensors: {e}")))?;
    let optimizer = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)
        .map_err(|e| TrainError::Checkpoint(format!("{what}/optimizer.safetensors: {e}")))?;
    for (file, tensors) in [
        ("model.safetensors", &weights),
        ("optimizer.safetensors", &optimizer),
    ] {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            if !coil_model::all_finite(&tensors[name])? {
                return Err(TrainError::Checkpoint(format!(
                    "{what}/{file}: tensor `{name}` holds non-finite values (NaN or infinity), so this checkpoint \
                     cannot be resumed; move {what} out of the way to resume from the checkpoint before it"
                )));
            }
        }
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        config,
        weights,
        optimizer,
        state,
    })
}

/// Applies `save_top_k` (by validation loss, lower is better; `-1` keeps all) and `save_last` to the run's
/// checkpoints, deleting the others.
pub fn apply_retention(run_dir: &Path, save_top_k: i64, save_last: bool) -> Result<()> {
    if save_top_k < 0 {
        return Ok(());
    }
    let all = list_checkpoints(run_dir)?;
    let mut scored: Vec<(f64, u64, PathBuf)> = Vec::new();
    for (step, dir) in &all {
        let p = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let st: TrainerState = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
        // Without a validation loss, newer checkpoints rank first.
        let score = st.val_loss.unwrap_or(f64::INFINITY);
        scored.push((score, *step, dir.clone()));
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let last = all.last().map(|(s, _)| *s);
    for (rank, (_, step, dir)) in scored.iter().enumerate() {
        let keep = (rank as i64) < save_top_k || (save_last && Some(*step) == last);
        if !keep {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
    }
    Ok(())
}
