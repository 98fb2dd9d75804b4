//! The built-in recipes: NeMo's `pretrain_recipe` / `finetune_recipe` defaults for the 11 models
//! (docs/nemo.md §4) and Coil's `demo`.
//!
//! Where NeMo's code does something its authors evidently did not mean, Coil does the intended thing:
//! - the cosine schedule anneals over the run's `trainer.max_steps` (NeMo's scheduler keeps its default
//!   `max_steps = 10`, so the LR falls to `min_lr` right after warmup);
//! - mock data gets a real seed (`data.seed`, 1234); NeMo passes `create_attention_mask` as the seed;
//! - `nemotronh_56b` names the 56B tokenizer (NeMo's recipe names the 8B one);
//! - a fine-tune's default run name is `default_finetune` (NeMo: `default`), so it never resumes the pretraining
//!   run in the same directory;
//! - `seq_length` is one value for the data and the model (NeMo's Mamba2 recipes give 4096 to the data module
//!   while the model config keeps 2048).

use crate::error::{RecipeError, Result};
use crate::recipe::*;
use coil_data::DataConfig;
use coil_model::config::pad_vocab;
use coil_model::presets::{self, PRESET_NAMES};
use coil_model::ModelConfig;
use std::path::PathBuf;

/// Every recipe name: the 11 NeMo models, then `demo`.
pub fn recipe_names() -> Vec<&'static str> {
    PRESET_NAMES.iter().copied().chain(["demo"]).collect()
}

/// The recipe `name` in `mode`, with NeMo's defaults.
pub fn recipe(name: &str, mode: Mode) -> Result<Recipe> {
    if name == "demo" {
        return Ok(demo(mode));
    }
    let preset = presets::preset(name).ok_or_else(|| RecipeError::UnknownRecipe {
        name: name.into(),
        valid: recipe_names().join(", "),
    })?;
    let nemotron = name.starts_with("nemotronh_");
    let big = matches!(name, "nemotronh_47b" | "nemotronh_56b");
    let mamba8 = matches!(name, "mamba2_8b" | "mamba2_hybrid_8b");

    let parallel = if nemotron {
        Parallelism {
            num_nodes: if big { 32 } else { 8 },
            num_gpus_per_node: 8,
            tensor_parallelism: match (name, mode) {
                ("nemotronh_4b", _) => 1,
                // NeMo's finetune recipes force TP 8 for NH-8B/47B/56B after construction.
                (_, Mode::Finetune) => 8,
                _ if big => 8,
                _ => 2,
            },
            pipeline_parallelism: 1,
            context_parallelism: 1,
            sequence_parallelism: name != "nemotronh_4b",
        }
    } else {
        Parallelism {
            num_nodes: 1,
            num_gpus_per_node: if name == "mamba2_1_3b" { 1 } else { 8 },
            tensor_parallelism: if mamba8 { 8 } else { 1 },
            pipeline_parallelism: 1,
            context_parallelism: 1,
            sequence_parallelism: false,
        }
    };
    let trainer = if nemotron {
        Trainer {
            max_steps: 10,
            val_check_interval: 10,
            limit_val_batches: 32,
            limit_test_batches: 50,
            log_every_n_steps: if big { 1 } else { 10 },
            global_batch_size: 768,
            micro_batch_size: 1,
            seq_length: 8192,
            precision: if big {
                PrecisionName::Bf16Fp8CurrentScaling
            } else {
                PrecisionName::Bf16Mixed
            },
            seed: 1234,
        }
    } else {
        Trainer {
            max_steps: 100,
            val_check_interval: 100,
            limit_val_batches: 32,
            limit_test_batches: 50,
            log_every_n_steps: 10,
            global_batch_size: 8,
            micro_batch_size: 1,
            seq_length: 4096,
            precision: PrecisionName::Bf16Mixed,
            seed: 1234,
        }
    };
    let tokenizer = if nemotron {
        let size = name.trim_start_matches("nemotronh_").to_uppercase();
        TokenizerSection {
            library: "huggingface".into(),
            name: format!("nvidia/Nemotron-H-{size}-Base-8K"),
            path: None,
            vocab_size: preset.raw_vocab_size,
            make_vocab_size_divisible_by: preset.make_vocab_size_divisible_by,
        }
    } else if mamba8 {
        TokenizerSection {
            library: "sentencepiece".into(),
            name: "GPTSentencePieceTokenizer (256k)".into(),
            path: None,
            vocab_size: preset.raw_vocab_size,
            make_vocab_size_divisible_by: preset.make_vocab_size_divisible_by,
        }
    } else {
        TokenizerSection {
            library: "huggingface".into(),
            name: "EleutherAI/gpt-neox-20b".into(),
            path: None,
            vocab_size: preset.raw_vocab_size,
            make_vocab_size_divisible_by: preset.make_vocab_size_divisible_by,
        }
    };
    let data = match (mode, nemotron) {
        (Mode::Pretrain, _) | (Mode::Finetune, true) => DataConfig::Mock { seed: 1234 },
        (Mode::Finetune, false) => DataConfig::Squad {
            train: PathBuf::from("squad/training.jsonl"),
            validation: Some(PathBuf::from("squad/validation.jsonl")),
            packed: false,
        },
    };
    let checkpoint = Checkpointing {
        save_top_k: if nemotron { 5 } else { 10 },
        save_last: true,
        resume_path: match (mode, nemotron) {
            (Mode::Finetune, true) => Some(PathBuf::from(format!(
                "nemotronh-{}-pretrain",
                name.trim_start_matches("nemotronh_")
            ))),
            _ => None,
        },
        allow_changed: Vec::new(),
    };
    let mut model = preset.config;
    model.vocab_size = pad_vocab(
        tokenizer.vocab_size,
        tokenizer.make_vocab_size_divisible_by,
        parallel.tensor_parallelism,
    );
    Ok(Recipe {
        recipe: name.into(),
        mode,
        run: RunSection {
            dir: PathBuf::from("runs"),
            name: run_name("default", mode),
            device: coil_model::device::DEFAULT_DEVICE.into(),
            progress: true,
            sample_tokens: 0,
            sample_prompt: String::new(),
        },
        executor: default_executor(),
        parallel,
        trainer,
        optim: optim_for(mode),
        checkpoint,
        tokenizer,
        data,
        model,
    })
}

