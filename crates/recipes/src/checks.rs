//! Everything a run checks before it touches data or weights, so `--dryrun` finds what a real run would:
//! [`Recipe::validate`] (values alone: sizes, learning rates, betas, the split string, the device spelling, the
//! model), [`Recipe::preflight`] (plus the files the recipe names and the resume check), and
//! [`Recipe::check_resume`], Coil's form of Megatron's checkpoint-args check: a run that resumes compares the
//! settings that shape its trajectory with the recipe stored in its newest checkpoint.

use crate::error::{RecipeError, Result};
use crate::recipe::Recipe;
use coil_data::DataConfig;
use serde_json::Value;
use std::path::PathBuf;

/// Recipe keys whose change alters the trajectory of a resumed run. A table name (`optim`, `data`) stands for
/// every key under it. `checkpoint.allow_changed` takes these keys, or keys under these tables.
pub const TRAJECTORY_KEYS: [&str; 10] = [
    "trainer.max_steps",
    "trainer.global_batch_size",
    "trainer.micro_batch_size",
    "trainer.seq_length",
    "trainer.seed",
    "trainer.precision",
    "optim",
    "data",
    "tokenizer.path",
    "tokenizer.vocab_size",
];

/// `key` is `prefix` or lies under it.
fn under(key: &str, prefix: &str) -> bool {
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// One setting that differs between a checkpoint's recipe and the resuming run's.
#[derive(Clone, Debug, PartialEq)]
pub struct Changed {
    pub key: String,
    /// The checkpoint's value (`(unset)` when absent).
    pub old: String,
    /// This run's value.
    pub new: String,
}

/// What [`Recipe::check_resume`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResumeCheck {
    /// The checkpoint the run resumes from (`None`: it starts fresh).
    pub checkpoint: Option<PathBuf>,
    /// Differences that `checkpoint.allow_changed` allows.
    pub allowed: Vec<Changed>,
}

