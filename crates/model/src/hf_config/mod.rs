//! `config.json` in its three formats: HF `mamba2`, HF `nemotron_h`, and the state-spaces (mamba_ssm) Mamba2
//! layout. Each format is one serde struct with `TryFrom` both ways to [`ModelConfig`]; reading and writing share
//! its field spellings, and the conversions say what the reference code computes from each field
//! (docs/numerics.md §5, §6): the semantics follow the code, not the field names.
//!
//! Accepted on reading: `layers_block_type` (new and legacy names) or `hybrid_override_pattern`, the legacy
//! `mamba_*` names, infinity as `{"__float__": "Infinity"}`, bare `Infinity` or a large number such as `1e30`.
//! Writing ([`to_hf_config`]) makes transformers 5.24 compute what Coil computes: see `nemotron_h` for where the
//! dt clamp goes in that family.

mod json;
mod mamba2;
mod nemotron_h;
mod state_spaces;

pub use json::JsonF64;
pub use mamba2::Mamba2Config;
pub use nemotron_h::NemotronHConfig;
pub use state_spaces::{SsmCfg, StateSpacesConfig};

use crate::config::{AttentionConfig, Family, MlpActivation, MlpConfig, ModelConfig};
use crate::error::{ModelError, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// An HF `config.json`, by `model_type`. (One is built per file read or written, so the variants' sizes do not
/// matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum HfConfig {
    Mamba2(Mamba2Config),
    NemotronH(NemotronHConfig),
}

impl TryFrom<&ModelConfig> for HfConfig {
    type Error = String;

    fn try_from(cfg: &ModelConfig) -> std::result::Result<Self, String> {
        Ok(match cfg.family {
            Family::Mamba2 => HfConfig::Mamba2(cfg.try_into()?),
            Family::NemotronH => HfConfig::NemotronH(cfg.try_into()?),
        })
    }
}

impl TryFrom<HfConfig> for ModelConfig {
    type Error = String;

    fn try_from(c: HfConfig) -> std::result::Result<Self, String> {
        match c {
            HfConfig::Mamba2(c) => c.try_into(),
            HfConfig::NemotronH(c) => c.try_into(),
        }
    }
}

/// Reads `dir/config.json` (or a config file path) into a [`ModelConfig`].
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|error| ModelError::Io {
        path: file.clone(),
        error,
    })?;
    parse_config(&text).map_err(|msg| ModelError::config(&file, msg))
}

/// Parses config JSON text in any of the three formats; the error is a message without the file name.
pub fn parse_config(text: &str) -> std::result::Result<ModelConfig, String> {
    let value = json::parse_json(text)?;
    let obj = value
        .as_object()
        .ok_or("expected a JSON object at the top level")?;
    let model_type = obj.get("model_type").cloned();
    let state_spaces = obj.contains_key("d_model") && obj.contains_key("n_layer");
    let cfg: ModelConfig = match model_type {
        Some(Value::String(mt)) if mt == "mamba2" => {
            json::from_value::<Mamba2Config>(value)?.try_into()?
        }
        Some(Value::String(mt)) if mt == "nemotron_h" => {
            json::from_value::<NemotronHConfig>(value)?.try_into()?
        }
        Some(Value::String(other)) => {
            return Err(format!(
                "unknown model_type {other:?}; Coil reads \"mamba2\" and \"nemotron_h\" (and state-spaces configs with d_model/n_layer/ssm_cfg)"
            ))
        }
        Some(mt) => return Err(format!("field `model_type`: expected a string, got {mt}")),
        None if state_spaces => json::from_value::<StateSpacesConfig>(value)?.try_into()?,
        None => {
            return Err(
                "no `model_type` field, and not a state-spaces config (no `d_model`/`n_layer`)"
                    .into(),
            )
        }
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The HF `config.json` of `cfg` (`model_type` `mamba2` or `nemotron_h` by family): transformers 5.24 computes
/// from it what Coil computes, and [`parse_config`] reads it back as `cfg`. Refuses configs the family cannot
/// express (see [`ModelConfig::validate`]).
pub fn to_hf_config(cfg: &ModelConfig) -> Result<Value> {
    cfg.validate()?;
    let hf = HfConfig::try_from(cfg).map_err(ModelError::Invalid)?;
    serde_json::to_value(hf).map_err(|e| ModelError::Invalid(format!("writing config.json: {e}")))
}

/// [`to_hf_config`] as the pretty-printed text of a `config.json` file.
pub fn config_json(cfg: &ModelConfig) -> Result<String> {
    serde_json::to_string_pretty(&to_hf_config(cfg)?)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| ModelError::Invalid(format!("writing config.json: {e}")))
}

/// Mamba2 mixers use SiLU; `field` may be absent (the default is silu).
fn silu_only(field: &str, act: Option<&str>) -> std::result::Result<(), String> {
    match act.unwrap_or("silu") {
        "silu" | "swish" => Ok(()),
        other => Err(format!(
            "field `{field}`: activation {other:?} is not supported (Mamba2 mixers use silu)"
        )),
    }
}

/// Placeholders for the layer kinds a pure Mamba2 stack does not have (never read by the model).
const UNUSED_ATTENTION: AttentionConfig = AttentionConfig {
    num_heads: 1,
    num_kv_heads: 1,
    head_dim: 1,
};
const UNUSED_MLP: MlpConfig = MlpConfig {
    intermediate_size: 0,
    activation: MlpActivation::Gelu,
    bias: false,
};
