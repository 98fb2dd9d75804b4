//! Generation on the model's own device (CUDA): the model's chunked forward for the prefill, then for every step
//! the fused CUDA decode step (`crate::cuda_step`) when the model is made of Mamba2 layers, else the same forward
//! with T = 1 (`HybridLm::forward_with_state`); batched as one tensor per group of prompts of equal length. Greedy
//! decoding on the fused step picks the ids on the GPU (only they cross to the host); sampling follows the same
//! Megatron rules as the CPU engine ([`crate::sampling`]), on the host, from each step's logits [B, V].
//!
//! Unlike the CPU engine ([`crate::generate`]), a batch here is one tensor, so prompts of different lengths go in
//! separate batches (no padding ever enters a state); a sequence that stops early keeps its row until its batch
//! ends, and its later tokens are dropped.

use crate::error::Result;
use crate::generate::{GenerateParams, Generation, OnToken, StopReason};
use crate::sampling::{check_finite, Sampler};
use candle_core::{DType, Device, Tensor};
use coil_model::HybridLm;

/// Generates for every prompt on `lm`'s device; `on_token` sees each kept token as it is sampled.
/// Same contract and results as [`crate::generate`] (greedy tokens are identical up to device rounding).
pub fn generate_on_device(
    lm: &HybridLm,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_token: &mut OnToken,
) -> Result<Vec<Generation>> {
    let mut results = crate::generate::start(prompts, params, lm.config.vocab_size)?;
    if params.max_new_tokens == 0 {
        return Ok(results);
    }
    // Batches: prompts of one length, in order of first appearance, at most max_batch each.
    let mut by_len: Vec<(usize, Vec<usize>)> = vec![];
    for (i, p) in prompts.iter().enumerate() {
        match by_len.iter_mut().find(|(l, _)| *l == p.len()) {
            Some((_, v)) => v.push(i),
            None => by_len.push((p.len(), vec![i])),
        }
    }
    for (_, members) in by_len {
        for batch in members.chunks(params.max_batch) {
            run_batch(lm, prompts, batch, params, on_token, &mut results)?;
        }
    }
    Ok(results)
}

fn run_batch(
    lm: &HybridLm,
    prompts: &[Vec<u32>],
    batch: &[usize],
    params: &GenerateParams,
    on_token: &mut OnToken,
    results: &mut [Generation],
) -> Result<()> {
    let dev = lm.device();
    let len = prompts[batch[0]].len();
    let ids: Vec<i64> = batch
        .iter()
        .flat_map(|&i| prompts[i].iter().map(|&t| t as i64))
        .collect();
    let ids = Tensor::from_vec(ids, (batch.len(), len), dev)?;
    let (logits, state) = lm.forward_with_state(&ids, None, None, true)?;
    let mut next_rows = Next::Rows(host_rows(&logits, batch.len())?);
    let greedy = params.sampling.is_greedy();
    let mut stepper = Stepper::new(lm, state, batch.len())?;
    let mut samplers: Vec<Sampler> = batch
        .iter()
        .map(|&i| Sampler::new(params.sampling, params.seed, i as u64, params.vocab_limit))
        .collect();
    let mut done = vec![false; batch.len()];
    loop {
        let mut next = Vec::with_capacity(batch.len());
        for (r, &i) in batch.iter().enumerate() {
            let generated = results[i].tokens.len();
            let tok = match &next_rows {
                Next::Rows(rows) => {
                    if !done[r] {
                        check_finite(&rows[r], i, generated)?;
                    }
                    samplers[r].sample(&rows[r])
                }
                Next::Picked(p) => {
                    if !done[r] && p.non_finite[r] {
                        // The same error as the host path, naming the first bad logit.
                        check_finite(&stepper.logits_row(r)?, i, generated)?;
                    }
                    p.ids[r]
                }
            };
            next.push(tok as i64);
            if done[r] {
                continue;
            }
            on_token(i, tok);
            let g = &mut results[i];
            g.tokens.push(tok);
            if params.eos == Some(tok) {
                g.stop = StopReason::Eos;
                done[r] = true;
            } else if g.tokens.len() >= params.max_new_tokens {
                done[r] = true;
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(());
        }
        next_rows = stepper.step(lm, &next, greedy)?;
    }
}

/// What a step hands back: every sequence's logits, or (greedy, fused step) the ids chosen on the GPU.
enum Next {
    Rows(Vec<Vec<f32>>),
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Picked(Picked),
}

#[cfg(feature = "cuda")]
use crate::cuda_step::Picked;
/// Stand-in for the fused step's greedy choices in builds without CUDA.
#[cfg(not(feature = "cuda"))]
struct Picked {
    ids: Vec<u32>,
    non_finite: Vec<bool>,
}

/// How the decode steps of a batch run: the fused CUDA step (models of Mamba2 layers in bf16 or f32,
/// `crate::cuda_step`), else the model's forward with T = 1.
enum Stepper {
    #[cfg(feature = "cuda")]
    Fused(Box<crate::cuda_step::CudaStep>),
    Forward(coil_model::ModelState),
}

impl Stepper {
    fn new(lm: &HybridLm, state: coil_model::ModelState, batch: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Some(mut fused) = crate::cuda_step::CudaStep::new(lm)? {
            fused.start(&state, batch)?;
            return Ok(Stepper::Fused(Box::new(fused)));
        }
        let _ = (lm, batch); // used by the CUDA build only
        Ok(Stepper::Forward(state))
    }

    /// Feeds one token per sequence; returns each sequence's logits, or with `greedy` on the fused step, the
    /// ids the GPU picked.
    fn step(&mut self, lm: &HybridLm, next: &[i64], greedy: bool) -> Result<Next> {
        match self {
            #[cfg(feature = "cuda")]
            Stepper::Fused(f) => {
                let toks: Vec<u32> = next.iter().map(|&t| t as u32).collect();
                if greedy {
                    Ok(Next::Picked(f.step_greedy(&toks)?))
                } else {
                    Ok(Next::Rows(f.step(&toks)?))
                }
            }
            Stepper::Forward(state) => {
                let _ = greedy; // the forward's logits are sampled on the host either way
                let ids = Tensor::from_vec(next.to_vec(), (next.len(), 1), lm.device())?;
                let (logits, st) = lm.forward_with_state(&ids, Some(state), None, true)?;
                *state = st;
                Ok(Next::Rows(host_rows(&logits, next.len())?))
            }
        }
    }

    /// Sequence `r`'s logits of the last step (to report non-finite values the GPU flagged).
    fn logits_row(&mut self, r: usize) -> Result<Vec<f32>> {
        match self {
            #[cfg(feature = "cuda")]
            Stepper::Fused(f) => Ok(f.logits()?.swap_remove(r)),
            Stepper::Forward(_) => {
                let _ = r;
                Err(crate::error::InferError::Invalid(
                    "the forward step keeps no logits".into(),
                ))
            }
        }
    }
}

/// The last-position logits [B, 1, V] (or [B, V]) as host rows of f32.
fn host_rows(logits: &Tensor, batch: usize) -> Result<Vec<Vec<f32>>> {
    let v = logits.elem_count() / batch;
    let flat = logits
        .to_dtype(DType::F32)?
        .reshape((batch, v))?
        .to_device(&Device::Cpu)?;
    Ok(flat.to_vec2::<f32>()?)
}
