//! Tensor and sequence parallelism: one model split over the ranks of a tensor-parallel (TP) group, as Megatron
//! splits these layers.
//!
//! **Which rank holds what.** A rank holds, of every layer, the slice its heads need ([`shard_rule`]):
//! - Mamba2 mixer: in_proj rows of each segment `[z | x | B | C | dt]` split on its own (heads for z, x, dt;
//!   groups for B, C), the conv channels of x, B and C likewise, `dt_bias`, `A_log`, `D` and the gated norm's
//!   weight by heads, out_proj by columns. The group-wise gated norm stays exact because groups never straddle
//!   ranks.
//! - Attention: query heads and key/value heads split (GQA: each rank keeps whole KV groups), o_proj by columns.
//! - MLP: up_proj by rows, down_proj by columns.
//! - Embedding and LM head: by vocabulary rows (vocab-parallel). When TP does not divide the vocabulary, each
//!   rank's slice is padded with zero rows to `ceil(V / TP)`; the padding is never looked up and never enters the
//!   softmax, so the model computes the same function at every TP and checkpoints keep `V` rows.
//! - RMSNorm weights and the biases of the row-parallel projections (out_proj, o_proj, down_proj) are
//!   replicated; those biases are added once, after the sum over ranks.
//!
//! **What travels.** Column-parallel projections (in_proj, q/k/v, up_proj, LM head) take the full hidden state;
//! row-parallel ones (out_proj, o_proj, down_proj) produce partial sums. Without sequence parallelism every layer
//! is `enter` (forward: identity, backward: sum of the input gradient over ranks) → local mixer → `leave`
//! (forward: sum over ranks, backward: identity). With sequence parallelism the residual stream and the norms
//! hold `T / TP` positions per rank: `enter` gathers the sequence (backward: reduce-scatter) and `leave`
//! reduce-scatters it (backward: gather). The cross-entropy is vocab-parallel: the row maximum, the sum of
//! exponentials and the target logit are combined over ranks, and no rank holds a full row of logits.
//!
//! **Replicated parameters** get identical gradients on every rank without sequence parallelism; with it each
//! rank sees its own positions, and the trainer sums their gradients over the TP group
//! ([`TensorParallel::needs_grad_sum`]).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::params::param_specs;
use crate::weights::{Loader, WeightSource};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};
use coil_comm::Collective;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// A model's place in a tensor-parallel group: the group's collective, this rank, and whether the sequence is
/// split too. Cloning shares the collective.
#[derive(Clone)]
pub struct TensorParallel {
    comm: Arc<Mutex<Box<dyn Collective>>>,
    rank: usize,
    size: usize,
    sequence_parallel: bool,
}

impl std::fmt::Debug for TensorParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorParallel")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("sequence_parallel", &self.sequence_parallel)
            .finish()
    }
}

/// How one parameter is split: the ranges of axis `dim` of the full tensor this rank holds, concatenated, then
/// zero-padded along `dim` to `len` entries. `None` from [`shard_rule`] = replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub dim: usize,
    pub ranges: Vec<Range<usize>>,
    pub len: usize,
}

