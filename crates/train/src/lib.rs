//! Coil's training engine.
//!
//! Owns: AdamW with fp32 master weights and fp32 gradient accumulation ([`optim`]), the warmup + cosine LR
//! schedule ([`schedule`]), the loop with validation and NaN/Inf stops ([`trainer`]), data-parallel gradient
//! exchange ([`dist`]), the run-directory lock ([`lock`]), atomic checkpoints in HF layout with optimizer and
//! trainer state ([`checkpoint`]), and run feedback ([`metrics`], [`plot`]).
//!
//! Key design decision: gradients come from candle's autograd over the model's own forward pass; the Mamba2
//! mixer core is one custom op with a hand-written backward (in `coil-ops`), so the model code has one forward
//! and training adds no second implementation of any layer.

pub mod checkpoint;
pub mod dist;
pub mod error;
mod fused;
pub mod lock;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod trainer;

pub use error::{Result, TrainError};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::LrSchedule;
pub use trainer::{train, train_parallel, Precision, Start, TrainRun, TrainSummary, TrainerConfig};
