//! Batched generation: each prompt is prefilled on its own (no padding ever enters a state), then all active
//! sequences step together. A finished sequence (EOS or the token budget) leaves the batch and the next
//! waiting prompt takes its slot, so at most `max_batch` sequences are in flight.

use crate::engine::Engine;
use crate::error::{InferError, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::state::SeqState;

#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// New tokens per prompt at most (`--num-tokens-to-generate`).
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// `--random-seed`.
    pub seed: u64,
    /// Stop a sequence when it samples this id (it is kept as the last generated token).
    pub eos: Option<u32>,
    /// Tokenizer vocabulary: sampled ids are clamped below it (Megatron); `None` = the logits' width.
    pub vocab_limit: Option<usize>,
    /// Sequences stepped together at most (`--max-batch-size`).
    pub max_batch: usize,
    /// How the decode step stores the SSM states (`--ssm-state-dtype`).
    pub ssm_state: StateDtype,
}

/// The storage of the SSM states while decoding. `F32` everywhere (the CPU engine's, and Hugging Face's); `Bf16` on
/// the fused CUDA step only, as mamba_ssm keeps the state of a bf16 model: half of the bytes a large batch's step
/// moves, the update still computed in f32 and the state rounded to bf16 after every token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateDtype {
    #[default]
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    Length,
}

/// The generated ids of one prompt (prompt excluded).
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// A generated token as it appears: `(prompt index, token id)`.
pub type OnToken<'a> = dyn FnMut(usize, u32) + 'a;

struct Active {
    prompt: usize,
    sampler: Sampler,
    next: u32,
}

/// Checks the request (sampling settings, batch size, prompts: non-empty, ids below `vocab`) and returns one
/// empty result per prompt.
pub(crate) fn start(
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    vocab: usize,
) -> Result<Vec<Generation>> {
    params.sampling.validate(vocab, params.vocab_limit)?;
    if params.max_batch == 0 {
        return Err(InferError::Invalid(
            "the maximum batch size must be at least 1".into(),
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(InferError::Invalid(format!(
                "prompt {i} is empty: it needs at least one token (add a BOS token)"
            )));
        }
        if let Some(&t) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(InferError::Invalid(format!(
                "prompt {i}: token id {t} is outside the vocabulary [0, {vocab})"
            )));
        }
    }
    Ok(prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::with_capacity(params.max_new_tokens),
            stop: StopReason::Length,
        })
        .collect())
}

/// Generates for every prompt; `on_token` sees each token as soon as it is sampled.
pub fn generate(
    engine: &Engine,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_token: &mut OnToken,
) -> Result<Vec<Generation>> {
    if params.ssm_state != StateDtype::F32 {
        return Err(InferError::Invalid(
            "a bf16 SSM state is stored by the fused CUDA decode step only (--device cuda, a model of Mamba2 \
             layers); the CPU engine keeps it in f32"
                .into(),
        ));
    }
    let vocab = engine.vocab_size();
    let mut results = start(prompts, params, vocab)?;
    if params.max_new_tokens == 0 {
        return Ok(results);
    }
    let max_batch = params.max_batch.min(prompts.len()).max(1);
    let mut scratch = engine.scratch(max_batch);
    let mut active: Vec<Active> = Vec::with_capacity(max_batch);
    let mut states: Vec<SeqState> = Vec::with_capacity(max_batch);
    let mut tokens: Vec<u32> = Vec::with_capacity(max_batch);
    let mut pending = 0usize;

    // Records a sampled token; true when the sequence is finished.
    let mut record = |prompt: usize, tok: u32, results: &mut Vec<Generation>| -> bool {
        on_token(prompt, tok);
        let g = &mut results[prompt];
        g.tokens.push(tok);
        if params.eos == Some(tok) {
            g.stop = StopReason::Eos;
            return true;
        }
        g.tokens.len() >= params.max_new_tokens
    };

    loop {
        // Fill free slots with waiting prompts.
        while active.len() < max_batch && pending < prompts.len() {
            let i = pending;
            pending += 1;
            let (logits, state) = engine.prefill(&prompts[i], params.max_new_tokens)?;
            let mut sampler =
                Sampler::new(params.sampling, params.seed, i as u64, params.vocab_limit);
            crate::sampling::check_finite(&logits, i, 0)?;
            let tok = sampler.sample(&logits);
            if !record(i, tok, &mut results) {
                active.push(Active {
                    prompt: i,
                    sampler,
                    next: tok,
                });
                states.push(state);
            }
        }
        if active.is_empty() {
            break;
        }
        tokens.clear();
        tokens.extend(active.iter().map(|a| a.next));
        let logits = engine.step(&mut states, &tokens, &mut scratch)?;
        let mut b = 0;
        let mut row = 0;
        while b < active.len() {
            let a = &mut active[b];
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            crate::sampling::check_finite(row_logits, a.prompt, results[a.prompt].tokens.len())?;
            let tok = a.sampler.sample(row_logits);
            row += 1;
            if record(a.prompt, tok, &mut results) {
                active.remove(b);
                states.remove(b);
            } else {
                a.next = tok;
                b += 1;
            }
        }
    }
    Ok(results)
}
