//! mamba_ssm's `MambaConfig` (`d_model`, `n_layer`, `ssm_cfg`), as in the state-spaces/mamba2-* releases.
//!
//! mamba_ssm 2.3.2 computes what transformers' Mamba2 computes (docs/numerics.md §6), with its own defaults
//! (one group, tied embeddings, vocabulary padded to `pad_vocab_size_multiple`) and `ssm_cfg.dt_limit` as the
//! chunked-path clamp. Its hybrid and MLP blocks and LayerNorm variants are refused. The format has no field
//! for the norm epsilon (fixed 1e-5), the initialisation std or special tokens: reading fills mamba_ssm's
//! values, writing drops the last two (they do not change what the model computes).

use super::json::{limit, limit_bounds, Limit};
use super::{UNUSED_ATTENTION, UNUSED_MLP};
use crate::config::{pad_vocab, Family, MambaConfig, ModelConfig, SpecialTokens};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A state-spaces `config.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateSpacesConfig {
    pub d_model: Option<usize>,
    pub n_layer: Option<usize>,
    pub d_intermediate: Option<usize>,
    pub vocab_size: Option<usize>,
    pub ssm_cfg: Option<SsmCfg>,
    /// Layer indices of mamba_ssm's hybrid attention blocks (refused when non-empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_layer_idx: Option<Vec<Value>>,
    pub rms_norm: Option<bool>,
    pub residual_in_fp32: Option<bool>,
    pub pad_vocab_size_multiple: Option<usize>,
    pub tie_embeddings: Option<bool>,
}

/// `ssm_cfg`: the `Mamba2` module's arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SsmCfg {
    pub layer: Option<String>,
    pub d_state: Option<usize>,
    pub d_conv: Option<usize>,
    pub expand: Option<usize>,
    pub headdim: Option<usize>,
    pub ngroups: Option<usize>,
    pub chunk_size: Option<usize>,
    pub conv_bias: Option<bool>,
    pub bias: Option<bool>,
    pub rmsnorm: Option<bool>,
    pub norm_before_gate: Option<bool>,
    #[serde(rename = "D_has_hdim")]
    pub d_has_hdim: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_ssm: Option<Value>,
    pub dt_min: Option<f64>,
    pub dt_max: Option<f64>,
    pub dt_init_floor: Option<f64>,
    pub dt_limit: Option<Limit>,
}

/// mamba_ssm's RMSNorm epsilon, which its config cannot change.
const NORM_EPS: f64 = 1e-5;

impl TryFrom<StateSpacesConfig> for ModelConfig {
    type Error = String;

    fn try_from(c: StateSpacesConfig) -> Result<Self, String> {
        let need =
            |v: Option<usize>, name: &str| v.ok_or(format!("missing required field `{name}`"));
        let s = c.ssm_cfg.unwrap_or_default();
        match s.layer.as_deref().unwrap_or("Mamba1") {
            "Mamba2" => {}
            other => {
                return Err(format!(
                    "ssm_cfg.layer {other:?}: only Mamba2 checkpoints are supported (Mamba1 is not)"
                ))
            }
        }
        if c.attn_layer_idx.is_some_and(|a| !a.is_empty()) {
            return Err("attn_layer_idx: mamba_ssm hybrid attention blocks are not supported; use a nemotron_h config".into());
        }
        if c.d_intermediate.unwrap_or(0) != 0 {
            return Err("d_intermediate > 0 (mamba_ssm gated MLP blocks) is not supported".into());
        }
        if !c.rms_norm.unwrap_or(true) || !s.rmsnorm.unwrap_or(true) {
            return Err(
                "LayerNorm variants are not supported; Coil's Mamba2 uses RMSNorm (rms_norm = true)"
                    .into(),
            );
        }
        if s.norm_before_gate.unwrap_or(false) {
            return Err(
                "ssm_cfg.norm_before_gate = true is not supported (Mamba2 gates before the norm)"
                    .into(),
            );
        }
        if s.d_has_hdim.unwrap_or(false) || s.d_ssm.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("ssm_cfg.D_has_hdim / d_ssm are not supported".into());
        }
        let d_model = need(c.d_model, "d_model")?;
        let head_dim = s.headdim.unwrap_or(64);
        let expand = s.expand.unwrap_or(2);
        if head_dim == 0 || !(expand * d_model).is_multiple_of(head_dim) {
            return Err(format!(
                "ssm_cfg: expand·d_model ({expand}·{d_model}) is not a multiple of headdim {head_dim}"
            ));
        }
        let (lo, hi) = match s.dt_limit {
            Some(l) => limit_bounds("ssm_cfg.dt_limit", l)?,
            None => (0.0, None),
        };
        let vocab = pad_vocab(
            need(c.vocab_size, "vocab_size")?,
            c.pad_vocab_size_multiple.unwrap_or(8),
            1,
        );
        Ok(ModelConfig {
            family: Family::Mamba2,
            vocab_size: vocab,
            hidden_size: d_model,
            pattern: "M".repeat(need(c.n_layer, "n_layer")?),
            norm_eps: NORM_EPS,
            tie_word_embeddings: c.tie_embeddings.unwrap_or(true),
            residual_in_fp32: c.residual_in_fp32.unwrap_or(true),
            init_std: 0.02,
            mamba: MambaConfig {
                num_heads: expand * d_model / head_dim,
                head_dim,
                n_groups: s.ngroups.unwrap_or(1),
                state_size: s.d_state.unwrap_or(128),
                conv_kernel: s.d_conv.unwrap_or(4),
                chunk_size: s.chunk_size.unwrap_or(256),
                conv_bias: s.conv_bias.unwrap_or(true),
                proj_bias: s.bias.unwrap_or(false),
                dt_clamp_min: lo,
                dt_clamp_max: hi,
                dt_init_min: s.dt_min.unwrap_or(1e-3),
                dt_init_max: s.dt_max.unwrap_or(0.1),
                dt_init_floor: s.dt_init_floor.unwrap_or(1e-4),
            },
            attention: UNUSED_ATTENTION,
            mlp: UNUSED_MLP,
            tokens: SpecialTokens {
                bos: Some(0),
                eos: Some(0),
                pad: Some(1),
            },
        })
    }
}

impl TryFrom<&ModelConfig> for StateSpacesConfig {
    type Error = String;

    fn try_from(cfg: &ModelConfig) -> Result<Self, String> {
        cfg.validate().map_err(|e| e.to_string())?;
        if cfg.family != Family::Mamba2 {
            return Err(format!(
                "a {:?} model has no state-spaces config (Mamba2 stacks only)",
                cfg.family
            ));
        }
        if cfg.norm_eps != NORM_EPS {
            return Err(format!(
                "norm_eps {}: a state-spaces config cannot say it (mamba_ssm uses {NORM_EPS})",
                cfg.norm_eps
            ));
        }
        let m = &cfg.mamba;
        Ok(StateSpacesConfig {
            d_model: Some(cfg.hidden_size),
            n_layer: Some(cfg.num_layers()),
            d_intermediate: Some(0),
            vocab_size: Some(cfg.vocab_size),
            ssm_cfg: Some(SsmCfg {
                layer: Some("Mamba2".into()),
                d_state: Some(m.state_size),
                d_conv: Some(m.conv_kernel),
                expand: Some(m.num_heads * m.head_dim / cfg.hidden_size),
                headdim: Some(m.head_dim),
                ngroups: Some(m.n_groups),
                chunk_size: Some(m.chunk_size),
                conv_bias: Some(m.conv_bias),
                bias: Some(m.proj_bias),
                rmsnorm: Some(true),
                norm_before_gate: Some(false),
                d_has_hdim: Some(false),
                d_ssm: None,
                dt_min: Some(m.dt_init_min),
                dt_max: Some(m.dt_init_max),
                dt_init_floor: Some(m.dt_init_floor),
                dt_limit: Some(limit(m.dt_clamp_min, m.dt_clamp_max)),
            }),
            attn_layer_idx: None,
            rms_norm: Some(true),
            residual_in_fp32: Some(cfg.residual_in_fp32),
            // The vocabulary is already padded; 1 keeps it as it is.
            pad_vocab_size_multiple: Some(1),
            tie_embeddings: Some(cfg.tie_word_embeddings),
        })
    }
}
