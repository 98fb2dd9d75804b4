//! Samples, batches and the resumable loader. A [`SampleSource`] (mock, GPT, blend, SFT) hands out
//! fixed-length samples by index; [`Loader`] walks the indices in Megatron's "single" sampler order and
//! its [`DataCursor`] (consumed samples) is what a checkpoint stores, so a resumed run continues with
//! exactly the batch it would have seen.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// One training example of `T` positions, already shifted: `labels[t]` is the token after `tokens[t]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    pub tokens: Vec<i64>,
    pub labels: Vec<i64>,
    pub loss_mask: Vec<f32>,
    pub position_ids: Vec<i64>,
    /// For packed rows: which example each position belongs to (0, 0, 1, 1, 1, 2, ...). `None` = one
    /// example per row.
    pub seq_idx: Option<Vec<i32>>,
}

impl Sample {
    /// A sample from `seq_length + 1` tokens with a full loss mask and positions `0..T`.
    pub fn from_window(window: &[i64]) -> Sample {
        let t = window.len().saturating_sub(1);
        Sample {
            tokens: window[..t].to_vec(),
            labels: window[1..].to_vec(),
            loss_mask: vec![1.0; t],
            position_ids: (0..t as i64).collect(),
            seq_idx: None,
        }
    }
    /// Number of positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A micro-batch in row-major `[B, T]` layout (`shape = [B, T]`). The trainer turns these into tensors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// `[B, T]` input ids.
    pub tokens: Vec<i64>,
    /// `[B, T]` next-token targets.
    pub labels: Vec<i64>,
    /// `[B, T]` 1.0 where the loss counts.
    pub loss_mask: Vec<f32>,
    /// `[B, T]` positions (restart at 0 for each packed example).
    pub position_ids: Vec<i64>,
    /// `[B, T]` packed-example ids, when the rows are packed.
    pub seq_idx: Option<Vec<i32>>,
    /// `[B, T]`.
    pub shape: [usize; 2],
}

impl Batch {
    /// Stack equally long samples into one batch.
    pub fn stack(samples: &[Sample]) -> Result<Batch> {
        let t = samples.first().map_or(0, Sample::len);
        if let Some(bad) = samples.iter().find(|s| s.len() != t) {
            return Err(DataError::Config(format!(
                "cannot stack samples of lengths {t} and {}",
                bad.len()
            )));
        }
        let packed = samples.iter().any(|s| s.seq_idx.is_some());
        let mut b = Batch {
            shape: [samples.len(), t],
            seq_idx: packed.then(Vec::new),
            ..Batch::default()
        };
        for s in samples {
            b.tokens.extend_from_slice(&s.tokens);
            b.labels.extend_from_slice(&s.labels);
            b.loss_mask.extend_from_slice(&s.loss_mask);
            b.position_ids.extend_from_slice(&s.position_ids);
            if let Some(ids) = b.seq_idx.as_mut() {
                match &s.seq_idx {
                    Some(x) => ids.extend_from_slice(x),
                    None => ids.extend(std::iter::repeat_n(0, t)),
                }
            }
        }
        Ok(b)
    }
    /// Number of positions whose loss counts.
    pub fn num_loss_tokens(&self) -> f32 {
        self.loss_mask.iter().sum()
    }
}

/// Anything that serves samples by index.
pub trait SampleSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Sample `idx` (0-based, `< len()`).
    fn sample(&self, idx: usize) -> Result<Sample>;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The file sample `idx` comes from, for messages (`None`: nothing to name, e.g. mock data).
    fn origin(&self, _idx: usize) -> Option<String> {
        None
    }
}

impl<S: SampleSource + ?Sized> SampleSource for Box<S> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        (**self).sample(idx)
    }
    fn origin(&self, idx: usize) -> Option<String> {
        (**self).origin(idx)
    }
}

impl<S: SampleSource + ?Sized> SampleSource for std::sync::Arc<S> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        (**self).sample(idx)
    }
    fn origin(&self, idx: usize) -> Option<String> {
        (**self).origin(idx)
    }
}

/// The data position a checkpoint stores: how many samples of the global stream were consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataCursor {
    pub consumed_samples: u64,
}

/// Megatron's "single" pretraining sampler: global batches of `micro_batch_size x dp_size` consecutive
/// indices; data-parallel rank `r` takes the `r`-th slice of each. Stops at the end (no wrap-around).
pub struct Loader<S: SampleSource> {
    source: S,
    micro_batch_size: usize,
    dp_rank: usize,
    dp_size: usize,
    cursor: DataCursor,
    padding: Option<(i64, usize, usize)>,
    vocab: Option<usize>,
}

