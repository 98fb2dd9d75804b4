//! The `coil logits` contract: input_ids in, logits + loss (+ grad.<name>) out; clear errors on bad input.

mod common;
use common::{coil_model_io, fixture};
use std::path::Path;

/// `coil logits` on a fixture's own `input_ids`; returns (written tensors, the fixture's tensors).
fn logits_of_fixture(fx: &Path, out: &Path, extra: &[&str]) -> (Tensors, Tensors) {
    let input = fx.join("fixture.safetensors");
    let o = coil_model_io("logits", fx, "--input", &input, out, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cpu = candle_core::Device::Cpu;
    let got = candle_core::safetensors::load(out, &cpu).unwrap();
    (got, candle_core::safetensors::load(&input, &cpu).unwrap())
}

type Tensors = std::collections::HashMap<String, candle_core::Tensor>;

#[test]
fn writes_logits_and_loss_matching_the_fixture() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.safetensors");
    let fx = fixture("nemotron_h_tiny");
    let (got, want) = logits_of_fixture(&fx, &out, &[]);
    assert_eq!(got["logits"].dims(), &[2, 37, 256]);
    assert_eq!(got["logits"].dtype(), candle_core::DType::F32);
    assert_eq!(got["loss"].dims(), &[1]);
    let dl = (got["loss"].to_vec1::<f32>().unwrap()[0] - want["loss"].to_vec1::<f32>().unwrap()[0])
        .abs();
    assert!(dl <= 1e-5, "loss differs by {dl}");
    // no temporary file left next to the output
    let names: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn grads_flag_writes_every_parameter_gradient() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("g.safetensors");
    let fx = fixture("mamba2_tiny");
    let (got, want) = logits_of_fixture(&fx, &out, &["--grads"]);
    let grad_names: Vec<_> = want.keys().filter(|k| k.starts_with("grad.")).collect();
    assert!(!grad_names.is_empty());
    for k in grad_names {
        let g = got.get(k).unwrap_or_else(|| panic!("missing {k}"));
        assert_eq!(g.dims(), want[k].dims(), "{k}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("mamba2_tiny");
    let out = dir.path().join("o.safetensors");
    // a safetensors file without input_ids
    let bad = dir.path().join("bad.safetensors");
    let t = candle_core::Tensor::zeros((1, 2), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("ids".to_string(), t)]),
        &bad,
    )
    .unwrap();
    let o = coil_model_io("logits", &fx, "--input", &bad, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("no tensor `input_ids`")
            && err.contains("bad.safetensors"),
        "{err}"
    );
    // a model directory that does not exist
    let input = fx.join("fixture.safetensors");
    let o = coil_model_io(
        "logits",
        Path::new("/nonexistent/model"),
        "--input",
        &input,
        &out,
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/model"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn non_finite_weights_or_logits_fail_and_write_nothing() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.safetensors");
    // a NaN weight: refused on load, naming the tensor
    let name = "backbone.layers.0.mixer.in_proj.weight";
    let poisoned = common::edited_fixture("nemotron_h_tiny", name, |v| v[5] = f32::NAN);
    let input = poisoned.path().join("fixture.safetensors");
    let o = coil_model_io("logits", poisoned.path(), "--input", &input, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(name) && err.contains("non-finite"), "{err}");
    assert!(!out.exists());
    // finite weights whose logits overflow: refused, naming where the values stop being finite
    let huge = common::edited_fixture("nemotron_h_tiny", "lm_head.weight", |v| {
        v.iter_mut().for_each(|x| *x = f32::MAX / 2.0)
    });
    let input = huge.path().join("fixture.safetensors");
    let o = coil_model_io("logits", huge.path(), "--input", &input, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("NaN or infinity") && err.contains("first non-finite"),
        "{err}"
    );
    assert!(!out.exists());
}
