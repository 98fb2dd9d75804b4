//! Coil's model config: one plain struct that says everything the forward pass needs.
//!
//! The architecture is data: `pattern` is the Megatron hybrid string (`M` Mamba2 mixer, `*` attention,
//! `-` MLP), parsed into [`LayerKind`]s. HF and state-spaces `config.json` files are translated into this
//! struct by [`crate::hf_config`]; the presets of [`crate::presets`] are values of it.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// One layer of the hybrid stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `M`: Mamba2 mixer.
    Mamba,
    /// `*`: self-attention (GQA, no positional encoding).
    Attention,
    /// `-`: non-gated MLP.
    Mlp,
}

impl LayerKind {
    pub fn symbol(self) -> char {
        match self {
            LayerKind::Mamba => 'M',
            LayerKind::Attention => '*',
            LayerKind::Mlp => '-',
        }
    }
}

/// Parses a hybrid pattern such as `"M-M*-"`. `E` (MoE) is recognised and refused.
pub fn parse_pattern(pattern: &str) -> Result<Vec<LayerKind>> {
    if pattern.is_empty() {
        return Err(ModelError::Invalid("the layer pattern is empty".into()));
    }
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            'M' => Ok(LayerKind::Mamba),
            '*' => Ok(LayerKind::Attention),
            '-' => Ok(LayerKind::Mlp),
            'E' => Err(ModelError::Unsupported(format!(
                "layer {i} of pattern {pattern:?} is `E` (mixture of experts); MoE layers"
            ))),
            other => Err(ModelError::Invalid(format!(
                "layer {i} of pattern {pattern:?} is {other:?}; expected `M` (Mamba2), `*` (attention) or `-` (MLP)"
            ))),
        })
        .collect()
}

/// Which HF model family a config came from or is exported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `model_type: "mamba2"` (pure Mamba2 stacks, also the state-spaces checkpoints).
    Mamba2,
    /// `model_type: "nemotron_h"` (hybrids).
    NemotronH,
}

/// Activation of the `-` layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpActivation {
    /// Squared ReLU (Nemotron-H).
    Relu2,
    /// Exact (erf) GELU (Mamba2-Hybrid-8B).
    Gelu,
}

/// Mamba2 mixer sizes and time-step settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MambaConfig {
    pub num_heads: usize,
    pub head_dim: usize,
    pub n_groups: usize,
    pub state_size: usize,
    pub conv_kernel: usize,
    pub chunk_size: usize,
    pub conv_bias: bool,
    /// Bias on in_proj / out_proj.
    pub proj_bias: bool,
    /// Lower clamp of dt (applied in both the chunked and the single-step path; see the crate docs).
    pub dt_clamp_min: f64,
    /// Upper clamp of dt; `None` = unbounded.
    pub dt_clamp_max: Option<f64>,
    /// Initialisation range of dt (log-uniform), and its floor.
    pub dt_init_min: f64,
    pub dt_init_max: f64,
    pub dt_init_floor: f64,
}

impl MambaConfig {
    /// A mixer of these sizes with Megatron's defaults for the rest: conv width 4 with bias, no projection bias,
    /// dt unclamped above 0, dt initialised log-uniform in [1e-3, 0.1] with floor 1e-4.
    pub fn megatron(
        num_heads: usize,
        head_dim: usize,
        n_groups: usize,
        state_size: usize,
        chunk_size: usize,
    ) -> Self {
        MambaConfig {
            num_heads,
            head_dim,
            n_groups,
            state_size,
            conv_kernel: 4,
            chunk_size,
            conv_bias: true,
            proj_bias: false,
            dt_clamp_min: 0.0,
            dt_clamp_max: None,
            dt_init_min: 1e-3,
            dt_init_max: 0.1,
            dt_init_floor: 1e-4,
        }
    }
}

/// The per-segment layout of one Mamba2 mixer, in checkpoint order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixerDims {
    /// `H` SSM heads, `P` head dim, `G` groups, `N` state, `K` conv width.
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
    pub conv_kernel: usize,
}

impl MixerDims {
    /// `I = H·P`.
    pub fn d_inner(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Conv channels `C = I + 2GN` (the xBC block).
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.groups * self.state
    }
    /// Rows of in_proj: `2I + 2GN + H`.
    pub fn in_proj_dim(&self) -> usize {
        2 * self.d_inner() + 2 * self.groups * self.state + self.heads
    }
    /// in_proj rows of each segment, in checkpoint order `[z | x | B | C | dt]`.
    pub fn in_proj_segments(&self) -> [Range<usize>; 5] {
        let (i, gn, h) = (self.d_inner(), self.groups * self.state, self.heads);
        [
            0..i,
            i..2 * i,
            2 * i..2 * i + gn,
            2 * i + gn..2 * i + 2 * gn,
            2 * i + 2 * gn..2 * i + 2 * gn + h,
        ]
    }
    /// The in_proj rows tensor-parallel rank `rank` of `tp` holds: each segment split on its own (heads for
    /// z/x/dt, groups for B/C), as Megatron shards it. Concatenating the ranges gives that rank's in_proj.
    pub fn in_proj_shard(&self, rank: usize, tp: usize) -> Result<Vec<Range<usize>>> {
        if tp == 0
            || rank >= tp
            || !self.heads.is_multiple_of(tp)
            || !self.groups.is_multiple_of(tp)
        {
            return Err(ModelError::Invalid(format!(
                "tensor parallel size {tp} must divide the {} heads and {} groups (rank {rank})",
                self.heads, self.groups
            )));
        }
        Ok(self
            .in_proj_segments()
            .into_iter()
            .map(|seg| {
                let part = seg.len() / tp;
                seg.start + rank * part..seg.start + (rank + 1) * part
            })
            .collect())
    }
}

