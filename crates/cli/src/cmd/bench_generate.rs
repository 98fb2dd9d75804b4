//! `coil bench generate`: decode speed of a preset shape with random weights, against the memory roofline.
//!
//! Per weight precision and batch size: prefill each prompt, then greedy steps until `--new-tokens` new tokens
//! per sequence. Reports new tokens/s of the decode steps (and end to end, prefill included) and the fraction
//! of the memory-bandwidth roofline: `batch · bandwidth / bytes per step`, where a step reads every weight once
//! plus each sequence's embedding row and reads and writes its decode state. The bandwidth is measured in the
//! same run (multithreaded sum over a buffer far larger than the caches).

use super::args::{DeviceArgs, PresetArgs};
use super::generate::{StateArg, WeightsArg};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use coil_infer::matvec::parallel_sum;
use coil_infer::sampling::argmax;
use coil_infer::{Engine, EngineOptions, WeightDtype};
use coil_model::HybridLm;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    pub model: PresetArgs,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 32)]
    pub prompt: usize,
    /// New tokens per sequence (the first from the prefill, the rest from decode steps).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Decode weight precisions, comma-separated. On a GPU the whole batch is one tensor and every step is the
    /// model's forward with T = 1, in this precision.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,bf16")]
    pub weights: Vec<WeightsArg>,
    /// SSM state storage of the decode step, comma-separated (bf16: the fused CUDA step only; other
    /// configurations are skipped with a note).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    pub state: Vec<StateArg>,
    /// Timed repetitions per configuration (the median is reported, after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Size of the bandwidth probe buffer in MiB (keep it far above the last-level cache).
    #[arg(long, default_value_t = 512)]
    pub bandwidth_mib: usize,
    /// Print one JSON object per configuration instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// A read-bandwidth probe: multithreaded read passes over a buffer far above the last-level cache. This VM's
/// bandwidth moves by tens of percent from minute to minute, so the CPU bench probes right after every timed run
/// and sets each run against its own probe.
struct BandwidthProbe {
    buf: Vec<f32>,
}

impl BandwidthProbe {
    fn new(mib: usize) -> Self {
        let n = mib * (1 << 20) / 4;
        BandwidthProbe {
            buf: (0..n).map(|i| (i % 7) as f32).collect(),
        }
    }

    /// Best of `passes` read passes, in bytes/s.
    fn measure(&self, passes: usize) -> f64 {
        let mut best = 0f64;
        for _ in 0..passes {
            let t = Instant::now();
            std::hint::black_box(parallel_sum(&self.buf));
            best = best.max((self.buf.len() * 4) as f64 / t.elapsed().as_secs_f64());
        }
        best
    }
}

struct Timing {
    prefill_s: f64,
    decode_s: f64,
}