impl TensorParallel {
    /// This rank of the TP group `comm` (its size is the TP size).
    pub fn new(comm: Box<dyn Collective>, sequence_parallel: bool) -> Self {
        let (rank, size) = (comm.rank(), comm.world_size());
        TensorParallel {
            comm: Arc::new(Mutex::new(comm)),
            rank,
            size,
            sequence_parallel,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn sequence_parallel(&self) -> bool {
        self.sequence_parallel
    }

    /// Runs `f` on the group's collective.
    pub fn with_comm<T>(
        &self,
        f: impl FnOnce(&mut dyn Collective) -> coil_comm::Result<T>,
    ) -> Result<T> {
        let mut guard = self
            .comm
            .lock()
            .map_err(|_| ModelError::Invalid("tensor-parallel collective poisoned".into()))?;
        Ok(f(guard.as_mut())?)
    }

    /// The sizes this rank's layers have: heads, groups, KV heads, MLP width and vocabulary divided by the TP
    /// size (the vocabulary rounded up), with an error naming the size that does not divide.
    pub fn local_config(&self, full: &ModelConfig) -> Result<ModelConfig> {
        local_config(full, self.size)
    }

    /// True when the trainer must sum this parameter's gradient over the TP group: replicated parameters under
    /// sequence parallelism (each rank saw only its positions).
    pub fn needs_grad_sum(&self, name: &str, full: &ModelConfig) -> Result<bool> {
        Ok(self.sequence_parallel && shard_rule(name, full, self.size, self.rank)?.is_none())
    }

    /// This rank's slice of the full parameter `name` (`full_tensor` as the checkpoint holds it).
    pub fn shard(
        &self,
        name: &str,
        full_cfg: &ModelConfig,
        full_tensor: &Tensor,
    ) -> Result<Tensor> {
        match shard_rule(name, full_cfg, self.size, self.rank)? {
            None => Ok(full_tensor.clone()),
            Some(s) => cut(full_tensor, &s),
        }
    }

    /// The full parameter `name` from every rank's slice (`local` on this rank; a collective call, every rank of
    /// the group calls it with its own slice). Replicated parameters come back as they are.
    pub fn unshard(&self, name: &str, full_cfg: &ModelConfig, local: &Tensor) -> Result<Tensor> {
        if shard_rule(name, full_cfg, self.size, self.rank)?.is_none() {
            return Ok(local.clone());
        }
        let host = to_host(local)?;
        let all = self.with_comm(|c| c.all_gather(&host))?;
        let per = host.len();
        let mut pieces: Vec<(usize, Tensor)> = vec![];
        for r in 0..self.size {
            let s = shard_rule(name, full_cfg, self.size, r)?
                .ok_or_else(|| ModelError::Invalid(format!("{name}: split on one rank only")))?;
            let t = Tensor::from_vec(
                all[r * per..(r + 1) * per].to_vec(),
                local.shape(),
                local.device(),
            )?;
            let mut at = 0;
            for range in &s.ranges {
                pieces.push((range.start, t.narrow(s.dim, at, range.len())?));
                at += range.len();
            }
        }
        pieces.sort_by_key(|(start, _)| *start);
        let parts: Vec<&Tensor> = pieces.iter().map(|(_, t)| t).collect();
        Ok(Tensor::cat(&parts, pieces_dim(name, full_cfg, self.size)?)?.to_dtype(local.dtype())?)
    }

    /// Into the TP region before a column-parallel projection: without sequence parallelism the identity whose
    /// backward sums the gradient over ranks; with it, the gather of the sequence (axis 1) whose backward
    /// reduce-scatters.
    pub fn enter(&self, x: &Tensor) -> Result<Tensor> {
        if self.size == 1 {
            return Ok(x.clone());
        }
        if self.sequence_parallel {
            let (me, back) = (self.clone(), self.clone());
            let y = me.gather_seq(&x.detach())?;
            hook(x, &y, "coil-tp-gather-seq", move |g| back.scatter_seq(g))
        } else {
            let back = self.clone();
            hook(x, &x.detach(), "coil-tp-enter", move |g| back.all_reduce(g))
        }
    }

    /// Out of the TP region after a row-parallel projection: the sum over ranks (backward: identity), or with
    /// sequence parallelism the reduce-scatter along the sequence (backward: gather).
    pub fn leave(&self, x: &Tensor) -> Result<Tensor> {
        if self.size == 1 {
            return Ok(x.clone());
        }
        if self.sequence_parallel {
            let back = self.clone();
            let y = self.scatter_seq(&x.detach())?;
            hook(x, &y, "coil-tp-scatter-seq", move |g| back.gather_seq(g))
        } else {
            let y = self.all_reduce(&x.detach())?;
            hook(x, &y, "coil-tp-leave", |g| Ok(g.clone()))
        }
    }

    /// The sum over ranks whose backward is the identity (each rank's part of a sum gets the sum's gradient).
    fn sum(&self, x: &Tensor) -> Result<Tensor> {
        if self.size == 1 {
            return Ok(x.clone());
        }
        let y = self.all_reduce(&x.detach())?;
        hook(x, &y, "coil-tp-sum", |g| Ok(g.clone()))
    }

    fn seq_part(&self, t: usize) -> Result<usize> {
        if !t.is_multiple_of(self.size) {
            return Err(ModelError::Input(format!(
                "sequence parallelism splits the {t} positions of a row over {} tensor-parallel ranks; the \
                 sequence length must be a multiple of the TP size",
                self.size
            )));
        }
        Ok(t / self.size)
    }

    /// The vocab-parallel LM head's output over the full vocabulary: every rank's `[.., V/TP]` logits side by
    /// side, the padding dropped (differentiable: the backward keeps this rank's columns).
    pub fn gather_vocab(&self, local: &Tensor, vocab: usize) -> Result<Tensor> {
        if self.size == 1 {
            return Ok(local.clone());
        }
        let dims = local.dims().to_vec();
        let vl = *dims.last().unwrap_or(&0);
        let rows = local.elem_count() / vl.max(1);
        let host = to_host(&local.detach())?;
        let all = self.with_comm(|c| c.all_gather(&host))?;
        let full = Tensor::from_vec(all, (self.size, rows, vl), local.device())?
            .transpose(0, 1)?
            .reshape((rows, self.size * vl))?
            .narrow(1, 0, vocab)?;
        let mut out_dims = dims;
        if let Some(l) = out_dims.last_mut() {
            *l = vocab;
        }
        let full = full.reshape(out_dims)?.to_dtype(local.dtype())?;
        let (rank, last) = (self.rank, local.rank() - 1);
        hook(local, &full, "coil-tp-gather-vocab", move |g| {
            let padded = g.pad_with_zeros(last, 0, (rank + 1) * vl - vocab.min((rank + 1) * vl))?;
            padded.narrow(last, rank * vl, vl)
        })
    }

    /// Vocab-parallel cross-entropy: `logits` [N, V/TP] (this rank's columns, f32), `targets` [N] full-vocabulary
    /// ids below `vocab` → `ce` [N] = logsumexp(row) − row[target] over the whole vocabulary, on every rank.
    /// Differentiable; the columns of the padding never count.
    pub fn cross_entropy(&self, logits: &Tensor, targets: &[u32], vocab: usize) -> Result<Tensor> {
        let (n, vl) = logits.dims2()?;
        if targets.len() != n {
            return Err(ModelError::Invalid(format!(
                "cross entropy: {} targets for {n} rows of logits",
                targets.len()
            )));
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "cross entropy: target {t} is outside the vocabulary [0, {vocab})"
            )));
        }
        let start = self.rank * vl;
        let dev = logits.device();
        let mut x = logits.to_dtype(DType::F32)?;
        let real = vocab.saturating_sub(start).min(vl);
        if real < vl {
            // Padding columns: minus infinity, so they add nothing to the sum of exponentials.
            let mask: Vec<f32> = (0..vl)
                .map(|j| if j < real { 0.0 } else { f32::NEG_INFINITY })
                .collect();
            x = x.broadcast_add(&Tensor::from_vec(mask, (1, vl), dev)?)?;
        }
        let mut max = if real == 0 {
            vec![f32::NEG_INFINITY; n]
        } else {
            x.detach()
                .max_keepdim(D::Minus1)?
                .flatten_all()?
                .to_vec1::<f32>()?
        };
        self.with_comm(|c| c.all_reduce_max(&mut max))?;
        let max = Tensor::from_vec(max, (n, 1), dev)?;
        let sum_exp = self.sum(&x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?)?;
        let (mut idx, mut hit) = (vec![0u32; n], vec![0f32; n]);
        for (i, &t) in targets.iter().enumerate() {
            let t = t as usize;
            if (start..start + real).contains(&t) {
                idx[i] = (t - start) as u32;
                hit[i] = 1.0;
            }
        }
        let picked = x
            .gather(&Tensor::from_vec(idx, (n, 1), dev)?, 1)?
            .mul(&Tensor::from_vec(hit, (n, 1), dev)?)?;
        let target = self.sum(&picked)?;
        Ok((sum_exp.log()? + max)?.sub(&target)?.squeeze(1)?)
    }

    /// This rank's part of the vocab-parallel embedding lookup of `ids` (full-vocabulary ids, flattened): the
    /// rows it holds, zeros for the others; `leave` then sums (or reduce-scatters) the parts.
    pub fn embed_local(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let vl = table.dim(0)?;
        let start = self.rank * vl;
        let (mut idx, mut hit) = (vec![0u32; ids.len()], vec![0f32; ids.len()]);
        for (i, &t) in ids.iter().enumerate() {
            let t = t as usize;
            if (start..start + vl).contains(&t) {
                idx[i] = (t - start) as u32;
                hit[i] = 1.0;
            }
        }
        let dev = table.device();
        let rows = table.index_select(&Tensor::from_vec(idx, ids.len(), dev)?, 0)?;
        let hit = Tensor::from_vec(hit, (ids.len(), 1), dev)?.to_dtype(table.dtype())?;
        Ok(rows.broadcast_mul(&hit)?)
    }

    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut host = to_host(x).map_err(candle)?;
        self.with_comm(|c| c.all_reduce_sum(&mut host))
            .map_err(candle)?;
        Tensor::from_vec(host, x.shape(), x.device())?.to_dtype(x.dtype())
    }

    /// [B, T/TP, ..] on every rank → [B, T, ..], ranks' positions in rank order.
    fn gather_seq(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let host = to_host(x).map_err(candle)?;
        let all = self.with_comm(|c| c.all_gather(&host)).map_err(candle)?;
        let mut stacked = vec![self.size];
        stacked.extend_from_slice(&dims);
        let mut out = dims.clone();
        out[1] *= self.size;
        Tensor::from_vec(all, stacked, x.device())?
            .transpose(0, 1)?
            .reshape(out)?
            .to_dtype(x.dtype())
    }

    /// [B, T, ..] on every rank → this rank's positions of the sum over ranks, [B, T/TP, ..].
    fn scatter_seq(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let part = self.seq_part(dims[1]).map_err(candle)?;
        let mut split = vec![dims[0], self.size, part];
        split.extend_from_slice(&dims[2..]);
        let by_rank = x.reshape(split)?.transpose(0, 1)?.contiguous()?;
        let host = to_host(&by_rank).map_err(candle)?;
        let mine = self
            .with_comm(|c| c.reduce_scatter_sum(&host))
            .map_err(candle)?;
        let mut out = dims;
        out[1] = part;
        Tensor::from_vec(mine, out, x.device())?.to_dtype(x.dtype())
    }
}

