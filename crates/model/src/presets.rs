//! The 11 NeMo model presets (docs/nemo.md §2), exact: patterns, heads, groups, state, FFN, attention, vocab.

use crate::config::{
    pad_vocab, AttentionConfig, Family, MambaConfig, MlpActivation, MlpConfig, ModelConfig,
    SpecialTokens,
};

/// A preset: the model config plus the NeMo facts that travel with it.
#[derive(Clone, Debug)]
pub struct Preset {
    /// NeMo recipe name, e.g. `mamba2_130m`, `nemotronh_8b`.
    pub name: &'static str,
    pub config: ModelConfig,
    /// The model's training sequence length (NeMo config `seq_length`).
    pub seq_length: usize,
    /// The tokenizer NeMo pairs with it.
    pub tokenizer: &'static str,
    /// Vocabulary before padding, and NeMo's `make_vocab_size_divisible_by`.
    pub raw_vocab_size: usize,
    pub make_vocab_size_divisible_by: usize,
}

pub const HYBRID_8B_PATTERN: &str = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-";
pub const NEMOTRON_H_8B_PATTERN: &str = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-";
pub const NEMOTRON_H_47B_PATTERN: &str =
    "M-M-M-M-M-M-M-M-M*-M-M-M-M-M-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-M-M---MM---M-M*-M-M-M-M-M-";
pub const NEMOTRON_H_56B_PATTERN: &str = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-";

pub const PRESET_NAMES: [&str; 11] = [
    "mamba2_130m",
    "mamba2_370m",
    "mamba2_780m",
    "mamba2_1_3b",
    "mamba2_2_7b",
    "mamba2_8b",
    "mamba2_hybrid_8b",
    "nemotronh_4b",
    "nemotronh_8b",
    "nemotronh_47b",
    "nemotronh_56b",
];

struct Shape {
    family: Family,
    layers: usize,
    hidden: usize,
    pattern: Option<&'static str>,
    groups: usize,
    state: usize,
    mamba_heads: Option<usize>,
    ffn: usize,
    attn: (usize, usize, usize),
    activation: MlpActivation,
}

fn build(s: Shape, vocab: usize) -> ModelConfig {
    let head_dim = 64;
    let pattern = s
        .pattern
        .map_or_else(|| "M".repeat(s.layers), str::to_string);
    debug_assert_eq!(pattern.len(), s.layers);
    ModelConfig {
        family: s.family,
        vocab_size: vocab,
        hidden_size: s.hidden,
        pattern,
        norm_eps: 1e-5,
        tie_word_embeddings: false,
        residual_in_fp32: false,
        init_std: 0.02,
        mamba: MambaConfig::megatron(
            s.mamba_heads.unwrap_or(2 * s.hidden / head_dim),
            head_dim,
            s.groups,
            s.state,
            128,
        ),
        attention: AttentionConfig {
            num_heads: s.attn.0,
            num_kv_heads: s.attn.1,
            head_dim: s.attn.2,
        },
        mlp: MlpConfig {
            intermediate_size: s.ffn,
            activation: s.activation,
            bias: false,
        },
        tokens: SpecialTokens::default(),
    }
}

/// The preset called `name` (NeMo recipe names), or `None`.
pub fn preset(name: &str) -> Option<Preset> {
    use Family::*;
    use MlpActivation::*;
    let neox = (
        "EleutherAI/gpt-neox-20b",
        50277,
        16,
        SpecialTokens {
            bos: Some(0),
            eos: Some(0),
            pad: Some(1),
        },
    );
    let spm = (
        "GPTSentencePieceTokenizer (256k)",
        256000,
        128,
        SpecialTokens::default(),
    );
    let tiktoken = (
        "TiktokenTokenizer (Nemotron-H, 131072)",
        131072,
        128,
        SpecialTokens {
            bos: Some(1),
            eos: Some(2),
            pad: Some(4),
        },
    );
    let pure = |layers, hidden, groups, ffn, attn| Shape {
        family: Mamba2,
        layers,
        hidden,
        pattern: None,
        groups,
        state: 128,
        mamba_heads: None,
        ffn,
        attn,
        activation: Gelu,
    };
    let hybrid = |layers, hidden, pattern, state, heads, ffn, attn, activation| Shape {
        family: NemotronH,
        layers,
        hidden,
        pattern: Some(pattern),
        groups: 8,
        state,
        mamba_heads: Some(heads),
        ffn,
        attn,
        activation,
    };
    let (shape, tok, seq) = match name {
        "mamba2_130m" => (pure(24, 768, 1, 768, (1, 1, 768)), neox.clone(), 2048),
        "mamba2_370m" => (pure(48, 1024, 1, 1024, (1, 1, 1024)), neox.clone(), 2048),
        "mamba2_780m" => (pure(48, 1536, 1, 1536, (1, 1, 1536)), neox.clone(), 2048),
        "mamba2_1_3b" => (pure(48, 2048, 1, 2048, (1, 1, 2048)), neox.clone(), 2048),
        "mamba2_2_7b" => (pure(64, 2560, 1, 2560, (1, 1, 2560)), neox.clone(), 2048),
        "mamba2_8b" => (pure(56, 4096, 8, 4096, (32, 32, 128)), spm.clone(), 4096),
        "mamba2_hybrid_8b" => (
            hybrid(
                56,
                4096,
                HYBRID_8B_PATTERN,
                128,
                128,
                16384,
                (32, 8, 128),
                Gelu,
            ),
            spm.clone(),
            4096,
        ),
        "nemotronh_4b" => (
            hybrid(
                52,
                3072,
                NEMOTRON_H_8B_PATTERN,
                128,
                112,
                12288,
                (32, 8, 128),
                Relu2,
            ),
            tiktoken.clone(),
            8192,
        ),
        "nemotronh_8b" => (
            hybrid(
                52,
                4096,
                NEMOTRON_H_8B_PATTERN,
                128,
                128,
                21504,
                (32, 8, 128),
                Relu2,
            ),
            tiktoken.clone(),
            8192,
        ),
        "nemotronh_47b" => (
            hybrid(
                98,
                8192,
                NEMOTRON_H_47B_PATTERN,
                256,
                256,
                30720,
                (64, 8, 128),
                Relu2,
            ),
            tiktoken.clone(),
            8192,
        ),
        "nemotronh_56b" => (
            hybrid(
                118,
                8192,
                NEMOTRON_H_56B_PATTERN,
                256,
                256,
                32768,
                (64, 8, 128),
                Relu2,
            ),
            tiktoken.clone(),
            8192,
        ),
        _ => return None,
    };
    let (tokenizer, raw_vocab, div, tokens) = tok;
    let mut config = build(shape, pad_vocab(raw_vocab, div, 1));
    config.tokens = tokens;
    Some(Preset {
        name: PRESET_NAMES.iter().find(|n| **n == name)?,
        config,
        seq_length: seq,
        tokenizer,
        raw_vocab_size: raw_vocab,
        make_vocab_size_divisible_by: div,
    })
}
