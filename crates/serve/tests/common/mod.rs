//! Helpers of the server tests: a fixture model in a temporary directory with the byte tokenizer (and a chat
//! template when asked), a server on 127.0.0.1 with an ephemeral port, and the library's own generation to
//! compare against.
#![allow(dead_code)]

use candle_core::{DType, Device};
use coil_infer::{generate, Engine, EngineOptions, GenerateParams, SamplingParams};
use coil_model::HybridLm;
use coil_serve::{client, ChatTemplate, ServeConfig, ServedModel, Server};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
}

/// A copy of fixture `name` with the byte tokenizer and, when given, `tokenizer_config.json` holding
/// `chat_template`.
pub fn model_dir(name: &str, chat_template: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).expect("fixture copied");
    }
    std::fs::write(
        dir.path().join("coil_tokenizer.json"),
        r#"{"tokenizer": "bytes"}"#,
    )
    .expect("written");
    if let Some(t) = chat_template {
        let cfg =
            serde_json::json!({"chat_template": t, "bos_token": "", "eos_token": "<|endoftext|>"});
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).expect("written");
    }
    dir
}

pub fn engine(dir: &Path) -> Engine {
    let lm = HybridLm::from_dir(dir, &Device::Cpu, DType::F32).expect("model loads");
    Engine::new(lm, EngineOptions::default()).expect("engine")
}

/// A server over the model in `dir`; `edit` adjusts the defaults (port 0, small batch and queue, 16-token
/// prefill chunks so that prompts span several).
pub fn start(dir: &Path, edit: impl FnOnce(&mut ServeConfig)) -> Server {
    let mut cfg = ServeConfig::new("tiny");
    cfg.port = 0;
    cfg.max_batch = 8;
    cfg.max_queue = 64;
    cfg.max_prompt_tokens = 256;
    cfg.max_tokens = 64;
    cfg.prefill_chunk = 16;
    cfg.prefix_cache_bytes = 16 << 20;
    edit(&mut cfg);
    let model = ServedModel {
        engine: engine(dir),
        tokenizer: coil_data::load_tokenizer(&dir.to_string_lossy()).expect("tokenizer"),
        template: ChatTemplate::from_model_dir(dir).expect("template"),
    };
    Server::start(cfg, model).expect("server starts")
}

/// `coil_infer::generate` on the same model: what the server must return (no EOS stop).
pub fn library_tokens(
    dir: &Path,
    prompts: &[Vec<u32>],
    sampling: SamplingParams,
    seed: u64,
    max_new_tokens: usize,
) -> Vec<Vec<u32>> {
    let e = engine(dir);
    let params = GenerateParams {
        max_new_tokens,
        sampling,
        seed,
        eos: None,
        vocab_limit: Some(256),
        max_batch: 4,
        ssm_state: Default::default(),
    };
    generate(&e, prompts, &params, &mut |_, _| {})
        .expect("generates")
        .into_iter()
        .map(|g| g.tokens)
        .collect()
}

/// Deterministic prompt ids of length `n`.
pub fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + salt * 17 + 7) % 256)
        .collect()
}

pub fn post(s: &Server, path: &str, body: &Value) -> client::Response {
    client::post_json(s.addr(), path, body).expect("request")
}

/// A 200 response's JSON (panics with the body otherwise).
pub fn ok_json(r: client::Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().expect("json")
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The value of an unlabelled metric in /metrics.
pub fn metric(s: &Server, name: &str) -> f64 {
    let text = client::get(s.addr(), "/metrics").expect("metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// All `data:` payloads of an SSE response, `[DONE]` included.
pub fn sse_events(mut s: client::Streaming) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = s.next_event().expect("event") {
        out.push(e);
    }
    out
}