fn candle(e: ModelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn to_host(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The full model's tensors in `src` as one rank's slices, named as the full model's: what
/// [`crate::HybridLm::from_local`] loads for [`crate::HybridLm::load_parallel`]. Only the slices are read where
/// the source allows (memory-mapped safetensors), so no rank holds the whole model.
pub struct Sliced<'a> {
    src: &'a dyn WeightSource,
    full: &'a ModelConfig,
    tp: &'a TensorParallel,
    /// Checkpoint name → the name in `src` (itself or an alias).
    names: HashMap<String, String>,
}

impl<'a> Sliced<'a> {
    /// Checks that `src` has every tensor of the full model with its full shape (the errors a whole-model load
    /// gives), reading nothing.
    pub fn new(
        src: &'a dyn WeightSource,
        full: &'a ModelConfig,
        tp: &'a TensorParallel,
    ) -> Result<Self> {
        let probe = Loader {
            src,
            device: candle_core::Device::Cpu,
            dtype: DType::F32,
        };
        let mut names = HashMap::new();
        for spec in param_specs(full)? {
            names.insert(spec.name.clone(), probe.find(&spec.name, &spec.shape)?);
        }
        Ok(Sliced {
            src,
            full,
            tp,
            names,
        })
    }

    fn rule(&self, name: &str) -> Result<Option<Shard>> {
        shard_rule(name, self.full, self.tp.size, self.tp.rank)
    }
}

impl WeightSource for Sliced<'_> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let mut shape = self.src.shape(self.names.get(name)?)?;
        if let Ok(Some(s)) = self.rule(name) {
            shape[s.dim] = s.len;
        }
        Some(shape)
    }

    fn read(&self, name: &str, device: &candle_core::Device) -> Result<Tensor> {
        let actual = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::Invalid(format!("no tensor {name}")))?;
        let Some(s) = self.rule(name)? else {
            return self.src.read(actual, device);
        };
        let kept: Vec<Range<usize>> = s.ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        let have: usize = kept.iter().map(|r| r.len()).sum();
        let part = match kept.is_empty() {
            // A rank past the end of a small vocabulary: all padding (one row read for the dtype).
            true => self
                .src
                .read_part(actual, s.dim, std::slice::from_ref(&(0..1)), device)?
                .narrow(s.dim, 0, 0)?,
            false => self.src.read_part(actual, s.dim, &kept, device)?,
        };
        if have == s.len {
            return Ok(part);
        }
        let mut pad = part.dims().to_vec();
        pad[s.dim] = s.len - have;
        let zeros = Tensor::zeros(pad, part.dtype(), device)?;
        Ok(if have == 0 {
            zeros
        } else {
            Tensor::cat(&[&part, &zeros], s.dim)?
        })
    }

    fn location(&self, name: &str) -> String {
        self.src
            .location(self.names.get(name).map_or(name, String::as_str))
    }
}