impl<S: SampleSource> Loader<S> {
    /// A loader for one data-parallel rank, starting at `cursor`.
    pub fn new(
        source: S,
        micro_batch_size: usize,
        dp_rank: usize,
        dp_size: usize,
        cursor: DataCursor,
    ) -> Result<Self> {
        if micro_batch_size == 0 || dp_size == 0 || dp_rank >= dp_size {
            return Err(DataError::Config(format!(
                "loader needs micro_batch_size > 0 and dp_rank < dp_size (got {micro_batch_size}, {dp_rank}, {dp_size})"
            )));
        }
        Ok(Self {
            source,
            micro_batch_size,
            dp_rank,
            dp_size,
            cursor,
            padding: None,
            vocab: None,
        })
    }
    /// Refuse samples whose tokens (or loss-counted labels) lie outside `[0, vocab)`, naming the file they come
    /// from: data tokenized for another model fails here, with the file's name, instead of inside the model.
    pub fn with_vocab(mut self, vocab: usize) -> Self {
        self.vocab = Some(vocab);
        self
    }
    /// Pad each micro-batch to its longest sample rounded up to `multiple` (capped at `max_len`) with
    /// `pad_id`, for variable-length sources such as unpacked SFT data.
    pub fn with_padding(mut self, pad_id: i64, multiple: usize, max_len: usize) -> Self {
        self.padding = Some((pad_id, multiple, max_len));
        self
    }
    /// Position to save in a checkpoint.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }
    /// Jump to a saved position.
    pub fn restore(&mut self, cursor: DataCursor) {
        self.cursor = cursor;
    }
    /// The underlying sample source.
    pub fn source(&self) -> &S {
        &self.source
    }
    /// The next micro-batch for this rank, or `None` when fewer than a full global micro-batch remain.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let global = (self.micro_batch_size * self.dp_size) as u64;
        let start = self.cursor.consumed_samples;
        if start + global > self.source.len() as u64 {
            return Ok(None);
        }
        let first = start as usize + self.dp_rank * self.micro_batch_size;
        let samples = (first..first + self.micro_batch_size)
            .map(|i| {
                let s = self.source.sample(i)?;
                self.check_ids(i, &s)?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()?;
        self.cursor.consumed_samples += global;
        match self.padding {
            Some((pad, multiple, max_len)) => pad_batch(&samples, pad, multiple, max_len).map(Some),
            None => Batch::stack(&samples).map(Some),
        }
    }
}

impl<S: SampleSource> Loader<S> {
    fn check_ids(&self, idx: usize, s: &Sample) -> Result<()> {
        let Some(vocab) = self.vocab else {
            return Ok(());
        };
        let outside = |t: i64| t < 0 || t as u64 >= vocab as u64;
        let labels = s
            .labels
            .iter()
            .zip(&s.loss_mask)
            .filter(|(_, &m)| m > 0.0)
            .map(|(&l, _)| l);
        match s.tokens.iter().copied().chain(labels).find(|&t| outside(t)) {
            None => Ok(()),
            Some(id) => Err(DataError::TokenOutOfVocab {
                origin: self.source.origin(idx).unwrap_or_else(|| "the data".into()),
                sample: idx,
                id,
                vocab,
            }),
        }
    }
}

impl<S: SampleSource> Iterator for Loader<S> {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// Pad samples of different lengths to one length: the longest rounded up to `multiple`, capped at
/// `max_len`. Padding positions get `pad_id` as token and label, mask 0, and continuing positions.
pub fn pad_batch(
    samples: &[Sample],
    pad_id: i64,
    multiple: usize,
    max_len: usize,
) -> Result<Batch> {
    let longest = samples.iter().map(Sample::len).max().unwrap_or(0);
    let m = multiple.max(1);
    let len = longest.div_ceil(m) * m;
    let len = len.min(max_len.max(longest));
    let padded: Vec<Sample> = samples
        .iter()
        .map(|s| {
            let mut s = s.clone();
            let extra = len - s.len();
            let start = s.len() as i64;
            s.tokens.extend(std::iter::repeat_n(pad_id, extra));
            s.labels.extend(std::iter::repeat_n(pad_id, extra));
            s.loss_mask.extend(std::iter::repeat_n(0.0, extra));
            s.position_ids.extend(start..start + extra as i64);
            // Padding of a packed row is a segment of its own, so no example attends to it or carries
            // state into it (its loss mask is 0 anyway).
            if let Some(seq) = s.seq_idx.as_mut() {
                let next = seq.last().map_or(0, |v| v + 1);
                seq.extend(std::iter::repeat_n(next, extra));
            }
            s
        })
        .collect();
    Batch::stack(&padded)
}
