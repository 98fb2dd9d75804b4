//! `coil serve` as a process: binds 127.0.0.1 on the port asked for (0: a free one, printed), lists the model
//! under its directory's name (or --served-model-name), answers a completion; refuses a model directory without
//! a tokenizer with a message naming --tokenizer.

mod common;
use common::{coil, fixture};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(args: &[&str]) -> (Child, std::net::SocketAddr) {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_coil"))
            .arg("serve")
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("coil serve starts"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("coil serve printed its address before exiting")
            .expect("stderr readable");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (child, addr)
}

#[test]
fn serve_lists_the_model_by_directory_name_and_completes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("my-tiny-model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("mamba2_tiny").join(f), dir.join(f)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let o = coil(&["serve", "--model", d, "--port", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tokenizer"));

    let (_child, addr) = serve(&[
        "--model",
        d,
        "--port",
        "0",
        "--tokenizer",
        "bytes",
        "--device",
        "cpu",
    ]);
    assert!(addr.ip().is_loopback(), "default bind is 127.0.0.1: {addr}");
    let models = coil_serve::client::get(addr, "/v1/models")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "my-tiny-model");
    let body = serde_json::json!({"model": "my-tiny-model", "prompt": "hi", "max_tokens": 3});
    let r = coil_serve::client::post_json(addr, "/v1/completions", &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["usage"]["completion_tokens"], 3);

    let (_child, addr) = serve(&[
        "--model",
        d,
        "--port",
        "0",
        "--tokenizer",
        "bytes",
        "--served-model-name",
        "other",
    ]);
    let models = coil_serve::client::get(addr, "/v1/models")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "other");
    let r = coil_serve::client::post_json(addr, "/v1/completions", &body).unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn bench_serve_reports_throughput_latency_and_rss() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("nemotron_h_tiny").join(f), dir.join(f)).unwrap();
    }
    let o = coil(&[
        "bench",
        "serve",
        "--model",
        dir.to_str().unwrap(),
        "--tokenizer",
        "bytes",
        "--device",
        "cpu",
        "--clients",
        "4",
        "--seconds",
        "0.5",
        "--prompt-tokens",
        "20",
        "--new-tokens",
        "8",
        "--json",
    ]);
    let (out, err) = common::text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["requests"].as_u64().unwrap() >= 4, "{v}");
    assert_eq!(v["errors"], 0);
    // Every request returned its 8 tokens.
    let tps = v["output_tokens_per_s"].as_f64().unwrap();
    let rps = v["requests_per_s"].as_f64().unwrap();
    assert!((tps / rps - 8.0).abs() < 1e-6, "{v}");
    for k in [
        "ttft_p50_ms",
        "ttft_p99_ms",
        "itl_p50_ms",
        "itl_p99_ms",
        "rss_before_mib",
        "rss_after_mib",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
}
