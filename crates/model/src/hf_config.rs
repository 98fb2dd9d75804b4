//! Reading `config.json`: HF `mamba2` and `nemotron_h`, and the state-spaces (mamba_ssm) Mamba2 layout.
//!
//! Accepts every spelling in numerics.md §1.1, §3.1 and §4: `layers_block_type` (new and legacy names) or
//! `hybrid_override_pattern`, the legacy `mamba_*` names, and infinity written as `{"__float__": "Infinity"}`,
//! bare `Infinity` or a large number such as `1e30`.
//!
//! Semantics follow what the reference code computes, not what the file claims: native HF Nemotron-H ignores
//! `time_step_limit` and clamps dt at `time_step_min` from below; `expand`, `residual_in_fp32` and
//! `attention_bias` are dead there too.

use crate::config::{
    pad_vocab, AttentionConfig, Family, MambaConfig, MlpActivation, MlpConfig, ModelConfig,
    SpecialTokens,
};
use crate::error::{ModelError, Result};
use serde_json::{Map, Value};
use std::path::Path;

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

/// Parses config JSON text; the error is a message without the file name.
pub fn parse_config(text: &str) -> std::result::Result<ModelConfig, String> {
    let value: Value =
        serde_json::from_str(&sanitize_json(text)).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("expected a JSON object at the top level")?;
    let cfg = if let Some(mt) = obj.get("model_type") {
        match mt.as_str() {
            Some("mamba2") => mamba2(&Fields(obj))?,
            Some("nemotron_h") => nemotron_h(&Fields(obj))?,
            Some(other) => {
                return Err(format!(
                    "unknown model_type {other:?}; Coil reads \"mamba2\" and \"nemotron_h\" (and state-spaces configs with d_model/n_layer/ssm_cfg)"
                ))
            }
            None => return Err(format!("field `model_type`: expected a string, got {mt}")),
        }
    } else if obj.contains_key("d_model") && obj.contains_key("n_layer") {
        state_spaces(&Fields(obj))?
    } else {
        return Err(
            "no `model_type` field, and not a state-spaces config (no `d_model`/`n_layer`)".into(),
        );
    };
    let mut cfg = cfg;
    if let Some((lo, hi)) = Fields(obj).limit(&[COIL_DT_CLAMP_KEY])? {
        cfg.mamba.dt_clamp_min = lo;
        cfg.mamba.dt_clamp_max = hi;
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Rewrites bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) to the `{"__float__": ...}` form.
pub fn sanitize_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let replaced = [
            ("-Infinity", "-Infinity"),
            ("Infinity", "Infinity"),
            ("NaN", "NaN"),
        ]
        .iter()
        .find(|(tok, _)| rest.starts_with(tok));
        if let Some((tok, name)) = replaced {
            out.push_str(&format!("{{\"__float__\": \"{name}\"}}"));
            rest = &rest[tok.len()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Typed access to a config object; every error names the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The first present, non-null field among `names`.
    fn find<'n>(&self, names: &[&'n str]) -> Option<(&'n str, &Value)> {
        names
            .iter()
            .find_map(|n| self.0.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
    }
    fn usize_or(
        &self,
        names: &[&str],
        default: Option<usize>,
    ) -> std::result::Result<usize, String> {
        match self.find(names) {
            Some((n, v)) => v.as_u64().map(|x| x as usize).ok_or(format!(
                "field `{n}`: expected a non-negative integer, got {v}"
            )),
            None => default.ok_or(format!("missing required field `{}`", names[0])),
        }
    }
    fn f64_or(&self, names: &[&str], default: f64) -> std::result::Result<f64, String> {
        match self.find(names) {
            Some((n, v)) => json_f64(v).ok_or(format!("field `{n}`: expected a number, got {v}")),
            None => Ok(default),
        }
    }
    fn bool_or(&self, names: &[&str], default: bool) -> std::result::Result<bool, String> {
        match self.find(names) {
            Some((n, v)) => v
                .as_bool()
                .ok_or(format!("field `{n}`: expected true or false, got {v}")),
            None => Ok(default),
        }
    }
    fn str_or<'b>(
        &'b self,
        names: &[&str],
        default: &'b str,
    ) -> std::result::Result<&'b str, String> {
        match self.find(names) {
            Some((n, v)) => v
                .as_str()
                .ok_or(format!("field `{n}`: expected a string, got {v}")),
            None => Ok(default),
        }
    }
    /// A `[lo, hi]` pair such as `time_step_limit`; `hi = None` when infinite.
    fn limit(&self, names: &[&str]) -> std::result::Result<Option<(f64, Option<f64>)>, String> {
        let Some((n, v)) = self.find(names) else {
            return Ok(None);
        };
        let pair = v
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or(format!("field `{n}`: expected [lo, hi], got {v}"))?;
        let lo = json_f64(&pair[0]).ok_or(format!(
            "field `{n}`: lower limit {} is not a number",
            pair[0]
        ))?;
        let hi = json_f64(&pair[1]).ok_or(format!(
            "field `{n}`: upper limit {} is not a number",
            pair[1]
        ))?;
        Ok(Some((lo, hi.is_finite().then_some(hi))))
    }
    fn tokens(&self) -> SpecialTokens {
        let id = |n: &str| self.0.get(n).and_then(Value::as_u64).map(|v| v as u32);
        SpecialTokens {
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            pad: id("pad_token_id"),
        }
    }
}

