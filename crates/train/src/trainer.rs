//! The training loop: micro-batches accumulated into a global batch, masked next-token loss, AdamW with fp32
//! masters, LR schedule, validation, checkpoints with resume, metrics and a progress bar.
//!
//! Loss as NeMo computes it: each micro-batch yields (Σ ce·mask, Σ mask); the gradient is the mean over
//! micro-batches of the per-micro-batch token means; the logged loss is Σ loss / Σ tokens over the step.

use crate::checkpoint::{self, TrainerState};
use crate::error::{io, Result, TrainError};
use crate::metrics::{JsonlWriter, TensorBoardWriter};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::LrSchedule;
use candle_core::{DType, Device, Tensor};
use coil_data::{Batch, DataCursor, Loader, SampleSource};
use coil_model::parallel::TensorParallel;
use coil_model::{HybridLm, ModelConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// Numeric precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// f32 everywhere (the CPU default).
    #[serde(rename = "32")]
    F32,
    /// bf16 compute copies of the parameters, f32 masters, f32 gradient accumulation (NeMo's bf16-mixed).
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
}

impl Precision {
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16Mixed => DType::BF16,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    pub max_steps: u64,
    pub micro_batch_size: usize,
    pub global_batch_size: usize,
    /// Validate (and checkpoint) every this many steps.
    pub val_check_interval: u64,
    pub limit_val_batches: usize,
    pub log_every_n_steps: u64,
    /// Checkpoints kept by validation loss (-1 keeps all).
    pub save_top_k: i64,
    pub save_last: bool,
    pub precision: Precision,
    pub seed: u64,
}

/// Where the weights of a new run come from.
#[derive(Clone, Debug)]
pub enum Start {
    /// Megatron-style random initialisation with this seed.
    Random,
    /// A model directory (HF layout, state-spaces, or a Coil checkpoint) to start from: a fine-tune, or continued
    /// pretraining (fresh optimizer state and schedule).
    Pretrained(PathBuf),
}

pub struct TrainRun {
    /// `<dir>/<name>`: metrics, TensorBoard files and checkpoints go here.
    pub run_dir: PathBuf,
    pub model: ModelConfig,
    pub trainer: TrainerConfig,
    pub optim: AdamWConfig,
    pub schedule: LrSchedule,
    pub start: Start,
    /// The resolved recipe, stored with the run and in every checkpoint.
    pub recipe_toml: String,
    /// The tokenizer's files (`coil_data::Tokenizer::model_dir_files`), written into every checkpoint so that
    /// its model can be prompted with text; empty for mock data.
    pub tokenizer_files: Vec<coil_data::tokenizer::ModelDirFile>,
    pub device: Device,
    pub progress: bool,
    /// `Some((pad_id, multiple, max_len))` for variable-length samples (unpacked SFT data): each micro-batch is
    /// padded to its longest sample rounded up to `multiple`, capped at `max_len`.
    pub padding: Option<(i64, usize, usize)>,
}

#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// (step, training loss) for every step run in this process.
    pub losses: Vec<(u64, f64)>,
    pub val_losses: Vec<(u64, f64)>,
    pub final_step: u64,
    pub resumed_from: Option<u64>,
    /// Mean training throughput of this process.
    pub tokens_per_s: f64,
    pub last_checkpoint: Option<PathBuf>,
}

