//! coil-data owns everything between text on disk and the integer batches the trainer consumes:
//! tokenizers, Megatron `.bin/.idx` corpora (read and write, byte-identical to megatron-core), GPT
//! pretraining sampling with splits and blends, SQuAD-style fine-tuning data with packing, mock data, and
//! the embedded Shakespeare demo corpus. `DataConfig` + `build_data` is the entry point for a recipe.
//!
//! Key design decision: every index that decides *which* tokens a step sees (document shuffle, sample
//! index, shuffle index, blend index, SFT order) is computed with the same algorithms and random streams
//! as megatron-core and NeMo (MT19937 with numpy's legacy shuffle), so a Coil run and a NeMo run over the
//! same corpus and seed see the same samples in the same order. Batches are plain `Vec`s; this crate
//! knows no tensors.

// Formats and tokenization.
pub mod atomic;
pub mod corpus;
pub mod error;
pub mod indexed;
pub mod npy;
pub mod preprocess;
pub mod tokenizer;

// Sampling.
pub mod batch;
pub mod blend;
pub mod gpt;
pub mod mock;
pub mod numpy_rng;
pub mod sample_mapping;
pub mod sft;

// Entry points.
pub mod bench;
pub mod data_module;

pub use batch::{Batch, DataCursor, Loader, Sample, SampleSource};
pub use blend::{
    build_pretraining_datasets, build_pretraining_datasets_per_split, pretrain_sample_counts,
    Blend, BlendedDataset, PretrainDataset,
};
pub use data_module::{build_data, DataConfig, DataSources, RunShape};
pub use error::{DataError, Result};
pub use gpt::{parse_split, split_ranges, GptConfig, GptDataset, Split};
pub use indexed::{DType, IndexedDataset, IndexedDatasetWriter};
pub use mock::MockDataset;
pub use preprocess::{
    preprocess_jsonl, preprocess_jsonl_with_bar, PreprocessConfig, PreprocessProgress,
};
pub use sft::{PackedSftDataset, SftConfig, SftDataset, SftExample};
pub use tokenizer::{load_tokenizer, padded_vocab_size, Tokenizer};
