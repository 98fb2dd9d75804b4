//! Coil's CUDA kernels and their launchers.
//!
//! Owns: the `.cu` sources in `cuda/` (compiled by `build.rs` with nvcc into one cubin per architecture and
//! embedded in the binary), the loading of those cubins into a device's context, and one thin launcher per
//! kernel that checks every size, stride, alignment and extent before it launches. The launchers are the only
//! `unsafe` code of Coil's GPU path; the ops in `coil-ops` call them and never touch raw pointers.
//!
//! Key design decision: kernels ship as cubins built at build time, never as PTX or source compiled at run time
//! (no NVRTC, no autotuning): the first call costs a module load, not a compilation. Tile shapes are fixed
//! rules, measured offline and written down beside each kernel (`notes/`). A GPU for which no cubin exists (not
//! compute capability 8.x or 9.0) gets [`KernelError::Unsupported`], and the op falls back to its composed path.
//!
//! Everything here is behind the crate's `cuda` feature (which `coil-ops/cuda` turns on): without it the crate
//! is empty, so CPU builds need neither nvcc nor the CUDA libraries.

#[cfg(feature = "cuda")]
pub mod attn_decode;
#[cfg(feature = "cuda")]
pub mod conv1d;
#[cfg(feature = "cuda")]
pub mod decode;
#[cfg(feature = "cuda")]
pub mod gated_norm;
#[cfg(feature = "cuda")]
mod module;
#[cfg(feature = "cuda")]
pub mod ssd_fwd;
#[cfg(feature = "cuda")]
pub use module::{keep_freed_memory, Act, KernelError, Result};
