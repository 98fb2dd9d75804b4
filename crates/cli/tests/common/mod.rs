//! Helpers shared by the CLI contract tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A checkpoint fixture of the model crate's tests (HF config + weights + `fixture.safetensors`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
}

/// Runs `coil` in a fresh working directory, so relative paths (`runs/...`) never land in the source tree.
pub fn coil(args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    Command::new(env!("CARGO_BIN_EXE_coil"))
        .args(args)
        .current_dir(cwd.path())
        .output()
        .unwrap_or_else(|e| panic!("running coil: {e}"))
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `coil <cmd> --model MODEL <input_flag> INPUT --output OUTPUT [extra...]`.
pub fn coil_model_io(
    cmd: &str,
    model: &Path,
    input_flag: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        cmd,
        "--model",
        model.to_str().unwrap(),
        input_flag,
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    coil(&args)
}

/// A copy of fixture `name` (config, weights and inputs) whose tensor `tensor` is replaced by `edit` of its
/// values (e.g. a NaN, or a huge scale that makes the logits overflow).
pub fn edited_fixture(name: &str, tensor: &str, edit: impl Fn(&mut Vec<f32>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for f in ["config.json", "model.safetensors", "fixture.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let cpu = candle_core::Device::Cpu;
    let path = dir.path().join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &cpu).unwrap_or_else(|e| panic!("{e}"));
    let t = &w[tensor];
    let mut v = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{e}"));
    edit(&mut v);
    let edited = candle_core::Tensor::from_vec(v, t.dims(), &cpu).unwrap_or_else(|e| panic!("{e}"));
    w.insert(tensor.to_string(), edited);
    candle_core::safetensors::save(&w, &path).unwrap_or_else(|e| panic!("{e}"));
    dir
}
