//! Fine-tuning data in NeMo's SQuAD format: JSONL lines `{"input": "Context: ... Question: ... Answer:",
//! "output": "..."}` rendered with the template "{input} {output}", EOS appended, only the prompt truncated
//! to fit, loss on the answer (and EOS) only. Batches are padded per batch to a multiple of 16 with EOS, as
//! NeMo's `GPTSFTDataset.collate_fn` does. Beyond NeMo: packing several examples into one fixed-length row
//! with `seq_idx` marking which example each position belongs to.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use crate::batch::{pad_batch, Batch, Sample, SampleSource};
use crate::error::{DataError, Result};
use crate::tokenizer::Tokenizer;

/// NeMo `GPTSFTDataset` defaults that matter here.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SftConfig {
    /// Maximum ids per example (prompt + answer + EOS); NeMo's `max_seq_length` = the run's seq_length.
    pub seq_length: usize,
    /// Loss on answer tokens only (NeMo default true).
    pub answer_only_loss: bool,
    /// Pad batches to a multiple of this (NeMo default 16).
    pub pad_to_multiple: usize,
}

impl SftConfig {
    /// NeMo defaults for a sequence length.
    pub fn new(seq_length: usize) -> Self {
        SftConfig {
            seq_length,
            answer_only_loss: true,
            pad_to_multiple: 16,
        }
    }
}

/// One tokenized example: `ids = prompt ++ answer ++ [eos]`; the loss starts at `answer_start`.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<i64>,
    pub answer_start: usize,
}

impl SftExample {
    /// The shifted sample: `tokens = ids[..n-1]`, `labels = ids[1..]`, `loss_mask[i] = (i+1 >= answer_start)`.
    pub fn to_sample(&self, answer_only_loss: bool) -> Sample {
        let mut s = Sample::from_window(&self.ids);
        if answer_only_loss {
            for (i, m) in s.loss_mask.iter_mut().enumerate() {
                *m = if i + 1 >= self.answer_start { 1.0 } else { 0.0 };
            }
        }
        s
    }
}

#[derive(Deserialize)]
struct SquadLine {
    input: String,
    output: String,
}

/// Render and tokenize one example as NeMo's `GPTSFTDataset` does: both fields stripped of spaces, the
/// template pieces tokenized separately, the answer keeping the template's space before it only for
/// space-sensitive tokenizers. If prompt + answer + EOS exceed `seq_length`, the prompt is cut from the
/// right; if the answer alone is too long, the answer is cut from the right too (EOS is kept).
pub fn build_example(
    input: &str,
    output: &str,
    tokenizer: &dyn Tokenizer,
    config: &SftConfig,
) -> Result<SftExample> {
    let eos = tokenizer.eos_id().ok_or_else(|| {
        DataError::Config(format!(
            "tokenizer {} has no EOS token",
            tokenizer.describe()
        ))
    })?;
    let (input, output) = (input.trim_matches(' '), output.trim_matches(' '));
    let answer_text = if tokenizer.space_sensitive() {
        format!(" {output}")
    } else {
        output.to_string()
    };
    let mut prompt: Vec<i64> = tokenizer
        .encode(input)?
        .into_iter()
        .map(i64::from)
        .collect();
    let mut answer: Vec<i64> = tokenizer
        .encode(&answer_text)?
        .into_iter()
        .map(i64::from)
        .collect();
    let max = config.seq_length.max(2);
    let total = prompt.len() + answer.len() + 1;
    if total > max {
        let excess = total - max;
        let cut = excess.min(prompt.len());
        prompt.truncate(prompt.len() - cut);
        answer.truncate(answer.len() - (excess - cut));
    }
    let answer_start = prompt.len();
    prompt.extend(answer);
    prompt.push(eos as i64);
    Ok(SftExample {
        ids: prompt,
        answer_start,
    })
}

