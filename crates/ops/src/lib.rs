//! Coil ops: the numerical kernels of the Mamba2 mixer.
//!
//! Owns: the SSD (state-space dual) scan, the causal depthwise conv1d + SiLU, the dt parametrisation and the
//! group-wise gated RMSNorm. Every op has a plain, readable reference (`*_reference`) and a fast CPU path; tests
//! run both on one case table.
//!
//! Key design decision: the math lives on plain `f32` slices with explicit shapes (see [`ssd::SsdDims`]); the
//! tensor-level entry points in [`tensor`] are the only place that looks at the device. Model code calls those
//! and never names a backend, so a CUDA path slots in beside the CPU one without touching the model.

pub mod conv1d;
pub mod dt;
mod linalg;
pub mod norm;
pub mod ssd;
pub mod tensor;

#[cfg(test)]
mod testutil;