/// Σ ce·mask and Σ mask of one micro-batch; packed rows (`batch.seq_idx`) run through `forward_packed`.
pub fn masked_loss(model: &HybridLm, batch: &Batch, device: &Device) -> Result<(Tensor, f64)> {
    let [b, t] = batch.shape;
    let tokens = Tensor::from_vec(batch.tokens.clone(), (b, t), device)?;
    let labels: Vec<u32> = batch
        .labels
        .iter()
        .map(|&v| u32::try_from(v).unwrap_or(u32::MAX))
        .collect();
    let mask = Tensor::from_vec(batch.loss_mask.clone(), (b, t), device)?;
    // Packed rows: each example sees only itself (the model restarts its state at every seq_idx change).
    let seq_idx = match &batch.seq_idx {
        Some(s) if s.len() != b * t => {
            return Err(TrainError::Invalid(format!(
                "the batch's seq_idx has {} entries for tokens of shape [{b}, {t}]; the data pipeline must give one \
                 example id per token",
                s.len()
            )))
        }
        Some(s) => Some(Tensor::from_vec(
            s.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            (b, t),
            device,
        )?),
        None => None,
    };
    // One fused pass per row on the CPU (coil_ops::cross_entropy), composed ops elsewhere; vocab-parallel
    // under tensor parallelism.
    let ce = model
        .token_losses(&tokens, seq_idx.as_ref(), &labels)
        .map_err(|e| match e {
            coil_model::ModelError::Input(m) => {
                TrainError::Invalid(format!("{m} (a label is not a token id of this model)"))
            }
            other => other.into(),
        })?;
    let sum = (ce * mask.to_dtype(DType::F32)?)?.sum_all()?;
    Ok((sum, batch.num_loss_tokens() as f64))
}

fn next_batch<S: SampleSource>(loader: &mut Loader<S>, what: &str, step: u64) -> Result<Batch> {
    loader.next_batch()?.ok_or_else(|| {
        TrainError::Invalid(format!(
            "the {what} data ran out at step {step} ({} samples consumed); provide more samples or lower max_steps",
            loader.cursor().consumed_samples
        ))
    })
}

/// Runs (or resumes) training in this one process. Resumes from the newest complete checkpoint in
/// `run.run_dir` when one exists.
pub fn train<S: SampleSource, V: SampleSource>(
    run: &TrainRun,
    train_data: S,
    val_data: Option<V>,
) -> Result<TrainSummary> {
    train_parallel(
        run,
        train_data,
        val_data,
        &mut crate::dist::SingleProcess,
        None,
    )
}

