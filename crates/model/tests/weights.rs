//! Checkpoint formats (bf16/f16 on disk, sharded, state-spaces pytorch_model.bin) and their errors.

mod common;

use candle_core::{DType, Device, Tensor};
use coil_model::{HybridLm, ModelError};
use common::*;
use std::collections::HashMap;

fn read_model_tensors(dir: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn bf16_and_f16_checkpoints_load_as_their_rounded_values() {
    let fx = load_fixture("mamba2_tiny");
    for dtype in [DType::BF16, DType::F16] {
        let dir = copy_fixture("mamba2_tiny");
        let f32_tensors = read_model_tensors(dir.path());
        let low: HashMap<String, Tensor> = f32_tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&low, dir.path().join("model.safetensors")).unwrap();
        let model = HybridLm::from_dir(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let want = f32_tensors["backbone.layers.1.mixer.in_proj.weight"]
            .to_dtype(dtype)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let coil_model::lm::Mixer::Mamba(m) = &model.blocks[1].mixer else {
            panic!("layer 1 is a Mamba layer")
        };
        assert_eq!(
            max_abs(&m.in_proj.weight, &want),
            0.0,
            "{dtype:?}: weights are the exact rounded values"
        );
        // Rounding the weights moves the logits only a little.
        let logits = model.forward(&fx["input_ids"], None).unwrap();
        let err = max_abs(&logits, &fx["logits"]);
        assert!(err < 0.1 && err > 0.0, "{dtype:?}: logits differ by {err}");
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let fx = load_fixture("nemotron_h_tiny");
    let dir = copy_fixture("nemotron_h_tiny");
    let all = read_model_tensors(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut names: Vec<_> = all.keys().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: HashMap<String, Tensor> =
            part.iter().map(|n| (n.clone(), all[n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let model = HybridLm::from_dir(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let logits = model.forward(&fx["input_ids"], None).unwrap();
    assert!(max_abs(&logits, &fx["logits"]) <= 1e-4);
}

#[test]
fn state_spaces_layout_loads_and_matches_hf() {
    // The HF mamba2_tiny fixture re-saved by tools/make_state_spaces_fixture.py as pytorch_model.bin with
    // mamba_ssm names and a mamba_ssm config.
    let fx = load_fixture("mamba2_tiny");
    let model = HybridLm::from_dir(
        &fixture_dir("state_spaces_mamba2_tiny"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(model.config.mamba.n_groups, 2);
    let logits = model.forward(&fx["input_ids"], None).unwrap();
    assert!(max_abs(&logits, &fx["logits"]) <= 1e-4);
}

fn load_err(dir: &std::path::Path) -> String {
    match HybridLm::from_dir(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("expected an error loading {}", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_names_tensor_shape_and_file() {
    let dir = copy_fixture("mamba2_tiny");
    let mut t = read_model_tensors(dir.path());
    t.remove("backbone.layers.1.mixer.A_log");
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("backbone.layers.1.mixer.A_log")
            && msg.contains("[8]")
            && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let dir = copy_fixture("nemotron_h_tiny");
    let mut t = read_model_tensors(dir.path());
    t.insert(
        "backbone.layers.3.mixer.up_proj.weight".into(),
        Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("backbone.layers.3.mixer.up_proj.weight")
            && msg.contains("[64, 64]")
            && msg.contains("[128, 64]"),
        "{msg}"
    );
}

#[test]
fn bad_configs_are_clear_errors() {
    let cases: [(&str, &str); 5] = [
        (
            r#"{"model_type": "llama", "hidden_size": 8}"#,
            "unknown model_type \"llama\"",
        ),
        (
            r#"{"model_type": "mamba2", "hidden_size": 64,"#,
            "malformed JSON",
        ),
        (
            r#"{"model_type": "mamba2", "num_hidden_layers": 2, "vocab_size": 10}"#,
            "missing required field `hidden_size`",
        ),
        (
            r#"{"model_type": "nemotron_h", "hybrid_override_pattern": "M*E-"}"#,
            "mixture of experts",
        ),
        (
            r#"{"model_type": "mamba2", "hidden_size": "64", "num_hidden_layers": 2, "vocab_size": 10}"#,
            "field `hidden_size`",
        ),
    ];
    for (json, want) in cases {
        let dir = copy_fixture("mamba2_tiny");
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let msg = load_err(dir.path());
        assert!(
            msg.contains(want) && msg.contains("config.json"),
            "{json} -> {msg}"
        );
    }
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir("mamba2_tiny").join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    assert!(load_err(empty.path()).contains("no weights found"));
    let not_st = copy_fixture("mamba2_tiny");
    std::fs::write(not_st.path().join("model.safetensors"), b"garbage").unwrap();
    assert!(load_err(not_st.path()).contains("not a valid safetensors file"));
}

#[test]
fn out_of_range_token_ids_are_rejected() {
    let model = load_model("mamba2_tiny");
    let ids = Tensor::new(&[[1i64, 2, 256]], &Device::Cpu).unwrap();
    match model.forward(&ids, None) {
        Err(e @ ModelError::Input(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("token id 256 at [0, 2]"), "{msg}");
            assert!(!msg.contains("model config"), "{msg}");
        }
        other => panic!("expected an invalid-input error, got {other:?}"),
    }
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY] {
        let dir = copy_fixture("nemotron_h_tiny");
        let mut tensors = read_model_tensors(dir.path());
        let name = "backbone.layers.0.mixer.in_proj.weight";
        let t = &tensors[name];
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[3] = bad;
        let poisoned = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), poisoned);
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let msg = load_err(dir.path());
        assert!(
            msg.contains(name) && msg.contains("non-finite") && msg.contains("model.safetensors"),
            "{msg}"
        );
    }
}
