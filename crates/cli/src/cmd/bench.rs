//! `coil bench ...`: speed measurements as commands (results go to BENCHMARKS.md with the git revision).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand};
use coil_model::{presets, HybridLm};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Full forward pass (logits for every position) over random tokens with random weights.
    Forward(ForwardArgs),
    /// Decode speed: prompt + new tokens at several batch sizes, against the memory-bandwidth roofline.
    Generate(super::bench_generate::GenerateBenchArgs),
    /// Training-step throughput: forward, backward and AdamW on random tokens with random weights.
    Train(super::bench_train::TrainBenchArgs),
    /// The SSD scan of one Mamba2 layer: forward and forward+backward (the shapes of mamba_ssm's
    /// mamba_chunk_scan_combined).
    Ssd(super::bench_ssd::SsdBenchArgs),
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Model shape, a preset name (see docs/nemo.md §2), e.g. mamba2_130m.
    #[arg(long, default_value = "mamba2_130m")]
    pub preset: String,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub tokens: usize,
    /// Sequences per forward.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Override the SSD chunk size of the preset (HF's released Mamba2 configs use 256, NeMo 128).
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = coil_model::device::DEFAULT_DEVICE)]
    pub device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forward(a) => forward(a),
        BenchCommand::Generate(a) => super::bench_generate::run(a),
        BenchCommand::Train(a) => super::bench_train::run(a),
        BenchCommand::Ssd(a) => super::bench_ssd::run(a),
    }
}

/// The model config of a preset for a benchmark, with the SSD chunk size overridden when asked.
pub(crate) fn preset_config(
    name: &str,
    chunk_size: Option<usize>,
) -> Result<coil_model::ModelConfig> {
    let Some(p) = presets::preset(name) else {
        bail!(
            "unknown preset {name:?}; one of: {}",
            presets::PRESET_NAMES.join(", ")
        );
    };
    let mut cfg = p.config;
    if let Some(q) = chunk_size {
        cfg.mamba.chunk_size = q;
    }
    Ok(cfg)
}

fn forward(a: ForwardArgs) -> Result<()> {
    let cfg = preset_config(&a.preset, a.chunk_size)?;
    if a.tokens == 0 || a.batch == 0 || a.iters == 0 {
        bail!("--tokens, --batch and --iters must be positive");
    }
    let device = coil_model::device::select_device(&a.device)?;
    let n_params = coil_model::params::num_parameters(&cfg)?;
    let t0 = Instant::now();
    let model =
        HybridLm::init(&cfg, 0, &device, DType::F32).context("initialising random weights")?;
    let init_s = t0.elapsed().as_secs_f64();
    let ids: Vec<i64> = (0..a.batch * a.tokens)
        .map(|i| ((i as u64 * 2654435761) % cfg.vocab_size as u64) as i64)
        .collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.tokens), &device)?;
    for _ in 0..a.warmup {
        model.forward(&ids, None)?;
    }
    let mut times = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = Instant::now();
        let logits = model.forward(&ids, None)?;
        logits.device().synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|x, y| x.total_cmp(y));
    let median = times[times.len() / 2];
    let tok_s = (a.batch * a.tokens) as f64 / median;
    let threads = rayon::current_num_threads();
    if a.json {
        let v = serde_json::json!({
            "bench": "forward", "impl": "coil", "preset": a.preset, "chunk": cfg.mamba.chunk_size, "params": n_params, "batch": a.batch, "tokens": a.tokens,
            "threads": threads, "median_s": median, "min_s": times[0], "tokens_per_s": tok_s,
        });
        println!("{v}");
    } else {
        println!(
            "forward {} ({:.1}M params, f32, chunk {}, {} threads): batch {} x {} tokens, median {:.3} s (min {:.3} s) over {} runs = {:.1} tokens/s  [init {:.1} s]",
            a.preset,
            n_params as f64 / 1e6,
            cfg.mamba.chunk_size,
            threads,
            a.batch,
            a.tokens,
            median,
            times[0],
            a.iters,
            tok_s,
            init_s
        );
    }
    Ok(())
}
