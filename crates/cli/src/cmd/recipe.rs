//! `coil recipes` (list, `--json`) and `coil recipe show NAME [--finetune] [key=value ...]`: the built-in
//! recipes, each printed as one resolved TOML file with its derived figures as trailing comments (so the output
//! is itself a recipe file for `coil pretrain --config`).

use anyhow::Result;
use clap::{Args, Subcommand};
use coil_recipes::memory::{estimate, human_bytes, num_parameters};
use coil_recipes::{apply_overrides, recipe, recipe_names, summary_json, to_toml, Mode, Recipe};

#[derive(Args, Debug)]
pub struct RecipesArgs {
    /// Print a JSON array: name, model {hidden_size, num_layers, pattern, vocab_size}, num_parameters, and the
    /// pretrain recipe's num_nodes, num_gpus_per_node, tensor_parallelism, global_batch_size, seq_length.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RecipeCommand {
    /// Print a recipe fully resolved as TOML (every effective value), plus parameter count and a per-GPU
    /// memory estimate as comments.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Recipe name (see `coil recipes`).
    pub name: String,
    /// The fine-tuning recipe instead of the pretraining one.
    #[arg(long)]
    pub finetune: bool,
    /// Overrides, `key=value` with dotted keys, e.g. trainer.max_steps=200 parallel.tensor_parallelism=4.
    pub overrides: Vec<String>,
}

pub fn run_list(a: RecipesArgs) -> Result<()> {
    let all = recipe_names()
        .into_iter()
        .map(|n| recipe(n, Mode::Pretrain))
        .collect::<Result<Vec<_>, _>>()?;
    if a.json {
        let list: Vec<_> = all.iter().map(summary_json).collect();
        return emit(&format!("{}\n", serde_json::to_string_pretty(&list)?));
    }
    let mut text = format!(
        "{:<18} {:>6} {:>6} {:>10} {:>12} {:>4} {:>5}  pattern\n",
        "name", "layers", "hidden", "params", "nodes x gpus", "TP", "gbs"
    );
    for r in &all {
        let pattern = if r.model.pattern.len() > 40 {
            format!("{}...", &r.model.pattern[..40])
        } else {
            r.model.pattern.clone()
        };
        text += &format!(
            "{:<18} {:>6} {:>6} {:>10} {:>12} {:>4} {:>5}  {pattern}\n",
            r.recipe,
            r.model.num_layers(),
            r.model.hidden_size,
            human_count(num_parameters(r)),
            format!(
                "{} x {}",
                r.parallel.num_nodes, r.parallel.num_gpus_per_node
            ),
            r.parallel.tensor_parallelism,
            r.trainer.global_batch_size,
        );
    }
    text += "\nshow one: coil recipe show NAME [--finetune] [key=value ...]; run one: coil pretrain --recipe NAME\n";
    emit(&text)
}

pub fn run_recipe(c: RecipeCommand) -> Result<()> {
    match c {
        RecipeCommand::Show(a) => {
            let mode = if a.finetune {
                Mode::Finetune
            } else {
                Mode::Pretrain
            };
            let r = apply_overrides(&recipe(&a.name, mode)?, &a.overrides)?;
            r.validate()?;
            emit(&render(&r)?)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `1.23B`-style parameter counts.
pub fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}K", n / 1e3)
    }
}

/// The recipe's TOML followed by its derived figures as comments.
pub fn render(r: &Recipe) -> Result<String> {
    let mut out = to_toml(r)?;
    let m = estimate(r);
    let p = &r.parallel;
    out += "\n# ---- derived ----\n";
    out += &format!(
        "# parameters: {} ({})\n",
        num_parameters(r),
        human_count(num_parameters(r))
    );
    out += &format!(
        "# layout: {} nodes x {} GPUs = {} ranks; TP {} x PP {} x CP {} -> data parallel {}{}\n",
        p.num_nodes,
        p.num_gpus_per_node,
        p.world_size(),
        p.tensor_parallelism,
        p.pipeline_parallelism,
        p.context_parallelism,
        p.data_parallel(),
        if p.sequence_parallelism && p.tensor_parallelism > 1 {
            "; sequence parallel (norms and residuals split over the TP ranks)"
        } else {
            ""
        }
    );
    if p.tensor_parallelism > 1 {
        let tp = p.tensor_parallelism;
        out += &format!(
            "# rank order (TP innermost): TP groups {{0..{}}}, {{{}..{}}}, ...; DP groups {{0, {tp}, {}, ...}}, ...\n",
            tp - 1,
            tp,
            2 * tp - 1,
            2 * tp
        );
    }
    out += &format!(
        "# micro-batches per step per rank: {}\n",
        r.trainer.global_batch_size / (r.trainer.micro_batch_size * p.data_parallel()).max(1)
    );
    out += &format!(
        "# memory per GPU (estimate, mbs {} x seq {}): weights {}, gradients {}, optimizer {}, activations {}, total {}\n",
        r.trainer.micro_batch_size,
        r.trainer.seq_length,
        human_bytes(m.weights),
        human_bytes(m.gradients),
        human_bytes(m.optimizer),
        human_bytes(m.activations),
        human_bytes(m.total)
    );
    if r.optim.use_distributed_optimizer && p.data_parallel() > 1 {
        out += &format!(
            "# the optimizer state (f32 masters and Adam moments) is split over the {} data-parallel ranks \
             (distributed optimizer; optim.use_distributed_optimizer=false keeps it whole on every rank)\n",
            p.data_parallel()
        );
    }
    Ok(out)
}
