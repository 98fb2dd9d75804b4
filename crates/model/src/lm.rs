//! The hybrid language model: embedding → blocks (`r = r + mixer(rms_norm(r))`) → final norm → LM head.

use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::layers::attention::{segment_mask, Attention, KvCache};
use crate::layers::mamba::{Mamba2Mixer, MambaState};
use crate::layers::{mlp::Mlp, rms_norm, Linear, ParamMap};
use crate::parallel::TensorParallel;
use crate::params::param_specs;
use crate::trace::Trace;
use crate::weights::{Loader, WeightSource};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// What one layer carries from token to token.
#[derive(Clone, Debug)]
pub enum LayerState {
    Mamba(MambaState),
    Attention(KvCache),
    /// MLP layers carry nothing.
    Stateless,
}

impl LayerState {
    pub fn as_mamba(&self) -> Option<&MambaState> {
        match self {
            LayerState::Mamba(s) => Some(s),
            _ => None,
        }
    }
}

/// The decode state of the whole stack: constant size per sequence for Mamba layers, a growing KV cache for
/// the few attention layers.
#[derive(Clone, Debug)]
pub struct ModelState {
    pub layers: Vec<LayerState>,
}

#[derive(Clone, Debug)]
pub enum Mixer {
    Mamba(Mamba2Mixer),
    Attention(Attention),
    Mlp(Mlp),
}

#[derive(Clone, Debug)]
pub struct Block {
    pub kind: LayerKind,
    pub norm: Tensor,
    pub mixer: Mixer,
    /// Under tensor parallelism, the bias of the mixer's row-parallel output projection (out_proj, o_proj or
    /// down_proj), added once after the sum over ranks; `None` otherwise (the projection adds its own).
    pub out_bias: Option<Tensor>,
}

#[derive(Clone, Debug)]
pub struct HybridLm {
    pub config: ModelConfig,
    pub embeddings: Tensor,
    pub blocks: Vec<Block>,
    pub norm_f: Tensor,
    /// `None` when tied to the embeddings.
    pub lm_head: Option<Tensor>,
    pub dtype: DType,
    /// Every parameter by checkpoint name, in the order of [`param_specs`]: the tensors the fields above hold
    /// (under tensor parallelism, this rank's slices).
    params: Vec<(String, Tensor)>,
    /// The tensor-parallel group this model is one rank of (`crate::parallel`); `None`: the whole model here.
    tp: Option<TensorParallel>,
}

impl HybridLm {
    /// Builds the model from named tensors, checking every name and shape against the config.
    pub fn load(
        config: &ModelConfig,
        src: &dyn WeightSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::load_parallel(config, src, device, dtype, None)
    }

    /// [`load`](Self::load) as one rank of a tensor-parallel group: `src` holds the full model, and this rank
    /// keeps its slice of every parameter (`crate::parallel`). `None` is `load`.
    pub fn load_parallel(
        config: &ModelConfig,
        src: &dyn WeightSource,
        device: &Device,
        dtype: DType,
        tp: Option<TensorParallel>,
    ) -> Result<Self> {
        config.validate()?;
        let Some(tp) = tp else {
            let l = Loader {
                src,
                device: device.clone(),
                dtype,
            };
            let p = ParamMap::read(&l, &param_specs(config)?)?;
            return Self::build(config, config, p, dtype, None);
        };
        // This rank reads its slices only.
        let sliced = crate::parallel::Sliced::new(src, config, &tp)?;
        Self::from_local(config, &sliced, device, dtype, Some(tp.clone()))
    }

    /// The model from this rank's slices (named as the full model's parameters), as [`named_tensors`]
    /// (Self::named_tensors) returns them.
    pub fn from_local(
        config: &ModelConfig,
        local: &dyn WeightSource,
        device: &Device,
        dtype: DType,
        tp: Option<TensorParallel>,
    ) -> Result<Self> {
        config.validate()?;
        let cfg = match &tp {
            Some(tp) => tp.local_config(config)?,
            None => config.clone(),
        };
        let l = Loader {
            src: local,
            device: device.clone(),
            dtype,
        };
        let p = ParamMap::read(&l, &param_specs(&cfg)?)?;
        Self::build(config, &cfg, p, dtype, tp)
    }

