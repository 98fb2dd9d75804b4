//! From a recipe to what the trainer consumes: the run directory, the tokenizer, where the weights start, the
//! data sizes and the [`coil_train::TrainRun`]. The checks live in [`crate::checks`].

use crate::error::{RecipeError, Result};
use crate::recipe::{Mode, PrecisionName, Recipe};
use coil_data::{DataConfig, RunShape, Tokenizer};
use coil_train::{AdamWConfig, LrSchedule, Precision, Start, TrainRun, TrainerConfig};
use std::path::PathBuf;

impl Recipe {
    /// `<run.dir>/<run.name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.dir.join(&self.run.name)
    }

    /// The data module's sizes.
    pub fn run_shape(&self) -> RunShape {
        let t = &self.trainer;
        RunShape {
            seq_length: t.seq_length,
            global_batch_size: t.global_batch_size,
            max_steps: t.max_steps as usize,
            val_check_interval: t.val_check_interval as usize,
            limit_val_batches: t.limit_val_batches,
            limit_test_batches: t.limit_test_batches,
        }
    }

    /// The tokenizer: `tokenizer.path` when set; mock data needs none (ids are drawn below `vocab_size`).
    pub fn load_tokenizer(&self) -> Result<Box<dyn Tokenizer>> {
        match (&self.tokenizer.path, &self.data) {
            (Some(spec), _) => coil_data::load_tokenizer(spec).map_err(|e| RecipeError::Value {
                key: "tokenizer.path".into(),
                message: e.to_string(),
            }),
            (None, DataConfig::Mock { .. }) => Ok(Box::new(VocabOnly(self.tokenizer.vocab_size))),
            (None, _) => Err(RecipeError::Value {
                key: "tokenizer.path".into(),
                message: format!(
                    "unset; this recipe's tokenizer is {} ({}) and Coil downloads nothing: give a local file, \
                     e.g. tokenizer.path=/path/to/tokenizer.json",
                    self.tokenizer.name, self.tokenizer.library
                ),
            }),
        }
    }

    /// The trainer's precision; FP8 needs the GPU build.
    pub(crate) fn precision(&self) -> Result<Precision> {
        match self.trainer.precision {
            PrecisionName::F32 => Ok(Precision::F32),
            PrecisionName::Bf16Mixed => Ok(Precision::Bf16Mixed),
            PrecisionName::Bf16Fp8CurrentScaling => Err(RecipeError::Value {
                key: "trainer.precision".into(),
                message: "FP8 training needs the GPU build of Coil; set trainer.precision=bf16-mixed (or 32) to \
                          train without FP8"
                    .into(),
            }),
        }
    }

    /// Where a new run's weights come from: `checkpoint.resume_path` when set (a fine-tune, or continued
    /// pretraining), else random weights (pretraining). A path that is not a directory is an error.
    pub fn start(&self) -> Result<Start> {
        match (self.mode, &self.checkpoint.resume_path) {
            (_, Some(p)) if p.is_dir() => Ok(Start::Pretrained(p.clone())),
            (_, Some(p)) => Err(RecipeError::Value {
                key: "checkpoint.resume_path".into(),
                message: format!(
                    "{} is not a directory; give a model directory (HF layout or a Coil checkpoint, e.g. \
                     runs/demo/checkpoints/step-200)",
                    p.display()
                ),
            }),
            (Mode::Pretrain, None) => Ok(Start::Random),
            (Mode::Finetune, None) => Err(RecipeError::Value {
                key: "checkpoint.resume_path".into(),
                message: "a fine-tune needs the weights to start from: resume_path=DIR".into(),
            }),
        }
    }

    /// The trainer's run. `recipe_toml` is stored next to the run and in every checkpoint.
    pub fn train_run(&self, recipe_toml: String) -> Result<TrainRun> {
        self.validate()?;
        let precision = self.precision()?;
        let start = self.start()?;
        let device = coil_model::device::select_device(&self.run.device).map_err(|e| {
            RecipeError::Value {
                key: "run.device".into(),
                message: e.to_string(),
            }
        })?;
        let t = &self.trainer;
        let o = &self.optim;
        Ok(TrainRun {
            run_dir: self.run_dir(),
            model: self.model.clone(),
            trainer: TrainerConfig {
                max_steps: t.max_steps,
                micro_batch_size: t.micro_batch_size,
                global_batch_size: t.global_batch_size,
                val_check_interval: t.val_check_interval,
                limit_val_batches: t.limit_val_batches,
                log_every_n_steps: t.log_every_n_steps,
                save_top_k: self.checkpoint.save_top_k,
                save_last: self.checkpoint.save_last,
                precision,
                seed: t.seed,
            },
            optim: AdamWConfig {
                beta1: o.adam_beta1,
                beta2: o.adam_beta2,
                eps: o.adam_eps,
                weight_decay: o.weight_decay,
                clip_grad: o.clip_grad,
                distributed: o.use_distributed_optimizer,
            },
            // Coil anneals over the run's real length (NeMo's scheduler keeps max_steps = 10).
            schedule: LrSchedule {
                max_lr: o.max_lr,
                min_lr: o.min_lr,
                warmup_steps: o.warmup_steps,
                constant_steps: o.constant_steps,
                max_steps: t.max_steps,
            },
            start,
            recipe_toml,
            // Filled by the caller from the tokenizer it loads (`load_tokenizer`).
            tokenizer_files: Vec::new(),
            device,
            progress: self.run.progress,
            padding: None,
        })
    }
}

/// A stand-in tokenizer for mock data: it only knows the vocabulary size.
struct VocabOnly(usize);

impl Tokenizer for VocabOnly {
    fn encode(&self, _text: &str) -> coil_data::Result<Vec<u32>> {
        Err(coil_data::DataError::Config(
            "no tokenizer is configured (set tokenizer.path)".into(),
        ))
    }
    fn decode(&self, ids: &[u32]) -> coil_data::Result<String> {
        Ok(format!("{ids:?}"))
    }
    fn vocab_size(&self) -> usize {
        self.0
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn pad_id(&self) -> Option<u32> {
        None
    }
    fn describe(&self) -> String {
        format!("vocabulary size {} (mock data, no tokenizer)", self.0)
    }
    fn model_dir_files(&self) -> coil_data::Result<Vec<coil_data::tokenizer::ModelDirFile>> {
        Ok(Vec::new())
    }
}
