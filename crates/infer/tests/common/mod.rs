//! Helpers shared by the inference tests: the model crate's HF fixtures, read in place.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use coil_infer::{
    DecodeDtClamp, Engine, EngineOptions, GenerateParams, SamplingParams, WeightDtype,
};
use coil_model::HybridLm;
use std::collections::HashMap;
use std::path::PathBuf;

pub const FIXTURES: [&str; 5] = [
    "mamba2_tiny",
    "mamba2_g1_chunk64",
    "mamba2_tied_limit",
    "nemotron_h_tiny",
    "nemotron_h_gelu",
];

/// Greedy generation of at most `n` new tokens per prompt, `max_batch` sequences at a time, no EOS.
pub fn greedy(n: usize, max_batch: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens: n,
        sampling: SamplingParams::greedy(),
        seed: 0,
        eos: None,
        vocab_limit: None,
        max_batch,
        ssm_state: Default::default(),
    }
}

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
}

pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(name).join("fixture.safetensors"), &Device::Cpu)
        .expect("fixture readable")
}

pub fn load_model(name: &str) -> HybridLm {
    HybridLm::from_dir(&fixture_dir(name), &Device::Cpu, DType::F32).expect("model loads")
}

pub fn engine(name: &str, weights: WeightDtype, dt_clamp: DecodeDtClamp) -> Engine {
    Engine::new(load_model(name), EngineOptions { weights, dt_clamp }).expect("engine builds")
}

/// Row `b` of an integer [B, T] tensor as token ids.
pub fn row_u32(t: &Tensor, b: usize) -> Vec<u32> {
    t.get(b)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// `t[b, i, :]` of a [B, N, V] tensor.
pub fn logits_at(t: &Tensor, b: usize, i: usize) -> Vec<f32> {
    t.get(b).unwrap().get(i).unwrap().to_vec1::<f32>().unwrap()
}

/// The largest |a − b| (NaN when either side holds one).
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    coil_testutil::max_abs_diff(a, b)
}
