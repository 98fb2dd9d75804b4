//! The recipe: one plain serde struct holding every effective value of a run (NeMo spreads the same values over
//! nested `run.Config` objects). A recipe file is this struct as TOML; `deny_unknown_fields` everywhere, so a
//! misspelt key is an error, never a silent default.

use coil_data::DataConfig;
use coil_model::ModelConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Pretraining from random weights, or fine-tuning from `checkpoint.resume_path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Pretrain,
    Finetune,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pretrain => "pretrain",
            Mode::Finetune => "finetune",
        }
    }
}

/// A complete run description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The recipe it was built from (`mamba2_130m`, `nemotronh_8b`, `demo`, ...).
    pub recipe: String,
    pub mode: Mode,
    pub run: RunSection,
    pub executor: ExecutorConfig,
    pub parallel: Parallelism,
    pub trainer: Trainer,
    pub optim: Optim,
    pub checkpoint: Checkpointing,
    pub tokenizer: TokenizerSection,
    pub data: DataConfig,
    pub model: ModelConfig,
}

/// Where the run lives: `<dir>/<name>` holds recipe.toml, metrics, TensorBoard files and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// NeMo `dir` (its default `None` means `./nemo_experiments`; Coil's is `runs`).
    pub dir: PathBuf,
    /// NeMo `name`.
    pub name: String,
    /// `auto` (a GPU when the build has CUDA and one is present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Show a progress bar on a terminal and print log lines.
    pub progress: bool,
    /// After training, print this many generated tokens from the final checkpoint (0 = none).
    pub sample_tokens: usize,
    /// Prompt of that sample.
    pub sample_prompt: String,
}

/// How the run is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// In this process (NeMo-Run `direct=True`); the CPU default.
    Direct,
    /// One worker process per GPU on this machine, torchrun-style environment (NeMo-Run `LocalExecutor`).
    Local,
    /// An sbatch script with srun over num_nodes x num_gpus_per_node tasks (NeMo-Run `SlurmExecutor`).
    Slurm,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    pub kind: ExecutorKind,
    /// Rendezvous address (torchrun's MASTER_ADDR); under Slurm the first node of the allocation.
    pub master_addr: String,
    /// Rendezvous port (MASTER_PORT); 0 = pick a free port (local executor only).
    pub master_port: u16,
    /// Slurm `--account`, `--partition`, `--time` (empty = not passed).
    pub account: String,
    pub partition: String,
    pub time: String,
}

/// NeMo's MegatronStrategy sizes and the trainer's devices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallelism {
    pub num_nodes: usize,
    pub num_gpus_per_node: usize,
    pub tensor_parallelism: usize,
    pub pipeline_parallelism: usize,
    pub context_parallelism: usize,
    pub sequence_parallelism: bool,
}

impl Parallelism {
    pub fn world_size(&self) -> usize {
        self.num_nodes * self.num_gpus_per_node
    }
    /// Data-parallel size: world / (TP x PP x CP).
    pub fn data_parallel(&self) -> usize {
        let model = self.tensor_parallelism * self.pipeline_parallelism * self.context_parallelism;
        self.world_size() / model.max(1)
    }
}

/// Numeric precision (NeMo precision plugins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrecisionName {
    /// f32 everywhere.
    #[serde(rename = "32")]
    F32,
    /// NeMo `bf16_mixed()`: bf16 compute, f32 masters and gradient reduction.
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    /// NeMo `nemotron_h_bf16_with_fp8_current_scaling_mixed()`: bf16-mixed plus FP8 (hybrid format,
    /// tensorwise current scaling), first and last 2 layers kept in bf16, FP8 parameter gather.
    #[serde(rename = "bf16-fp8-current-scaling")]
    Bf16Fp8CurrentScaling,
}

/// Trainer, batch and sequence settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trainer {
    pub max_steps: u64,
    /// Validate and checkpoint every this many steps.
    pub val_check_interval: u64,
    pub limit_val_batches: usize,
    pub limit_test_batches: usize,
    pub log_every_n_steps: u64,
    pub global_batch_size: usize,
    pub micro_batch_size: usize,
    /// Sequence length of the data (NeMo's recipe `seq_length`, given to the data module).
    pub seq_length: usize,
    pub precision: PrecisionName,
    /// Seed of initialisation (Megatron's default 1234).
    pub seed: u64,
}

/// AdamW and the warmup + cosine schedule (NeMo `distributed_fused_adam_with_cosine_annealing`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optim {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub constant_steps: u64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    pub clip_grad: f64,
    /// NeMo's distributed optimizer (ZeRO-1): under data parallelism each rank keeps the f32 master weights and
    /// Adam moments of 1/DP of the model (on, as in NeMo's recipes).
    #[serde(default = "yes")]
    pub use_distributed_optimizer: bool,
}

fn yes() -> bool {
    true
}

/// Checkpoints and resume (NeMo ModelCheckpoint / AutoResume).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpointing {
    /// Checkpoints kept by validation loss (-1 keeps all).
    pub save_top_k: i64,
    pub save_last: bool,
    /// Weights a new run starts from: an HF-layout directory (a Coil checkpoint is one). A fine-tune needs it; a
    /// pretraining run with it continues pretraining from those weights (fresh optimizer and schedule).
    pub resume_path: Option<PathBuf>,
    /// Settings that may differ from the checkpoint's recipe when a run resumes (keys of
    /// `checks::TRAJECTORY_KEYS`, or a table such as `optim`); any other difference stops the resume.
    #[serde(default)]
    pub allow_changed: Vec<String>,
}

/// The tokenizer NeMo pairs with the model, and where Coil reads it from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    /// `huggingface`, `sentencepiece`, `tiktoken`, `gpt2` (embedded) or `bytes` (built in).
    pub library: String,
    /// The name NeMo uses (HF repo id or tokenizer class); informational, Coil downloads nothing.
    pub name: String,
    /// A local file Coil loads (NeMo `tokenizer_model` / `vocab_file`): tokenizer.json, a NeMo tiktoken
    /// vocab .json, a SentencePiece .model, `gpt2` or `bytes`. Unset: mock data runs without a tokenizer.
    pub path: Option<String>,
    /// Vocabulary size before padding.
    pub vocab_size: usize,
    /// `model.vocab_size = ceil(vocab_size / (this x TP)) x (this x TP)` unless `model.vocab_size` is set.
    pub make_vocab_size_divisible_by: usize,
}
