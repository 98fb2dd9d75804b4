//! The engine: a model plus its decode-step weights. `prefill` runs the model's chunked forward on one prompt
//! (last position only) and returns its state; `step` advances any set of such states by one token each.

use crate::error::{InferError, Result};
use crate::matvec::WeightDtype;
use crate::state::SeqState;
use crate::step::{self, Scratch};
use crate::weights::{DecodeDtClamp, StepWeights};
use candle_core::{DType, Device, Tensor};
use coil_model::{HybridLm, ModelState};

/// How the decode step is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    pub weights: WeightDtype,
    pub dt_clamp: DecodeDtClamp,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            weights: WeightDtype::F32,
            dt_clamp: DecodeDtClamp::SameAsPrefill,
        }
    }
}

pub struct Engine {
    lm: HybridLm,
    weights: StepWeights,
    options: EngineOptions,
}

impl Engine {
    /// Extracts the step weights once (the model keeps its own copy for prefill).
    pub fn new(lm: HybridLm, options: EngineOptions) -> Result<Self> {
        let weights = StepWeights::from_model(&lm, options.weights, options.dt_clamp)?;
        Ok(Engine {
            lm,
            weights,
            options,
        })
    }

    pub fn model(&self) -> &HybridLm {
        &self.lm
    }

    pub fn weights(&self) -> &StepWeights {
        &self.weights
    }

    pub fn options(&self) -> EngineOptions {
        self.options
    }

    pub fn vocab_size(&self) -> usize {
        self.weights.vocab
    }

    /// Scratch buffers for steps of up to `max_batch` sequences.
    pub fn scratch(&self, max_batch: usize) -> Scratch {
        Scratch::new(&self.weights, max_batch)
    }

    /// Runs the whole prompt through the model (chunked scan) and returns the logits of its last position [V]
    /// and the state after it. `reserve` positions are preallocated in the KV caches for the steps to come.
    pub fn prefill(&self, prompt: &[u32], reserve: usize) -> Result<(Vec<f32>, SeqState)> {
        let (logits, state) = self.prefill_chunk(prompt, None, false)?;
        Ok((logits, self.seq_state(&state, prompt.len(), reserve)?))
    }

    /// One piece of a prompt: runs `tokens` through the model's forward, continuing from `state` (the model
    /// state after the tokens before them; `None`: the prompt starts here). Returns the logits, row-major
    /// [`tokens.len()`, V] when `all_logits` (row i predicts the token after `tokens[i]`) or [1, V] for the last
    /// position, and the state after the last token on the model's device. A prompt prefilled in pieces this way
    /// continues exactly where each piece left off; [`Engine::seq_state`] turns the last state into a decode
    /// state.
    pub fn prefill_chunk(
        &self,
        tokens: &[u32],
        state: Option<&ModelState>,
        all_logits: bool,
    ) -> Result<(Vec<f32>, ModelState)> {
        if tokens.is_empty() {
            return Err(InferError::Invalid(
                "empty prompt: generation needs at least one token (add a BOS token)".into(),
            ));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.weights.vocab) {
            return Err(InferError::Invalid(format!(
                "prompt token id {t} is outside the vocabulary [0, {})",
                self.weights.vocab
            )));
        }
        let ids = Tensor::from_slice(tokens, (1, tokens.len()), self.lm.device())?
            .to_dtype(DType::I64)?;
        let (logits, state) = self.lm.forward_with_state(&ids, state, None, !all_logits)?;
        let logits = logits
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((logits, state))
    }

    /// The decode state of a sequence from the model state after its first `position` tokens (as
    /// [`Engine::prefill_chunk`] returns it); `reserve` positions are preallocated in the KV caches.
    pub fn seq_state(
        &self,
        state: &ModelState,
        position: usize,
        reserve: usize,
    ) -> Result<SeqState> {
        if self.lm.device().is_cpu() {
            SeqState::from_model_state(state, position, reserve)
        } else {
            SeqState::from_model_state(&to_cpu(state.clone())?, position, reserve)
        }
    }

    /// Advances each sequence by its token; returns the logits [batch, V] (row b for `states[b]`).
    pub fn step<'s>(
        &self,
        states: &mut [SeqState],
        tokens: &[u32],
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        step::step(&self.weights, states, tokens, scratch)?;
        Ok(scratch.logits(tokens.len(), self.weights.vocab))
    }
}

fn to_cpu(st: coil_model::ModelState) -> Result<coil_model::ModelState> {
    use coil_model::layers::{attention::KvCache, mamba::MambaState};
    use coil_model::LayerState;
    let cpu = Device::Cpu;
    let layers = st
        .layers
        .into_iter()
        .map(|l| {
            Ok(match l {
                LayerState::Mamba(m) => LayerState::Mamba(MambaState {
                    conv: m.conv.to_device(&cpu)?,
                    ssm: m.ssm.to_device(&cpu)?,
                }),
                LayerState::Attention(c) => LayerState::Attention(KvCache {
                    k: c.k.to_device(&cpu)?,
                    v: c.v.to_device(&cpu)?,
                }),
                LayerState::Stateless => LayerState::Stateless,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(coil_model::ModelState { layers })
}
