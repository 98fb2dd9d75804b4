//! Recording intermediate activations by name, for comparisons with the HF fixtures' activations. The layers
//! record into it and the model fills it, so it sits below both.

use candle_core::Tensor;
use std::collections::BTreeMap;

/// Intermediate activations by name (`act.embeddings`, `act.layers.{i}.out`, `act.layers.{i}.mixer.*`,
/// `act.norm_f`), the names the HF fixtures use.
#[derive(Default, Debug)]
pub struct Trace(pub BTreeMap<String, Tensor>);

impl Trace {
    pub fn record(&mut self, name: impl Into<String>, t: &Tensor) {
        self.0.insert(name.into(), t.clone());
    }
}
