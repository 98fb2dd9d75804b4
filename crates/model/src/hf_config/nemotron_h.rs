//! transformers' `NemotronHConfig` (`model_type: "nemotron_h"`, native in transformers 5.24), with the legacy
//! `mamba_*` spellings and both layer-list forms hub files use.
//!
//! What the native model computes from it (docs/numerics.md §5): the chunked path clamps dt from below at
//! `time_step_min` and ignores `time_step_limit`; there is no upper clamp, and `residual_in_fp32`,
//! `attention_bias` and `expand` are not read. Coil's nemotron_h models are restricted to what that code can
//! compute ([`ModelConfig::validate`]), so a checkpoint Coil writes makes transformers compute what Coil does:
//! Coil's lower dt clamp is written as `time_step_min`. The dt *initialisation* minimum, which transformers
//! ties to the same field, travels in `coil_dt_init_min` (initialisation only; transformers ignores it).

use super::json::{first, limit, limit_bounds, token_id, Limit};
use super::silu_only;
use crate::config::{
    AttentionConfig, Family, MambaConfig, MlpActivation, MlpConfig, ModelConfig, SpecialTokens,
};
use serde::{Deserialize, Serialize};

/// An HF Nemotron-H `config.json`. `None` = absent or null; legacy spellings are only read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NemotronHConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    pub model_type: String,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    /// Per layer: `mamba`/`linear_attention`, `attention`/`full_attention`, `mlp`, `moe`.
    pub layers_block_type: Option<Vec<String>>,
    /// The Megatron pattern (`M*M-`), read when `layers_block_type` is absent; written for older readers.
    pub hybrid_override_pattern: Option<String>,
    pub mamba_num_heads: Option<usize>,
    pub mamba_head_dim: Option<usize>,
    pub n_groups: Option<usize>,
    #[serde(default, skip_serializing)]
    pub mamba_n_groups: Option<usize>,
    pub ssm_state_size: Option<usize>,
    pub conv_kernel: Option<usize>,
    #[serde(default, skip_serializing)]
    pub mamba_d_conv: Option<usize>,
    pub chunk_size: Option<usize>,
    #[serde(default, skip_serializing)]
    pub mamba_chunk_size: Option<usize>,
    pub use_conv_bias: Option<bool>,
    #[serde(default, skip_serializing)]
    pub mamba_conv_bias: Option<bool>,
    /// Bias on the Mamba in_proj and out_proj.
    pub use_bias: Option<bool>,
    pub mamba_hidden_act: Option<String>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default, skip_serializing)]
    pub attention_head_dim: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub mlp_hidden_act: Option<String>,
    pub mlp_bias: Option<bool>,
    /// Not read by transformers (attention is bias-free); written `false` for other readers.
    pub attention_bias: Option<bool>,
    /// Not read by native transformers; written `false`, which is what it computes.
    pub residual_in_fp32: Option<bool>,
    pub layer_norm_epsilon: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub initializer_range: Option<f64>,
    /// The chunked path's lower dt clamp, and (in transformers) the dt initialisation minimum.
    pub time_step_min: Option<f64>,
    #[serde(default, skip_serializing)]
    pub mamba_dt_min: Option<f64>,
    pub time_step_max: Option<f64>,
    #[serde(default, skip_serializing)]
    pub mamba_dt_max: Option<f64>,
    pub time_step_floor: Option<f64>,
    #[serde(default, skip_serializing)]
    pub mamba_dt_init_floor: Option<f64>,
    /// Ignored by native transformers (and on reading); written as `[time_step_min, ∞]` so NVIDIA's remote code,
    /// which clamps with it, computes the same.
    pub time_step_limit: Option<Limit>,
    #[serde(default, deserialize_with = "token_id")]
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub eos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Coil: the lower end of the dt initialisation range when it differs from the clamp (`time_step_min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coil_dt_init_min: Option<f64>,
    /// Written by Coil before the exact export: the clamp Coil trained with (transformers ignored it). Read for
    /// those files only, so they reload as trained; writing them again moves the clamp to `time_step_min`.
    #[serde(default, skip_serializing)]
    pub coil_dt_clamp: Option<Limit>,
}

/// Layer symbols from `layers_block_type` (new or legacy names) or `hybrid_override_pattern`.
fn pattern(c: &NemotronHConfig) -> Result<String, String> {
    if let Some(list) = &c.layers_block_type {
        return list
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "linear_attention" | "mamba" => Ok('M'),
                "full_attention" | "attention" => Ok('*'),
                "mlp" => Ok('-'),
                "moe" => Ok('E'),
                _ => Err(format!(
                    "field `layers_block_type`[{i}]: unknown block type {t:?}; expected \"mamba\"/\"linear_attention\", \"attention\"/\"full_attention\", \"mlp\" or \"moe\""
                )),
            })
            .collect();
    }
    c.hybrid_override_pattern
        .clone()
        .ok_or_else(|| "missing `layers_block_type` or `hybrid_override_pattern`".into())
}

/// Reading: transformers' class defaults for absent fields (docs/numerics.md §6).
impl TryFrom<NemotronHConfig> for ModelConfig {
    type Error = String;

    fn try_from(c: NemotronHConfig) -> Result<Self, String> {
        let pattern = pattern(&c)?;
        let n = pattern.chars().count();
        if let Some(layers) = c.num_hidden_layers.filter(|&l| l != n) {
            return Err(format!(
                "field `num_hidden_layers` is {layers} but the layer pattern {pattern:?} has {n} layers"
            ));
        }
        silu_only("mamba_hidden_act", c.mamba_hidden_act.as_deref())?;
        let activation = match c.mlp_hidden_act.as_deref().unwrap_or("relu2") {
            "relu2" => MlpActivation::Relu2,
            "gelu" => MlpActivation::Gelu,
            other => {
                return Err(format!(
                    "field `mlp_hidden_act`: {other:?} is not supported (relu2 or gelu)"
                ))
            }
        };
        let time_step_min = first(&[&c.time_step_min, &c.mamba_dt_min]).unwrap_or(1e-3);
        // transformers clamps the chunked-path dt at (time_step_min, ∞); older Coil files say what Coil used.
        let (clamp_min, clamp_max) = match c.coil_dt_clamp {
            Some(l) => limit_bounds("coil_dt_clamp", l)?,
            None => (time_step_min, None),
        };
        Ok(ModelConfig {
            family: Family::NemotronH,
            vocab_size: c.vocab_size.unwrap_or(131072),
            hidden_size: c.hidden_size.unwrap_or(4096),
            pattern,
            norm_eps: c.layer_norm_epsilon.unwrap_or(1e-5),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            residual_in_fp32: false,
            init_std: c.initializer_range.unwrap_or(0.02),
            mamba: MambaConfig {
                num_heads: c.mamba_num_heads.unwrap_or(128),
                head_dim: c.mamba_head_dim.unwrap_or(64),
                n_groups: first(&[&c.n_groups, &c.mamba_n_groups]).unwrap_or(8),
                state_size: c.ssm_state_size.unwrap_or(128),
                conv_kernel: first(&[&c.conv_kernel, &c.mamba_d_conv]).unwrap_or(4),
                chunk_size: first(&[&c.chunk_size, &c.mamba_chunk_size]).unwrap_or(128),
                conv_bias: first(&[&c.use_conv_bias, &c.mamba_conv_bias]).unwrap_or(true),
                proj_bias: c.use_bias.unwrap_or(false),
                dt_clamp_min: clamp_min,
                dt_clamp_max: clamp_max,
                dt_init_min: c.coil_dt_init_min.unwrap_or(time_step_min),
                dt_init_max: first(&[&c.time_step_max, &c.mamba_dt_max]).unwrap_or(0.1),
                dt_init_floor: first(&[&c.time_step_floor, &c.mamba_dt_init_floor]).unwrap_or(1e-4),
            },
            attention: AttentionConfig {
                num_heads: c.num_attention_heads.unwrap_or(32),
                num_kv_heads: c.num_key_value_heads.unwrap_or(8),
                head_dim: first(&[&c.head_dim, &c.attention_head_dim]).unwrap_or(128),
            },
            mlp: MlpConfig {
                intermediate_size: c.intermediate_size.unwrap_or(21504),
                activation,
                bias: c.mlp_bias.unwrap_or(false),
            },
            tokens: SpecialTokens {
                bos: c.bos_token_id,
                eos: c.eos_token_id,
                pad: c.pad_token_id,
            },
        })
    }
}

/// Writing: every field spelled out; the dt clamp goes where transformers reads it.
impl TryFrom<&ModelConfig> for NemotronHConfig {
    type Error = String;

    fn try_from(cfg: &ModelConfig) -> Result<Self, String> {
        cfg.validate().map_err(|e| e.to_string())?;
        if cfg.family != Family::NemotronH {
            return Err(format!(
                "a {:?} model is not written as an HF nemotron_h config",
                cfg.family
            ));
        }
        let m = &cfg.mamba;
        let blocks = cfg
            .pattern
            .chars()
            .map(|c| match c {
                'M' => "linear_attention",
                '*' => "full_attention",
                _ => "mlp",
            })
            .map(String::from)
            .collect();
        Ok(NemotronHConfig {
            architectures: Some(vec!["NemotronHForCausalLM".into()]),
            model_type: "nemotron_h".into(),
            vocab_size: Some(cfg.vocab_size),
            hidden_size: Some(cfg.hidden_size),
            num_hidden_layers: Some(cfg.num_layers()),
            layers_block_type: Some(blocks),
            hybrid_override_pattern: Some(cfg.pattern.clone()),
            mamba_num_heads: Some(m.num_heads),
            mamba_head_dim: Some(m.head_dim),
            n_groups: Some(m.n_groups),
            ssm_state_size: Some(m.state_size),
            conv_kernel: Some(m.conv_kernel),
            chunk_size: Some(m.chunk_size),
            use_conv_bias: Some(m.conv_bias),
            use_bias: Some(m.proj_bias),
            mamba_hidden_act: Some("silu".into()),
            num_attention_heads: Some(cfg.attention.num_heads),
            num_key_value_heads: Some(cfg.attention.num_kv_heads),
            head_dim: Some(cfg.attention.head_dim),
            intermediate_size: Some(cfg.mlp.intermediate_size),
            mlp_hidden_act: Some(
                match cfg.mlp.activation {
                    MlpActivation::Relu2 => "relu2",
                    MlpActivation::Gelu => "gelu",
                }
                .into(),
            ),
            mlp_bias: Some(cfg.mlp.bias),
            attention_bias: Some(false),
            residual_in_fp32: Some(false),
            layer_norm_epsilon: Some(cfg.norm_eps),
            tie_word_embeddings: Some(cfg.tie_word_embeddings),
            initializer_range: Some(cfg.init_std),
            time_step_min: Some(m.dt_clamp_min),
            time_step_max: Some(m.dt_init_max),
            time_step_floor: Some(m.dt_init_floor),
            time_step_limit: Some(limit(m.dt_clamp_min, None)),
            bos_token_id: cfg.tokens.bos,
            eos_token_id: cfg.tokens.eos,
            pad_token_id: cfg.tokens.pad,
            dtype: Some("float32".into()),
            coil_dt_init_min: (m.dt_init_min != m.dt_clamp_min).then_some(m.dt_init_min),
            ..Default::default()
        })
    }
}
