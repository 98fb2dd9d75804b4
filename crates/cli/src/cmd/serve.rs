//! `coil serve`: the OpenAI-compatible server (`coil_serve`) over a model directory.

use super::args::{DeviceArgs, ModelDirArgs};
use super::generate::{DecodeDtArg, WeightsArg};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::DType;
use clap::Args;
use coil_infer::{DecodeDtClamp, Engine, EngineOptions, WeightDtype};
use coil_serve::{ChatTemplate, ServeConfig, ServedModel, Server};

/// Serve a model over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models, /health,
/// /metrics.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelDirArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port, printed at startup).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model's name in the API (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Sequences in the batch at most (prefilling or decoding).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Sequences waiting for a slot at most; beyond, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Longest prompt in tokens; longer ones get 400.
    #[arg(long, default_value_t = 4096)]
    pub max_prompt_tokens: usize,
    /// Largest max_tokens a request may ask for (also chat's default).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (401 without it).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Prompt tokens prefilled per scheduler iteration between decode steps, and the prefix cache's block.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Memory for prefix-cache snapshots in MiB (0: no prefix cache).
    #[arg(long, default_value_t = 512)]
    pub prefix_cache_mb: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Prepend the tokenizer's BOS token to text prompts of /v1/completions.
    #[arg(long)]
    pub add_bos: bool,
    /// Tokenizer: a tokenizer.json, a NeMo tiktoken vocab, a SentencePiece .model, gpt2 or bytes. Default: the
    /// model directory's own.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Precision of the decode-step weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: WeightsArg,
    /// dt clamp in the decode step.
    #[arg(long, value_enum, default_value = "coil")]
    pub decode_dt: DecodeDtArg,
}

/// The model's name: `--served-model-name`, else the directory's name.
pub fn model_name(a: &ServeArgs) -> Result<String> {
    if let Some(n) = &a.served_model_name {
        return Ok(n.clone());
    }
    let dir = a
        .model
        .model
        .canonicalize()
        .with_context(|| format!("--model {}", a.model.model.display()))?;
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            anyhow!(
                "--model {}: no directory name; pass --served-model-name",
                dir.display()
            )
        })
}

pub fn config(a: &ServeArgs) -> Result<ServeConfig> {
    Ok(ServeConfig {
        host: a.host.clone(),
        port: a.port,
        model_name: model_name(a)?,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        max_prompt_tokens: a.max_prompt_tokens,
        max_tokens: a.max_tokens,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        prefill_chunk: a.prefill_chunk,
        prefix_cache_bytes: a.prefix_cache_mb << 20,
        max_body_bytes: a.max_body_bytes,
        add_bos: a.add_bos,
    })
}

/// Loads the model, its tokenizer and chat template.
pub fn load(a: &ServeArgs) -> Result<ServedModel> {
    let device = a.device.open()?;
    // As in `coil generate`: the CPU prefill stays f32 (the step converts its own weights); a GPU prefill runs
    // in bf16 with --weights bf16.
    let dtype = match (device.is_cpu(), a.weights) {
        (true, _) | (false, WeightsArg::F32) => DType::F32,
        (false, WeightsArg::Bf16) => DType::BF16,
    };
    let lm = a.model.load(&device, dtype)?;
    let dir = &a.model.model;
    let tokenizer = match &a.tokenizer {
        Some(spec) => {
            coil_data::load_tokenizer(spec).with_context(|| format!("--tokenizer {spec}"))?
        }
        None => {
            let spec = dir.to_string_lossy().into_owned();
            coil_data::load_tokenizer(&spec).with_context(|| {
                format!(
                    "{}: the model directory has no tokenizer (tokenizer.json or coil_tokenizer.json); pass \
                     --tokenizer",
                    dir.display()
                )
            })?
        }
    };
    let template = ChatTemplate::from_model_dir(dir).map_err(|e| anyhow!(e))?;
    let engine = Engine::new(
        lm,
        EngineOptions {
            weights: match a.weights {
                WeightsArg::F32 => WeightDtype::F32,
                WeightsArg::Bf16 => WeightDtype::Bf16,
            },
            dt_clamp: match a.decode_dt {
                DecodeDtArg::Coil => DecodeDtClamp::SameAsPrefill,
                DecodeDtArg::Hf => DecodeDtClamp::HfUnclamped,
            },
        },
    )
    .context("preparing the decode step")?;
    Ok(ServedModel {
        engine,
        tokenizer,
        template,
    })
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.max_batch == 0 || a.max_queue == 0 {
        bail!("--max-batch and --max-queue must be at least 1");
    }
    let cfg = config(&a)?;
    let model = load(&a)?;
    let template = model.template.source.clone();
    let tokenizer = model.tokenizer.describe();
    let server = Server::start(cfg.clone(), model).map_err(|e| anyhow!(e))?;
    eprintln!(
        "serving `{}` on http://{} (tokenizer {tokenizer}; chat template {template}; batch {}, queue {}, \
         prefix cache {} MiB{}); Ctrl-C stops",
        cfg.model_name,
        server.addr(),
        cfg.max_batch,
        cfg.max_queue,
        a.prefix_cache_mb,
        if cfg.api_key.is_some() { "; API key required" } else { "" },
    );
    server.run_until_ctrl_c().context("serving")
}
