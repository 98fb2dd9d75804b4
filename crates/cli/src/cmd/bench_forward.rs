//! `coil bench forward`: full forward passes (logits for every position) over random tokens with random weights.

use super::args::{DeviceArgs, PresetArgs};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use coil_model::HybridLm;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: PresetArgs,
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
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ForwardArgs) -> Result<()> {
    let cfg = a.model.config()?;
    if a.tokens == 0 || a.batch == 0 || a.iters == 0 {
        bail!("--tokens, --batch and --iters must be positive");
    }
    let device = a.device.open()?;
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
            "bench": "forward", "impl": "coil", "preset": a.model.preset, "chunk": cfg.mamba.chunk_size, "params": n_params, "batch": a.batch, "tokens": a.tokens,
            "threads": threads, "median_s": median, "min_s": times[0], "tokens_per_s": tok_s,
        });
        println!("{v}");
    } else {
        println!(
            "forward {} ({:.1}M params, f32, chunk {}, {} threads): batch {} x {} tokens, median {:.3} s (min {:.3} s) over {} runs = {:.1} tokens/s  [init {:.1} s]",
            a.model.preset,
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