    /// The layers of `local` sizes (the full `config`'s, divided by the TP size under tensor parallelism) from
    /// the parameters in `p`.
    fn build(
        config: &ModelConfig,
        local: &ModelConfig,
        mut p: ParamMap,
        dtype: DType,
        tp: Option<TensorParallel>,
    ) -> Result<Self> {
        let split = tp.as_ref().is_some_and(|t| t.size() > 1);
        let mut blocks = Vec::new();
        for (i, kind) in local.layers()?.into_iter().enumerate() {
            let prefix = format!("backbone.layers.{i}");
            let mixer_prefix = format!("{prefix}.mixer");
            let mut mixer = match kind {
                LayerKind::Mamba => Mixer::Mamba(Mamba2Mixer::load(&mut p, &mixer_prefix, local)?),
                LayerKind::Attention => {
                    Mixer::Attention(Attention::load(&mut p, &mixer_prefix, local)?)
                }
                LayerKind::Mlp => Mixer::Mlp(Mlp::load(&mut p, &mixer_prefix, local)?),
            };
            let out_bias = match &mut mixer {
                _ if !split => None,
                Mixer::Mamba(m) => m.out_proj.bias.take(),
                Mixer::Attention(a) => a.o_proj.bias.take(),
                Mixer::Mlp(m) => m.down_proj.bias.take(),
            };
            blocks.push(Block {
                kind,
                norm: p.take(&format!("{prefix}.norm.weight"))?,
                mixer,
                out_bias,
            });
        }
        let embeddings = p.take("backbone.embeddings.weight")?;
        let norm_f = p.take("backbone.norm_f.weight")?;
        let lm_head = p.take_opt("lm_head.weight");
        Ok(HybridLm {
            config: config.clone(),
            embeddings,
            blocks,
            norm_f,
            lm_head,
            dtype,
            params: p.finish()?,
            tp,
        })
    }

    /// The tensor-parallel group this model is one rank of, if any.
    pub fn tensor_parallel(&self) -> Option<&TensorParallel> {
        self.tp.as_ref()
    }