impl Recipe {
    /// Checks of values alone, each error naming its key: positive sizes, divisibility over the ranks,
    /// learning-rate and AdamW values, the split string, the device spelling, the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, m: String| {
            Err(RecipeError::Value {
                key: key.into(),
                message: m,
            })
        };
        let p = &self.parallel;
        let t = &self.trainer;
        for (name, v) in [
            ("parallel.num_nodes", p.num_nodes),
            ("parallel.num_gpus_per_node", p.num_gpus_per_node),
            ("parallel.tensor_parallelism", p.tensor_parallelism),
            ("parallel.pipeline_parallelism", p.pipeline_parallelism),
            ("parallel.context_parallelism", p.context_parallelism),
            ("trainer.micro_batch_size", t.micro_batch_size),
            ("trainer.global_batch_size", t.global_batch_size),
            ("trainer.seq_length", t.seq_length),
            ("tokenizer.vocab_size", self.tokenizer.vocab_size),
            (
                "tokenizer.make_vocab_size_divisible_by",
                self.tokenizer.make_vocab_size_divisible_by,
            ),
            ("model.hidden_size", self.model.hidden_size),
            ("model.vocab_size", self.model.vocab_size),
        ] {
            if v == 0 {
                return bad(name, "must be at least 1, got 0".into());
            }
        }
        if t.max_steps == 0 {
            return bad("trainer.max_steps", "must be at least 1, got 0".into());
        }
        self.validate_optim()?;
        let model_par = p.tensor_parallelism * p.pipeline_parallelism * p.context_parallelism;
        if !p.world_size().is_multiple_of(model_par) {
            return Err(RecipeError::Invalid(format!(
                "num_nodes x num_gpus_per_node = {} GPUs is not a multiple of TP x PP x CP = {model_par}",
                p.world_size()
            )));
        }
        let dp = p.data_parallel();
        if !t.global_batch_size.is_multiple_of(t.micro_batch_size * dp) {
            return bad(
                "trainer.global_batch_size",
                format!(
                    "{} must be a multiple of trainer.micro_batch_size {} x data-parallel size {dp}",
                    t.global_batch_size, t.micro_batch_size
                ),
            );
        }
        let kinds = self
            .model
            .layers()
            .map_err(|e| RecipeError::Invalid(format!("model.pattern: {e}")))?;
        if !kinds.len().is_multiple_of(p.pipeline_parallelism) {
            return Err(RecipeError::Invalid(format!(
                "the pattern has {} layers, not a multiple of pipeline_parallelism {}",
                kinds.len(),
                p.pipeline_parallelism
            )));
        }
        if self.model.vocab_size < self.tokenizer.vocab_size {
            return bad(
                "model.vocab_size",
                format!(
                    "{} is smaller than tokenizer.vocab_size {}",
                    self.model.vocab_size, self.tokenizer.vocab_size
                ),
            );
        }
        self.model.validate().map_err(|e| RecipeError::Value {
            key: "model".into(),
            message: e.to_string(),
        })?;
        coil_model::parallel::local_config(&self.model, p.tensor_parallelism).map_err(|e| {
            RecipeError::Value {
                key: "parallel.tensor_parallelism".into(),
                message: e.to_string(),
            }
        })?;
        if p.sequence_parallelism && !t.seq_length.is_multiple_of(p.tensor_parallelism) {
            return bad(
                "parallel.sequence_parallelism",
                format!(
                    "splits the sequence over the {} tensor-parallel ranks; trainer.seq_length {} is not a \
                     multiple of it",
                    p.tensor_parallelism, t.seq_length
                ),
            );
        }
        coil_model::device::check_spec(&self.run.device).map_err(|e| RecipeError::Value {
            key: "run.device".into(),
            message: e.to_string(),
        })?;
        match &self.data {
            DataConfig::Pretrain { split, .. } | DataConfig::Shakespeare { split, .. } => {
                coil_data::parse_split(split).map_err(|e| RecipeError::Value {
                    key: "data.split".into(),
                    message: e.to_string(),
                })?;
            }
            DataConfig::Mock { .. } | DataConfig::Squad { .. } => {}
        }
        if let DataConfig::Pretrain {
            paths,
            train_paths: None,
            ..
        } = &self.data
        {
            if paths.is_empty() {
                return bad(
                    "data.paths",
                    "is empty; name the Megatron datasets (data.paths=[/data/corpus_text_document]) or give \
                     data.train_paths"
                        .into(),
                );
            }
        }
        for key in &self.checkpoint.allow_changed {
            if !TRAJECTORY_KEYS
                .iter()
                .any(|k| under(key, k) || under(k, key))
            {
                return bad(
                    "checkpoint.allow_changed",
                    format!(
                        "{key:?} is not a setting checked on resume; it takes these keys (or keys under the \
                         tables): {}",
                        TRAJECTORY_KEYS.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }

    fn validate_optim(&self) -> Result<()> {
        let o = &self.optim;
        let check = |key: &str, v: f64, ok: bool, want: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(RecipeError::Value {
                    key: key.into(),
                    message: format!("must be {want}, got {v}"),
                })
            }
        };
        check(
            "optim.max_lr",
            o.max_lr,
            o.max_lr >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "optim.min_lr",
            o.min_lr,
            o.min_lr >= 0.0,
            "a finite number >= 0",
        )?;
        if o.min_lr > o.max_lr {
            return Err(RecipeError::Value {
                key: "optim.min_lr".into(),
                message: format!(
                    "{} is above optim.max_lr {}; set optim.min_lr <= optim.max_lr",
                    o.min_lr, o.max_lr
                ),
            });
        }
        for (key, v) in [
            ("optim.adam_beta1", o.adam_beta1),
            ("optim.adam_beta2", o.adam_beta2),
        ] {
            check(key, v, (0.0..1.0).contains(&v), "in [0, 1)")?;
        }
        check(
            "optim.adam_eps",
            o.adam_eps,
            o.adam_eps > 0.0,
            "a finite number > 0",
        )?;
        check(
            "optim.weight_decay",
            o.weight_decay,
            o.weight_decay >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "optim.clip_grad",
            o.clip_grad,
            o.clip_grad >= 0.0,
            "a finite number >= 0 (0 turns clipping off)",
        )
    }

    /// Every check a run makes before it reads data or weights: [`validate`](Self::validate), the precision,
    /// `checkpoint.resume_path`, the tokenizer, and [`check_resume`](Self::check_resume). The device is only
    /// checked for its spelling here; the process that trains opens it.
    pub fn preflight(&self) -> Result<ResumeCheck> {
        self.validate()?;
        self.precision()?;
        self.start()?;
        self.load_tokenizer()?;
        self.check_resume()
    }

    /// When the run directory holds a checkpoint, compares this recipe's [`TRAJECTORY_KEYS`] with the recipe
    /// saved in the newest one. Differences not listed in `checkpoint.allow_changed` are an error naming each
    /// key with both values; the allowed ones are returned.
    pub fn check_resume(&self) -> Result<ResumeCheck> {
        let run_dir = self.run_dir();
        let list = coil_train::checkpoint::list_checkpoints(&run_dir).map_err(|e| {
            RecipeError::Invalid(format!(
                "reading the checkpoints of {}: {e}",
                run_dir.display()
            ))
        })?;
        let Some((_, dir)) = list.last() else {
            return Ok(ResumeCheck::default());
        };
        let path = dir.join("recipe.toml");
        let text = std::fs::read_to_string(&path).map_err(crate::error::io(&path))?;
        let saved = crate::from_toml(&text, &path)?;
        let (mut allowed, mut refused) = (Vec::new(), Vec::new());
        for c in changed(&saved, self)? {
            if self
                .checkpoint
                .allow_changed
                .iter()
                .any(|a| under(&c.key, a))
            {
                allowed.push(c);
            } else {
                refused.push(c);
            }
        }
        if !refused.is_empty() {
            let lines: Vec<String> = refused
                .iter()
                .map(|c| format!("  {}: {} (checkpoint) -> {} (now)", c.key, c.old, c.new))
                .collect();
            let keys: Vec<&str> = refused.iter().map(|c| c.key.as_str()).collect();
            return Err(RecipeError::Resume(format!(
                "{} resumes from {}, whose recipe differs in settings that change the training trajectory:\n{}\n\
                 Resume with the checkpoint's values, train into a new run directory (run.name=NAME), or allow \
                 the changes explicitly: checkpoint.allow_changed=[{}]",
                run_dir.display(),
                dir.display(),
                lines.join("\n"),
                keys.join(",")
            )));
        }
        Ok(ResumeCheck {
            checkpoint: Some(dir.clone()),
            allowed,
        })
    }
}

/// The [`TRAJECTORY_KEYS`] settings that differ between two recipes, in key order.
pub fn changed(old: &Recipe, new: &Recipe) -> Result<Vec<Changed>> {
    let flat = |r: &Recipe| -> Result<Vec<(String, Value)>> {
        let tree = serde_json::to_value(r).map_err(|e| RecipeError::Invalid(e.to_string()))?;
        let mut out = Vec::new();
        flatten("", &tree, &mut out);
        out.retain(|(k, _)| TRAJECTORY_KEYS.iter().any(|t| under(k, t)));
        Ok(out)
    };
    let (a, b) = (flat(old)?, flat(new)?);
    let mut keys: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let get = |list: &[(String, Value)], k: &str| {
        list.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone())
    };
    let show = |v: Option<Value>| match v {
        None | Some(Value::Null) => "(unset)".to_string(),
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
    };
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (x, y) = (get(&a, k), get(&b, k));
            (x != y).then(|| Changed {
                key: k.clone(),
                old: show(x),
                new: show(y),
            })
        })
        .collect())
}

/// Leaf values of a JSON tree by dotted key.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(obj) => {
            for (k, child) in obj {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}
