//! Derived figures of a recipe: parameter count and a per-GPU memory estimate (weights, gradients, optimizer
//! state, activations of one micro-batch), with tensor and pipeline parallelism applied.
//!
//! The estimate follows how Coil's trainer holds a run: compute weights in the run's precision, f32 gradient
//! accumulators, f32 Adam moments, plus f32 master weights under bf16-mixed, the moments and masters divided
//! over the data-parallel ranks with the distributed optimizer (`optim.use_distributed_optimizer`). Parameters
//! split evenly over TP x PP. Activations count the tensors each layer keeps for
//! backward at `micro_batch_size x seq_length` tokens (sequence parallelism also splits the residual stream
//! over TP; attention scores are not stored, as with flash attention), for the layers of one pipeline stage,
//! plus the f32 logits of the loss. It is an estimate: allocator slack and communication buffers are not in it.

use crate::recipe::{PrecisionName, Recipe};
use coil_model::config::LayerKind;
use serde::Serialize;

/// Bytes, per GPU.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub total: u64,
}

/// Parameters of the recipe's model.
pub fn num_parameters(recipe: &Recipe) -> u64 {
    coil_model::params::num_parameters(&recipe.model).unwrap_or(0)
}

pub fn estimate(recipe: &Recipe) -> MemoryEstimate {
    let p = &recipe.parallel;
    let tp = p.tensor_parallelism.max(1) as u64;
    let pp = p.pipeline_parallelism.max(1) as u64;
    let cp = p.context_parallelism.max(1) as u64;
    let params = num_parameters(recipe).div_ceil(tp * pp);
    let act_bytes: u64 = match recipe.trainer.precision {
        PrecisionName::F32 => 4,
        _ => 2,
    };
    let weights = params * act_bytes;
    let gradients = params * 4;
    let dp = if recipe.optim.use_distributed_optimizer {
        p.data_parallel().max(1) as u64
    } else {
        1
    };
    let optimizer = (params * if act_bytes == 4 { 8 } else { 12 }).div_ceil(dp);

    let m = &recipe.model;
    let tokens = (recipe.trainer.micro_batch_size * recipe.trainer.seq_length) as u64 / cp;
    let d = m.hidden_size as u64;
    // The residual stream (norm input and layer input) is split over TP only with sequence parallelism.
    let resid = if p.sequence_parallelism {
        2 * d / tp
    } else {
        2 * d
    };
    let md = m.mixer_dims();
    let per_layer = |k: LayerKind| -> u64 {
        let split = match k {
            LayerKind::Mamba => {
                // in_proj output, conv output, SSM output and gated-norm output.
                (md.in_proj_dim() + md.conv_dim() + 2 * md.d_inner()) as u64
            }
            LayerKind::Attention => {
                let a = &m.attention;
                ((a.num_heads + 2 * a.num_kv_heads) * a.head_dim + a.num_heads * a.head_dim) as u64
            }
            LayerKind::Mlp => 2 * m.mlp.intermediate_size as u64,
        };
        resid + split / tp
    };
    let kinds = m.layers().unwrap_or_default();
    let layers_total: u64 = kinds.iter().map(|k| per_layer(*k)).sum();
    // 1F1B keeps up to PP micro-batches in flight on the first stage, each holding 1/PP of the layers.
    let microbatches = (recipe.trainer.global_batch_size
        / (recipe.trainer.micro_batch_size * p.data_parallel()).max(1))
        as u64;
    let in_flight = pp.min(microbatches.max(1));
    let stage = layers_total / pp * in_flight;
    let logits = 2 * (m.vocab_size as u64 / tp) * 4; // f32 logits and their gradient
    let activations = tokens * (stage * act_bytes + logits);
    MemoryEstimate {
        weights,
        gradients,
        optimizer,
        activations,
        total: weights + gradients + optimizer + activations,
    }
}

/// `1.23 GiB`-style text.
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}
