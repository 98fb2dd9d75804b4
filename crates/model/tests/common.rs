//! Helpers shared by the model tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use coil_model::HybridLm;
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(name).join("fixture.safetensors"), &Device::Cpu)
        .expect("fixture readable")
}

pub fn load_model(name: &str) -> HybridLm {
    HybridLm::from_dir(&fixture_dir(name), &Device::Cpu, DType::F32).expect("model loads")
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Copies a fixture's model files to a fresh temporary directory for tests that modify them.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}
