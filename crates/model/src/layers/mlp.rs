//! MLP (`-`): `down(act(up(x)))`, not gated; squared ReLU (Nemotron-H) or erf GELU (Mamba2-Hybrid-8B).

use super::{Linear, ParamMap};
use crate::config::{MlpActivation, ModelConfig};
use crate::error::Result;
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Mlp {
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub activation: MlpActivation,
}

impl Mlp {
    /// Takes the layer's parameters under `prefix` (see [`crate::params::param_specs`]).
    pub fn load(p: &mut ParamMap, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        Ok(Mlp {
            up_proj: Linear::take(p, &format!("{prefix}.up_proj"))?,
            down_proj: Linear::take(p, &format!("{prefix}.down_proj"))?,
            activation: cfg.mlp.activation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.up_proj.forward(x)?;
        let h = match self.activation {
            MlpActivation::Relu2 => h.relu()?.sqr()?,
            MlpActivation::Gelu => h.gelu_erf()?,
        };
        self.down_proj.forward(&h)
    }
}
