//! One serde config for a run's data (the `[data]` table of a recipe) and one call that turns it into
//! train/validation sample sources, like NeMo's data modules: mock, Megatron pretraining corpora (list or
//! per-split paths), the embedded Shakespeare demo, and SQuAD-format fine-tuning (plain or packed).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::batch::SampleSource;
use crate::blend::{
    build_pretraining_datasets, build_pretraining_datasets_per_split, pretrain_sample_counts,
};
use crate::error::{DataError, Result};
use crate::gpt::{GptConfig, Split};
use crate::mock::MockDataset;
use crate::sample_mapping::{nemo_sft_train_samples, OnlineSampleMapping, Remapped};
use crate::sft::{PackedSftDataset, SftConfig, SftDataset};
use crate::tokenizer::Tokenizer;

fn default_seed() -> u32 {
    1234
}
fn default_split() -> String {
    "900,50,50".into()
}

/// The data of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// NeMo `MockDataModule`: random tokens (vocabulary from the tokenizer), a real seed.
    Mock {
        #[serde(default = "default_seed")]
        seed: u32,
    },
    /// NeMo `PreTrainingDataModule` over Megatron `.bin/.idx` prefixes.
    Pretrain {
        /// `[p]`, `[p1, p2]` or `["30", p1, "70", p2]`.
        #[serde(default)]
        paths: Vec<String>,
        /// NeMo's dict form: per-split lists (the split string is then ignored).
        #[serde(default)]
        train_paths: Option<Vec<String>>,
        #[serde(default)]
        validation_paths: Option<Vec<String>>,
        #[serde(default)]
        test_paths: Option<Vec<String>>,
        #[serde(default = "default_split")]
        split: String,
        #[serde(default = "default_seed")]
        seed: u32,
        #[serde(default)]
        eod_mask_loss: bool,
        #[serde(default)]
        index_mapping_dir: Option<PathBuf>,
    },
    /// The embedded Shakespeare corpus, tokenized once into `dir` and sampled like a pretraining corpus.
    Shakespeare {
        dir: PathBuf,
        #[serde(default = "default_split")]
        split: String,
        #[serde(default = "default_seed")]
        seed: u32,
    },
    /// SQuAD-format JSONL fine-tuning data.
    Squad {
        train: PathBuf,
        #[serde(default)]
        validation: Option<PathBuf>,
        /// Pack several examples per row (with `seq_idx`) instead of NeMo's per-batch padding.
        #[serde(default)]
        packed: bool,
    },
}

/// The run settings that decide sample counts (NeMo trainer and data module values).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunShape {
    pub seq_length: usize,
    pub global_batch_size: usize,
    pub max_steps: usize,
    pub val_check_interval: usize,
    pub limit_val_batches: usize,
    pub limit_test_batches: usize,
}

/// Sample sources for a run, plus how to batch them.
pub struct DataSources {
    pub train: Box<dyn SampleSource>,
    pub validation: Option<Box<dyn SampleSource>>,
    /// `Some((pad_id, multiple, max_len))` when samples vary in length (unpacked SFT): give it to
    /// [`crate::Loader::with_padding`].
    pub padding: Option<(i64, usize, usize)>,
}

/// Build the train and validation sources a config describes.
pub fn build_data(
    config: &DataConfig,
    tokenizer: &dyn Tokenizer,
    shape: &RunShape,
) -> Result<DataSources> {
    let counts = pretrain_sample_counts(
        shape.max_steps,
        shape.global_batch_size,
        shape.val_check_interval,
        shape.limit_val_batches,
        shape.limit_test_batches,
    );
    let gpt = |seed: u32, eod_mask_loss: bool, cache: Option<PathBuf>| GptConfig {
        seed,
        eod: tokenizer.eos_id().map(i64::from),
        pad: None,
        eod_mask_loss,
        cache_dir: cache,
        ..GptConfig::new(shape.seq_length)
    };
    let pretrain = |sets: [Option<crate::PretrainDataset>; 3]| -> Result<DataSources> {
        let [train, valid, _] = sets;
        let train =
            train.ok_or_else(|| DataError::Config("the data has no training split".into()))?;
        Ok(DataSources {
            train: Box::new(train),
            validation: valid.map(|v| Box::new(v) as Box<dyn SampleSource>),
            padding: None,
        })
    };
    match config {
        DataConfig::Mock { seed } => {
            let v = tokenizer.vocab_size();
            Ok(DataSources {
                train: Box::new(MockDataset::new(
                    v,
                    shape.seq_length,
                    counts[0],
                    *seed as u64,
                    Split::Train,
                )?),
                validation: Some(Box::new(MockDataset::new(
                    v,
                    shape.seq_length,
                    counts[1],
                    *seed as u64,
                    Split::Valid,
                )?)),
                padding: None,
            })
        }
        DataConfig::Pretrain {
            paths,
            train_paths,
            validation_paths,
            test_paths,
            split,
            seed,
            eod_mask_loss,
            index_mapping_dir,
        } => {
            let cfg = gpt(*seed, *eod_mask_loss, index_mapping_dir.clone());
            let sizes = counts.map(Some);
            if train_paths.is_some() || validation_paths.is_some() || test_paths.is_some() {
                let per = [
                    train_paths.as_deref(),
                    validation_paths.as_deref(),
                    test_paths.as_deref(),
                ];
                pretrain(build_pretraining_datasets_per_split(per, sizes, &cfg)?)
            } else {
                pretrain(build_pretraining_datasets(paths, split, sizes, &cfg)?)
            }
        }
        DataConfig::Shakespeare { dir, split, seed } => {
            let name = format!(
                "shakespeare_{}",
                tokenizer
                    .describe()
                    .split_whitespace()
                    .next()
                    .unwrap_or("tok")
                    .replace(['/', ':'], "_")
            );
            let prefix = crate::corpus::prepare_shakespeare(&dir.join(name), tokenizer)?;
            let cfg = gpt(*seed, false, Some(dir.join("cache")));
            pretrain(build_pretraining_datasets(
                &[prefix.to_string_lossy().into_owned()],
                split,
                counts.map(Some),
                &cfg,
            )?)
        }
        DataConfig::Squad {
            train,
            validation,
            packed,
        } => {
            let sft = SftConfig::new(shape.seq_length);
            let eos = tokenizer.eos_id().unwrap_or(0) as i64;
            let load = |p: &PathBuf| SftDataset::from_jsonl(p, tokenizer, sft.clone());
            let train_ds = load(train)?;
            let n = train_ds.examples.len();
            let wanted = nemo_sft_train_samples(shape.global_batch_size, shape.max_steps);
            let (train_src, padding): (Box<dyn SampleSource>, _) = if *packed {
                let packed = PackedSftDataset::new(train_ds, shape.seq_length)?;
                let rows = packed.len();
                (
                    Box::new(Remapped {
                        source: packed,
                        mapping: OnlineSampleMapping::nemo_sft(rows, wanted)?,
                    }),
                    None,
                )
            } else {
                let mapping = OnlineSampleMapping::nemo_sft(n, wanted)?;
                (
                    Box::new(Remapped {
                        source: train_ds,
                        mapping,
                    }),
                    Some((eos, sft.pad_to_multiple, shape.seq_length)),
                )
            };
            let validation = match validation {
                Some(p) if *packed => {
                    Some(Box::new(PackedSftDataset::new(load(p)?, shape.seq_length)?)
                        as Box<dyn SampleSource>)
                }
                Some(p) => Some(Box::new(load(p)?) as Box<dyn SampleSource>),
                None => None,
            };
            Ok(DataSources {
                train: train_src,
                validation,
                padding,
            })
        }
    }
}
