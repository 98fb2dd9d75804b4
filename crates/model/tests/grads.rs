//! Gradients by candle autograd (with the Mamba2 mixer core's hand-written backward) against the HF fixtures'
//! `grad.*` tensors: relative norm error ≤ 1e-4 for every parameter.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use coil_model::{next_token_loss, HybridLm};
use common::*;
use std::collections::BTreeMap;

/// (name, ‖g − g_hf‖ / ‖g_hf‖) for every parameter of a fixture.
fn grad_errors(name: &str) -> Vec<(String, f64)> {
    let fx = load_fixture(name);
    let model = load_model(name);
    let vars: Vec<(String, Var)> = model
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
        .collect();
    let map: BTreeMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let model = HybridLm::load(&model.config, &map, &Device::Cpu, DType::F32).unwrap();
    let ids = &fx["input_ids"];
    let loss = next_token_loss(&model.forward(ids, None).unwrap(), ids).unwrap();
    let grads = loss.backward().unwrap();
    vars.iter()
        .map(|(n, v)| {
            let want = fx
                .get(&format!("grad.{n}"))
                .unwrap_or_else(|| panic!("{name}: fixture lacks grad.{n}"));
            let got = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
            let norm = |t: &Tensor| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt() as f64
            };
            let diff = norm(&(got - want).unwrap());
            (n.clone(), diff / norm(want).max(1e-30))
        })
        .collect()
}

#[test]
fn gradients_match_hf_for_every_parameter() {
    for name in [
        "mamba2_tiny",
        "mamba2_g1_chunk64",
        "mamba2_tied_limit",
        "nemotron_h_tiny",
        "nemotron_h_gelu",
    ] {
        let errs = grad_errors(name);
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
