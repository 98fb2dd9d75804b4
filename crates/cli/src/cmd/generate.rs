//! `coil generate`: text (or token ids) from a model with NeMo's `generate.py` flags.
//!
//! Prompts come as text (`--prompts`, tokenized with `--tokenizer` or the model directory's tokenizer.json) or
//! as ids (`--input-ids FILE.safetensors`, tensor `input_ids` i64 [B, T], each row one prompt). A single text
//! prompt streams its completion as it is generated. `--output FILE.safetensors` writes `tokens` (i64 [B, N],
//! the generated ids only; rows that stopped at EOS are padded with EOS) and `lengths` (i64 [B]).

use super::args::{DeviceArgs, ModelDirArgs};
use super::logits::{read_input_ids, write_safetensors_atomic};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use coil_data::Tokenizer;
use coil_infer::{
    generate, DecodeDtClamp, Engine, EngineOptions, GenerateParams, SamplingParams, StopReason,
    WeightDtype,
};
use coil_model::parallel::TensorParallel;
use coil_model::HybridLm;
use coil_recipes::launch::{rendezvous, WorkerEnv};
use coil_train::dist::TcpCollective;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightsArg {
    F32,
    Bf16,
}

/// How the decode step stores the SSM states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// f32, as Hugging Face transformers and Coil's CPU engine keep them.
    F32,
    /// bf16, as mamba_ssm keeps them for a bf16 model (the fused CUDA step only): half of a large batch's bytes
    /// per step; the update is computed in f32 and the state rounded to bf16 after every token.
    Bf16,
}

