//! Throughput benchmark of the data path, callable from `coil bench` or `cargo bench -p coil-data`:
//! preprocessing tokens/s (one worker as the in-process reference, then all workers) over the embedded
//! Shakespeare corpus, index build time, and GPT loader samples/s and tokens/s.

use std::path::Path;
use std::time::Instant;

use crate::batch::{DataCursor, Loader};
use crate::blend::build_pretraining_datasets;
use crate::error::{DataError, Result};
use crate::gpt::GptConfig;
use crate::preprocess::{preprocess_jsonl, PreprocessConfig};
use crate::tokenizer::load_tokenizer;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Copies of the Shakespeare corpus in the JSONL input (1 copy ~ 1 MB, ~300k GPT-2 tokens).
    pub corpus_copies: usize,
    /// Worker threads for the parallel preprocess run.
    pub workers: usize,
    /// Loader sequence length and micro-batch size.
    pub seq_length: usize,
    pub micro_batch_size: usize,
    /// Samples to draw through the loader.
    pub loader_samples: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            corpus_copies: 4,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            seq_length: 2048,
            micro_batch_size: 8,
            loader_samples: 4096,
        }
    }
}

/// Measured numbers.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub tokens: u64,
    pub preprocess_tokens_per_s_1_worker: f64,
    pub preprocess_tokens_per_s: f64,
    pub workers: usize,
    pub index_build_s: f64,
    pub index_cached_load_s: f64,
    pub loader_samples_per_s: f64,
    pub loader_tokens_per_s: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "preprocess (gpt2, {} tokens): 1 worker {:.0} tokens/s; {} workers {:.0} tokens/s (x{:.2})",
            self.tokens, self.preprocess_tokens_per_s_1_worker, self.workers, self.preprocess_tokens_per_s,
            self.preprocess_tokens_per_s / self.preprocess_tokens_per_s_1_worker.max(1e-9))?;
        writeln!(
            f,
            "GPT indices: build {:.3}s, cached load {:.3}s",
            self.index_build_s, self.index_cached_load_s
        )?;
        write!(
            f,
            "loader: {:.0} samples/s, {:.0} tokens/s",
            self.loader_samples_per_s, self.loader_tokens_per_s
        )
    }
}

/// Run the benchmark in `workdir` (files are left there for inspection).
pub fn run(options: &BenchOptions, workdir: &Path) -> Result<BenchReport> {
    let input = workdir.join("shakespeare.jsonl");
    let mut body = String::new();
    for _ in 0..options.corpus_copies.max(1) {
        for d in crate::corpus::shakespeare_documents(2000) {
            body.push_str(&serde_json::json!({ "text": d }).to_string());
            body.push('\n');
        }
    }
    crate::atomic::write_file(&input, body.as_bytes())?;
    let tok = load_tokenizer("gpt2")?;
    let mut report = BenchReport {
        workers: options.workers,
        ..Default::default()
    };
    for (workers, name) in [(1, "bench_w1"), (options.workers.max(1), "bench")] {
        let cfg = PreprocessConfig {
            input: input.clone(),
            json_key: "text".into(),
            output_prefix: workdir.join(name),
            append_eod: true,
            workers,
            dtype: None,
        };
        let stats = preprocess_jsonl(&cfg, tok.as_ref(), &mut |_| {})?;
        report.tokens = stats.tokens;
        if workers == 1 {
            report.preprocess_tokens_per_s_1_worker = stats.tokens_per_second();
        } else {
            report.preprocess_tokens_per_s = stats.tokens_per_second();
        }
    }
    if options.workers <= 1 {
        report.preprocess_tokens_per_s = report.preprocess_tokens_per_s_1_worker;
    }
    let mut gpt = GptConfig::new(options.seq_length);
    gpt.cache_dir = Some(workdir.join("cache"));
    let _ = std::fs::remove_dir_all(workdir.join("cache"));
    let paths = [workdir.join("bench").to_string_lossy().into_owned()];
    let sizes = [Some(options.loader_samples), Some(8), Some(8)];
    let t = Instant::now();
    build_pretraining_datasets(&paths, "98,1,1", sizes, &gpt)?;
    report.index_build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let [train, _, _] = build_pretraining_datasets(&paths, "98,1,1", sizes, &gpt)?;
    report.index_cached_load_s = t.elapsed().as_secs_f64();
    let train =
        train.ok_or_else(|| DataError::Config("benchmark corpus has no train split".into()))?;
    let mut loader = Loader::new(train, options.micro_batch_size, 0, 1, DataCursor::default())?;
    let t = Instant::now();
    let mut samples = 0usize;
    while samples < options.loader_samples {
        match loader.next_batch()? {
            Some(b) => samples += b.shape[0],
            None => break,
        }
    }
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    report.loader_samples_per_s = samples as f64 / secs;
    report.loader_tokens_per_s = (samples * options.seq_length) as f64 / secs;
    Ok(report)
}
