//! Gradients by candle autograd (with the Mamba2 mixer core's hand-written backward) against the HF fixtures'
//! `grad.*` tensors: relative norm error ≤ 1e-4 for every parameter.

mod common;

use candle_core::Device;
use common::*;

#[test]
fn gradients_match_hf_for_every_parameter() {
    for name in [
        "mamba2_tiny",
        "mamba2_g1_chunk64",
        "mamba2_tied_limit",
        "nemotron_h_tiny",
        "nemotron_h_gelu",
    ] {
        let errs = grad_errors(name, &Device::Cpu);
        assert!(!errs.is_empty());
        let worst = errs.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        eprintln!(
            "{name}: {} gradients, worst relative error {:.2e} ({})",
            errs.len(),
            worst.1,
            worst.0
        );
        assert!(
            worst.1 <= 1e-4,
            "{name}: worst gradient {} rel error {:.3e}",
            worst.0,
            worst.1
        );
    }
}
