//! Generation on the model's own device (CUDA): the model's chunked forward for the prefill, then for every step
//! the fused CUDA decode step (`crate::cuda_step`) when its kernels take the model's sizes, else the same forward
//! with T = 1 (`HybridLm::forward_with_state`); each batch is one tensor (see below for prompt lengths). Greedy
//! decoding on the fused step picks the ids on the GPU (only they cross to the host); sampling follows the same
//! Megatron rules as the CPU engine ([`crate::sampling`]), on the host, from each step's logits [B, V].
//!
//! Unlike the CPU engine ([`crate::generate`]), a batch here steps as one tensor. Prompts of different lengths
//! share a batch when the model has no attention layer: they are prefilled as one packed row
//! ([`HybridLm::prefill_ragged`]), each sequence's state as if it ran alone, so no padding ever enters a state;
//! with attention layers (one KV-cache length per batch) prompts of one length go together. A sequence that stops
//! early keeps its row until its batch ends, and its later tokens are dropped.

use crate::error::{InferError, Result};
use crate::generate::{GenerateParams, Generation, OnToken, StateDtype, StopReason};
#[cfg(feature = "cuda")]
use crate::sampling::non_finite;
use crate::sampling::{check_finite, Sampler};
use candle_core::{DType, Device, Tensor};
use coil_model::lm::Mixer;
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
    // Batches of at most max_batch prompts: in order whatever their lengths when the model has no attention layer
    // (prefilled as one packed row), else prompts of one length in order of first appearance (the KV cache has
    // one length per batch).
    let mut groups: Vec<(usize, Vec<usize>)> = vec![];
    let ragged = !lm
        .blocks
        .iter()
        .any(|b| matches!(b.mixer, Mixer::Attention(_)));
    for (i, p) in prompts.iter().enumerate() {
        let key = if ragged { 0 } else { p.len() };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    for (_, members) in groups {
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
    let (logits, state) = if batch.iter().all(|&i| prompts[i].len() == len) {
        let ids: Vec<i64> = batch
            .iter()
            .flat_map(|&i| prompts[i].iter().map(|&t| t as i64))
            .collect();
        let ids = Tensor::from_vec(ids, (batch.len(), len), dev)?;
        lm.forward_with_state(&ids, None, None, true)?
    } else {
        // Prompts of different lengths: one packed row, each sequence's state as if prefilled alone.
        let members: Vec<Vec<u32>> = batch.iter().map(|&i| prompts[i].clone()).collect();
        lm.prefill_ragged(&members)?
    };
    let mut rows = host_rows(&logits, batch.len())?;
    let mut stepper = Stepper::new(lm, state, batch.len(), params)?;
    let mut samplers: Vec<Sampler> = batch
        .iter()
        .map(|&i| Sampler::new(params.sampling, params.seed, i as u64, params.vocab_limit))
        .collect();
    let mut run = Run {
        batch,
        params,
        on_token,
        results,
        done: vec![false; batch.len()],
    };
    loop {
        let mut next = Vec::with_capacity(batch.len());
        for (r, &i) in batch.iter().enumerate() {
            if !run.done[r] {
                check_finite(&rows[r], i, run.results[i].tokens.len())?;
            }
            let tok = samplers[r].sample(&rows[r]);
            next.push(tok);
            run.accept(r, tok);
        }
        if run.all_done() {
            return Ok(());
        }
        // Greedy on the fused step: the ids are picked on the GPU; only they cross to the host.
        #[cfg(feature = "cuda")]
        if let (true, Stepper::Fused(f)) = (params.sampling.is_greedy(), &mut stepper) {
            loop {
                let p = f.step_greedy(&next)?;
                for (r, &i) in batch.iter().enumerate() {
                    if !run.done[r] && p.non_finite[r] {
                        // The host path's error, naming the first value that is not finite.
                        let generated = run.results[i].tokens.len();
                        check_finite(&f.logits()?.swap_remove(r), i, generated)?;
                        return Err(non_finite(i, generated, ""));
                    }
                    run.accept(r, p.ids[r]);
                }
                if run.all_done() {
                    return Ok(());
                }
                next = p.ids;
            }
        }
        rows = stepper.step(lm, &next)?;
    }
}

/// The generations of one batch as its tokens arrive.
struct Run<'a, 'b> {
    batch: &'a [usize],
    params: &'a GenerateParams,
    on_token: &'a mut OnToken<'b>,
    results: &'a mut [Generation],
    /// Sequences that stopped; their rows keep decoding until the batch ends, and those tokens are dropped.
    done: Vec<bool>,
}

impl Run<'_, '_> {
    /// Takes sequence `r`'s next token, unless it has stopped.
    fn accept(&mut self, r: usize, tok: u32) {
        if self.done[r] {
            return;
        }
        let i = self.batch[r];
        (self.on_token)(i, tok);
        let g = &mut self.results[i];
        g.tokens.push(tok);
        if self.params.eos == Some(tok) {
            g.stop = StopReason::Eos;
            self.done[r] = true;
        } else if g.tokens.len() >= self.params.max_new_tokens {
            self.done[r] = true;
        }
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

/// How the decode steps of a batch run: the fused CUDA step (bf16 or f32 weights of sizes its kernels take,
/// `crate::cuda_step`), else the model's forward with T = 1.
enum Stepper {
    #[cfg(feature = "cuda")]
    Fused(Box<crate::cuda_step::CudaStep>),
    Forward(coil_model::ModelState),
}

impl Stepper {
    fn new(
        lm: &HybridLm,
        state: coil_model::ModelState,
        batch: usize,
        params: &GenerateParams,
    ) -> Result<Self> {
        // The fused step reads whole weights: a model split over tensor-parallel ranks steps with its forward.
        let split = lm.tensor_parallel().is_some_and(|t| t.size() > 1);
        #[cfg(feature = "cuda")]
        if !split {
            if let Some(mut fused) = crate::cuda_step::CudaStep::new(lm)? {
                if params.ssm_state == StateDtype::Bf16 {
                    fused.set_state_dtype(DType::BF16)?;
                }
                fused.start(&state, batch, params.max_new_tokens)?;
                return Ok(Stepper::Fused(Box::new(fused)));
            }
        }
        let _ = (batch, split); // used by the CUDA build only
        if params.ssm_state != StateDtype::F32 {
            return Err(InferError::Invalid(format!(
                "a bf16 SSM state is stored by the fused CUDA decode step only (bf16 or f32 weights of sizes its \
                 kernels take, on a CUDA device); this model on {} decodes with its forward, which keeps the state in f32",
                coil_model::device::device_label(lm.device())
            )));
        }
        Ok(Stepper::Forward(state))
    }

    /// Feeds one token per sequence; returns each sequence's logits.
    fn step(&mut self, lm: &HybridLm, next: &[u32]) -> Result<Vec<Vec<f32>>> {
        match self {
            #[cfg(feature = "cuda")]
            Stepper::Fused(f) => f.step(next),
            Stepper::Forward(state) => {
                let ids: Vec<i64> = next.iter().map(|&t| t as i64).collect();
                let ids = Tensor::from_vec(ids, (next.len(), 1), lm.device())?;
                let (logits, st) = lm.forward_with_state(&ids, Some(state), None, true)?;
                *state = st;
                host_rows(&logits, next.len())
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