/// NeMo names both kinds of run `default`; a fine-tune gets `<name>_finetune` here, since Coil resumes any
/// run found in `<dir>/<name>` and a fine-tune must not pick up its pretraining run.
fn run_name(base: &str, mode: Mode) -> String {
    match mode {
        Mode::Pretrain => base.into(),
        Mode::Finetune => format!("{base}_finetune"),
    }
}

fn default_executor() -> ExecutorConfig {
    ExecutorConfig {
        kind: ExecutorKind::Direct,
        master_addr: "127.0.0.1".into(),
        master_port: 29500,
        account: String::new(),
        partition: String::new(),
        time: "04:00:00".into(),
    }
}

/// NeMo's optimizer for the mode: pretrain max 3e-4 / min 3e-5 / warmup 2000; finetune 5e-6 / 0 / 50.
fn optim_for(mode: Mode) -> Optim {
    let (max_lr, min_lr, warmup_steps) = match mode {
        Mode::Pretrain => (3e-4, 3e-5, 2000),
        Mode::Finetune => (5e-6, 0.0, 50),
    };
    Optim {
        max_lr,
        min_lr,
        warmup_steps,
        constant_steps: 0,
        adam_beta1: 0.9,
        adam_beta2: 0.95,
        adam_eps: 1e-5,
        weight_decay: 0.1,
        clip_grad: 1.0,
        use_distributed_optimizer: true,
    }
}

/// The layer pattern of the demo model: Mamba, attention and MLP layers.
pub const DEMO_PATTERN: &str = "M-M*M-";

/// `demo`: a small hybrid (all three layer kinds) on the embedded Shakespeare corpus, f32 on the CPU, sized to
/// train in about two minutes on 2 cores (4.5k tokens/s on a quiet machine). It reads bytes (vocabulary 257, padded
/// to 320) rather than GPT-2 tokens: with GPT-2's 50k vocabulary the LM head alone costs more than the model,
/// and the same minutes buy a fraction of the text.
fn demo(mode: Mode) -> Recipe {
    let model = demo_model();
    Recipe {
        recipe: "demo".into(),
        mode,
        run: RunSection {
            dir: PathBuf::from("runs"),
            name: run_name("demo", mode),
            device: "cpu".into(),
            progress: true,
            sample_tokens: 80,
            sample_prompt: "ROMEO:".into(),
        },
        executor: default_executor(),
        parallel: Parallelism {
            num_nodes: 1,
            num_gpus_per_node: 1,
            tensor_parallelism: 1,
            pipeline_parallelism: 1,
            context_parallelism: 1,
            sequence_parallelism: false,
        },
        trainer: Trainer {
            max_steps: 200,
            val_check_interval: 100,
            limit_val_batches: 2,
            limit_test_batches: 2,
            log_every_n_steps: 25,
            global_batch_size: 8,
            micro_batch_size: 8,
            seq_length: 256,
            precision: PrecisionName::F32,
            seed: 1234,
        },
        optim: match mode {
            Mode::Pretrain => Optim {
                max_lr: 5e-3,
                min_lr: 5e-4,
                warmup_steps: 10,
                ..optim_for(mode)
            },
            Mode::Finetune => Optim {
                max_lr: 5e-4,
                min_lr: 0.0,
                warmup_steps: 10,
                ..optim_for(mode)
            },
        },
        checkpoint: Checkpointing {
            save_top_k: 1,
            save_last: true,
            resume_path: None,
            allow_changed: Vec::new(),
        },
        tokenizer: TokenizerSection {
            library: "bytes".into(),
            name: "UTF-8 bytes + end-of-document (built in)".into(),
            path: Some("bytes".into()),
            vocab_size: 257,
            make_vocab_size_divisible_by: 64,
        },
        data: DataConfig::Shakespeare {
            dir: PathBuf::from("runs/data"),
            split: "980,20,0".into(),
            seed: 1234,
        },
        model,
    }
}

/// The demo model: [`DEMO_PATTERN`] (3 Mamba2, 1 attention, 2 MLP layers) at width 128.
fn demo_model() -> ModelConfig {
    use coil_model::config::*;
    ModelConfig {
        family: Family::NemotronH,
        vocab_size: pad_vocab(257, 64, 1),
        hidden_size: 128,
        pattern: DEMO_PATTERN.into(),
        norm_eps: 1e-5,
        tie_word_embeddings: false,
        residual_in_fp32: false,
        init_std: 0.02,
        mamba: MambaConfig::megatron(8, 32, 1, 32, 64),
        attention: AttentionConfig {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 32,
        },
        mlp: MlpConfig {
            intermediate_size: 512,
            activation: MlpActivation::Relu2,
            bias: false,
        },
        tokens: SpecialTokens {
            bos: None,
            eos: Some(coil_data::tokenizer::BYTE_EOD),
            pad: None,
        },
    }
}
