//! `coil bench train`: training-step throughput (forward, backward, AdamW with clipping) on random tokens.

use super::args::{DeviceArgs, PresetArgs};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use coil_data::{Batch, Sample};
use coil_model::HybridLm;
use coil_train::{trainer::masked_loss, AdamW, AdamWConfig, Precision};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    pub model: PresetArgs,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_length: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// `32` or `bf16-mixed`.
    #[arg(long, default_value = "32")]
    pub precision: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TrainBenchArgs) -> Result<()> {
    let cfg = a.model.config()?;
    if a.batch == 0 || a.seq_length == 0 || a.steps == 0 {
        bail!("--batch, --seq-length and --steps must be positive");
    }
    let precision = match a.precision.as_str() {
        "32" => Precision::F32,
        "bf16-mixed" => Precision::Bf16Mixed,
        other => bail!("--precision {other:?}: expected 32 or bf16-mixed"),
    };
    let device = a.device.open()?;
    let n_params = coil_model::params::num_parameters(&cfg)?;
    let masters = coil_model::params::init_params(&cfg, 0, &device, DType::F32)?
        .into_iter()
        .collect();
    let mut opt = AdamW::new(AdamWConfig::default(), masters, precision.compute_dtype())?;
    let model = HybridLm::load(
        &cfg,
        &opt.compute_tensors(),
        &device,
        precision.compute_dtype(),
    )
    .context("building the model")?;
    let samples: Vec<Sample> = (0..a.batch)
        .map(|b| {
            let w: Vec<i64> = (0..=a.seq_length)
                .map(|t| (((b * 7919 + t) as u64 * 2654435761) % cfg.vocab_size as u64) as i64)
                .collect();
            Sample::from_window(&w)
        })
        .collect();
    let batch = Batch::stack(&samples)?;
    let mut times = Vec::new();
    let mut phases: Vec<[f64; 3]> = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        opt.zero_grad()?;
        let (sum, count) = masked_loss(&model, &batch, &device)?;
        let loss = (sum / count)?;
        device.synchronize()?;
        let t_fwd = t.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        device.synchronize()?;
        let t_bwd = t.elapsed().as_secs_f64();
        opt.accumulate(&grads, 1.0)?;
        drop(grads);
        opt.step(1e-4)?;
        device.synchronize()?;
        let total = t.elapsed().as_secs_f64();
        if i >= a.warmup {
            times.push(total);
            phases.push([t_fwd, t_bwd - t_fwd, total - t_bwd]);
        }
    }
    let mean_phase = |k: usize| phases.iter().map(|p| p[k]).sum::<f64>() / phases.len() as f64;
    let (fwd, bwd, opt_s) = (mean_phase(0), mean_phase(1), mean_phase(2));
    times.sort_by(|x, y| x.total_cmp(y));
    let median = times[times.len() / 2];
    let tokens = (a.batch * a.seq_length) as f64;
    let threads = rayon::current_num_threads();
    let label = if matches!(device, Device::Cpu) {
        "cpu"
    } else {
        "cuda"
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "train", "impl": "coil", "preset": a.model.preset, "params": n_params, "batch": a.batch,
                "seq_length": a.seq_length, "precision": a.precision, "device": label, "threads": threads,
                "median_s": median, "tokens_per_s": tokens / median,
                "forward_s": fwd, "backward_s": bwd, "optimizer_s": opt_s})
        );
    } else {
        println!(
            "train {} ({:.1}M params, {}, {label}, {threads} threads): batch {} x {} tokens, median step {:.3} s over {} steps = {:.1} tokens/s (mean forward {fwd:.2} s, backward {bwd:.2} s, optimizer {opt_s:.2} s)",
            a.model.preset,
            n_params as f64 / 1e6,
            a.precision,
            a.batch,
            a.seq_length,
            median,
            a.steps,
            tokens / median
        );
    }
    Ok(())
}
