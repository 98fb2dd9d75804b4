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
