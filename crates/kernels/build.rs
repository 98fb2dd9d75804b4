//! Compiles every kernel source in `cuda/` with nvcc into one cubin per target architecture, into OUT_DIR, where
//! `src/lib.rs` embeds them with `include_bytes!`. No PTX is shipped, so nothing is compiled at run time.
//!
//! nvcc is found as `$NVCC`, else `$CUDA_HOME/bin/nvcc` (or `$CUDA_PATH`, `$CUDA_ROOT`), else `nvcc` on PATH.
//! Only with the `cuda` feature. `COIL_KERNELS_PTXAS_VERBOSE=1` prints ptxas' register / shared-memory / spill report as build warnings.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources (without `.cu`) and the architectures each is built for. sm_80 code runs on every 8.x GPU
/// (A100, A10, L4, L40, RTX 30/40); sm_90 on the H100/H200; sm_90a (Hopper-only instructions: wgmma) only on
/// compute capability 9.0 exactly.
const KERNELS: &[(&str, &[&str])] = &[
    ("ssd_fwd", &["80", "90"]),
    ("ssd_fwd_sm90", &["90a"]),
    ("decode", &["80", "90"]),
    ("conv1d", &["80", "90"]),
    ("gated_norm", &["80", "90"]),
    ("attn_decode", &["80", "90"]),
];

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return; // CPU builds: no kernels, no nvcc
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = Path::new("cuda");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
        "COIL_KERNELS_PTXAS_VERBOSE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let nvcc = nvcc();
    let verbose = std::env::var("COIL_KERNELS_PTXAS_VERBOSE").is_ok_and(|v| v == "1");
    for (name, archs) in KERNELS {
        for arch in archs.iter() {
            let cubin = out.join(format!("{name}.sm{arch}.cubin"));
            let mut cmd = Command::new(&nvcc);
            cmd.args(["-std=c++17", "-O3", "-cubin", "-lineinfo"])
                .arg(format!("-gencode=arch=compute_{arch},code=sm_{arch}"))
                .arg("-I")
                .arg(src)
                .arg("-o")
                .arg(&cubin)
                .arg(src.join(format!("{name}.cu")));
            if verbose {
                cmd.arg("-Xptxas=-v");
            }
            let output = cmd.output().unwrap_or_else(|e| {
                panic!(
                    "coil-kernels: could not run nvcc ({}): {e}. The `cuda` feature needs the CUDA toolkit's nvcc: \
                     set NVCC or CUDA_HOME, or put nvcc on PATH",
                    nvcc.display()
                )
            });
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                panic!("coil-kernels: nvcc failed on cuda/{name}.cu for sm_{arch}:\n{stderr}");
            }
            if verbose {
                for line in stderr.lines() {
                    println!("cargo:warning=sm_{arch} {line}");
                }
            }
        }
    }
}