/// The sizes of one rank's layers at TP size `tp`; see [`TensorParallel::local_config`].
pub fn local_config(full: &ModelConfig, tp: usize) -> Result<ModelConfig> {
    let kinds = full.layers()?;
    let bad = |what: String| {
        Err(ModelError::Invalid(format!(
            "tensor parallelism {tp}: {what} (Megatron splits these across the TP ranks)"
        )))
    };
    if tp == 0 {
        return bad("the TP size must be at least 1".into());
    }
    let mut c = full.clone();
    use crate::config::LayerKind::*;
    if kinds.contains(&Mamba) {
        let m = &full.mamba;
        if !m.num_heads.is_multiple_of(tp) || !m.n_groups.is_multiple_of(tp) {
            return bad(format!(
                "it must divide the Mamba2 mixer's {} heads and {} groups",
                m.num_heads, m.n_groups
            ));
        }
        c.mamba.num_heads /= tp;
        c.mamba.n_groups /= tp;
    }
    if kinds.contains(&Attention) {
        let a = &full.attention;
        if !a.num_heads.is_multiple_of(tp) || !a.num_kv_heads.is_multiple_of(tp) {
            return bad(format!(
                "it must divide the attention's {} query heads and {} key/value heads",
                a.num_heads, a.num_kv_heads
            ));
        }
        c.attention.num_heads /= tp;
        c.attention.num_kv_heads /= tp;
    }
    if kinds.contains(&Mlp) {
        if !full.mlp.intermediate_size.is_multiple_of(tp) {
            return bad(format!(
                "it must divide the MLP's intermediate size {}",
                full.mlp.intermediate_size
            ));
        }
        c.mlp.intermediate_size /= tp;
    }
    c.vocab_size = full.vocab_size.div_ceil(tp);
    Ok(c)
}

