//! Helpers shared by the model tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use coil_model::{next_token_loss, HybridLm, Trace};
use std::collections::HashMap;
use std::path::PathBuf;

/// `tests/fixtures/<name>` of this crate; relative to the working directory when the test binary runs away from
/// its build tree (the CUDA tests on a GPU machine run from `crates/model`).
pub fn fixture_dir(name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let base = if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures")
    };
    base.join(name)
}

pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(name).join("fixture.safetensors"), &Device::Cpu)
        .expect("fixture readable")
}

pub fn load_model(name: &str) -> HybridLm {
    load_model_on(name, &Device::Cpu, DType::F32)
}

pub fn load_model_on(name: &str, dev: &Device, dtype: DType) -> HybridLm {
    HybridLm::from_dir(&fixture_dir(name), dev, dtype).expect("model loads")
}

/// The largest |a − b| of two tensors of one shape (NaN when either side holds one).
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    coil_testutil::max_abs_diff(a, b)
}

/// Copies a fixture's model files to a fresh temporary directory for tests that modify them.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// (name, ‖g − g_hf‖ / ‖g_hf‖) for every parameter of a fixture, computed on `dev`.
pub fn grad_errors(name: &str, dev: &Device) -> Vec<(String, f64)> {
    let fx = load_fixture(name);
    let (model, vars) = load_model_on(name, dev, DType::F32).trainable().unwrap();
    let ids = &fx["input_ids"].to_device(dev).unwrap();
    let loss = next_token_loss(&model.forward(ids, None).unwrap(), ids).unwrap();
    let grads = loss.backward().unwrap();
    vars.iter()
        .map(|(n, v)| {
            let want = fx
                .get(&format!("grad.{n}"))
                .unwrap_or_else(|| panic!("{name}: fixture lacks grad.{n}"));
            let got = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {n}"))
                .to_device(&Device::Cpu)
                .unwrap();
            (n.clone(), coil_testutil::rel_l2(&got, want))
        })
        .collect()
}

/// Runs fixture `name` on `dev` in f32 and checks logits (max-abs ≤ 1e-4), loss (≤ 1e-5) and every recorded
/// `act.*` activation (≤ 1e-4, at least 6) against HF's; returns the logits.
pub fn check_fixture_forward(name: &str, dev: &Device) -> Tensor {
    let fx = load_fixture(name);
    let model = load_model_on(name, dev, DType::F32);
    let ids = fx["input_ids"].to_device(dev).unwrap();
    let mut trace = Trace::default();
    let logits = model.forward(&ids, Some(&mut trace)).unwrap();
    let err = max_abs(&logits, &fx["logits"]);
    let loss = next_token_loss(&logits, &ids)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = fx["loss"].to_vec1::<f32>().unwrap()[0];
    eprintln!("{name} f32 on {dev:?}: logits max-abs {err:.2e}, loss {loss} vs HF {want}");
    assert!(err <= 1e-4, "{name}: logits max-abs error {err}");
    assert!(
        (loss - want).abs() <= 1e-5,
        "{name}: loss {loss} vs HF {want}"
    );
    let mut checked = 0;
    for (key, want) in fx.iter().filter(|(k, _)| k.starts_with("act.")) {
        let got = trace
            .0
            .get(key)
            .unwrap_or_else(|| panic!("{name}: activation {key} not recorded"));
        let e = max_abs(got, want);
        assert!(e <= 1e-4, "{name}: {key} max-abs error {e}");
        checked += 1;
    }
    assert!(checked >= 6, "{name}: only {checked} activations compared");
    logits
}
