//! transformers' `Mamba2Config` (`model_type: "mamba2"`), field by field as transformers 5.24 spells it.
//!
//! What transformers computes from it (docs/numerics.md §5, §6): the chunked path clamps dt to `time_step_limit`,
//! `time_step_min/max/floor` only initialise `dt_bias`, `residual_in_fp32` keeps the residual stream in f32.
//! Every field of [`ModelConfig`] a pure Mamba2 stack uses has a field here, so the conversion is exact both ways.

use super::json::{limit, limit_bounds, token_id, Limit};
use super::{silu_only, UNUSED_ATTENTION, UNUSED_MLP};
use crate::config::{Family, MambaConfig, ModelConfig, SpecialTokens};
use serde::{Deserialize, Serialize};

/// An HF Mamba2 `config.json`. `None` = absent or null: reading applies transformers' class default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Mamba2Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    pub model_type: String,
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub vocab_size: Option<usize>,
    pub num_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub expand: Option<usize>,
    pub n_groups: Option<usize>,
    pub state_size: Option<usize>,
    pub conv_kernel: Option<usize>,
    pub chunk_size: Option<usize>,
    pub use_conv_bias: Option<bool>,
    /// Bias on in_proj and out_proj.
    pub use_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub residual_in_fp32: Option<bool>,
    pub layer_norm_epsilon: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub initializer_range: Option<f64>,
    /// dt initialisation range and floor (not a clamp in this family).
    pub time_step_min: Option<f64>,
    pub time_step_max: Option<f64>,
    pub time_step_floor: Option<f64>,
    /// The chunked path's dt clamp `[lo, hi]`.
    pub time_step_limit: Option<Limit>,
    #[serde(default, deserialize_with = "token_id")]
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub eos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Written by Coil before the exact export (same value as `time_step_limit`); read for those files only.
    #[serde(default, skip_serializing)]
    pub coil_dt_clamp: Option<Limit>,
}

/// Reading: transformers' class defaults for absent fields (docs/numerics.md §6).
impl TryFrom<Mamba2Config> for ModelConfig {
    type Error = String;

    fn try_from(c: Mamba2Config) -> Result<Self, String> {
        let need =
            |v: Option<usize>, name: &str| v.ok_or(format!("missing required field `{name}`"));
        let hidden = need(c.hidden_size, "hidden_size")?;
        let layers = need(c.num_hidden_layers, "num_hidden_layers")?;
        let head_dim = c.head_dim.unwrap_or(64);
        let expand = c.expand.unwrap_or(2);
        let heads = c
            .num_heads
            .unwrap_or((expand * hidden).checked_div(head_dim).unwrap_or(0));
        if hidden * expand != heads * head_dim {
            return Err(format!(
                "hidden_size·expand ({hidden}·{expand}) must equal num_heads·head_dim ({heads}·{head_dim})"
            ));
        }
        silu_only("hidden_act", c.hidden_act.as_deref())?;
        let (lo, hi) = match c.coil_dt_clamp.or(c.time_step_limit) {
            Some(l) => limit_bounds("time_step_limit", l)?,
            None => (0.0, None),
        };
        Ok(ModelConfig {
            family: Family::Mamba2,
            vocab_size: need(c.vocab_size, "vocab_size")?,
            hidden_size: hidden,
            pattern: "M".repeat(layers),
            norm_eps: c.layer_norm_epsilon.unwrap_or(1e-5),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            residual_in_fp32: c.residual_in_fp32.unwrap_or(true),
            init_std: c.initializer_range.unwrap_or(0.1),
            mamba: MambaConfig {
                num_heads: heads,
                head_dim,
                n_groups: c.n_groups.unwrap_or(8),
                state_size: c.state_size.unwrap_or(128),
                conv_kernel: c.conv_kernel.unwrap_or(4),
                chunk_size: c.chunk_size.unwrap_or(256),
                conv_bias: c.use_conv_bias.unwrap_or(true),
                proj_bias: c.use_bias.unwrap_or(false),
                dt_clamp_min: lo,
                dt_clamp_max: hi,
                dt_init_min: c.time_step_min.unwrap_or(1e-3),
                dt_init_max: c.time_step_max.unwrap_or(0.1),
                dt_init_floor: c.time_step_floor.unwrap_or(1e-4),
            },
            attention: UNUSED_ATTENTION,
            mlp: UNUSED_MLP,
            tokens: SpecialTokens {
                bos: c.bos_token_id,
                eos: c.eos_token_id,
                pad: c.pad_token_id,
            },
        })
    }
}

/// Writing: every field spelled out, so no transformers default is relied on.
impl TryFrom<&ModelConfig> for Mamba2Config {
    type Error = String;

    fn try_from(cfg: &ModelConfig) -> Result<Self, String> {
        cfg.validate().map_err(|e| e.to_string())?;
        if cfg.family != Family::Mamba2 {
            return Err(format!(
                "a {:?} model is not written as an HF mamba2 config",
                cfg.family
            ));
        }
        let m = &cfg.mamba;
        Ok(Mamba2Config {
            architectures: Some(vec!["Mamba2ForCausalLM".into()]),
            model_type: "mamba2".into(),
            hidden_size: Some(cfg.hidden_size),
            num_hidden_layers: Some(cfg.num_layers()),
            vocab_size: Some(cfg.vocab_size),
            num_heads: Some(m.num_heads),
            head_dim: Some(m.head_dim),
            // validate() guarantees num_heads·head_dim is a multiple of hidden_size for this family.
            expand: Some(m.num_heads * m.head_dim / cfg.hidden_size),
            n_groups: Some(m.n_groups),
            state_size: Some(m.state_size),
            conv_kernel: Some(m.conv_kernel),
            chunk_size: Some(m.chunk_size),
            use_conv_bias: Some(m.conv_bias),
            use_bias: Some(m.proj_bias),
            hidden_act: Some("silu".into()),
            residual_in_fp32: Some(cfg.residual_in_fp32),
            layer_norm_epsilon: Some(cfg.norm_eps),
            tie_word_embeddings: Some(cfg.tie_word_embeddings),
            initializer_range: Some(cfg.init_std),
            time_step_min: Some(m.dt_init_min),
            time_step_max: Some(m.dt_init_max),
            time_step_floor: Some(m.dt_init_floor),
            time_step_limit: Some(limit(m.dt_clamp_min, m.dt_clamp_max)),
            bos_token_id: cfg.tokens.bos,
            eos_token_id: cfg.tokens.eos,
            pad_token_id: cfg.tokens.pad,
            dtype: Some("float32".into()),
            coil_dt_clamp: None,
        })
    }
}
