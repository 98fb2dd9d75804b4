//! The one error type of coil-data: every variant names the file (and line or field) it is about.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading, writing or sampling data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path}: bad magic {found:02x?}: not a Megatron MMIDIDX index (write one with `coil preprocess`)"
    )]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: unsupported index version {version}; only version 1 is supported")]
    BadVersion { path: PathBuf, version: u64 },
    #[error("{path}: unknown dtype code {code}; valid codes are 1..=8 (uint8 .. uint16)")]
    UnknownDtype { path: PathBuf, code: u8 },
    #[error(
        "{path}: truncated index: {what} needs bytes {start}..{end} but the file has {len} bytes"
    )]
    Truncated {
        path: PathBuf,
        what: &'static str,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{path}: sequence {index} needs bytes {start}..{end} but the .bin file has {len} bytes (truncated or mismatched .bin?)")]
    PointerPastEnd {
        path: PathBuf,
        index: usize,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{path}: corrupt index: {detail}")]
    CorruptIndex { path: PathBuf, detail: String },
    #[error("{path}:{line}: {detail}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("tokenizer {source_name}: {detail}")]
    Tokenizer { source_name: String, detail: String },
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("invalid data configuration: {0}")]
    Config(String),
    #[error(
        "{origin}: sample {sample} holds token id {id}, outside the model's vocabulary [0, {vocab}); was the data \
         tokenized with the model's tokenizer (tokenizer.path)?"
    )]
    TokenOutOfVocab {
        origin: String,
        sample: usize,
        id: i64,
        vocab: usize,
    },
    #[error("sample {index} is out of range: the dataset has {len} samples")]
    OutOfRange { index: usize, len: usize },
}

/// Shorthand for results in this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
    pub(crate) fn file(path: &Path, detail: impl Into<String>) -> Self {
        DataError::File {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
    pub(crate) fn corrupt(path: &Path, detail: impl Into<String>) -> Self {
        DataError::CorruptIndex {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
    pub(crate) fn tok(source_name: impl Into<String>, detail: impl Into<String>) -> Self {
        DataError::Tokenizer {
            source_name: source_name.into(),
            detail: detail.into(),
        }
    }
}