/// `batch` fixed pseudo-random prompts of `len` ids below `vocab` (the same on every device and run).
fn bench_prompts(batch: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..len)
                .map(|i| (((b * 7919 + i) as u64 * 2654435761) % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

/// One generation of `new` tokens per prompt, greedy; prefill and decode timed apart.
fn run_once(e: &Engine, prompts: &[Vec<u32>], new: usize) -> Result<Timing> {
    let v = e.vocab_size();
    let t0 = Instant::now();
    let mut states = Vec::with_capacity(prompts.len());
    let mut next = Vec::with_capacity(prompts.len());
    for p in prompts {
        let (logits, st) = e.prefill(p, new)?;
        next.push(argmax(&logits) as u32);
        states.push(st);
    }
    let t1 = Instant::now();
    let mut scratch = e.scratch(prompts.len());
    for _ in 1..new {
        let logits = e.step(&mut states, &next, &mut scratch)?;
        for (b, n) in next.iter_mut().enumerate() {
            *n = argmax(&logits[b * v..(b + 1) * v]) as u32;
        }
    }
    Ok(Timing {
        prefill_s: (t1 - t0).as_secs_f64(),
        decode_s: t1.elapsed().as_secs_f64(),
    })
}

pub fn run(a: GenerateBenchArgs) -> Result<()> {
    let cfg = a.model.config()?;
    if a.prompt == 0 || a.new_tokens < 2 || a.iters == 0 || a.batch.contains(&0) {
        bail!(
            "--prompt and --iters must be positive, --new-tokens at least 2, batch sizes positive"
        );
    }
    let device = a.device.open()?;
    if !device.is_cpu() {
        return run_on_device(&a, &cfg, &device);
    }
    let lm =
        HybridLm::init(&cfg, 0, &Device::Cpu, DType::F32).context("initialising random weights")?;
    let threads = rayon::current_num_threads();
    let probe_buf = BandwidthProbe::new(a.bandwidth_mib);
    let bw = probe_buf.measure(8);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    if !a.json {
        println!(
            "generate {} (random weights), prompt {} + {} new tokens, {threads} threads; read bandwidth {:.1} GB/s (load avg {load})",
            a.model.preset,
            a.prompt,
            a.new_tokens,
            bw / 1e9
        );
    }
    if a.state.iter().any(|&s| s != StateArg::F32) && !a.json {
        println!("  bf16 state: skipped (the CPU engine keeps the SSM states in f32)");
    }
    if !a.state.contains(&StateArg::F32) {
        return Ok(());
    }
    for w in &a.weights {
        let dtype = match w {
            WeightsArg::F32 => WeightDtype::F32,
            WeightsArg::Bf16 => WeightDtype::Bf16,
        };
        let e = Engine::new(
            lm.clone(),
            EngineOptions {
                weights: dtype,
                ..EngineOptions::default()
            },
        )?;
        for &batch in &a.batch {
            let prompts = bench_prompts(batch, a.prompt, cfg.vocab_size);
            run_once(&e, &prompts, a.new_tokens)?;
            // Each timed run with the bandwidth probed right after it.
            let mut runs: Vec<(Timing, f64)> = (0..a.iters)
                .map(|_| Ok((run_once(&e, &prompts, a.new_tokens)?, probe_buf.measure(3))))
                .collect::<Result<_>>()?;
            let steps = a.new_tokens - 1;
            let (_, probe) = e.prefill(&prompts[0][..1], 0)?;
            let weight_bytes = e.weights().bytes_per_step(batch);
            let state_bytes = batch * probe.traffic_per_step();
            let step_bytes = (weight_bytes + state_bytes) as f64;
            // The fraction of its own probe's roofline each run reached: the median is reported.
            let mut fractions: Vec<f64> = runs
                .iter()
                .map(|(t, bw)| {
                    (batch * steps) as f64 / t.decode_s / (batch as f64 * bw / step_bytes)
                })
                .collect();
            fractions.sort_by(|x, y| x.total_cmp(y));
            let fraction = fractions[fractions.len() / 2];
            runs.sort_by(|x, y| x.0.decode_s.total_cmp(&y.0.decode_s));
            let m = &runs[runs.len() / 2].0;
            let mut probes: Vec<f64> = runs.iter().map(|r| r.1).collect();
            probes.sort_by(|x, y| x.total_cmp(y));
            let bw = probes[probes.len() / 2];
            let decode_tok_s = (batch * steps) as f64 / m.decode_s;
            let e2e_tok_s = (batch * a.new_tokens) as f64 / (m.prefill_s + m.decode_s);
            let roofline = batch as f64 * bw / step_bytes;
            let weights_only = batch as f64 * bw / weight_bytes as f64;
            let dt = format!("{dtype:?}").to_lowercase();
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "bench": "generate", "impl": "coil", "preset": a.model.preset, "weights": dt, "batch": batch,
                        "prompt": a.prompt, "new_tokens": a.new_tokens, "threads": threads, "load_avg": load,
                        "bandwidth_gb_s": bw / 1e9, "prefill_s": m.prefill_s, "decode_s": m.decode_s,
                        "decode_tokens_per_s": decode_tok_s, "end_to_end_new_tokens_per_s": e2e_tok_s,
                        "weight_bytes_per_step": weight_bytes, "state_bytes_per_step": state_bytes,
                        "roofline_tokens_per_s": roofline, "roofline_fraction": fraction,
                        "probes_gb_s": probes.iter().map(|b| b / 1e9).collect::<Vec<_>>(),
                        "weights_only_roofline_tokens_per_s": weights_only,
                    })
                );
            } else {
                println!(
                    "  {dt:>4} batch {batch}: decode {decode_tok_s:7.1} tok/s ({:.1}% of roofline {roofline:.1} at \
                     {:.1} GB/s, each run against the probe right after it; weights {:.0} MB + state {:.1} MB per \
                     step; weights-only roofline {weights_only:.1}), end to end {e2e_tok_s:.1} new tok/s (prefill \
                     {:.3} s)",
                    100.0 * fraction,
                    bw / 1e9,
                    weight_bytes as f64 / 1e6,
                    state_bytes as f64 / 1e6,
                    m.prefill_s
                );
            }
        }
    }
    Ok(())
}