impl From<StateArg> for coil_infer::StateDtype {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::F32 => coil_infer::StateDtype::F32,
            StateArg::Bf16 => coil_infer::StateDtype::Bf16,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DecodeDtArg {
    /// Clamp dt in decode exactly as in prefill (Coil's default: a step equals a full forward).
    Coil,
    /// No dt clamp in the single-token step, as HF transformers and mamba_ssm decode.
    Hf,
}

/// Generate continuations of prompts (flags as NeMo's scripts/llm/generate.py; `_` spellings accepted).
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelDirArgs,
    /// Text prompts.
    #[arg(long, num_args = 1..)]
    pub prompts: Vec<String>,
    /// Prompts as token ids instead: safetensors file with tensor `input_ids` (i64 [B, T]).
    #[arg(long, alias = "input_ids")]
    pub input_ids: Option<PathBuf>,
    /// Write the generated ids here: `tokens` (i64 [B, N]) and `lengths` (i64 [B]).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, alias = "num_tokens_to_generate", default_value_t = 25)]
    pub num_tokens_to_generate: usize,
    /// Divides the logits before sampling (ignored by greedy --top-k 1).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (0 = off). Default 0.95, or 0 when --top-k is given; an explicit value cannot be
    /// combined with --top-k > 0 (Megatron's rule).
    #[arg(long, alias = "top_p")]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (0 = off, 1 = greedy). Turns the default top-p off.
    #[arg(long, alias = "top_k", default_value_t = 0)]
    pub top_k: usize,
    /// Sequences decoded together at most.
    #[arg(long, alias = "max_batch_size", default_value_t = 8)]
    pub max_batch_size: usize,
    #[arg(long, alias = "random_seed", default_value_t = 1234)]
    pub random_seed: u64,
    /// Prepend the tokenizer's BOS token to every text prompt.
    #[arg(long, alias = "add_BOS", alias = "add_bos")]
    pub add_bos: bool,
    /// Tokenizer: a tokenizer.json, a NeMo tiktoken vocab .json, a SentencePiece .model, a model directory,
    /// `gpt2` (embedded) or `bytes` (built in). Default: the model directory's own (checkpoints carry it).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Keep generating after EOS (for exact comparisons with runs that ignore it).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Precision of the decode-step weights (on a GPU: of the whole model, and prompts of equal length decode as
    /// one batch).
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: WeightsArg,
    /// Storage of the SSM states while decoding (bf16: the fused CUDA step only).
    #[arg(long, value_enum, default_value = "f32")]
    pub ssm_state_dtype: StateArg,
    /// dt clamp in the decode step.
    #[arg(long, value_enum, default_value = "coil")]
    pub decode_dt: DecodeDtArg,
    /// Tensor-parallel size: the model split over this many worker processes (one per GPU with `--device
    /// cuda`, `cuda:<rank>`), which exchange values over TCP on this machine; rank 0 prints and writes.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// FP8 inference (not implemented yet).
    #[arg(long)]
    pub fp8: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl GenerateArgs {
    /// `--top-p` as given; when not given, 0.95 (NeMo's default) unless `--top-k` was given, since Megatron
    /// refuses top-k and top-p together and `--top-k 1` alone is how a user asks for greedy decoding.
    pub fn top_p(&self) -> f32 {
        match (self.top_p, self.top_k) {
            (Some(p), _) => p,
            (None, 0) => 0.95,
            (None, _) => 0.0,
        }
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.tp == 0 {
        bail!("--tp 0: the tensor-parallel size must be at least 1");
    }
    if a.fp8 {
        bail!("--fp8: FP8 inference is not implemented yet; drop --fp8 to decode in f32 or bf16");
    }
    // --tp N: this command starts N copies of itself (torchrun's environment), and each copy is one rank.
    let (tp, speak) = match (a.tp, WorkerEnv::from_env()?) {
        (1, _) => (None, true),
        (n, None) => return launch_ranks(n),
        (n, Some(env)) => {
            if env.world_size != n {
                bail!(
                    "--tp {n} in a launch of {} ranks (WORLD_SIZE): tensor-parallel generation uses one rank per \
                     part of the model",
                    env.world_size
                );
            }
            let met = rendezvous(&env, Duration::from_secs(120))?;
            let group = TcpCollective::new(env.rank, env.world_size, met.links)?;
            let speak = env.rank == 0;
            (
                Some((TensorParallel::new(Box::new(group), false), env)),
                speak,
            )
        }
    };
    let device = match &tp {
        Some((_, env)) => {
            let spec = coil_model::device::for_local_rank(&a.device.device, env.local_rank);
            coil_model::device::select_device(&spec).with_context(|| format!("--device {spec}"))?
        }
        None => a.device.open()?,
    };
    if tp.is_some()
        && device.is_cpu()
        && (!matches!(a.weights, WeightsArg::F32) || matches!(a.decode_dt, DecodeDtArg::Hf))
    {
        bail!(
            "--tp {}: the split model decodes with its own forward (f32 on the CPU, dt clamped as in prefill); \
             drop --weights bf16 and --decode-dt hf",
            a.tp
        );
    }
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p(),
    };
    let dtype = match (device.is_cpu(), a.weights) {
        // The CPU engine converts its own step weights; its prefill stays f32.
        (true, _) | (false, WeightsArg::F32) => DType::F32,
        (false, WeightsArg::Bf16) => DType::BF16,
    };
    let lm = a
        .model
        .load_split(&device, dtype, tp.as_ref().map(|(t, _)| t.clone()))?;
    let tokenizer = open_tokenizer(&a)?;
    let text_mode = a.input_ids.is_none();
    let prompts = read_prompts(&a, &lm, tokenizer.as_deref())?;
    let model_vocab = lm.config.vocab_size;
    let eos = if a.ignore_eos {
        None
    } else {
        tokenizer
            .as_ref()
            .and_then(|t| t.eos_id())
            .or(lm.config.tokens.eos)
    };
    let vocab_limit = tokenizer.as_ref().map(|t| t.vocab_size().min(model_vocab));
    sampling
        .validate(model_vocab, vocab_limit)
        .context("--top-k / --top-p / --temperature")?;
    let on_device = !device.is_cpu();
    if !on_device && a.ssm_state_dtype == StateArg::Bf16 {
        bail!(
            "--ssm-state-dtype bf16: only the fused CUDA decode step stores a bf16 SSM state (--device cuda); the CPU engine keeps it in f32"
        );
    }
    if on_device && matches!(a.decode_dt, DecodeDtArg::Hf) {
        bail!(
            "--decode-dt hf: on a GPU every step is the model's own forward, which clamps dt as prefill does; \
             use --device cpu for HF's unclamped step"
        );
    }
    // The CPU engine's fused step holds whole weights: a split model decodes with its forward.
    let engine = if on_device || tp.is_some() {
        None
    } else {
        Some(make_engine(lm.clone(), &a)?)
    };
    let params = GenerateParams {
        max_new_tokens: a.num_tokens_to_generate,
        sampling,
        seed: a.random_seed,
        eos,
        vocab_limit,
        max_batch: a.max_batch_size,
        ssm_state: a.ssm_state_dtype.into(),
    };

    // A single text prompt streams; text is re-decoded as a whole so multi-byte characters come out intact.
    let stream = speak && text_mode && prompts.len() == 1;
    let mut streamed: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut stdout = std::io::stdout();
    if let (true, Some(p)) = (stream, a.prompts.first()) {
        print!("{p}");
        let _ = stdout.flush();
    }
    let t0 = Instant::now();
    let mut on_token = |_, id| {
        if let (true, Some(tok)) = (stream, tokenizer.as_deref()) {
            streamed.push(id);
            if let Ok(text) = tok.decode(&streamed) {
                if text.starts_with(printed.as_str()) && !text.ends_with('\u{FFFD}') {
                    print!("{}", &text[printed.len()..]);
                    let _ = stdout.flush();
                    printed = text;
                }
            }
        }
    };
    let results = match &engine {
        Some(e) => generate(e, &prompts, &params, &mut on_token),
        None => coil_infer::generate_on_device(&lm, &prompts, &params, &mut on_token),
    }
    .context("generating")?;
    let secs = t0.elapsed().as_secs_f64();
    if !speak {
        return Ok(());
    }
    if stream {
        if let Some(tok) = tokenizer.as_deref() {
            let text = tok
                .decode(&streamed)
                .context("decoding the generated ids")?;
            if let Some(rest) = text.strip_prefix(printed.as_str()) {
                print!("{rest}");
            }
        }
        println!();
    } else {
        for (i, g) in results.iter().enumerate() {
            match (text_mode, tokenizer.as_deref()) {
                (true, Some(tok)) => {
                    let text = tok
                        .decode(&g.tokens)
                        .context("decoding the generated ids")?;
                    println!("[{i}] {}{}", a.prompts[i], text);
                }
                _ => println!("[{i}] {:?}", g.tokens),
            }
        }
    }
    let total: usize = results.iter().map(|g| g.tokens.len()).sum();
    let at_eos = results.iter().filter(|g| g.stop == StopReason::Eos).count();
    eprintln!(
        "generated {total} tokens for {} prompt(s) in {secs:.2} s ({:.1} tokens/s, prefill included); {at_eos} stopped at EOS",
        prompts.len(),
        total as f64 / secs.max(1e-9)
    );
    if let Some(out) = &a.output {
        write_tokens(out, &results, eos)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// `--tp N` from the command line: starts this same command N times on this machine as ranks 0..N (torchrun's
/// environment, a free rendezvous port), rank 0 with this terminal's output, the others with their errors
/// only, and waits for all.
fn launch_ranks(n: usize) -> Result<()> {
    let exe = std::env::current_exe().context("finding this executable to start the ranks")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let port = coil_recipes::launch::free_port()?;
    let mut children = vec![];
    for rank in 0..n {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(if rank == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        children.push(child);
    }
    let mut failed = vec![];
    for (rank, mut c) in children.into_iter().enumerate() {
        let status = c
            .wait()
            .with_context(|| format!("waiting for rank {rank}"))?;
        if !status.success() {
            failed.push(format!("rank {rank} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!("--tp {n}: {} failed", failed.join(", "));
    }
    Ok(())
}

/// The CPU decode engine with the step weights and dt clamp the flags ask for.
fn make_engine(lm: HybridLm, a: &GenerateArgs) -> Result<Engine> {
    Engine::new(
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
    .context("preparing the decode step")
}

fn open_tokenizer(a: &GenerateArgs) -> Result<Option<Box<dyn Tokenizer>>> {
    if let Some(spec) = &a.tokenizer {
        return coil_data::load_tokenizer(spec)
            .map(Some)
            .with_context(|| format!("--tokenizer {spec}"));
    }
    // A checkpoint Coil wrote carries its tokenizer (tokenizer.json, or coil_tokenizer.json naming one).
    let dir = &a.model.model;
    let has_tokenizer = ["tokenizer.json", coil_data::tokenizer::COIL_TOKENIZER_FILE]
        .iter()
        .any(|f| dir.join(f).is_file());
    if has_tokenizer {
        let spec = dir.to_string_lossy().into_owned();
        return coil_data::load_tokenizer(&spec)
            .map(Some)
            .with_context(|| format!("{}: the model directory's tokenizer", dir.display()));
    }
    Ok(None)
}

fn read_prompts(
    a: &GenerateArgs,
    lm: &HybridLm,
    tok: Option<&dyn Tokenizer>,
) -> Result<Vec<Vec<u32>>> {
    match (&a.input_ids, a.prompts.is_empty()) {
        (Some(_), false) => bail!("give either --prompts or --input-ids, not both"),
        (None, true) => bail!(
            "nothing to generate from: give --prompts \"...\" or --input-ids FILE.safetensors"
        ),
        (Some(path), true) => {
            let ids = read_input_ids(path)?;
            let (b, t) = ids.dims2()?;
            let flat = ids.flatten_all()?.to_vec1::<i64>()?;
            let vocab = lm.config.vocab_size as i64;
            if let Some(pos) = flat.iter().position(|&v| v < 0 || v >= vocab) {
                bail!(
                    "{}: token id {} at [{}, {}] is outside the model's vocabulary [0, {vocab})",
                    path.display(),
                    flat[pos],
                    pos / t,
                    pos % t
                );
            }
            Ok((0..b)
                .map(|r| flat[r * t..(r + 1) * t].iter().map(|&v| v as u32).collect())
                .collect())
        }
        (None, false) => {
            let Some(tok) = tok else {
                bail!(
                    "no tokenizer for the text prompts: {} has no tokenizer.json; pass --tokenizer (a tokenizer.json, \
                     a NeMo tiktoken vocab, a SentencePiece .model, gpt2 or bytes) or give --input-ids",
                    a.model.model.display()
                );
            };
            let bos = if a.add_bos {
                Some(tok.bos_id().or(lm.config.tokens.bos).with_context(|| {
                    format!(
                        "--add-bos: the tokenizer ({}) has no BOS token",
                        tok.describe()
                    )
                })?)
            } else {
                None
            };
            a.prompts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut ids: Vec<u32> = bos.into_iter().collect();
                    ids.extend(
                        tok.encode(p)
                            .with_context(|| format!("--prompts: tokenizing prompt {i}"))?,
                    );
                    if ids.is_empty() {
                        bail!("--prompts: prompt {i} is empty; give some text or --add-bos");
                    }
                    let vocab = lm.config.vocab_size;
                    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                        bail!(
                            "--prompts: the tokenizer ({}) gave id {bad} for prompt {i}, outside the model's \
                             vocabulary [0, {vocab}); is it the model's tokenizer?",
                            tok.describe()
                        );
                    }
                    Ok(ids)
                })
                .collect()
        }
    }
}

fn write_tokens(
    path: &std::path::Path,
    results: &[coil_infer::Generation],
    eos: Option<u32>,
) -> Result<()> {
    let n = results.iter().map(|g| g.tokens.len()).max().unwrap_or(0);
    let pad = eos.unwrap_or(0) as i64;
    let mut flat = Vec::with_capacity(results.len() * n);
    for g in results {
        flat.extend(g.tokens.iter().map(|&t| t as i64));
        flat.extend(std::iter::repeat_n(pad, n - g.tokens.len()));
    }
    let lengths: Vec<i64> = results.iter().map(|g| g.tokens.len() as i64).collect();
    let cpu = Device::Cpu;
    let out = HashMap::from([
        (
            "tokens".to_string(),
            Tensor::from_vec(flat, (results.len(), n), &cpu)?,
        ),
        (
            "lengths".to_string(),
            Tensor::from_vec(lengths, results.len(), &cpu)?,
        ),
    ]);
    write_safetensors_atomic(&out, path).with_context(|| format!("--output {}", path.display()))
}
