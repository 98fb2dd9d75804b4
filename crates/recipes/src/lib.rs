//! Coil recipes: NeMo 2's `pretrain_recipe` / `finetune_recipe` for the 11 Mamba2 and Nemotron-H models, plus
//! a CPU-sized `demo`, as one plain serde struct per run.
//!
//! Owns: the recipe types ([`recipe`]), the built-in recipes with NeMo's defaults ([`catalog`]), dotted
//! overrides and the TOML form ([`overrides`]), the checks a run makes before it starts, resume consistency
//! included ([`checks`]), resolution into the trainer's run ([`resolve`]), derived figures
//! ([`memory`]) and the executors (`direct`, `local`, `slurm`) with the rank-0 rendezvous ([`launch`]).
//!
//! Key design decision: a recipe is data, not a tree of lazy constructors. Every effective value lives in one
//! struct that prints as one TOML file, is stored next to the run, and reads back unchanged; an override is a
//! type-checked edit of that tree, and a misspelt key is an error that lists the valid ones.
//!
//! Where NeMo's recipes have known bugs, Coil does the intended thing (see [`catalog`]): the cosine schedule
//! anneals over `trainer.max_steps` (NeMo's stays at 10 steps), mock data has a real seed, the 56B recipe names
//! the 56B tokenizer.

pub mod catalog;
pub mod checks;
pub mod error;
pub mod launch;
pub mod memory;
pub mod overrides;
pub mod recipe;
pub mod resolve;

pub use catalog::{recipe, recipe_names};
pub use checks::{Changed, ResumeCheck, TRAJECTORY_KEYS};
pub use error::{RecipeError, Result};
pub use overrides::{apply_overrides, from_toml, to_toml};
pub use recipe::{ExecutorKind, Mode, Recipe};

/// One entry of `coil recipes --json`: `name`, `model` (`hidden_size`, `num_layers`, `pattern`,
/// `vocab_size`), `num_parameters`, and the parallel layout and batch sizes of the pretrain recipe.
pub fn summary_json(r: &Recipe) -> serde_json::Value {
    serde_json::json!({
        "name": r.recipe,
        "model": {
            "hidden_size": r.model.hidden_size,
            "num_layers": r.model.num_layers(),
            "pattern": r.model.pattern,
            "vocab_size": r.model.vocab_size,
        },
        "num_parameters": memory::num_parameters(r),
        "num_nodes": r.parallel.num_nodes,
        "num_gpus_per_node": r.parallel.num_gpus_per_node,
        "tensor_parallelism": r.parallel.tensor_parallelism,
        "global_batch_size": r.trainer.global_batch_size,
        "seq_length": r.trainer.seq_length,
    })
}