/// Opens (`true`) or closes the profiled range around the timed runs, so that a profiler started with
/// `--profile-from-start off` (ncu) or `--capture-range=cudaProfilerApi` (nsys) sees those kernels alone, not the
/// weights' initialisation or the warm-up. Without a profiler attached this does nothing.
fn profiler_range(on: bool) {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: plain driver calls on the thread's current context; an error (no context) only means nothing
        // is profiled.
        let _ = unsafe {
            if on {
                sys::cuProfilerStart()
            } else {
                sys::cuProfilerStop()
            }
        };
    }
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

/// Copy bandwidth of `dev` in bytes/s (read + write of a 1 GiB buffer, best of 5).
fn device_bandwidth(dev: &Device) -> Result<f64> {
    let n = 1usize << 28;
    let buf = candle_core::Tensor::ones(n, DType::F32, dev)?;
    let mut best = 0f64;
    for _ in 0..6 {
        dev.synchronize()?;
        let t = Instant::now();
        let c = buf.copy()?;
        dev.synchronize()?;
        best = best.max((2 * 4 * n) as f64 / t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(best)
}

/// The fused decode step of the CUDA build.
#[cfg(feature = "cuda")]
type Fused = coil_infer::cuda_step::CudaStep;
/// Stand-in without CUDA: there is never a fused step.
#[cfg(not(feature = "cuda"))]
enum Fused {}

/// Bytes per element of the fused step's SSM states.
#[cfg(feature = "cuda")]
fn state_elem_bytes(f: &Fused) -> usize {
    f.state_dtype().size_in_bytes()
}
#[cfg(not(feature = "cuda"))]
fn state_elem_bytes(f: &Fused) -> usize {
    match *f {}
}

/// Greedy generation of the whole batch on `lm`'s device, argmax on the device; prefill and decode timed apart.
fn run_once_on_device(
    lm: &HybridLm,
    fused: Option<&mut Fused>,
    ids: &candle_core::Tensor,
    new: usize,
) -> Result<(Timing, usize)> {
    let dev = lm.device();
    dev.synchronize()?;
    let t0 = Instant::now();
    let (logits, mut state) = lm.forward_with_state(ids, None, None, true)?;
    let mut next = logits.argmax_keepdim(candle_core::D::Minus1)?.squeeze(2)?;
    dev.synchronize()?;
    let t1 = Instant::now();
    // The SSM states as the decode step stores them (the fused step may keep them in bf16).
    let ssm_bytes = fused.as_deref().map(state_elem_bytes);
    let state_bytes: usize = state
        .layers
        .iter()
        .map(|l| match l {
            coil_model::LayerState::Mamba(m) => {
                m.conv.elem_count() * m.conv.dtype().size_in_bytes()
                    + m.ssm.elem_count() * ssm_bytes.unwrap_or(m.ssm.dtype().size_in_bytes())
            }
            coil_model::LayerState::Attention(c) => {
                (c.k.elem_count() + c.v.elem_count()) * c.k.dtype().size_in_bytes()
            }
            coil_model::LayerState::Stateless => 0,
        })
        .sum();
    // The decode steps as generation runs them: the fused CUDA step where it applies (bf16 or f32 weights),
    // greedy tokens picked on the GPU, its captured graph kept from one run to the next as a server keeps it;
    // else the forward with T = 1.
    #[cfg(feature = "cuda")]
    if let Some(fused) = fused {
        let batch = ids.dim(0)?;
        fused.start(&state, batch, new)?;
        let mut toks: Vec<u32> = next.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        for _ in 1..new {
            toks = fused.step_greedy(&toks)?.ids;
        }
        dev.synchronize()?;
        return Ok((
            Timing {
                prefill_s: (t1 - t0).as_secs_f64(),
                decode_s: t1.elapsed().as_secs_f64(),
            },
            state_bytes,
        ));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = fused;
    for _ in 1..new {
        let (logits, st) = lm.forward_with_state(&next, Some(&state), None, true)?;
        state = st;
        next = logits.argmax_keepdim(candle_core::D::Minus1)?.squeeze(2)?;
    }
    dev.synchronize()?;
    Ok((
        Timing {
            prefill_s: (t1 - t0).as_secs_f64(),
            decode_s: t1.elapsed().as_secs_f64(),
        },
        state_bytes,
    ))
}

fn run_on_device(a: &GenerateBenchArgs, cfg: &coil_model::ModelConfig, dev: &Device) -> Result<()> {
    let bw = device_bandwidth(dev)?;
    let label = coil_model::device::device_label(dev);
    let n_params = coil_model::params::num_parameters(cfg)?;
    if !a.json {
        println!(
            "generate {} (random weights), prompt {} + {} new tokens on {label}; copy bandwidth {:.0} GB/s",
            a.model.preset,
            a.prompt,
            a.new_tokens,
            bw / 1e9
        );
    }
    for w in &a.weights {
        let dtype = match w {
            WeightsArg::F32 => DType::F32,
            WeightsArg::Bf16 => DType::BF16,
        };
        let lm = HybridLm::init(cfg, 0, dev, dtype).context("initialising random weights")?;
        #[cfg(feature = "cuda")]
        let mut fused = coil_infer::cuda_step::CudaStep::new(&lm)?;
        #[cfg(not(feature = "cuda"))]
        let mut fused: Option<Fused> = None;
        for &st in &a.state {
            let st_name = format!("{st:?}").to_lowercase();
            #[cfg(feature = "cuda")]
            if let Some(f) = fused.as_mut() {
                f.set_state_dtype(match st {
                    StateArg::F32 => DType::F32,
                    StateArg::Bf16 => DType::BF16,
                })?;
            }
            if st != StateArg::F32 && fused.is_none() {
                if !a.json {
                    println!(
                        "  {:>4} weights, {st_name} state: skipped (only the fused CUDA step stores a bf16 state)",
                        format!("{dtype:?}").to_lowercase()
                    );
                }
                continue;
            }
            for &batch in &a.batch {
                let ids: Vec<u32> = bench_prompts(batch, a.prompt, cfg.vocab_size).concat();
                let ids = candle_core::Tensor::from_vec(ids, (batch, a.prompt), dev)?;
                run_once_on_device(&lm, fused.as_mut(), &ids, a.new_tokens)?;
                let mut runs = Vec::with_capacity(a.iters);
                let mut state_bytes = 0;
                profiler_range(true);
                for _ in 0..a.iters {
                    let (t, sb) = run_once_on_device(&lm, fused.as_mut(), &ids, a.new_tokens)?;
                    state_bytes = sb;
                    runs.push(t);
                }
                profiler_range(false);
                runs.sort_by(|x, y| {
                    (x.prefill_s + x.decode_s).total_cmp(&(y.prefill_s + y.decode_s))
                });
                let m = &runs[runs.len() / 2];
                let steps = a.new_tokens - 1;
                let decode_tok_s = (batch * steps) as f64 / m.decode_s;
                let e2e_tok_s = (batch * a.new_tokens) as f64 / (m.prefill_s + m.decode_s);
                // A step reads every weight once and reads and writes each sequence's state.
                let weight_bytes = n_params as usize * dtype.size_in_bytes();
                let roofline = batch as f64 * bw / (weight_bytes + 2 * state_bytes) as f64;
                let dt = format!("{dtype:?}").to_lowercase();
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "bench": "generate", "impl": "coil", "preset": a.model.preset, "weights": dt,
                            "ssm_state": st_name, "batch": batch, "prompt": a.prompt, "new_tokens": a.new_tokens,
                            "device": label, "bandwidth_gb_s": bw / 1e9, "prefill_s": m.prefill_s,
                            "decode_s": m.decode_s, "decode_tokens_per_s": decode_tok_s,
                            "end_to_end_new_tokens_per_s": e2e_tok_s, "weight_bytes_per_step": weight_bytes,
                            "state_bytes_per_step": 2 * state_bytes, "roofline_tokens_per_s": roofline,
                            "roofline_fraction": decode_tok_s / roofline,
                        })
                    );
                } else {
                    println!(
                        "  {dt:>4} state {st_name:>4} batch {batch}: decode {decode_tok_s:8.1} tok/s ({:.1}% of \
                         roofline {roofline:.0}), end to end {e2e_tok_s:.1} new tok/s (prefill {:.3} s)",
                        100.0 * decode_tok_s / roofline,
                        m.prefill_s
                    );
                }
            }
        }
    }
    Ok(())
}
