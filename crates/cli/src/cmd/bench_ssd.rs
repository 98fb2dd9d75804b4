//! `coil bench ssd`: the SSD scan of one Mamba2 layer, forward and forward+backward, as a Mamba2 layer feeds it
//! in bf16 training (the shapes and inputs of mamba_ssm's `mamba_chunk_scan_combined`): x, raw dt, B and C in
//! `--dtype`, dt_bias, A and D in f32, dt = softplus(dt + dt_bias), zero initial state.
//!
//! The forward is what a layer's prefill runs (`coil_ops::tensor::ssd_layer`: the fused kernel on a GPU in bf16);
//! forward+backward is what training runs: on the CPU the chunked kernels of `coil_ops::ssd` (the forward, then
//! the backward from a random output gradient, as the fused mixer core of a training step calls them, dt already
//! through its softplus); on a GPU the differentiable path (`coil_ops::tensor::composed`), backpropagating a random
//! output gradient to x, dt, dt_bias, A, B, C and D.
//! On CUDA each run is timed with CUDA events on candle's stream; elsewhere with the host clock.

use super::args::DeviceArgs;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use coil_ops::tensor::{self as ops, composed};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SsdBenchArgs {
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 8192)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 128)]
    pub heads: usize,
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    #[arg(long, default_value_t = 8)]
    pub groups: usize,
    #[arg(long, default_value_t = 128)]
    pub state: usize,
    #[arg(long, default_value_t = 128)]
    pub chunk: usize,
    /// Precision of x, dt, B and C: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Timed runs of each (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Untimed warm-up runs of each.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Time the forward only.
    #[arg(long)]
    pub forward_only: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Milliseconds of one call of `f` on `dev`.
fn time_ms(dev: &Device, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = dev {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        let stream = cuda.cuda_stream();
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        f()?;
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        return Ok(start.elapsed_ms(&end)? as f64);
    }
    dev.synchronize()?;
    let t = Instant::now();
    f()?;
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn median_ms(
    dev: &Device,
    warmup: usize,
    iters: usize,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t: Vec<f64> = (0..iters).map(|_| time_ms(dev, f)).collect::<Result<_>>()?;
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

pub fn run(a: SsdBenchArgs) -> Result<()> {
    if [
        a.batch, a.seqlen, a.heads, a.head_dim, a.groups, a.state, a.chunk, a.iters,
    ]
    .contains(&0)
    {
        bail!("every size and --iters must be positive");
    }
    if !a.heads.is_multiple_of(a.groups) {
        bail!(
            "--heads {} is not divisible by --groups {}",
            a.heads,
            a.groups
        );
    }
    let dtype = match a.dtype.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => bail!("--dtype {other:?}: expected bf16 or f32"),
    };
    let t_start = Instant::now();
    let dev = a.device.open()?;
    let (b, t, h, p, g, n) = (a.batch, a.seqlen, a.heads, a.head_dim, a.groups, a.state);
    let rand = |shape: &[usize], lo: f64, hi: f64, dt: DType| -> Result<Tensor> {
        Ok(Tensor::rand(lo as f32, hi as f32, shape, &dev)?.to_dtype(dt)?)
    };
    let x = rand(&[b, t, h, p], -1.0, 1.0, dtype)?;
    // Raw dt around softplus⁻¹ of (0.001 … 0.1), as trained layers produce.
    let dt_raw = rand(&[b, t, h], -4.0, -1.0, dtype)?;
    let dt_bias = rand(&[h], -1.0, 1.0, DType::F32)?;
    let a_neg = rand(&[h], 0.0, 2.5, DType::F32)?.exp()?.neg()?;
    let bm = rand(&[b, t, g, n], -1.0, 1.0, dtype)?;
    let cm = rand(&[b, t, g, n], -1.0, 1.0, dtype)?;
    let d = rand(&[h], -1.0, 1.0, DType::F32)?;
    let no_limit = (0.0, f32::INFINITY);

    // The forward as a layer runs it: raw dt in, softplus and bias inside (the fused kernel on a GPU in bf16).
    let (x3, b3, c3) = (
        x.reshape((b, t, h * p))?,
        bm.reshape((b, t, g * n))?,
        cm.reshape((b, t, g * n))?,
    );
    let mut forward = || -> Result<()> {
        let (y, _) = ops::ssd_layer(&ops::LayerSsd {
            x: &x3,
            b: &b3,
            c: &c3,
            dt_raw: &dt_raw,
            dt_bias: &dt_bias,
            a: &a_neg,
            d: &d,
            initial_state: None,
            seq_idx: None,
            heads: h,
            groups: g,
            chunk: a.chunk,
            dt_limit: no_limit,
            dtype,
        })?;
        std::hint::black_box(y.to_dtype(dtype)?);
        Ok(())
    };
    // The first result, for the first-call latency: process start to one forward done.
    time_ms(&dev, &mut forward)?;
    let first_s = t_start.elapsed().as_secs_f64();
    let fwd_ms = median_ms(&dev, a.warmup, a.iters, &mut forward)?;

    let fwd_bwd_ms = if a.forward_only {
        None
    } else if dev.is_cpu() {
        Some(cpu_kernels_fwd_bwd_ms(
            &a,
            [&x, &dt_raw, &dt_bias, &a_neg, &bm, &cm, &d],
        )?)
    } else {
        let vars: Vec<Var> = [&x, &dt_raw, &dt_bias, &a_neg, &bm, &cm, &d]
            .iter()
            .map(|t| Var::from_tensor(t))
            .collect::<candle_core::Result<_>>()?;
        let dy = rand(&[b, t, h, p], -1.0, 1.0, DType::F32)?;
        let mut fwd_bwd = || -> Result<()> {
            let [x, dr, db, an, bm, cm, d] = [0, 1, 2, 3, 4, 5, 6].map(|i| vars[i].as_tensor());
            let dt = composed::dt_softplus(dr, db, no_limit)?;
            let (y, _) = composed::ssd(x, &dt, an, bm, cm, d, None, a.chunk, None)?;
            let grads = (y.to_dtype(dtype)?.to_dtype(DType::F32)? * &dy)?
                .sum_all()?
                .backward()?;
            std::hint::black_box(grads);
            Ok(())
        };
        Some(median_ms(&dev, a.warmup, a.iters, &mut fwd_bwd)?)
    };
    let label = coil_model::device::device_label(&dev);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "ssd", "impl": "coil", "device": label, "dtype": a.dtype,
                "batch": b, "seqlen": t, "heads": h, "head_dim": p, "groups": g, "state": n, "chunk": a.chunk,
                "iters": a.iters, "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "first_result_s": first_s})
        );
    } else {
        println!(
            "ssd B{b} T{t} H{h} P{p} G{g} N{n} chunk {} ({}, {label}): forward {fwd_ms:.3} ms{}; first result {first_s:.2} s after start",
            a.chunk,
            a.dtype,
            fwd_bwd_ms.map_or(String::new(), |v| format!(", forward+backward {v:.3} ms")),
        );
    }
    Ok(())
}