    /// Loads `dir/config.json` and the weights next to it (HF, sharded HF, or state-spaces layout).
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = crate::hf_config::read_config(dir)?;
        let src = crate::weights::open_dir(dir)?;
        Self::load(&config, src.as_ref(), device, dtype)
    }

    /// Fresh Megatron-style initialisation, seeded.
    pub fn init(config: &ModelConfig, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        let params = crate::params::init_params(config, seed, device, dtype)?;
        Self::load(config, &params, device, dtype)
    }

    pub fn device(&self) -> &Device {
        self.embeddings.device()
    }

    /// Checks `ids` [B,T] are integer token ids below the vocabulary size.
    pub fn check_ids(&self, ids: &Tensor) -> Result<()> {
        let (b, t) = ids.dims2().map_err(|_| {
            ModelError::Input(format!(
                "input ids must be [batch, time], got shape {:?}",
                ids.dims()
            ))
        })?;
        if b == 0 || t == 0 {
            return Err(ModelError::Input(format!(
                "input ids are empty (shape [{b}, {t}])"
            )));
        }
        let flat = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        for (row, ids) in flat.chunks_exact(t).enumerate() {
            self.check_row(row, ids.iter().copied())?;
        }
        Ok(())
    }

    /// Checks the ids of batch row `row` are below the vocabulary size.
    fn check_row(&self, row: usize, ids: impl IntoIterator<Item = i64>) -> Result<()> {
        let vocab = self.config.vocab_size;
        match ids
            .into_iter()
            .enumerate()
            .find(|&(_, v)| v < 0 || v as usize >= vocab)
        {
            Some((pos, bad)) => Err(ModelError::Input(format!(
                "token id {bad} at [{row}, {pos}] is outside the model's vocabulary [0, {vocab})"
            ))),
            None => Ok(()),
        }
    }

    /// `ids` [B,T] → logits [B,T,V] in f32. Fills `trace` with intermediate activations when given.
    /// Differentiable when the parameters are autograd variables.
    pub fn forward(&self, ids: &Tensor, trace: Option<&mut Trace>) -> Result<Tensor> {
        Ok(self.run(ids, None, None, trace, false, false)?.0)
    }

    /// [`forward`](Self::forward) for packed rows: `seq_idx` [B,T] (integer) names the example of every position
    /// (for instance coil-data's `Batch::seq_idx`). Wherever it changes along a row a new example starts: Mamba
    /// layers restart their conv window and SSM state there and attention does not look back across it, so each
    /// example's logits (and gradients) are what it gets alone. `None` is exactly `forward`. Differentiable when
    /// the parameters are autograd variables. Mamba layers record no inner activations in `trace` here.
    pub fn forward_packed(
        &self,
        ids: &Tensor,
        seq_idx: Option<&Tensor>,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        Ok(self.run(ids, seq_idx, None, trace, false, false)?.0)
    }

    /// `ids` [B,T] → (logits, state after the last token). With `state`, the sequences continue from it (the
    /// Mamba conv window and SSM state, the attention KV cache); without, they start fresh. `last_only` computes
    /// logits for the last position alone ([B,1,V]).
    pub fn forward_with_state(
        &self,
        ids: &Tensor,
        state: Option<&ModelState>,
        trace: Option<&mut Trace>,
        last_only: bool,
    ) -> Result<(Tensor, ModelState)> {
        let (logits, state) = self.run(ids, None, state, trace, last_only, true)?;
        Ok((
            logits,
            state.ok_or_else(|| ModelError::Invalid("no state computed".into()))?,
        ))
    }

    /// Prefills prompts of any lengths as one packed row (no padding enters any state) and returns the logits of
    /// each prompt's last position [B, V] (f32, as [`forward_with_state`](Self::forward_with_state) with
    /// `last_only` gives them) and the decode state of the B sequences, in the order of `prompts`, as
    /// `forward_with_state` of each prompt alone gives them (within rounding): continue decoding all B with
    /// `forward_with_state(next_ids [B,1], Some(&state), ..)`.
    ///
    /// The prompts run as one packed row with a `seq_idx` naming the prompt of every position (the packed path of
    /// [`forward_packed`](Self::forward_packed)), so the conv and the SSM restart at every prompt; Mamba layers
    /// run the inference chain of `forward_with_state` with that `seq_idx`. Each Mamba layer then keeps, per
    /// prompt, the last K raw xBC columns as its conv state and the SSM state after the prompt's last token
    /// from zero, `S = Σ_t exp(Σ_{u∈(t,end]} dt_u·A) · dt_t · x_t ⊗ B_t` with dt biased, softplus'd and
    /// clamped as the prefill does (see [`Mamba2Mixer::forward_ragged`]).
    ///
    /// Models with attention layers are refused: their KV cache is one tensor per layer with one length for the
    /// whole batch, and ragged prefill would need per-sequence lengths (prompts of equal length can be
    /// prefilled together with `forward_with_state`).
    pub fn prefill_ragged(&self, prompts: &[Vec<u32>]) -> Result<(Tensor, ModelState)> {
        if prompts.is_empty() {
            return Err(ModelError::Input(
                "ragged prefill needs at least one prompt, got none".into(),
            ));
        }
        let mut ids = Vec::with_capacity(prompts.iter().map(Vec::len).sum());
        let mut seq_idx = Vec::with_capacity(ids.capacity());
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ModelError::Input(format!(
                    "prompt {i} of the ragged prefill is empty"
                )));
            }
            self.check_row(i, p.iter().map(|&v| i64::from(v)))?;
            ids.extend_from_slice(p);
            seq_idx.extend(std::iter::repeat_n(i as u32, p.len()));
        }
        let shape = (1, ids.len());
        let ids = Tensor::from_vec(ids, shape, self.device())?;
        let seq_idx = Tensor::from_vec(seq_idx, shape, &Device::Cpu)?;
        let (logits, state) = self.run(&ids, Some(&seq_idx), None, None, true, true)?;
        Ok((
            logits.squeeze(1)?,
            state.ok_or_else(|| ModelError::Invalid("no state computed".into()))?,
        ))
    }

    /// The forward pass; `keep_state` computes the per-layer state after the last token (inference), otherwise
    /// Mamba layers take their differentiable path. `seq_idx` (packed rows) excludes `state`; with `keep_state`
    /// it is a ragged prefill (one row, [`Packing::segments`]): the state holds one sequence per segment, and
    /// `last_only` takes every segment's last position (logits [segments, 1, V]).
    fn run(
        &self,
        ids: &Tensor,
        seq_idx: Option<&Tensor>,
        state: Option<&ModelState>,
        trace: Option<&mut Trace>,
        last_only: bool,
        keep_state: bool,
    ) -> Result<(Tensor, Option<ModelState>)> {
        let (logits, state) = self.run_local(ids, seq_idx, state, trace, last_only, keep_state)?;
        let logits = match &self.tp {
            Some(tp) => tp.gather_vocab(&logits, self.config.vocab_size)?,
            None => logits,
        };
        Ok((logits, state))
    }

    /// Per-position cross-entropy `ce [B, T]` (f32, differentiable) of the logits of `ids` [B, T] against
    /// `targets` (B·T full-vocabulary ids, row-major; typically the next tokens), with `seq_idx` as in
    /// [`forward_packed`](Self::forward_packed). Under tensor parallelism the cross-entropy is vocab-parallel
    /// and no rank holds a full row of logits; every rank gets the same values.
    pub fn token_losses(
        &self,
        ids: &Tensor,
        seq_idx: Option<&Tensor>,
        targets: &[u32],
    ) -> Result<Tensor> {
        let (logits, _) = self.run_local(ids, seq_idx, None, None, false, false)?;
        let (b, t, v) = logits.dims3()?;
        let flat = logits.reshape((b * t, v))?;
        let ce = match &self.tp {
            Some(tp) if tp.size() > 1 => {
                tp.cross_entropy(&flat, targets, self.config.vocab_size)?
            }
            _ => coil_ops::tensor::row_cross_entropy(&flat, targets)
                .map_err(|e| ModelError::Input(format!("loss: {e}")))?,
        };
        Ok(ce.reshape((b, t))?)
    }

    /// [`run`](Self::run) with the logits of this rank's vocabulary slice under tensor parallelism.
    fn run_local(
        &self,
        ids: &Tensor,
        seq_idx: Option<&Tensor>,
        state: Option<&ModelState>,
        mut trace: Option<&mut Trace>,
        last_only: bool,
        keep_state: bool,
    ) -> Result<(Tensor, Option<ModelState>)> {
        self.check_ids(ids)?;
        let (b, t) = ids.dims2()?;
        assert!(
            seq_idx.is_none() || state.is_none(),
            "packed rows start without a decode state"
        );
        let packing = match seq_idx {
            Some(s) => Some(self.packing(s, b, t, keep_state)?),
            None => None,
        };
        let segments = packing.as_ref().and_then(|p| p.segments.as_deref());
        if let Some(s) = state {
            if s.layers.len() != self.blocks.len() {
                return Err(ModelError::Invalid(format!(
                    "state has {} layers, the model {}",
                    s.layers.len(),
                    self.blocks.len()
                )));
            }
        }
        let resid_dtype = if self.config.residual_in_fp32 {
            DType::F32
        } else {
            self.dtype
        };
        let flat = ids.to_dtype(DType::U32)?.flatten_all()?;
        let d = self.config.hidden_size;
        let tp = self.tp.as_ref().filter(|t| t.size() > 1);
        if tp.is_some_and(|t| t.sequence_parallel()) && keep_state {
            return Err(ModelError::Unsupported(
                "sequence parallelism when decoding (it splits training sequences; run inference with \
                 tensor parallelism alone)"
                    .into(),
            ));
        }
        let mut r = match tp {
            None => self.embeddings.index_select(&flat, 0)?.reshape((b, t, d))?,
            Some(tp) => {
                let part = tp.embed_local(&self.embeddings, &flat.to_vec1::<u32>()?)?;
                tp.leave(&part.reshape((b, t, d))?)?
            }
        };
        if let Some(tr) = trace.as_deref_mut() {
            tr.record("act.embeddings", &r);
        }
        r = r.to_dtype(resid_dtype)?;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let mut h = rms_norm(&r.to_dtype(self.dtype)?, &block.norm, self.config.norm_eps)?;
            if let Some(tp) = tp {
                h = tp.enter(&h)?;
            }
            let prefix = format!("act.layers.{i}.mixer");
            let prev = state.map(|s| &s.layers[i]);
            let (out, next) = match (&block.mixer, prev) {
                (Mixer::Mamba(m), None) if packing.is_some() => match segments {
                    Some(segs) => {
                        let (o, s) = m.forward_ragged(&h, segs)?;
                        (o, LayerState::Mamba(s))
                    }
                    None => (m.forward_packed(&h, seq_idx)?, LayerState::Stateless),
                },
                (Mixer::Attention(a), None) if packing.is_some() => {
                    let mask = packing.as_ref().and_then(|p| p.mask.as_ref());
                    let mask = mask.expect("attention mask is built when the model has attention");
                    (a.forward_packed(&h, mask)?, LayerState::Stateless)
                }
                (Mixer::Mamba(m), None) if !keep_state => {
                    (m.forward(&h, &mut trace, &prefix)?, LayerState::Stateless)
                }
                (Mixer::Mamba(m), None | Some(LayerState::Mamba(_))) => {
                    let prev = prev.and_then(LayerState::as_mamba);
                    let (o, s) = m.forward_with_state(&h, prev, &mut trace, &prefix)?;
                    (o, LayerState::Mamba(s))
                }
                (Mixer::Attention(a), None | Some(LayerState::Attention(_))) => {
                    let prev = match prev {
                        Some(LayerState::Attention(c)) => Some(c),
                        _ => None,
                    };
                    let (o, c) = a.forward_with_cache(&h, prev)?;
                    (o, LayerState::Attention(c))
                }
                (Mixer::Mlp(m), None | Some(LayerState::Stateless)) => {
                    (m.forward(&h)?, LayerState::Stateless)
                }
                _ => {
                    return Err(ModelError::Invalid(format!(
                        "state of layer {i} does not match its kind {:?}",
                        block.kind
                    )))
                }
            };
            layers.push(next);
            let mut out = match tp {
                Some(tp) => tp.leave(&out)?,
                None => out,
            };
            if let Some(bias) = &block.out_bias {
                out = out.broadcast_add(bias)?;
            }
            if let Some(tr) = trace.as_deref_mut() {
                tr.record(format!("{prefix}.out"), &out);
            }
            r = (r + out.to_dtype(resid_dtype)?)?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.record(format!("act.layers.{i}.out"), &r);
            }
        }
        if let (true, Some(segs)) = (last_only, segments) {
            let ends: Vec<u32> = segs.iter().map(|s| s.end as u32 - 1).collect();
            let ends = Tensor::from_vec(ends, segs.len(), r.device())?;
            r = r.index_select(&ends, 1)?.transpose(0, 1)?;
        } else if last_only {
            r = r.narrow(1, t - 1, 1)?;
        }
        let mut h = rms_norm(&r.to_dtype(self.dtype)?, &self.norm_f, self.config.norm_eps)?;
        if let Some(tr) = trace {
            tr.record("act.norm_f", &h);
        }
        if let Some(tp) = tp {
            h = tp.enter(&h)?;
        }
        let head = Linear {
            weight: self
                .lm_head
                .clone()
                .unwrap_or_else(|| self.embeddings.clone()),
            bias: None,
        };
        let logits = head.forward(&h)?.to_dtype(DType::F32)?;
        Ok((logits, keep_state.then_some(ModelState { layers })))
    }

    /// Checks `seq_idx` against ids [B,T] and builds what the layers need from it; `ragged`: for a ragged
    /// prefill (one row, no attention layers).
    fn packing(&self, seq_idx: &Tensor, b: usize, t: usize, ragged: bool) -> Result<Packing> {
        if seq_idx.dims() != [b, t] {
            return Err(ModelError::Invalid(format!(
                "seq_idx has shape {:?}; it must match the input ids [{b}, {t}]",
                seq_idx.dims()
            )));
        }
        let host = coil_ops::tensor::seq_idx_host(seq_idx, b, t)
            .map_err(|e| ModelError::Invalid(format!("seq_idx: {e}")))?;
        let seg = coil_ops::packing::segment_ids(&host, b, t);
        let attention: Vec<usize> = (self.blocks.iter().enumerate())
            .filter(|(_, bl)| bl.kind == LayerKind::Attention)
            .map(|(i, _)| i)
            .collect();
        if ragged && !attention.is_empty() {
            return Err(ModelError::Unsupported(format!(
                "ragged prefill of a model with attention layers (layers {attention:?}: it would need \
                 per-sequence KV-cache lengths, and the KV cache is one tensor per layer with one length for the \
                 whole batch; prompts of equal length can be prefilled together with `forward_with_state`)"
            )));
        }
        if ragged && b != 1 {
            return Err(ModelError::Invalid(format!(
                "a ragged prefill packs its sequences into one row, got {b} rows"
            )));
        }
        Ok(Packing {
            mask: if attention.is_empty() {
                None
            } else {
                Some(segment_mask(&seg, b, t, self.device())?)
            },
            segments: ragged.then(|| segment_ranges(&seg)),
        })
    }

    /// The same model with every parameter an autograd variable (same values, dtype and device), and the
    /// variables by checkpoint name: differentiate a loss of its forward and read a parameter's gradient with
    /// `grads.get(var.as_tensor())`.
    pub fn trainable(&self) -> Result<(HybridLm, Vec<(String, Var)>)> {
        let vars = self
            .named_tensors()?
            .into_iter()
            .map(|(n, t)| Ok((n, Var::from_tensor(&t)?)))
            .collect::<Result<Vec<_>>>()?;
        let map: BTreeMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let model = HybridLm::from_local(
            &self.config,
            &map,
            self.device(),
            self.dtype,
            self.tp.clone(),
        )?;
        Ok((model, vars))
    }

    /// Every parameter by checkpoint name (the LM head only when untied), in the order of [`param_specs`]: the
    /// names the model was loaded by, with the tensors its layers hold.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.params.clone())
    }
}

