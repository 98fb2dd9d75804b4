//! The tensor-level entry points of the ops, gathered for model code (`coil_ops::tensor as ops`). Each is a
//! re-export of the entry point in its op's `mod.rs`, which is where the device path is picked; nothing here
//! computes or dispatches.

pub use crate::conv1d::{causal_conv1d_silu, causal_conv1d_silu_packed};
pub use crate::cross_entropy::row_cross_entropy;
pub use crate::dt::dt_softplus;
pub use crate::gated_rmsnorm::gated_rmsnorm;
pub use crate::linear::linear;
pub use crate::mixer_core::{mixer_core, mixer_core_packed, pack_mixer_params};
pub use crate::packing::seq_idx_host;
pub use crate::rmsnorm::rms_norm;
pub use crate::ssd::{
    prefill_bf16, set_prefill_bf16, ssd, ssd_input_dtype, ssd_layer, ssd_packed, LayerSsd,
};

/// The composed twins (candle tensor ops, differentiable through autograd) of the entry points, for
/// benchmarks and comparisons.
pub mod composed {
    pub use crate::conv1d::composed::causal_conv1d_silu;
    pub use crate::cross_entropy::composed::row_cross_entropy;
    pub use crate::dt::composed::dt_softplus;
    pub use crate::gated_rmsnorm::composed::gated_rmsnorm;
    pub use crate::mixer_core::composed::mixer_core;
    pub use crate::packing::Segments;
    pub use crate::ssd::composed::ssd;
}