/// [`train`] as one rank of a run split over processes: `comm` is this rank's data-parallel group, `tp` its
/// tensor-parallel group (`coil_model::parallel`), or `None` for the whole model on every rank. Every rank runs
/// this with the same run and data. Each data-parallel rank takes its slice of every global batch (Megatron's
/// sampler), and the gradients and loss sums are summed over the data-parallel ranks before each optimizer step
/// (reduce-scattered under the distributed optimizer). The ranks of one TP group take the same data; each holds,
/// optimizes and updates its slices of the parameters (the global gradient norm summed over the group), and the
/// TP group of data-parallel rank 0 validates together. World rank 0 alone writes the run directory (recipe,
/// metrics, TensorBoard, checkpoints, plot). Checkpoints hold the full model and optimizer state (gathered from
/// the slices), so a run resumes at any layout.
pub fn train_parallel<S: SampleSource, V: SampleSource>(
    run: &TrainRun,
    train_data: S,
    val_data: Option<V>,
    comm: &mut dyn crate::dist::Collective,
    tp: Option<TensorParallel>,
) -> Result<TrainSummary> {
    let tc = &run.trainer;
    let (dp, rank) = (comm.world_size(), comm.rank());
    let tp = tp.filter(|t| t.size() > 1);
    // `lead`: the TP group of data-parallel rank 0 (validation, checkpoint gathering); `root`: world rank 0,
    // which alone writes the run directory.
    let lead = rank == 0;
    let root = lead && tp.as_ref().is_none_or(|t| t.rank() == 0);
    if tc.micro_batch_size == 0
        || !tc
            .global_batch_size
            .is_multiple_of(tc.micro_batch_size * dp)
        || tc.global_batch_size == 0
    {
        return Err(TrainError::Invalid(format!(
            "global_batch_size ({}) must be a positive multiple of micro_batch_size ({}) x data-parallel size ({dp})",
            tc.global_batch_size, tc.micro_batch_size
        )));
    }
    let accum = tc.global_batch_size / (tc.micro_batch_size * dp);
    let dtype = tc.precision.compute_dtype();
    if root {
        std::fs::create_dir_all(&run.run_dir).map_err(io(&run.run_dir))?;
        checkpoint::remove_stale_temporaries(&run.run_dir)?;
        let recipe_path = run.run_dir.join("recipe.toml");
        std::fs::write(&recipe_path, &run.recipe_toml).map_err(io(&recipe_path))?;
    }

    // Weights and optimizer state: newest checkpoint, else the start.
    let latest = checkpoint::list_checkpoints(&run.run_dir)?.pop();
    let (mut opt, mut state, resumed_from) = match &latest {
        Some((step, dir)) => {
            let ck = checkpoint::load(dir, &run.device)?;
            if ck.config != run.model {
                let only_vocab = ModelConfig {
                    vocab_size: run.model.vocab_size,
                    ..ck.config.clone()
                } == run.model;
                let hint = if only_vocab {
                    // NeMo pads the vocabulary to a multiple of make_vocab_size_divisible_by x TP.
                    format!(
                        ": only the vocabulary differs ({} rows there, {} here, padded for another tensor-parallel \
                         size?); set model.vocab_size={} to resume from it",
                        ck.config.vocab_size, run.model.vocab_size, ck.config.vocab_size
                    )
                } else {
                    "; use a new run name or the same model settings".into()
                };
                return Err(TrainError::Checkpoint(format!(
                    "{}: its model config differs from this run's{hint}",
                    dir.display()
                )));
            }
            let specs = coil_model::params::param_specs(&run.model)?;
            let masters = specs
                .iter()
                .map(|s| {
                    ck.weights
                        .get(&s.name)
                        .cloned()
                        .map(|t| (s.name.clone(), t))
                        .ok_or_else(|| {
                            TrainError::Checkpoint(format!(
                                "{}: model.safetensors lacks `{}`",
                                dir.display(),
                                s.name
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut opt = AdamW::new(run.optim.clone(), shard(&tp, &run.model, masters)?, dtype)?;
            let moments = match &tp {
                None => ck.optimizer,
                Some(tp) => ck
                    .optimizer
                    .into_iter()
                    .map(|(k, t)| {
                        let name = k.split_once('.').map_or(k.as_str(), |(_, n)| n);
                        let t = tp.shard(name, &run.model, &t)?;
                        Ok((k, t))
                    })
                    .collect::<Result<_>>()?,
            };
            opt.load_state(&moments, ck.state.step, &dir.display().to_string())?;
            (opt, ck.state, Some(*step))
        }
        None => {
            let masters: Vec<(String, Tensor)> = match &run.start {
                Start::Random => {
                    coil_model::params::init_params(&run.model, tc.seed, &run.device, DType::F32)?
                        .into_iter()
                        .collect()
                }
                Start::Pretrained(dir) => {
                    let m = HybridLm::from_dir(dir, &run.device, DType::F32)?;
                    if m.config.layers()? != run.model.layers()?
                        || m.config.hidden_size != run.model.hidden_size
                        || m.config.vocab_size != run.model.vocab_size
                    {
                        return Err(TrainError::Invalid(format!(
                            "{}: the pretrained model's shape differs from the recipe's model",
                            dir.display()
                        )));
                    }
                    m.named_tensors()?
                }
            };
            let opt = AdamW::new(run.optim.clone(), shard(&tp, &run.model, masters)?, dtype)?;
            let state = TrainerState {
                step: 0,
                consumed_samples: 0,
                seed: tc.seed,
                train_loss: None,
                val_loss: None,
            };
            (opt, state, None)
        }
    };

    if run.optim.distributed && dp > 1 {
        opt.distribute(rank, dp)?;
    }
    let model = HybridLm::from_local(
        &run.model,
        &opt.compute_tensors(),
        &run.device,
        dtype,
        tp.clone(),
    )?;
    // The evaluation copy reads the same storage without recording a graph.
    let detached: BTreeMap<String, Tensor> = opt
        .compute_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.detach()))
        .collect();
    let eval_model = HybridLm::from_local(&run.model, &detached, &run.device, dtype, tp.clone())?;
    // Which parameters are split over the TP ranks (their norm parts are summed over the group), and which
    // replicated ones collect gradients from different positions on each rank (sequence parallelism).
    let mut split = vec![];
    let mut summed = std::collections::BTreeSet::new();
    if let Some(tp) = &tp {
        for p in &opt.params {
            split.push(
                coil_model::parallel::shard_rule(&p.name, &run.model, tp.size(), tp.rank())?
                    .is_some(),
            );
            if tp.needs_grad_sum(&p.name, &run.model)? {
                summed.insert(p.name.clone());
            }
        }
    }

    let cursor = DataCursor {
        consumed_samples: state.consumed_samples,
    };
    let mut loader = with_padding(
        Loader::new(train_data, tc.micro_batch_size, rank, dp, cursor)?
            .with_vocab(run.model.vocab_size),
        run.padding,
    );
    let mut writers = if root {
        Some((
            // Steps past the resumed one are taken again: their old entries go.
            JsonlWriter::open_resumed(&run.run_dir.join("metrics.jsonl"), state.step)?,
            TensorBoardWriter::create(&run.run_dir.join("tb"))?,
        ))
    } else {
        None
    };
    let progress = run.progress && root;
    let tty = progress && std::io::stderr().is_terminal();
    let bar = if tty {
        indicatif::ProgressBar::new(tc.max_steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(state.step);
    let say = |line: String| {
        if tty {
            bar.println(line);
        } else if progress {
            eprintln!("{line}");
        }
    };
    if let Some(s) = resumed_from {
        say(format!(
            "resuming from step {s} ({})",
            run.run_dir.display()
        ));
    }

    let mut summary = TrainSummary {
        resumed_from,
        ..Default::default()
    };
    let started = Instant::now();
    let mut tokens_total = 0f64;
    let val_data = val_data.map(std::sync::Arc::new);
    while state.step < tc.max_steps {
        let t0 = Instant::now();
        let step = state.step + 1; // 1-based number of the step being taken
        opt.zero_grad()?;
        let (mut loss_sum, mut loss_tokens, mut seen_tokens) = (0f64, 0f64, 0f64);
        for _ in 0..accum {
            let batch = next_batch(&mut loader, "training", step)?;
            seen_tokens += (batch.shape[0] * batch.shape[1]) as f64;
            let (sum, count) = masked_loss(&model, &batch, &run.device)?;
            // NeMo's loss: the mean over all global micro-batches of each one's token mean.
            let mb = (sum.clone() / (count.max(1.0) * (accum * dp) as f64))?;
            let grads = mb.backward()?;
            opt.accumulate(&grads, 1.0)?;
            loss_sum += sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss_tokens += count;
        }
        // Replicated parameters under sequence parallelism: each TP rank saw its own positions.
        if let (Some(tp), false) = (&tp, summed.is_empty()) {
            tp.with_comm(|c| {
                opt.all_reduce_grads_where(c, |n| summed.contains(n))
                    .map_err(comm_err)
            })?;
        }
        if dp > 1 {
            // The distributed optimizer keeps this rank's part of the sum; otherwise every rank gets all of it.
            opt.reduce_scatter_grads(comm)?;
            let mut sums = [loss_sum, loss_tokens, seen_tokens];
            comm.all_reduce_sum_f64(&mut sums)?;
            [loss_sum, loss_tokens, seen_tokens] = sums;
        }
        // The global norm: Σ g² of [parameters whole on every TP rank, parameters split over TP], summed over
        // the DP ranks' parts (distributed optimizer) and the split ones over the TP group.
        let mut sq = [0f64; 2];
        for (i, part) in opt.grad_sq_sums()?.iter().enumerate() {
            sq[usize::from(split.get(i).copied().unwrap_or(false))] += part;
        }
        if opt.is_distributed() {
            comm.all_reduce_sum_f64(&mut sq)?;
        }
        if let Some(tp) = &tp {
            let mut s1 = [sq[1]];
            tp.with_comm(|c| c.all_reduce_sum_f64(&mut s1))?;
            sq[1] = s1[0];
        }
        let grad_norm = (sq[0] + sq[1]).sqrt();
        let loss = loss_sum / loss_tokens.max(1.0);
        if !loss.is_finite() {
            return Err(diverged(run, step, format!("the training loss is {loss}")));
        }
        let lr = run.schedule.lr_at(state.step);
        let grad_norm = opt.step_with_norm(lr, grad_norm).map_err(|e| match e {
            TrainError::NonFinite(m) => diverged(run, step, m),
            other => other,
        })?;
        opt.gather_params(comm)?;
        state.step = step;
        state.consumed_samples = loader.cursor().consumed_samples;
        state.train_loss = Some(loss);
        let dt = t0.elapsed().as_secs_f64();
        tokens_total += seen_tokens;
        let tok_s = seen_tokens / dt.max(1e-9);
        summary.losses.push((step, loss));

        let validate = lead
            && val_data.is_some()
            && tc.val_check_interval > 0
            && (step % tc.val_check_interval == 0 || step == tc.max_steps);
        let mut last_val = None;
        if validate {
            if let Some(v) = &val_data {
                let vl = validation_loss(&eval_model, v, run)?;
                if !vl.is_finite() {
                    return Err(diverged(run, step, format!("the validation loss is {vl}")));
                }
                summary.val_losses.push((step, vl));
                last_val = Some(vl);
            }
        }
        state.val_loss = last_val;
        let log =
            tc.log_every_n_steps > 0 && (step % tc.log_every_n_steps == 0 || step == tc.max_steps);
        if let (true, Some((metrics, tb))) = (log || last_val.is_some(), writers.as_mut()) {
            let mut m = serde_json::json!({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s, "consumed_samples": state.consumed_samples});
            let mut scalars = vec![
                ("train/loss", loss as f32),
                ("train/lr", lr as f32),
                ("train/grad_norm", grad_norm as f32),
                ("train/tokens_per_s", tok_s as f32),
            ];
            if let Some(vl) = last_val {
                m["val_loss"] = serde_json::json!(vl);
                scalars.push(("val/loss", vl as f32));
            }
            metrics.write(&m)?;
            tb.scalars(step, &scalars)?;
            let val = last_val.map_or(String::new(), |v| format!(" val_loss {v:.4}"));
            say(format!("step {step}/{} loss {loss:.4}{val} lr {lr:.3e} grad_norm {grad_norm:.3} {tok_s:.0} tok/s", tc.max_steps));
        }
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tok_s:.0} tok/s"));

        // The TP group of DP rank 0 gathers and world rank 0 saves; under the distributed optimizer every DP
        // rank hands in its part first.
        let ckpt_now = (lead || opt.is_distributed())
            && ((tc.val_check_interval > 0 && step % tc.val_check_interval == 0)
                || step == tc.max_steps);
        if ckpt_now {
            // Only finite weights are saved (a finite loss and gradient can still overflow an update).
            let mut bad = None;
            for (name, w) in opt.masters() {
                if !coil_model::all_finite(&w)? {
                    bad = Some(format!("the update made weight `{name}` non-finite"));
                    break;
                }
            }
            // Every rank stops, or none.
            let mut flag = [f32::from(u8::from(bad.is_some()))];
            if let Some(tp) = &tp {
                tp.with_comm(|c| c.all_reduce_max(&mut flag))?;
            }
            if opt.is_distributed() {
                comm.all_reduce_max(&mut flag)?;
            }
            if flag[0] > 0.0 && bad.is_none() {
                bad = Some("the update made a weight of another rank non-finite".into());
            }
            if let Some(what) = bad {
                return Err(diverged(run, step, what));
            }
            let (masters, moments) = opt.gather_state(comm)?;
            let (masters, moments) = match &tp {
                Some(tp) if lead => unshard_all(tp, &run.model, masters, moments)?,
                _ => (masters, moments),
            };
            if root {
                let dir = checkpoint::save(
                    &run.run_dir,
                    &run.model,
                    &masters,
                    &moments,
                    &state,
                    &run.recipe_toml,
                    &run.tokenizer_files,
                )?;
                checkpoint::apply_retention(&run.run_dir, tc.save_top_k, tc.save_last)?;
                summary.last_checkpoint = Some(dir);
            }
        }
    }
    bar.finish_and_clear();
    if writers.take().is_some() {
        // The plot is a convenience: failing to draw it does not fail a finished run.
        let png = run.run_dir.join("loss.png");
        let plotted = crate::plot::read_metrics(&run.run_dir.join("metrics.jsonl"))
            .and_then(|(train, val)| crate::plot::loss_curve_png(&png, &train, &val));
        if let Err(e) = plotted {
            eprintln!("warning: could not write {}: {e}", png.display());
        }
    }
    summary.final_step = state.step;
    summary.tokens_per_s = tokens_total / started.elapsed().as_secs_f64().max(1e-9);
    Ok(summary)
}

/// This rank's slices of the full `masters` (all of them without tensor parallelism).
fn shard(
    tp: &Option<TensorParallel>,
    model: &ModelConfig,
    masters: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    match tp {
        None => Ok(masters),
        Some(tp) => masters
            .into_iter()
            .map(|(n, t)| {
                let s = tp.shard(&n, model, &t)?;
                Ok((n, s))
            })
            .collect(),
    }
}

/// The full masters and moments from every TP rank's slices (a collective call of the whole group, in the
/// optimizer's parameter order).
#[allow(clippy::type_complexity)]
fn unshard_all(
    tp: &TensorParallel,
    model: &ModelConfig,
    masters: Vec<(String, Tensor)>,
    mut moments: std::collections::HashMap<String, Tensor>,
) -> Result<(
    Vec<(String, Tensor)>,
    std::collections::HashMap<String, Tensor>,
)> {
    let mut full = vec![];
    for (name, m) in masters {
        full.push((name.clone(), tp.unshard(&name, model, &m)?));
        for key in ["exp_avg", "exp_avg_sq"] {
            let k = format!("{key}.{name}");
            let t = moments
                .remove(&k)
                .ok_or_else(|| TrainError::Invalid(format!("optimizer state lacks `{k}`")))?;
            moments.insert(k, tp.unshard(&name, model, &t)?);
        }
    }
    Ok((full, moments))
}

fn comm_err(e: TrainError) -> coil_comm::CommError {
    coil_comm::CommError::Invalid(e.to_string())
}

/// The error that stops a diverged run: what went non-finite at `step`, and which checkpoint a rerun resumes
/// from (the newest one, saved before any non-finite value appeared).
fn diverged(run: &TrainRun, step: u64, what: String) -> TrainError {
    let last = checkpoint::list_checkpoints(&run.run_dir)
        .ok()
        .and_then(|mut l| l.pop());
    let resume = match last {
        Some((s, dir)) => format!(
            "the last good checkpoint is {} (step {s}); a rerun resumes from it",
            dir.display()
        ),
        None => "no checkpoint was saved before it, so a rerun starts from the beginning".into(),
    };
    TrainError::NonFinite(format!(
        "step {step}: {what}. The run diverged and stopped without saving step {step}; {resume}. Lower the \
         learning rate (optim.max_lr) or check the data"
    ))
}

fn with_padding<S: SampleSource>(
    loader: Loader<S>,
    padding: Option<(i64, usize, usize)>,
) -> Loader<S> {
    match padding {
        Some((pad, multiple, max_len)) => loader.with_padding(pad, multiple, max_len),
        None => loader,
    }
}

/// Mean masked loss over the first `limit_val_batches` micro-batches of the validation data.
fn validation_loss<V: SampleSource>(
    model: &HybridLm,
    data: &std::sync::Arc<V>,
    run: &TrainRun,
) -> Result<f64> {
    let tc = &run.trainer;
    let loader = Loader::new(
        std::sync::Arc::clone(data),
        tc.micro_batch_size,
        0,
        1,
        DataCursor::default(),
    )?
    .with_vocab(run.model.vocab_size);
    let mut loader = with_padding(loader, run.padding);
    let device = &run.device;
    let (mut sum, mut count) = (0f64, 0f64);
    for _ in 0..tc.limit_val_batches.max(1) {
        let Some(batch) = loader.next_batch()? else {
            break;
        };
        let (s, c) = masked_loss(model, &batch, device)?;
        sum += s.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += c;
    }
    if count == 0.0 {
        return Err(TrainError::Invalid(
            "the validation data yielded no batch".into(),
        ));
    }
    Ok(sum / count)
}