/// The part of `[start, start + len)` split in `tp` equal consecutive parts that rank `rank` holds.
fn part(start: usize, len: usize, tp: usize, rank: usize) -> Range<usize> {
    let p = len / tp;
    start + rank * p..start + (rank + 1) * p
}

/// How parameter `name` of the full model `full` is split at TP size `tp` for rank `rank`; `None` when every
/// rank holds all of it (RMSNorm weights, row-parallel biases). An unknown name is an error.
#[allow(clippy::single_range_in_vec_init)] // a list of ranges that has one here
pub fn shard_rule(name: &str, full: &ModelConfig, tp: usize, rank: usize) -> Result<Option<Shard>> {
    local_config(full, tp)?;
    let rows = |ranges: Vec<Range<usize>>| {
        let len = ranges.iter().map(|r| r.len()).sum();
        Some(Shard {
            dim: 0,
            ranges,
            len,
        })
    };
    let cols = |r: Range<usize>| {
        Some(Shard {
            dim: 1,
            len: r.len(),
            ranges: vec![r],
        })
    };
    let md = full.mixer_dims();
    let (inner, gn, heads) = (md.d_inner(), md.groups * md.state, md.heads);
    let a = &full.attention;
    let (q, kv) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
    let ffn = full.mlp.intermediate_size;
    let leaf = name.rsplit_once(".mixer.").map(|(_, l)| l).unwrap_or(name);
    Ok(match leaf {
        "backbone.embeddings.weight" | "lm_head.weight" => {
            let vl = full.vocab_size.div_ceil(tp);
            let start = (rank * vl).min(full.vocab_size);
            let end = ((rank + 1) * vl).min(full.vocab_size);
            Some(Shard {
                dim: 0,
                ranges: vec![start..end],
                len: vl,
            })
        }
        "in_proj.weight" | "in_proj.bias" => rows(md.in_proj_shard(rank, tp)?),
        "conv1d.weight" | "conv1d.bias" => rows(vec![
            part(0, inner, tp, rank),
            part(inner, gn, tp, rank),
            part(inner + gn, gn, tp, rank),
        ]),
        "dt_bias" | "A_log" | "D" => rows(vec![part(0, heads, tp, rank)]),
        "norm.weight" => rows(vec![part(0, inner, tp, rank)]),
        "out_proj.weight" => cols(part(0, inner, tp, rank)),
        "q_proj.weight" | "q_proj.bias" => rows(vec![part(0, q, tp, rank)]),
        "k_proj.weight" | "k_proj.bias" | "v_proj.weight" | "v_proj.bias" => {
            rows(vec![part(0, kv, tp, rank)])
        }
        "o_proj.weight" => cols(part(0, q, tp, rank)),
        "up_proj.weight" | "up_proj.bias" => rows(vec![part(0, ffn, tp, rank)]),
        "down_proj.weight" => cols(part(0, ffn, tp, rank)),
        "out_proj.bias" | "o_proj.bias" | "down_proj.bias" => None,
        _ if name.ends_with(".norm.weight") || name == "backbone.norm_f.weight" => None,
        _ => {
            return Err(ModelError::Invalid(format!(
                "parameter {name} has no tensor-parallel split rule"
            )))
        }
    })
}

