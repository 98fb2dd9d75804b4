//! Every op's case table (`src/<op>/tests.rs`, included here as it is) on a CUDA GPU, in f32 and bf16: the
//! reference and the CPU kernels on the host, the composed twin and the op's entry point (its `cuda_fwd`) on the
//! GPU, forward and backward, with per-dtype tolerances. Run by hand on a GPU machine:
//! `cargo test --release --features cuda -p coil-ops --test cuda -- --ignored`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device};
use coil_testutil::assert_all_ok;

// The included files also carry their CPU tests (not ignored), which run here too without `--ignored`.
#[allow(dead_code)]
#[path = "../src/conv1d/tests.rs"]
mod conv1d;
#[allow(dead_code)]
#[path = "../src/cross_entropy/tests.rs"]
mod cross_entropy;
#[allow(dead_code)]
#[path = "../src/dt/tests.rs"]
mod dt;
#[allow(dead_code)]
#[path = "../src/gated_rmsnorm/tests.rs"]
mod gated_rmsnorm;
#[allow(dead_code)]
#[path = "../src/mixer_core/tests.rs"]
mod mixer_core;
#[allow(dead_code)]
#[path = "../src/ssd/tests.rs"]
mod ssd;
#[allow(dead_code)]
#[path = "../src/ssd/layer_tests.rs"]
mod ssd_layer;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA GPU (these tests run by hand on a GPU machine)")
}

macro_rules! on_cuda {
    ($($name:ident: $table:ident, $dtype:expr;)*) => {$(
        #[test]
        #[ignore = "needs a CUDA GPU"]
        fn $name() {
            assert_all_ok(&$table::run(&gpu(), $dtype));
        }
    )*};
}

on_cuda! {
    ssd_on_cuda_f32: ssd, DType::F32;
    ssd_on_cuda_bf16: ssd, DType::BF16;
    ssd_layer_on_cuda_f32: ssd_layer, DType::F32;
    ssd_layer_on_cuda_bf16: ssd_layer, DType::BF16;
    conv1d_on_cuda_f32: conv1d, DType::F32;
    conv1d_on_cuda_bf16: conv1d, DType::BF16;
    dt_on_cuda_f32: dt, DType::F32;
    dt_on_cuda_bf16: dt, DType::BF16;
    gated_rmsnorm_on_cuda_f32: gated_rmsnorm, DType::F32;
    gated_rmsnorm_on_cuda_bf16: gated_rmsnorm, DType::BF16;
    mixer_core_on_cuda_f32: mixer_core, DType::F32;
    mixer_core_on_cuda_bf16: mixer_core, DType::BF16;
    cross_entropy_on_cuda_f32: cross_entropy, DType::F32;
    cross_entropy_on_cuda_bf16: cross_entropy, DType::BF16;
}
