//! `coil bench ...`: speed measurements as commands (results go to BENCHMARKS.md with the git revision).
//!
//! One module per benchmark; this one only names them and dispatches.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Full forward pass (logits for every position) over random tokens with random weights.
    Forward(super::bench_forward::ForwardArgs),
    /// Decode speed: prompt + new tokens at several batch sizes, against the memory-bandwidth roofline.
    Generate(super::bench_generate::GenerateBenchArgs),
    /// Training-step throughput: forward, backward and AdamW on random tokens with random weights.
    Train(super::bench_train::TrainBenchArgs),
    /// The OpenAI server under load: concurrent streaming clients on 127.0.0.1; requests/s, tokens/s, time to
    /// first token and inter-token latency percentiles, RSS.
    Serve(super::bench_serve::ServeBenchArgs),
    /// The SSD scan of one Mamba2 layer: forward and forward+backward (the shapes of mamba_ssm's
    /// mamba_chunk_scan_combined).
    Ssd(super::bench_ssd::SsdBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forward(a) => super::bench_forward::run(a),
        BenchCommand::Generate(a) => super::bench_generate::run(a),
        BenchCommand::Train(a) => super::bench_train::run(a),
        BenchCommand::Serve(a) => super::bench_serve::run(a),
        BenchCommand::Ssd(a) => super::bench_ssd::run(a),
    }
}