/// A number, or `{"__float__": "Infinity" | "-Infinity" | "NaN"}`.
fn json_f64(v: &Value) -> Option<f64> {
    if let Some(x) = v.as_f64() {
        return Some(x);
    }
    match v.get("__float__")?.as_str()? {
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => None,
    }
}

fn silu_only(f: &Fields, names: &[&str]) -> std::result::Result<(), String> {
    match f.str_or(names, "silu")? {
        "silu" | "swish" => Ok(()),
        other => Err(format!(
            "field `{}`: activation {other:?} is not supported (Mamba2 mixers use silu)",
            names[0]
        )),
    }
}

fn mamba2(f: &Fields) -> std::result::Result<ModelConfig, String> {
    let hidden = f.usize_or(&["hidden_size"], None)?;
    let layers = f.usize_or(&["num_hidden_layers"], None)?;
    let head_dim = f.usize_or(&["head_dim"], Some(64))?;
    let expand = f.usize_or(&["expand"], Some(2))?;
    let heads = f.usize_or(
        &["num_heads"],
        Some((expand * hidden).checked_div(head_dim).unwrap_or(0)),
    )?;
    if hidden * expand != heads * head_dim {
        return Err(format!("hidden_size·expand ({hidden}·{expand}) must equal num_heads·head_dim ({heads}·{head_dim})"));
    }
    silu_only(f, &["hidden_act"])?;
    let (lo, hi) = f.limit(&["time_step_limit"])?.unwrap_or((0.0, None));
    Ok(ModelConfig {
        family: Family::Mamba2,
        vocab_size: f.usize_or(&["vocab_size"], None)?,
        hidden_size: hidden,
        pattern: "M".repeat(layers),
        norm_eps: f.f64_or(&["layer_norm_epsilon"], 1e-5)?,
        tie_word_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
        residual_in_fp32: f.bool_or(&["residual_in_fp32"], true)?,
        init_std: f.f64_or(&["initializer_range"], 0.1)?,
        mamba: MambaConfig {
            num_heads: heads,
            head_dim,
            n_groups: f.usize_or(&["n_groups"], Some(8))?,
            state_size: f.usize_or(&["state_size"], Some(128))?,
            conv_kernel: f.usize_or(&["conv_kernel"], Some(4))?,
            chunk_size: f.usize_or(&["chunk_size"], Some(256))?,
            conv_bias: f.bool_or(&["use_conv_bias"], true)?,
            proj_bias: f.bool_or(&["use_bias"], false)?,
            dt_clamp_min: lo,
            dt_clamp_max: hi,
            dt_init_min: f.f64_or(&["time_step_min"], 1e-3)?,
            dt_init_max: f.f64_or(&["time_step_max"], 0.1)?,
            dt_init_floor: f.f64_or(&["time_step_floor"], 1e-4)?,
        },
        attention: UNUSED_ATTENTION,
        mlp: UNUSED_MLP,
        tokens: f.tokens(),
    })
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

/// Layer symbols from `layers_block_type` (new or legacy names) or `hybrid_override_pattern`.
fn nemotron_pattern(f: &Fields) -> std::result::Result<String, String> {
    if let Some((n, v)) = f.find(&["layers_block_type"]) {
        let list = v.as_array().ok_or(format!(
            "field `{n}`: expected a list of block types, got {v}"
        ))?;
        return list
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("linear_attention" | "mamba") => Ok('M'),
                Some("full_attention" | "attention") => Ok('*'),
                Some("mlp") => Ok('-'),
                Some("moe") => Ok('E'),
                _ => Err(format!(
                    "field `{n}`[{i}]: unknown block type {t}; expected \"mamba\"/\"linear_attention\", \"attention\"/\"full_attention\", \"mlp\" or \"moe\""
                )),
            })
            .collect();
    }
    match f.find(&["hybrid_override_pattern"]) {
        Some((n, v)) => v
            .as_str()
            .map(str::to_string)
            .ok_or(format!("field `{n}`: expected a string, got {v}")),
        None => Err("missing `layers_block_type` or `hybrid_override_pattern`".into()),
    }
}

