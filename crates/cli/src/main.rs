//! `coil`: train and serve Mamba2 and hybrid Mamba-Transformer models.

mod alloc;
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
    /// List the built-in recipes (the 11 NeMo models and `demo`).
    Recipes(cmd::recipe::RecipesArgs),
    /// Inspect a recipe: `coil recipe show NAME [--finetune] [key=value ...]`.
    #[command(subcommand)]
    Recipe(cmd::recipe::RecipeCommand),
    /// Pretrain from random weights (or continue from `resume_path=DIR`): `--recipe NAME` or `--config FILE`, then
    /// `key=value` overrides.
    Pretrain(cmd::run::RunArgs),
    /// Fine-tune from `resume_path=DIR`: `--recipe NAME` or `--config FILE`, then `key=value` overrides.
    Finetune(cmd::run::RunArgs),
    /// One rank of a local or Slurm launch (started by the executors, not by hand).
    #[command(hide = true)]
    Worker(cmd::run::WorkerArgs),
    /// Compute logits and loss of a model on token ids (for exact comparisons with other implementations).
    Logits(cmd::logits::LogitsArgs),
    /// Generate text (or token ids) from a model: prefill + constant-memory decode, Megatron sampling rules.
    Generate(cmd::generate::GenerateArgs),
    /// Serve a model over HTTP with OpenAI's API (completions, chat, models, health, metrics), continuous batching
    /// and a prefix cache.
    Serve(cmd::serve::ServeArgs),
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
    alloc::tune_for_large_tensors();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Recipes(a) => cmd::recipe::run_list(a),
        Command::Recipe(c) => cmd::recipe::run_recipe(c),
        Command::Pretrain(a) => cmd::run::run(a, coil_recipes::Mode::Pretrain),
        Command::Finetune(a) => cmd::run::run(a, coil_recipes::Mode::Finetune),
        Command::Worker(a) => cmd::run::run_worker(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Serve(a) => cmd::serve::run(a),
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