/// The axis along which the pieces of a split parameter join.
fn pieces_dim(name: &str, full: &ModelConfig, tp: usize) -> Result<usize> {
    Ok(shard_rule(name, full, tp, 0)?.map_or(0, |s| s.dim))
}

/// `full`'s ranges along `s.dim`, concatenated and zero-padded to `s.len`.
fn cut(full: &Tensor, s: &Shard) -> Result<Tensor> {
    let mut parts = vec![];
    for r in &s.ranges {
        if !r.is_empty() {
            parts.push(full.narrow(s.dim, r.start, r.len())?);
        }
    }
    let have: usize = s.ranges.iter().map(|r| r.len()).sum();
    let mut shape = full.dims().to_vec();
    if have < s.len {
        shape[s.dim] = s.len - have;
        parts.push(Tensor::zeros(shape, full.dtype(), full.device())?);
    }
    Ok(Tensor::cat(&parts, s.dim)?.contiguous()?)
}

/// `x` → a copy of `y` (same device, dtype and shape as `y`) whose backward hands `back(grad)` to `x`: how the
/// collectives join candle's autograd. `y` is computed from `x` outside the graph.
fn hook(
    x: &Tensor,
    y: &Tensor,
    name: &'static str,
    back: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y.clone());
    }
    Ok(x.apply_op2(
        &y.contiguous()?,
        Hook {
            name,
            back: Box::new(back),
        },
    )?)
}

type Backward = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync>;

/// See [`hook`]: forward copies the second argument, backward maps the gradient onto the first.
struct Hook {
    name: &'static str,
    back: Backward,
}

fn copy_of<S>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)>
where
    S: candle_core::backend::BackendStorage,
    S::Device: candle_core::backend::BackendDevice<Storage = S>,
{
    use candle_core::backend::BackendDevice;
    let mut out = s.device().zeros_impl(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut out, 0, l)?;
    Ok((out, l.shape().clone()))
}

impl CustomOp2 for Hook {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_of(s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        copy_of(s2, l2)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.back)(grad)?), None))
    }
}
