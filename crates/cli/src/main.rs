//! `coil`: train and serve Mamba2 and hybrid Mamba-Transformer models.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "coil",
    version,
    about = "Train and serve Mamba2 and hybrid Mamba-Transformer language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compute logits and loss of a model on token ids (for exact comparisons with other implementations).
    Logits(cmd::logits::LogitsArgs),
    /// Generate text (or token ids) from a model: prefill + constant-memory decode, Megatron sampling rules.
    Generate(cmd::generate::GenerateArgs),
    /// Speed measurements.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Tokenize a JSONL corpus into a Megatron .bin/.idx dataset.
    Preprocess(cmd::data::PreprocessArgs),
    /// Inspect datasets.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logits(a) => cmd::logits::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Preprocess(a) => cmd::data::run_preprocess(a),
        Command::Data(c) => cmd::data::run_data(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