/// What a packed forward needs beyond the ids: the attention mask [B,1,T,T] (only when the model has attention;
/// Mamba layers take `seq_idx` itself) and, for a ragged prefill, the positions of every segment of the row.
struct Packing {
    mask: Option<Tensor>,
    segments: Option<Vec<Range<usize>>>,
}

/// The position ranges of the segments of one row of segment ids (`coil_ops::packing::segment_ids`).
fn segment_ranges(seg: &[u32]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = vec![];
    for (t, s) in seg.iter().enumerate() {
        match out.last_mut() {
            Some(r) if seg[t - 1] == *s => r.end = t + 1,
            _ => out.push(t..t + 1),
        }
    }
    out
}

/// True when every element of `t` is finite (no NaN, no infinity); integer tensors always are. One pass on the
/// tensor's own device: `t - t` is 0 exactly where `t` is finite and NaN elsewhere, so its sum is 0 or NaN.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    let t = t.detach();
    #[allow(clippy::eq_op)] // on purpose: x - x is NaN exactly where x is not finite
    let s = (&t - &t)?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(s == 0.0)
}

/// Mean next-token cross-entropy of `logits[:, :-1]` against `ids[:, 1:]` (f32 scalar tensor).
pub fn next_token_loss(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if t < 2 {
        return Err(ModelError::Invalid(format!(
            "the loss needs at least 2 tokens per sequence, got {t}"
        )));
    }
    let pred = logits
        .narrow(1, 0, t - 1)?
        .to_dtype(DType::F32)?
        .reshape((b * (t - 1), v))?;
    let target = ids
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::U32)?
        .flatten_all()?;
    Ok(candle_nn::loss::cross_entropy(&pred, &target)?)
}
