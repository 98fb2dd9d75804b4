//! `coil pretrain`, `coil finetune` and the hidden `coil worker`: resolve a recipe (built-in name or TOML file,
//! then `key=value` overrides), print or save the plan, and launch it with the recipe's executor.

use super::recipe::{human_count, render};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use coil_infer::{generate, Engine, EngineOptions, GenerateParams, SamplingParams};
use coil_model::parallel::TensorParallel;
use coil_model::HybridLm;
use coil_recipes::launch::{rendezvous, run_local, run_slurm, WorkerEnv};
use coil_recipes::{apply_overrides, from_toml, recipe, to_toml, ExecutorKind, Mode, Recipe};
use coil_train::dist::{Collective, Layout, SingleProcess, TcpCollective};
use coil_train::lock::{self, RunLock};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExecutorArg {
    /// In this process (the default).
    Direct,
    /// One worker process per GPU on this machine (torchrun environment, rank-0 rendezvous).
    Local,
    /// Write an sbatch script (srun over num_nodes x num_gpus_per_node tasks); submit it when sbatch exists.
    Slurm,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Recipe sections: run, executor, parallel, trainer, optim, checkpoint, tokenizer, data, model; \
`coil recipe show NAME` prints every key with its value. Special keys: model.num_layers=N (cuts the pattern or \
repeats it from the start), data.kind=mock|pretrain|shakespeare|squad (switches the data variant), `key=` unsets an \
optional key. NeMo spellings data.global_batch_size, data.micro_batch_size, data.seq_length, trainer.devices, \
trainer.num_nodes, resume_path, dir, name are accepted.\n\nThe local and slurm executors start `coil worker` \
processes with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. They meet at a rank-0 TCP \
rendezvous and train data-parallel: each rank takes its slice of every global batch on its own device (LOCAL_RANK \
picks the GPU), the gradients are summed over the ranks through rank 0 each step, and rank 0 writes the run. \
Splitting the model (tensor, pipeline or context parallelism > 1) is not implemented yet and is refused.\n\n\
One process trains a run directory at a time: it holds an advisory lock on <run.dir>/<run.name>/coil.lock (released \
when the process ends, however it ends), and a second `coil pretrain`/`finetune` on the same directory fails at once \
naming the process holding it.\n\n\
A run directory that holds a checkpoint resumes from the newest one. The settings that shape the trajectory \
(trainer.max_steps, global_batch_size, micro_batch_size, seq_length, seed, precision; every optim.* and data.* key; \
tokenizer.path and vocab_size) must then equal the checkpoint's recipe; a difference is an error listing each key \
with both values, unless allowed explicitly: checkpoint.allow_changed=[optim.max_lr,trainer.max_steps] (a table \
name such as optim allows all its keys). A step whose training loss, gradient norm or validation loss is not finite \
stops the run (exit code 1) before anything of that step is saved, naming the last good checkpoint.\n\n\
resume_path=DIR starts a new run from the weights in DIR: a fine-tune (finetune) or continued pretraining \
(pretrain), with a fresh optimizer and schedule. --dryrun makes every check a run makes before it reads data or \
weights, the resume check included."
)]
pub struct RunArgs {
    /// Built-in recipe (see `coil recipes`), e.g. demo, mamba2_130m, nemotronh_8b.
    #[arg(
        long,
        short = 'f',
        alias = "factory",
        required_unless_present = "config"
    )]
    pub recipe: Option<String>,
    /// A recipe file (TOML, as `coil recipe show` prints or `--to-toml` writes) instead of a built-in recipe.
    #[arg(long, conflicts_with = "recipe")]
    pub config: Option<PathBuf>,
    /// Make every check a run makes before it reads data or weights (values, files the recipe names, the resume
    /// check), print the resolved plan (recipe TOML, derived figures, executor) and exit without running.
    #[arg(long)]
    pub dryrun: bool,
    /// Save the resolved recipe to FILE and exit without running.
    #[arg(long, value_name = "FILE")]
    pub to_toml: Option<PathBuf>,
    /// Executor (same as the override executor.kind=...).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// Overrides `key=value` with dotted keys, applied in order: trainer.max_steps=200, data.paths=[a,b],
    /// model.num_layers=4, resume_path=DIR, checkpoint.allow_changed=[optim.max_lr]. An unknown key is an error
    /// listing the valid ones.
    pub overrides: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The resolved recipe written by the launcher.
    #[arg(long)]
    pub plan: PathBuf,
}