fn nemotron_h(f: &Fields) -> std::result::Result<ModelConfig, String> {
    let pattern = nemotron_pattern(f)?;
    if let Some((n, v)) = f.find(&["num_hidden_layers"]) {
        if v.as_u64() != Some(pattern.chars().count() as u64) {
            return Err(format!(
                "field `{n}` is {v} but the layer pattern {pattern:?} has {} layers",
                pattern.chars().count()
            ));
        }
    }
    silu_only(f, &["mamba_hidden_act"])?;
    let activation = match f.str_or(&["mlp_hidden_act"], "relu2")? {
        "relu2" => MlpActivation::Relu2,
        "gelu" => MlpActivation::Gelu,
        other => {
            return Err(format!(
                "field `mlp_hidden_act`: {other:?} is not supported (relu2 or gelu)"
            ))
        }
    };
    let dt_min = f.f64_or(&["time_step_min", "mamba_dt_min"], 1e-3)?;
    Ok(ModelConfig {
        family: Family::NemotronH,
        vocab_size: f.usize_or(&["vocab_size"], Some(131072))?,
        hidden_size: f.usize_or(&["hidden_size"], Some(4096))?,
        pattern,
        norm_eps: f.f64_or(&["layer_norm_epsilon"], 1e-5)?,
        tie_word_embeddings: f.bool_or(&["tie_word_embeddings"], false)?,
        // Dead in native HF Nemotron-H; honoured for configs Coil wrote.
        residual_in_fp32: f.find(&[COIL_DT_CLAMP_KEY]).is_some()
            && f.bool_or(&["residual_in_fp32"], false)?,
        init_std: f.f64_or(&["initializer_range"], 0.02)?,
        mamba: MambaConfig {
            num_heads: f.usize_or(&["mamba_num_heads"], Some(128))?,
            head_dim: f.usize_or(&["mamba_head_dim"], Some(64))?,
            n_groups: f.usize_or(&["n_groups", "mamba_n_groups"], Some(8))?,
            state_size: f.usize_or(&["ssm_state_size"], Some(128))?,
            conv_kernel: f.usize_or(&["conv_kernel", "mamba_d_conv"], Some(4))?,
            chunk_size: f.usize_or(&["chunk_size", "mamba_chunk_size"], Some(128))?,
            conv_bias: f.bool_or(&["use_conv_bias", "mamba_conv_bias"], true)?,
            proj_bias: f.bool_or(&["use_bias"], false)?,
            // Native HF clamps the chunked-path dt at time_step_min and ignores time_step_limit.
            dt_clamp_min: dt_min,
            dt_clamp_max: None,
            dt_init_min: dt_min,
            dt_init_max: f.f64_or(&["time_step_max", "mamba_dt_max"], 0.1)?,
            dt_init_floor: f.f64_or(&["time_step_floor", "mamba_dt_init_floor"], 1e-4)?,
        },
        attention: AttentionConfig {
            num_heads: f.usize_or(&["num_attention_heads"], Some(32))?,
            num_kv_heads: f.usize_or(&["num_key_value_heads"], Some(8))?,
            head_dim: f.usize_or(&["head_dim", "attention_head_dim"], Some(128))?,
        },
        mlp: MlpConfig {
            intermediate_size: f.usize_or(&["intermediate_size"], Some(21504))?,
            activation,
            bias: f.bool_or(&["mlp_bias"], false)?,
        },
        tokens: f.tokens(),
    })
}

