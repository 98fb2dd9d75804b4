//! The op case table ([`coil_ops::tensor::checks`]) on a CUDA GPU: every composed op against the CPU kernels,
//! forward and (mixer core) backward, in f32 and with bf16 inputs. Run by hand on a GPU machine:
//! `cargo test --release --features cuda -p coil-ops --test cuda -- --ignored`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device};
use coil_ops::tensor::checks::{assert_all_ok, run_case_table};

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA GPU (these tests run by hand on a GPU machine)")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn case_table_on_cuda_f32() {
    assert_all_ok(&run_case_table(&gpu(), DType::F32).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn case_table_on_cuda_bf16_inputs() {
    assert_all_ok(&run_case_table(&gpu(), DType::BF16).unwrap());
}
