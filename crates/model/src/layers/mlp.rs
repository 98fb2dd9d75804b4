//! MLP (`-`): `down(act(up(x)))`, not gated; squared ReLU (Nemotron-H) or erf GELU (Mamba2-Hybrid-8B).

use super::Linear;
use crate::config::{MlpActivation, ModelConfig};
use crate::error::Result;
use crate::weights::Loader;
use candle_core::Tensor;

#[derive(Clone, Debug)]
pub struct Mlp {
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub activation: MlpActivation,
}

impl Mlp {
    pub fn load(l: &Loader, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let (d, f, bias) = (cfg.hidden_size, cfg.mlp.intermediate_size, cfg.mlp.bias);
        Ok(Mlp {
            up_proj: Linear::load(l, &format!("{prefix}.up_proj"), f, d, bias)?,
            down_proj: Linear::load(l, &format!("{prefix}.down_proj"), d, f, bias)?,
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