/// The recipe a command line describes.
fn resolve(a: &RunArgs, mode: Mode) -> Result<Recipe> {
    let base = match (&a.recipe, &a.config) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config {}: reading the recipe file", path.display()))?;
            let mut r = from_toml(&text, path)?;
            r.mode = mode;
            r
        }
        (Some(name), None) => recipe(name, mode)?,
        (None, None) => bail!("give --recipe NAME or --config FILE (see `coil recipes`)"),
    };
    let mut r = apply_overrides(&base, &a.overrides)?;
    if let Some(e) = a.executor {
        r.executor.kind = match e {
            ExecutorArg::Direct => ExecutorKind::Direct,
            ExecutorArg::Local => ExecutorKind::Local,
            ExecutorArg::Slurm => ExecutorKind::Slurm,
        };
    }
    r.validate()?;
    Ok(r)
}

pub fn run(a: RunArgs, mode: Mode) -> Result<()> {
    let r = resolve(&a, mode)?;
    if let Some(path) = &a.to_toml {
        coil_data::atomic::write_file(path, to_toml(&r)?.as_bytes())
            .with_context(|| format!("--to-toml {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let check = r.preflight()?;
    if a.dryrun {
        print!("{}", render(&r)?);
        println!("# executor: {}", plan_line(&r));
        match &check.checkpoint {
            Some(dir) => println!("# resumes from {}", dir.display()),
            None => println!("# starts a new run"),
        }
        for c in &check.allowed {
            println!(
                "# changed on resume (allowed): {} {} -> {}",
                c.key, c.old, c.new
            );
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the coil binary for the workers")?;
    match r.executor.kind {
        ExecutorKind::Direct => {
            if let Some(problem) = direct_world_problem(&r) {
                bail!("{problem}");
            }
            locked(&r, || train_here(&r, &mut SingleProcess, None))
        }
        ExecutorKind::Local => locked(&r, || {
            let plan = write_plan(&r)?;
            let args = vec![
                "worker".to_string(),
                "--plan".into(),
                plan.display().to_string(),
            ];
            eprintln!(
                "local executor: {} worker process(es), plan {}",
                r.parallel.num_gpus_per_node,
                plan.display()
            );
            // The workers rely on this process's lock (lock::held_by_parent).
            run_local(&r, &exe, &args)?;
            Ok(())
        }),
        ExecutorKind::Slurm => {
            // The job runs later and takes the lock then; refuse to rewrite the plan of a run in progress.
            let dir = r.run_dir();
            if dir.is_dir() {
                lock::ensure_free(&dir)?;
            }
            let plan = write_plan(&r)?;
            let (script, submitted) = run_slurm(&r, &exe, &plan)?;
            if submitted {
                println!("submitted {}", script.display());
            } else {
                println!(
                    "wrote {} (sbatch is not on this machine's PATH; submit it with `sbatch {}` on the cluster)",
                    script.display(),
                    script.display()
                );
            }
            Ok(())
        }
    }
}

/// Runs `train` holding the run directory's lock. After taking it, checks the resume again (another process may
/// have finished a checkpoint meanwhile) and says which changed settings it resumes with. When the run fails and
/// the directory was new, a directory left with nothing of value (no checkpoint, no logged step) is removed.
fn locked(r: &Recipe, train: impl FnOnce() -> Result<()>) -> Result<()> {
    let dir = r.run_dir();
    let fresh = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    let lock = RunLock::acquire(&dir)?;
    let result = r.check_resume().map_err(anyhow::Error::from).and_then(|check| {
        for c in &check.allowed {
            eprintln!(
                "resuming with a changed setting (allowed by checkpoint.allow_changed): {} {} -> {}",
                c.key, c.old, c.new
            );
        }
        train()
    });
    if result.is_err() && fresh && nothing_of_value(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(lock);
    result
}

/// True when a run directory holds no checkpoint and no logged step.
fn nothing_of_value(dir: &Path) -> bool {
    let no_checkpoint = coil_train::checkpoint::list_checkpoints(dir).is_ok_and(|l| l.is_empty());
    let no_metrics = std::fs::metadata(dir.join("metrics.jsonl")).map_or(true, |m| m.len() == 0);
    no_checkpoint && no_metrics
}

/// Why the direct executor cannot run this recipe (it asks for more than one rank), if it cannot.
fn direct_world_problem(r: &Recipe) -> Option<String> {
    let world = r.parallel.world_size();
    (world > 1).then(|| {
        format!(
            "the recipe asks for {} node(s) x {} GPU(s) = {world} ranks, but the direct executor runs one \
             process; start one process per GPU with --executor local (this machine) or --executor slurm, or \
             set parallel.num_nodes=1 parallel.num_gpus_per_node=1 parallel.tensor_parallelism=1 \
             parallel.pipeline_parallelism=1 for a single-process run",
            r.parallel.num_nodes, r.parallel.num_gpus_per_node
        )
    })
}

fn plan_line(r: &Recipe) -> String {
    let p = &r.parallel;
    match r.executor.kind {
        ExecutorKind::Direct => match direct_world_problem(r) {
            Some(problem) => format!("direct (this process), which a run refuses: {problem}"),
            None => format!("direct (this process), run dir {}", r.run_dir().display()),
        },
        ExecutorKind::Local => format!(
            "local: {} worker processes, rendezvous {}:{}, run dir {}",
            p.num_gpus_per_node,
            r.executor.master_addr,
            r.executor.master_port,
            r.run_dir().display()
        ),
        ExecutorKind::Slurm => format!(
            "slurm: sbatch script {}/coil.sbatch, {} nodes x {} tasks",
            r.run_dir().display(),
            p.num_nodes,
            p.num_gpus_per_node
        ),
    }
}

fn write_plan(r: &Recipe) -> Result<PathBuf> {
    let path = r.run_dir().join("plan.toml");
    coil_data::atomic::write_file(&path, to_toml(r)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}

/// `coil worker --plan FILE`: one rank of a local or Slurm launch.
pub fn run_worker(a: WorkerArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.plan)
        .with_context(|| format!("--plan {}: reading the plan", a.plan.display()))?;
    let r = from_toml(&text, &a.plan)?;
    let env = WorkerEnv::from_env()?.unwrap_or(WorkerEnv {
        rank: 0,
        local_rank: 0,
        world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: 29500,
    });
    // Every rank makes the resume check (they read the same run directory, so they agree and none waits for
    // another that gave up); rank 0 writes the run and holds its lock, unless the launcher holds it already.
    r.check_resume()?;
    let _lock = if env.rank == 0 && !lock::held_by_parent() {
        Some(RunLock::acquire(&r.run_dir())?)
    } else {
        None
    };
    let met = rendezvous(&env, Duration::from_secs(120))?;
    println!(
        "rendezvous done: rank {} of {} (local rank {}), id {}",
        env.rank, env.world_size, env.local_rank, met.id
    );
    let _ = std::io::stdout().flush();
    let p = &r.parallel;
    if env.world_size > 1 && p.pipeline_parallelism * p.context_parallelism > 1 {
        bail!(
            "rank {} of {}: the recipe splits the model into pipeline stages or context chunks \
             (pipeline_parallelism {}, context_parallelism {}), which is not implemented yet; tensor and data \
             parallelism are: set parallel.pipeline_parallelism=1 parallel.context_parallelism=1",
            env.rank,
            env.world_size,
            p.pipeline_parallelism,
            p.context_parallelism
        );
    }
    let mut r = r;
    if env.world_size > 1 {
        r.run.device = coil_model::device::for_local_rank(&r.run.device, env.local_rank);
    }
    let mut world = TcpCollective::new(env.rank, env.world_size, met.links)?;
    let tp = r.parallel.tensor_parallelism;
    if tp <= 1 || env.world_size == 1 {
        return train_here(&r, &mut world, None);
    }
    // Megatron's rank order: the TP ranks of one group are consecutive (one node), DP across them.
    let layout = Layout::new(env.world_size, tp)?;
    let tp_comm = world.split(&layout.tp_groups())?;
    let mut dp_comm = world.split(&layout.dp_groups())?;
    println!(
        "rank {}: tensor-parallel rank {} of {} (ranks {:?}), data-parallel rank {} of {}",
        env.rank,
        tp_comm.rank(),
        tp,
        layout.tp_group(env.rank),
        dp_comm.rank(),
        layout.dp
    );
    let _ = std::io::stdout().flush();
    let tp = TensorParallel::new(Box::new(tp_comm), r.parallel.sequence_parallelism);
    train_here(&r, &mut dp_comm, Some(tp))
}

/// Trains in this process (one rank of `comm`), then rank 0 prints where everything went and, when asked, a
/// generated sample.
fn train_here(r: &Recipe, comm: &mut dyn Collective, tp: Option<TensorParallel>) -> Result<()> {
    let tp_rank = tp.as_ref().map_or(0, TensorParallel::rank);
    let tp_size = tp.as_ref().map_or(1, TensorParallel::size);
    let root = comm.rank() == 0 && tp_rank == 0;
    let t0 = Instant::now();
    let run = r.train_run(to_toml(r)?)?;
    let tokenizer = r.load_tokenizer()?;
    let params = coil_model::params::num_parameters(&r.model)?;
    if root {
        eprintln!(
            "coil {} {}: {} parameters, pattern {}, {} steps of {} x {} tokens{}, run dir {}",
            r.mode.as_str(),
            r.recipe,
            human_count(params),
            r.model.pattern,
            r.trainer.max_steps,
            r.trainer.global_batch_size,
            r.trainer.seq_length,
            match (comm.world_size(), &tp) {
                (1, None) => String::new(),
                (n, None) => format!(" over {n} data-parallel ranks"),
                (n, Some(tp)) => format!(
                    " over {n} data-parallel x {} tensor-parallel ranks{}",
                    tp.size(),
                    if tp.sequence_parallel() {
                        " (sequence parallel)"
                    } else {
                        ""
                    }
                ),
            },
            run.run_dir.display()
        );
    }
    let data = coil_data::build_data(&r.data, tokenizer.as_ref(), &r.run_shape())
        .context("building the data (see the [data] table of the recipe)")?;
    let run = coil_train::TrainRun {
        padding: data.padding,
        tokenizer_files: tokenizer
            .model_dir_files()
            .context("preparing the tokenizer files that every checkpoint carries")?,
        ..run
    };
    let summary = coil_train::train_parallel(&run, data.train, data.validation, comm, tp)?;
    let secs = t0.elapsed().as_secs_f64();
    if !root {
        let tp_part = match &tp_size {
            1 => String::new(),
            _ => format!(" (tensor-parallel rank {tp_rank})"),
        };
        eprintln!(
            "rank {}{tp_part} done: step {} in {secs:.0} s",
            comm.rank(),
            summary.final_step
        );
        return Ok(());
    }
    let last = coil_train::checkpoint::list_checkpoints(&run.run_dir)?
        .pop()
        .map(|(_, d)| d);
    match summary.losses.last() {
        Some((step, loss)) => eprintln!(
            "done: step {step}, loss {loss:.4}{} in {secs:.0} s ({:.0} tokens/s)",
            summary
                .val_losses
                .last()
                .map_or(String::new(), |(_, v)| format!(", val_loss {v:.4}")),
            summary.tokens_per_s
        ),
        None => eprintln!(
            "nothing to do: the run in {} is already at step {}",
            run.run_dir.display(),
            summary.final_step
        ),
    }
    if let Some(dir) = &last {
        eprintln!("checkpoint: {}", dir.display());
    }
    eprintln!(
        "metrics: {}, loss curve: {}",
        run.run_dir.join("metrics.jsonl").display(),
        run.run_dir.join("loss.png").display()
    );
    if let (Some(dir), true) = (&last, r.run.sample_tokens > 0) {
        sample(r, dir, tokenizer.as_ref())?;
    }
    Ok(())
}

/// Prints `run.sample_tokens` tokens generated from the checkpoint after `run.sample_prompt`.
fn sample(r: &Recipe, dir: &Path, tokenizer: &dyn coil_data::Tokenizer) -> Result<()> {
    let lm = HybridLm::from_dir(dir, &Device::Cpu, DType::F32)
        .with_context(|| format!("loading {} for the sample", dir.display()))?;
    let mut prompt = tokenizer.encode(&r.run.sample_prompt)?;
    if prompt.is_empty() {
        prompt = tokenizer.eos_id().into_iter().collect();
    }
    let engine = Engine::new(lm, EngineOptions::default())?;
    let params = GenerateParams {
        max_new_tokens: r.run.sample_tokens,
        sampling: SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.0,
        },
        seed: r.trainer.seed,
        eos: None,
        vocab_limit: Some(tokenizer.vocab_size().min(r.model.vocab_size)),
        max_batch: 1,
        ssm_state: Default::default(),
    };
    let out = generate(&engine, &[prompt], &params, &mut |_, _| {})?;
    let text = tokenizer.decode(out.first().map_or(&[][..], |g| &g.tokens[..]))?;
    println!(
        "--- sample (temperature 0.8, top-k 40) ---\n{}{}\n---",
        r.run.sample_prompt, text
    );
    Ok(())
}
