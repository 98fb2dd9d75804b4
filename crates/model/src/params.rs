//! The parameter table: every tensor of a model, by checkpoint name, with its shape and initialisation.
//!
//! This list is the single source of truth for names, shapes and initialisation: the model reads exactly these
//! tensors from a checkpoint and saves them under these names, the parameter count sums it and random
//! initialisation (Megatron's rules, docs/nemo.md §3) walks it. Each layer kind has its own section.

use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;

/// How a parameter is initialised from scratch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal(f64),
    Ones,
    Zeros,
    /// U(−b, b).
    Uniform(f64),
    /// Mamba dt_bias: inverse softplus of a log-uniform dt in [min, max], floored.
    DtBias {
        min: f64,
        max: f64,
        floor: f64,
    },
    /// Mamba A_log: log U(1, 16).
    ALog,
}

/// One tensor of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    fn new(name: String, shape: &[usize], init: Init) -> Self {
        ParamSpec {
            name,
            shape: shape.to_vec(),
            init,
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// All parameters of `cfg`, in checkpoint (HF) names and checkpoint order. The LM head is absent when embeddings
/// are tied. This table is the one list of parameters: [`crate::HybridLm::load`] reads exactly these tensors
/// (checking each shape) and its layers take them by name, [`crate::HybridLm::named_tensors`] returns them under
/// these names, and [`init_params`] draws them.
pub fn param_specs(cfg: &ModelConfig) -> Result<Vec<ParamSpec>> {
    let kinds = cfg.layers()?;
    let (v, d, std) = (cfg.vocab_size, cfg.hidden_size, cfg.init_std);
    let n_layers = kinds.len();
    let mut specs = vec![ParamSpec::new(
        "backbone.embeddings.weight".into(),
        &[v, d],
        Init::Normal(std),
    )];
    for (i, kind) in kinds.iter().enumerate() {
        let prefix = format!("backbone.layers.{i}");
        specs.push(ParamSpec::new(
            format!("{prefix}.norm.weight"),
            &[d],
            Init::Ones,
        ));
        let mixer = format!("{prefix}.mixer");
        specs.extend(match kind {
            LayerKind::Mamba => mamba_mixer(cfg, &mixer, n_layers),
            LayerKind::Attention => attention(cfg, &mixer, n_layers),
            LayerKind::Mlp => mlp(cfg, &mixer, n_layers),
        });
    }
    specs.push(ParamSpec::new(
        "backbone.norm_f.weight".into(),
        &[d],
        Init::Ones,
    ));
    if !cfg.tie_word_embeddings {
        specs.push(ParamSpec::new(
            "lm_head.weight".into(),
            &[v, d],
            Init::Normal(std),
        ));
    }
    Ok(specs)
}

/// Output projections of every block are scaled by 1/sqrt(num_layers) (Megatron, hybrid models: m = 1).
fn out_std(std: f64, n_layers: usize) -> f64 {
    std / (n_layers as f64).sqrt()
}

/// One Mamba2 mixer's parameters under `prefix` (`backbone.layers.{i}.mixer`).
fn mamba_mixer(cfg: &ModelConfig, prefix: &str, n_layers: usize) -> Vec<ParamSpec> {
    let m = &cfg.mamba;
    let md = cfg.mixer_dims();
    let (d, h, inner, conv, k) = (
        cfg.hidden_size,
        md.heads,
        md.d_inner(),
        md.conv_dim(),
        m.conv_kernel,
    );
    let p = |s: &str| format!("{prefix}.{s}");
    let conv_bound = 1.0 / (k as f64).sqrt(); // kaiming_uniform(a=√5), fan_in = K (depthwise)
    let mut specs = vec![ParamSpec::new(
        p("in_proj.weight"),
        &[md.in_proj_dim(), d],
        Init::Normal(0.02),
    )];
    if m.proj_bias {
        specs.push(ParamSpec::new(
            p("in_proj.bias"),
            &[md.in_proj_dim()],
            Init::Zeros,
        ));
    }
    specs.push(ParamSpec::new(
        p("conv1d.weight"),
        &[conv, 1, k],
        Init::Uniform(conv_bound),
    ));
    if m.conv_bias {
        specs.push(ParamSpec::new(
            p("conv1d.bias"),
            &[conv],
            Init::Uniform(conv_bound),
        ));
    }
    let dt = Init::DtBias {
        min: m.dt_init_min,
        max: m.dt_init_max,
        floor: m.dt_init_floor,
    };
    specs.push(ParamSpec::new(p("dt_bias"), &[h], dt));
    specs.push(ParamSpec::new(p("A_log"), &[h], Init::ALog));
    specs.push(ParamSpec::new(p("D"), &[h], Init::Ones));
    specs.push(ParamSpec::new(p("norm.weight"), &[inner], Init::Ones));
    specs.push(ParamSpec::new(
        p("out_proj.weight"),
        &[d, inner],
        Init::Normal(out_std(0.02, n_layers)),
    ));
    if m.proj_bias {
        specs.push(ParamSpec::new(p("out_proj.bias"), &[d], Init::Zeros));
    }
    specs
}

/// One attention layer's parameters under `prefix`.
fn attention(cfg: &ModelConfig, prefix: &str, n_layers: usize) -> Vec<ParamSpec> {
    let (a, d, std) = (&cfg.attention, cfg.hidden_size, cfg.init_std);
    let (q, kv) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
    let p = |s: &str| format!("{prefix}.{s}");
    vec![
        ParamSpec::new(p("q_proj.weight"), &[q, d], Init::Normal(std)),
        ParamSpec::new(p("k_proj.weight"), &[kv, d], Init::Normal(std)),
        ParamSpec::new(p("v_proj.weight"), &[kv, d], Init::Normal(std)),
        ParamSpec::new(
            p("o_proj.weight"),
            &[d, q],
            Init::Normal(out_std(std, n_layers)),
        ),
    ]
}

/// One MLP layer's parameters under `prefix`.
fn mlp(cfg: &ModelConfig, prefix: &str, n_layers: usize) -> Vec<ParamSpec> {
    let (f, d, std) = (cfg.mlp.intermediate_size, cfg.hidden_size, cfg.init_std);
    let p = |s: &str| format!("{prefix}.{s}");
    let mut specs = vec![ParamSpec::new(
        p("up_proj.weight"),
        &[f, d],
        Init::Normal(std),
    )];
    if cfg.mlp.bias {
        specs.push(ParamSpec::new(p("up_proj.bias"), &[f], Init::Zeros));
    }
    specs.push(ParamSpec::new(
        p("down_proj.weight"),
        &[d, f],
        Init::Normal(out_std(std, n_layers)),
    ));
    if cfg.mlp.bias {
        specs.push(ParamSpec::new(p("down_proj.bias"), &[d], Init::Zeros));
    }
    specs
}

/// Number of parameters of `cfg` (a tied LM head counts once).
pub fn num_parameters(cfg: &ModelConfig) -> Result<u64> {
    Ok(param_specs(cfg)?.iter().map(|s| s.numel() as u64).sum())
}

/// Draws values for one spec.
fn draw(spec: &ParamSpec, rng: &mut rand::rngs::StdRng) -> Result<Vec<f32>> {
    let n = spec.numel();
    Ok(match spec.init {
        Init::Ones => vec![1.0; n],
        Init::Zeros => vec![0.0; n],
        Init::Normal(std) => {
            let dist = Normal::new(0.0f64, std).map_err(|_| {
                ModelError::Invalid(format!(
                    "{}: init std must be finite and >= 0, got {std}",
                    spec.name
                ))
            })?;
            (0..n).map(|_| dist.sample(rng) as f32).collect()
        }
        Init::Uniform(b) => (0..n)
            .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * b) as f32)
            .collect(),
        Init::DtBias { min, max, floor } => {
            if !(min > 0.0 && max >= min) {
                return Err(ModelError::Invalid(format!(
                    "{}: dt init range [{min}, {max}] must be positive and ordered",
                    spec.name
                )));
            }
            (0..n)
                .map(|_| {
                    let u: f64 = rng.random();
                    let dt = (u * (max.ln() - min.ln()) + min.ln()).exp().max(floor);
                    (dt + (-(-dt).exp_m1()).ln()) as f32 // inverse softplus
                })
                .collect()
        }
        Init::ALog => (0..n)
            .map(|_| (1.0 + 15.0 * rng.random::<f64>()).ln() as f32)
            .collect(),
    })
}

/// Fresh parameters for `cfg`, seeded; one RNG stream per tensor so a tensor's values do not depend on the
/// order or presence of others.
pub fn init_params(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<BTreeMap<String, Tensor>> {
    use rayon::prelude::*;
    let specs = param_specs(cfg)?;
    let drawn: Vec<Vec<f32>> = specs
        .par_iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            draw(spec, &mut rng)
        })
        .collect::<Result<_>>()?;
    let mut out = BTreeMap::new();
    for (spec, values) in specs.iter().zip(drawn) {
        let t = Tensor::from_vec(values, spec.shape.as_slice(), device)?.to_dtype(dtype)?;
        out.insert(spec.name.clone(), t);
    }
    Ok(out)
}