/// Attention sizes (`*` layers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConfig {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// MLP sizes (`-` layers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub intermediate_size: usize,
    pub activation: MlpActivation,
    pub bias: bool,
}

/// Special token ids carried with a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// Everything the model needs to be built; see the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub family: Family,
    /// Rows of the embedding and LM head (already padded).
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub pattern: String,
    pub norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Keep the residual stream in f32 when computing in a lower precision.
    pub residual_in_fp32: bool,
    /// Standard deviation of the normal initialisation (Megatron `init_method_std`).
    pub init_std: f64,
    pub mamba: MambaConfig,
    pub attention: AttentionConfig,
    pub mlp: MlpConfig,
    #[serde(default)]
    pub tokens: SpecialTokens,
}

impl ModelConfig {
    pub fn layers(&self) -> Result<Vec<LayerKind>> {
        parse_pattern(&self.pattern)
    }

    pub fn num_layers(&self) -> usize {
        self.pattern.chars().count()
    }

    pub fn mixer_dims(&self) -> MixerDims {
        MixerDims {
            heads: self.mamba.num_heads,
            head_dim: self.mamba.head_dim,
            groups: self.mamba.n_groups,
            state: self.mamba.state_size,
            conv_kernel: self.mamba.conv_kernel,
        }
    }

    /// The dt clamp as `(lo, hi)`, `hi = ∞` when unbounded.
    pub fn dt_limit(&self) -> (f32, f32) {
        (
            self.mamba.dt_clamp_min as f32,
            self.mamba.dt_clamp_max.map_or(f32::INFINITY, |v| v as f32),
        )
    }

    /// Checks the sizes fit together; every error names the field.
    pub fn validate(&self) -> Result<()> {
        let kinds = self.layers()?;
        let bad = |msg: String| Err(ModelError::Invalid(msg));
        if self.vocab_size == 0 || self.hidden_size == 0 {
            return bad(format!(
                "vocab_size ({}) and hidden_size ({}) must be positive",
                self.vocab_size, self.hidden_size
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return bad(format!("norm_eps must be positive, got {}", self.norm_eps));
        }
        if kinds.contains(&LayerKind::Mamba) {
            let m = &self.mamba;
            if m.num_heads == 0
                || m.head_dim == 0
                || m.state_size == 0
                || m.conv_kernel == 0
                || m.chunk_size == 0
            {
                return bad("mamba: num_heads, head_dim, state_size, conv_kernel and chunk_size must be positive".into());
            }
            if m.n_groups == 0 || !m.num_heads.is_multiple_of(m.n_groups) {
                return bad(format!(
                    "mamba: num_heads ({}) must be a multiple of n_groups ({})",
                    m.num_heads, m.n_groups
                ));
            }
            if let Some(hi) = m.dt_clamp_max {
                if hi < m.dt_clamp_min {
                    return bad(format!(
                        "mamba: dt clamp max {hi} is below the min {}",
                        m.dt_clamp_min
                    ));
                }
            }
        }
        self.validate_family(&kinds)?;
        if kinds.contains(&LayerKind::Attention) {
            let a = &self.attention;
            if a.num_heads == 0
                || a.head_dim == 0
                || a.num_kv_heads == 0
                || !a.num_heads.is_multiple_of(a.num_kv_heads)
            {
                return bad(format!(
                    "attention: num_heads ({}) must be a positive multiple of num_kv_heads ({}), head_dim ({}) positive",
                    a.num_heads, a.num_kv_heads, a.head_dim
                ));
            }
        }
        if kinds.contains(&LayerKind::Mlp) && self.mlp.intermediate_size == 0 {
            return bad("mlp: intermediate_size must be positive".into());
        }
        Ok(())
    }
}

impl ModelConfig {
    /// What the family's HF code can compute, so that an exported checkpoint computes in transformers what it
    /// computes in Coil (docs/numerics.md §5).
    fn validate_family(&self, kinds: &[LayerKind]) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Invalid(msg));
        match self.family {
            Family::Mamba2 => {
                if kinds.iter().any(|k| *k != LayerKind::Mamba) {
                    return bad(format!(
                        "family mamba2 holds Mamba2 layers only, but the pattern {:?} has attention or MLP \
                         layers; use family nemotron_h for hybrids",
                        self.pattern
                    ));
                }
                let inner = self.mamba.num_heads * self.mamba.head_dim;
                if !inner.is_multiple_of(self.hidden_size) {
                    return bad(format!(
                        "family mamba2: num_heads·head_dim ({inner}) must be a multiple of hidden_size ({}), \
                         since HF's Mamba2 derives the inner width as expand·hidden_size",
                        self.hidden_size
                    ));
                }
            }
            Family::NemotronH => {
                if let Some(hi) = self.mamba.dt_clamp_max {
                    return bad(format!(
                        "family nemotron_h: dt clamp max {hi} is not expressible, since HF's Nemotron-H clamps dt \
                         from below only (at time_step_min); unset mamba.dt_clamp_max or use family mamba2"
                    ));
                }
                if self.residual_in_fp32 {
                    return bad(
                        "family nemotron_h: residual_in_fp32 = true is not expressible, since HF's Nemotron-H \
                         keeps the residual stream in the compute dtype; set residual_in_fp32 = false"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// NeMo's vocabulary padding: `ceil(V / (div·tp)) · (div·tp)`.
pub fn pad_vocab(vocab: usize, divisible_by: usize, tp: usize) -> usize {
    let m = (divisible_by * tp).max(1);
    vocab.div_ceil(m) * m
}