/// The CPU's forward+backward: the chunked SSD kernels on host slices, as the training step's mixer core runs them.
fn cpu_kernels_fwd_bwd_ms(a: &SsdBenchArgs, t: [&Tensor; 7]) -> Result<f64> {
    use coil_ops::ssd::{
        ssd_chunked_backward_into, ssd_chunked_into, SsdDims, SsdGrads, SsdInputs,
    };
    let host = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let [x, dt_raw, dt_bias, a_neg, bm, cm, d] = t;
    let no_limit = (0.0, f32::INFINITY);
    let dt = host(&composed::dt_softplus(dt_raw, dt_bias, no_limit)?)?;
    let (x, a_neg, bm, cm, d) = (host(x)?, host(a_neg)?, host(bm)?, host(cm)?, host(d)?);
    let dims = SsdDims {
        batch: a.batch,
        seqlen: a.seqlen,
        heads: a.heads,
        head_dim: a.head_dim,
        groups: a.groups,
        state: a.state,
    };
    let inp = SsdInputs {
        x: &x,
        dt: &dt,
        a: &a_neg,
        b: &bm,
        c: &cm,
        d: &d,
        initial_state: None,
        seq_idx: None,
    };
    let dy = host(&Tensor::rand(-1f32, 1f32, dims.x_len(), &Device::Cpu)?)?;
    let mut out = coil_ops::ssd::SsdOutput {
        y: vec![0.0; dims.x_len()],
        final_state: vec![0.0; dims.state_len()],
    };
    let mut grads = SsdGrads::zeros(dims);
    median_ms(&Device::Cpu, a.warmup, a.iters, &mut || {
        ssd_chunked_into(dims, inp, a.chunk, &mut out);
        ssd_chunked_backward_into(dims, inp, a.chunk, &dy, None, &mut grads);
        std::hint::black_box((&out, &grads));
        Ok(())
    })
}
