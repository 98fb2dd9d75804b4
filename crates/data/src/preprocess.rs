//! JSONL -> Megatron dataset, like Megatron's `tools/preprocess_data.py` without sentence splitting: one
//! JSON object per line, the text under `json_key` (a string, or a list of strings = one sequence each)
//! becomes one document, optionally followed by the tokenizer's EOD. Lines are tokenized in parallel in
//! chunks and written in input order, so the output does not depend on the worker count.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::indexed::{DType, IndexedDatasetWriter};
use crate::tokenizer::Tokenizer;

/// What to tokenize and where to write it.
#[derive(Debug, Clone)]
pub struct PreprocessConfig {
    /// JSONL input.
    pub input: PathBuf,
    /// Key of the text field (NeMo/Megatron default "text").
    pub json_key: String,
    /// Output prefix: writes exactly `PREFIX.bin` and `PREFIX.idx`.
    pub output_prefix: PathBuf,
    /// Append the tokenizer's EOD id to every non-empty document.
    pub append_eod: bool,
    /// Tokenizer threads (>= 1).
    pub workers: usize,
    /// Element type; `None` = Megatron's choice for the vocabulary (uint16 below 65500, else int32).
    pub dtype: Option<DType>,
}

/// Progress of a run, reported after every chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreprocessProgress {
    pub documents: u64,
    pub tokens: u64,
    pub bytes_read: u64,
    pub total_bytes: u64,
    pub seconds: f64,
}

impl PreprocessProgress {
    /// Tokens per second so far.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

const CHUNK_LINES: usize = 2048;

/// Tokenize `config.input` into `config.output_prefix`.{bin,idx}; `progress` is called after each chunk.
/// On any error nothing is left at the output paths.
pub fn preprocess_jsonl(
    config: &PreprocessConfig,
    tokenizer: &dyn Tokenizer,
    progress: &mut dyn FnMut(&PreprocessProgress),
) -> Result<PreprocessProgress> {
    let path = config.input.as_path();
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let total_bytes = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let eod = match (config.append_eod, tokenizer.eos_id()) {
        (true, Some(id)) => Some(id as i64),
        (true, None) => {
            return Err(DataError::Config(format!(
                "--append-eod: tokenizer {} has no end-of-document token",
                tokenizer.describe()
            )))
        }
        (false, _) => None,
    };
    let dtype = config
        .dtype
        .unwrap_or_else(|| DType::optimal_for_vocab(tokenizer.vocab_size()));
    let mut writer = IndexedDatasetWriter::create(&config.output_prefix, dtype)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.workers.max(1))
        .build()
        .map_err(|e| DataError::Config(format!("cannot start {} workers: {e}", config.workers)))?;
    let start = Instant::now();
    let mut stats = PreprocessProgress {
        total_bytes,
        ..Default::default()
    };
    let mut line_no = 0usize;
    loop {
        let mut chunk: Vec<(usize, String)> = Vec::with_capacity(CHUNK_LINES);
        while chunk.len() < CHUNK_LINES {
            let mut line = String::new();
            let n = reader.read_line(&mut line).map_err(|e| DataError::Jsonl {
                path: path.to_path_buf(),
                line: line_no + 1,
                detail: format!("cannot read line: {e}"),
            })?;
            if n == 0 {
                break;
            }
            line_no += 1;
            stats.bytes_read += n as u64;
            if !line.trim().is_empty() {
                chunk.push((line_no, line));
            }
        }
        if chunk.is_empty() {
            break;
        }
        let docs: Vec<Vec<Vec<i64>>> = pool.install(|| {
            chunk
                .par_iter()
                .map(|(no, line)| encode_line(path, *no, line, &config.json_key, tokenizer, eod))
                .collect::<Result<_>>()
        })?;
        for doc in docs {
            for seq in &doc {
                writer.add_item(seq)?;
                stats.tokens += seq.len() as u64;
            }
            writer.end_document();
            stats.documents += 1;
        }
        stats.seconds = start.elapsed().as_secs_f64();
        progress(&stats);
    }
    if stats.tokens == 0 {
        // Dropping the writer removes its temporary file: nothing is written.
        return Err(DataError::file(
            path,
            format!(
                "no tokens to write: the file holds {} (the text is read from the {:?} field of each line)",
                if stats.documents == 0 {
                    "no documents".to_string()
                } else {
                    format!("{} documents, all with empty text", stats.documents)
                },
                config.json_key
            ),
        ));
    }
    writer.finalize()?;
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

fn encode_line(
    path: &Path,
    line_no: usize,
    line: &str,
    key: &str,
    tokenizer: &dyn Tokenizer,
    eod: Option<i64>,
) -> Result<Vec<Vec<i64>>> {
    let err = |detail: String| DataError::Jsonl {
        path: path.to_path_buf(),
        line: line_no,
        detail,
    };
    let value: Value =
        serde_json::from_str(line).map_err(|e| err(format!("malformed JSON: {e}")))?;
    let field = value
        .get(key)
        .ok_or_else(|| err(format!("no {key:?} field")))?;
    let texts: Vec<&str> = match field {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| err(format!("{key:?} list holds a non-string")))
            })
            .collect::<Result<_>>()?,
        _ => return Err(err(format!("{key:?} is not a string or a list of strings"))),
    };
    let mut seqs = Vec::with_capacity(texts.len());
    for t in texts {
        let ids = tokenizer.encode(t).map_err(|e| err(e.to_string()))?;
        if !ids.is_empty() {
            seqs.push(ids.into_iter().map(i64::from).collect::<Vec<_>>());
        }
    }
    if let (Some(e), Some(last)) = (eod, seqs.last_mut()) {
        last.push(e);
    }
    Ok(seqs)
}

/// [`preprocess_jsonl`] with a progress bar on stderr (bytes read, tokens/s), as `coil preprocess` shows.
pub fn preprocess_jsonl_with_bar(
    config: &PreprocessConfig,
    tokenizer: &dyn Tokenizer,
) -> Result<PreprocessProgress> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let out = preprocess_jsonl(config, tokenizer, &mut |p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.bytes_read);
        bar.set_message(format!(
            "{} docs, {} tokens, {:.0} tokens/s",
            p.documents,
            p.tokens,
            p.tokens_per_second()
        ));
    });
    bar.finish_and_clear();
    out
}