/// mamba_ssm's `MambaConfig` (`d_model`, `n_layer`, `ssm_cfg`), as in the state-spaces/mamba2-* releases.
fn state_spaces(f: &Fields) -> std::result::Result<ModelConfig, String> {
    let empty = Map::new();
    let ssm = match f.find(&["ssm_cfg"]) {
        Some((_, v)) => v
            .as_object()
            .ok_or(format!("field `ssm_cfg`: expected an object, got {v}"))?,
        None => &empty,
    };
    let s = Fields(ssm);
    match s.str_or(&["layer"], "Mamba1")? {
        "Mamba2" => {}
        other => {
            return Err(format!(
                "ssm_cfg.layer {other:?}: only Mamba2 checkpoints are supported (Mamba1 is not)"
            ))
        }
    }
    if f.find(&["attn_layer_idx"])
        .and_then(|(_, v)| v.as_array())
        .is_some_and(|a| !a.is_empty())
    {
        return Err("attn_layer_idx: mamba_ssm hybrid attention blocks are not supported; use a nemotron_h config".into());
    }
    if f.usize_or(&["d_intermediate"], Some(0))? != 0 {
        return Err("d_intermediate > 0 (mamba_ssm gated MLP blocks) is not supported".into());
    }
    if !f.bool_or(&["rms_norm"], true)? || !s.bool_or(&["rmsnorm"], true)? {
        return Err(
            "LayerNorm variants are not supported; Coil's Mamba2 uses RMSNorm (rms_norm = true)"
                .into(),
        );
    }
    if s.bool_or(&["norm_before_gate"], false)? {
        return Err(
            "ssm_cfg.norm_before_gate = true is not supported (Mamba2 gates before the norm)"
                .into(),
        );
    }
    if s.bool_or(&["D_has_hdim"], false)? || s.find(&["d_ssm"]).is_some() {
        return Err("ssm_cfg.D_has_hdim / d_ssm are not supported".into());
    }
    let d_model = f.usize_or(&["d_model"], None)?;
    let head_dim = s.usize_or(&["headdim"], Some(64))?;
    let expand = s.usize_or(&["expand"], Some(2))?;
    if head_dim == 0 || (expand * d_model) % head_dim != 0 {
        return Err(format!(
            "ssm_cfg: expand·d_model ({expand}·{d_model}) is not a multiple of headdim {head_dim}"
        ));
    }
    let (lo, hi) = s.limit(&["dt_limit"])?.unwrap_or((0.0, None));
    let vocab = pad_vocab(
        f.usize_or(&["vocab_size"], None)?,
        f.usize_or(&["pad_vocab_size_multiple"], Some(8))?,
        1,
    );
    Ok(ModelConfig {
        family: Family::Mamba2,
        vocab_size: vocab,
        hidden_size: d_model,
        pattern: "M".repeat(f.usize_or(&["n_layer"], None)?),
        norm_eps: 1e-5,
        tie_word_embeddings: f.bool_or(&["tie_embeddings"], true)?,
        residual_in_fp32: f.bool_or(&["residual_in_fp32"], true)?,
        init_std: 0.02,
        mamba: MambaConfig {
            num_heads: expand * d_model / head_dim,
            head_dim,
            n_groups: s.usize_or(&["ngroups"], Some(1))?,
            state_size: s.usize_or(&["d_state"], Some(128))?,
            conv_kernel: s.usize_or(&["d_conv"], Some(4))?,
            chunk_size: s.usize_or(&["chunk_size"], Some(256))?,
            conv_bias: s.bool_or(&["conv_bias"], true)?,
            proj_bias: s.bool_or(&["bias"], false)?,
            dt_clamp_min: lo,
            dt_clamp_max: hi,
            dt_init_min: s.f64_or(&["dt_min"], 1e-3)?,
            dt_init_max: s.f64_or(&["dt_max"], 0.1)?,
            dt_init_floor: s.f64_or(&["dt_init_floor"], 1e-4)?,
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

/// Key under which Coil records its exact dt clamp in an exported `config.json` (HF ignores unknown keys;
/// Coil's reader prefers it, so a Coil checkpoint reloads with the clamp it was trained with).
pub const COIL_DT_CLAMP_KEY: &str = "coil_dt_clamp";

/// An HF `config.json` for `cfg`: `model_type` `mamba2` or `nemotron_h` by family. Reading it back with
/// [`parse_config`] gives `cfg` again.
pub fn to_hf_config(cfg: &ModelConfig) -> Value {
    let m = &cfg.mamba;
    let hi = m
        .dt_clamp_max
        .map_or(serde_json::json!({"__float__": "Infinity"}), Value::from);
    let mut v = match cfg.family {
        Family::Mamba2 => serde_json::json!({
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers(),
            "num_heads": m.num_heads,
            "head_dim": m.head_dim,
            "expand": m.num_heads * m.head_dim / cfg.hidden_size.max(1),
            "n_groups": m.n_groups,
            "state_size": m.state_size,
            "conv_kernel": m.conv_kernel,
            "chunk_size": m.chunk_size,
            "use_conv_bias": m.conv_bias,
            "use_bias": m.proj_bias,
            "hidden_act": "silu",
            "residual_in_fp32": cfg.residual_in_fp32,
            "time_step_limit": [m.dt_clamp_min, hi.clone()],
        }),
        Family::NemotronH => {
            let blocks: Vec<&str> = cfg
                .pattern
                .chars()
                .map(|c| match c {
                    'M' => "mamba",
                    '*' => "attention",
                    _ => "mlp",
                })
                .collect();
            serde_json::json!({
                "architectures": ["NemotronHForCausalLM"],
                "model_type": "nemotron_h",
                "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_layers(),
                "layers_block_type": blocks,
                "hybrid_override_pattern": cfg.pattern,
                "mamba_num_heads": m.num_heads,
                "mamba_head_dim": m.head_dim,
                "n_groups": m.n_groups,
                "ssm_state_size": m.state_size,
                "conv_kernel": m.conv_kernel,
                "chunk_size": m.chunk_size,
                "use_conv_bias": m.conv_bias,
                "use_bias": m.proj_bias,
                "mamba_hidden_act": "silu",
                "num_attention_heads": cfg.attention.num_heads,
                "num_key_value_heads": cfg.attention.num_kv_heads,
                "head_dim": cfg.attention.head_dim,
                "intermediate_size": cfg.mlp.intermediate_size,
                "mlp_hidden_act": match cfg.mlp.activation { MlpActivation::Relu2 => "relu2", MlpActivation::Gelu => "gelu" },
                "mlp_bias": cfg.mlp.bias,
                "attention_bias": false,
                "residual_in_fp32": cfg.residual_in_fp32,
                "time_step_limit": [0.0, {"__float__": "Infinity"}],
            })
        }
    };
    let o = v.as_object_mut().expect("object literal");
    let common = serde_json::json!({
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.init_std,
        "time_step_min": m.dt_init_min,
        "time_step_max": m.dt_init_max,
        "time_step_floor": m.dt_init_floor,
        "bos_token_id": cfg.tokens.bos,
        "eos_token_id": cfg.tokens.eos,
        "pad_token_id": cfg.tokens.pad,
        "torch_dtype": "float32",
        COIL_DT_CLAMP_KEY: [m.dt_clamp_min, hi],
    });
    for (k, val) in common.as_object().expect("object literal") {
        o.insert(k.clone(), val.clone());
    }
    v
}