/// Read a SQuAD-format JSONL file (blank lines are skipped; a malformed line is an error naming it).
pub fn load_squad_jsonl(
    path: &Path,
    tokenizer: &dyn Tokenizer,
    config: &SftConfig,
) -> Result<Vec<SftExample>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let err = |detail: String| DataError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            detail,
        };
        let line = line.map_err(|e| err(format!("cannot read line: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let ex: SquadLine = serde_json::from_str(&line).map_err(|e| {
            err(format!(
                "expected {{\"input\": string, \"output\": string}}: {e}"
            ))
        })?;
        out.push(
            build_example(&ex.input, &ex.output, tokenizer, config)
                .map_err(|e| err(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Unpacked SFT examples; use [`SftDataset::collate`] (or a padding [`crate::Loader`]) to batch them.
pub struct SftDataset {
    pub examples: Vec<SftExample>,
    pub config: SftConfig,
    pub eos: i64,
}

impl SftDataset {
    /// Load a JSONL file.
    pub fn from_jsonl(path: &Path, tokenizer: &dyn Tokenizer, config: SftConfig) -> Result<Self> {
        let examples = load_squad_jsonl(path, tokenizer, &config)?;
        let eos = tokenizer.eos_id().unwrap_or(0) as i64;
        Ok(Self {
            examples,
            config,
            eos,
        })
    }

    /// NeMo's collate: pad to `min(seq_length, ceil16(longest))` with EOS tokens/labels and mask 0.
    pub fn collate(&self, indices: &[usize]) -> Result<Batch> {
        let samples = indices
            .iter()
            .map(|&i| self.sample(i))
            .collect::<Result<Vec<_>>>()?;
        pad_batch(
            &samples,
            self.eos,
            self.config.pad_to_multiple,
            self.config.seq_length,
        )
    }
}

impl SampleSource for SftDataset {
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        let ex = self.examples.get(idx).ok_or(DataError::OutOfRange {
            index: idx,
            len: self.examples.len(),
        })?;
        Ok(ex.to_sample(self.config.answer_only_loss))
    }
}

/// Greedy first-fit packing in input order: each example (its `len(ids) - 1` positions) goes into the
/// first row with room, a row holds at most `row_length` positions. Returns example indices per row.
pub fn plan_packing(examples: &[SftExample], row_length: usize) -> Result<Vec<Vec<usize>>> {
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let n = ex.ids.len().saturating_sub(1);
        if n > row_length {
            return Err(DataError::Config(format!(
                "example {i} has {n} positions, more than the packed row length {row_length}"
            )));
        }
        match rows.iter_mut().find(|(used, _)| used + n <= row_length) {
            Some((used, members)) => {
                *used += n;
                members.push(i);
            }
            None => rows.push((n, vec![i])),
        }
    }
    Ok(rows.into_iter().map(|(_, m)| m).collect())
}

/// Fixed-length rows of packed examples with `seq_idx` (0, 1, 2, ... per example; the padding tail gets
/// the next id), positions restarting at 0 for each example, and padding with EOS and mask 0.
pub struct PackedSftDataset {
    rows: Vec<Vec<usize>>,
    examples: Vec<SftExample>,
    row_length: usize,
    eos: i64,
    answer_only_loss: bool,
}

impl PackedSftDataset {
    /// Pack `dataset`'s examples into rows of `row_length` positions.
    pub fn new(dataset: SftDataset, row_length: usize) -> Result<Self> {
        let rows = plan_packing(&dataset.examples, row_length)?;
        Ok(Self {
            rows,
            examples: dataset.examples,
            row_length,
            eos: dataset.eos,
            answer_only_loss: dataset.config.answer_only_loss,
        })
    }
    /// Which examples each row holds.
    pub fn rows(&self) -> &[Vec<usize>] {
        &self.rows
    }
    /// The examples.
    pub fn examples(&self) -> &[SftExample] {
        &self.examples
    }
}

impl SampleSource for PackedSftDataset {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        let row = self.rows.get(idx).ok_or(DataError::OutOfRange {
            index: idx,
            len: self.rows.len(),
        })?;
        let mut out = Sample {
            seq_idx: Some(Vec::with_capacity(self.row_length)),
            ..Sample::default()
        };
        for (slot, &e) in row.iter().enumerate() {
            let s = self.examples[e].to_sample(self.answer_only_loss);
            out.tokens.extend(&s.tokens);
            out.labels.extend(&s.labels);
            out.loss_mask.extend(&s.loss_mask);
            out.position_ids.extend(&s.position_ids);
            if let Some(ids) = out.seq_idx.as_mut() {
                ids.extend(std::iter::repeat_n(slot as i32, s.len()));
            }
        }
        let extra = self.row_length - out.len();
        out.tokens.extend(std::iter::repeat_n(self.eos, extra));
        out.labels.extend(std::iter::repeat_n(self.eos, extra));
        out.loss_mask.extend(std::iter::repeat_n(0.0, extra));
        out.position_ids.extend(0..extra as i64);
        if let Some(ids) = out.seq_idx.as_mut() {
            ids.extend(std::iter::repeat_n(row.len() as i32, extra));
        }
        Ok(out)
    }
}
