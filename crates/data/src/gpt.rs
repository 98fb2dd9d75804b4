//! The GPT pretraining dataset as megatron-core builds it over one indexed dataset: a split of its
//! sequences ("900,50,50"), enough epochs to give `num_samples` samples, a per-run document shuffle, a
//! sample index of `(document position, offset)` pairs cutting the shuffled token stream into
//! `seq_length + 1` windows that cross document boundaries, and a shuffle over samples. The three arrays
//! are cached as `.npy` files; the same corpus, split, seed and length always give the same samples.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{Sample, SampleSource};
use crate::error::{DataError, Result};
use crate::indexed::IndexedDataset;
use crate::npy;
use crate::numpy_rng::RandomState;

/// Train, validation or test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train = 0,
    Valid = 1,
    Test = 2,
}

impl Split {
    /// All three, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];
    /// Megatron's name ("train", "valid", "test").
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// Settings shared by every GPT dataset of a run (NeMo `PreTrainingDataModule` defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Tokens per sample (each window reads one more for the labels).
    pub seq_length: usize,
    /// `numpy.random.RandomState` seed (NeMo default 1234).
    pub seed: u32,
    /// End-of-document id, used when `eod_mask_loss`.
    pub eod: Option<i64>,
    /// Pad id: padded positions get loss 0 and id 0, as in Megatron. `None` = no padding id.
    pub pad: Option<i64>,
    /// Zero the loss on EOD input tokens.
    pub eod_mask_loss: bool,
    /// Drop the last partial sample of the validation split (Megatron default true).
    pub drop_last_partial_validation_sequence: bool,
    /// Where to cache indices; `None` = `<dir of prefix>/cache/GPTDataset_indices`.
    pub cache_dir: Option<PathBuf>,
}

impl GptConfig {
    /// Defaults for a sequence length: seed 1234, no EOD masking, default cache location.
    pub fn new(seq_length: usize) -> Self {
        GptConfig {
            seq_length,
            seed: 1234,
            eod: None,
            pad: None,
            eod_mask_loss: false,
            drop_last_partial_validation_sequence: true,
            cache_dir: None,
        }
    }
}

/// `parse_and_normalize_split`: the numbers in `s` (regex `[.0-9]+`), padded to three and normalized.
pub fn parse_split(s: &str) -> Result<[f64; 3]> {
    let mut nums = Vec::new();
    let mut cur = String::new();
    for ch in s.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() || ch == '.' {
            cur.push(ch);
        } else if !cur.is_empty() {
            let v: f64 = cur
                .parse()
                .map_err(|_| DataError::Config(format!("split {s:?}: cannot parse {cur:?}")))?;
            nums.push(v);
            cur.clear();
        }
    }
    if nums.is_empty() || nums.len() > 3 {
        return Err(DataError::Config(format!(
            "split {s:?} must hold one to three numbers, like \"900,50,50\""
        )));
    }
    nums.resize(3, 0.0);
    let sum: f64 = nums.iter().sum();
    if sum <= 0.0 {
        return Err(DataError::Config(format!("split {s:?} sums to zero")));
    }
    Ok([nums[0] / sum, nums[1] / sum, nums[2] / sum])
}

/// The sequence range of each split over `n` sequences: `[round(c_i n), round(c_{i+1} n))` with Python's
/// round-half-even; `None` for an empty split.
pub fn split_ranges(split: [f64; 3], n: usize) -> [Option<Range<usize>>; 3] {
    let mut cum = [0.0f64; 4];
    for i in 0..3 {
        cum[i + 1] = cum[i] + split[i];
    }
    std::array::from_fn(|i| {
        if cum[i + 1] <= cum[i] {
            return None;
        }
        let beg = (cum[i] * n as f64).round_ties_even() as usize;
        let end = (cum[i + 1] * n as f64).round_ties_even() as usize;
        (end > beg).then_some(beg..end.min(n))
    })
}

/// One split of one indexed dataset, with its document, sample and shuffle indices.
pub struct GptDataset {
    dataset: Arc<IndexedDataset>,
    config: GptConfig,
    split: Split,
    indices: Range<usize>,
    document_index: Vec<i64>,
    sample_index: Vec<i64>,
    shuffle_index: Vec<i64>,
}

impl GptDataset {
    /// Build (or load from cache) the indices for `split`, covering sequences `indices` of `dataset`,
    /// with at least `num_samples` samples when given.
    pub fn build(
        dataset: Arc<IndexedDataset>,
        split: Split,
        indices: Range<usize>,
        num_samples: Option<usize>,
        config: &GptConfig,
    ) -> Result<Self> {
        if config.seq_length < 2 {
            return Err(DataError::Config("seq_length must be at least 2".into()));
        }
        if indices.end > dataset.len() || indices.is_empty() {
            return Err(DataError::Config(format!(
                "{}: split {} range {indices:?} is empty or beyond its {} sequences",
                dataset.prefix().display(),
                split.name(),
                dataset.len()
            )));
        }
        let description = describe(&dataset, split, &indices, num_samples, config);
        let dir = cache_dir(dataset.prefix(), config);
        let base = format!("{:016x}-GPTDataset-{}", fnv1a(&description), split.name());
        let path = |affix: &str| dir.join(format!("{base}-{affix}"));
        let mut ds = GptDataset {
            dataset,
            config: config.clone(),
            split,
            indices,
            document_index: Vec::new(),
            sample_index: Vec::new(),
            shuffle_index: Vec::new(),
        };
        let cached = std::fs::read_to_string(path("description.txt")).ok();
        if cached.as_deref() == Some(description.as_str()) {
            if let Ok(()) = ds.load(&path) {
                return Ok(ds);
            }
        }
        ds.compute(num_samples)?;
        let n = ds.sample_index.len() / 2;
        npy::save(
            &path("document_index.npy"),
            "<i4",
            &[ds.document_index.len()],
            &ds.document_index,
        )?;
        npy::save(&path("sample_index.npy"), "<i8", &[n, 2], &ds.sample_index)?;
        let shuffle_descr = if ds.sample_index.len() / 2 >= u32::MAX as usize {
            "<i8"
        } else {
            "<u4"
        };
        npy::save(
            &path("shuffle_index.npy"),
            shuffle_descr,
            &[ds.shuffle_index.len()],
            &ds.shuffle_index,
        )?;
        crate::atomic::write_file(&path("description.txt"), description.as_bytes())?;
        Ok(ds)
    }

    fn load(&mut self, path: &dyn Fn(&str) -> PathBuf) -> Result<()> {
        self.document_index = npy::load(&path("document_index.npy"))?.1;
        self.sample_index = npy::load(&path("sample_index.npy"))?.1;
        self.shuffle_index = npy::load(&path("shuffle_index.npy"))?.1;
        let n_samples = (self.sample_index.len() / 2).saturating_sub(1);
        let bad_doc = self
            .sample_index
            .chunks(2)
            .any(|p| p[0] as usize >= self.document_index.len());
        if self
            .shuffle_index
            .iter()
            .any(|&i| i < 0 || i as usize >= n_samples)
            || bad_doc
        {
            return Err(DataError::Config("stale GPT index cache".into()));
        }
        Ok(())
    }

    fn compute(&mut self, num_samples: Option<usize>) -> Result<()> {
        let seq = self.config.seq_length as i64;
        let lengths = self.dataset.sequence_lengths();
        let tokens_per_epoch: i64 = self.indices.clone().map(|i| lengths[i] as i64).sum();
        if tokens_per_epoch < 2 {
            return Err(DataError::Config(format!(
                "{}: split {} has fewer than 2 tokens",
                self.dataset.prefix().display(),
                self.split.name()
            )));
        }
        let mut num_epochs = 1i64;
        if let Some(ns) = num_samples {
            let requested = ns as i64 * seq + 1;
            let mut have = tokens_per_epoch;
            while have < requested {
                num_epochs += 1;
                have += tokens_per_epoch;
            }
        }
        let mut separate_final_epoch = false;
        let mut samples_sans_final = 0i64;
        if num_epochs > 1 {
            samples_sans_final = ((num_epochs - 1) * tokens_per_epoch - 1) / seq;
            let from_final = num_samples.unwrap_or(0) as i64 - samples_sans_final;
            let per_epoch = (tokens_per_epoch - 1) / seq;
            separate_final_epoch = from_final < (0.80 * per_epoch as f64) as i64;
        }
        let mut rng = RandomState::new(self.config.seed);
        let docs: Vec<i64> = self.indices.clone().map(|i| i as i64).collect();
        self.document_index = if separate_final_epoch {
            let mut first = document_index(&docs, num_epochs - 1, &mut rng);
            first.extend(document_index(&docs, 1, &mut rng));
            first
        } else {
            document_index(&docs, num_epochs, &mut rng)
        };
        let drop_last =
            self.split != Split::Valid || self.config.drop_last_partial_validation_sequence;
        self.sample_index = sample_index(
            lengths,
            &self.document_index,
            seq,
            num_epochs,
            tokens_per_epoch,
            drop_last,
        );
        let total = (self.sample_index.len() / 2) as i64 - 1;
        let first = if separate_final_epoch {
            samples_sans_final
        } else {
            total
        };
        self.shuffle_index = shuffle_index(first, total, &mut rng);
        Ok(())
    }

    /// The split this dataset serves.
    pub fn split(&self) -> Split {
        self.split
    }
    /// The sequence range of the indexed dataset this split covers.
    pub fn indices(&self) -> Range<usize> {
        self.indices.clone()
    }
    /// Shuffled sequence ids over all epochs (Megatron's `document_index`).
    pub fn document_index(&self) -> &[i64] {
        &self.document_index
    }
    /// Flattened `[num_samples + 1, 2]` (position in document_index, token offset) pairs.
    pub fn sample_index(&self) -> &[i64] {
        &self.sample_index
    }
    /// Permutation of sample ids.
    pub fn shuffle_index(&self) -> &[i64] {
        &self.shuffle_index
    }

    /// The `seq_length + 1` raw tokens of sample `idx` (padded with the pad id if short).
    pub fn window(&self, idx: usize) -> Result<Vec<i64>> {
        let n = self.shuffle_index.len();
        let s = *self
            .shuffle_index
            .get(idx)
            .ok_or(DataError::OutOfRange { index: idx, len: n })? as usize;
        let (beg, beg_off) = (
            self.sample_index[2 * s] as usize,
            self.sample_index[2 * s + 1] as usize,
        );
        let (end, end_off) = (
            self.sample_index[2 * s + 2] as usize,
            self.sample_index[2 * s + 3] as usize,
        );
        let want = self.config.seq_length + 1;
        let mut out = Vec::with_capacity(want);
        for i in beg..=end {
            let doc = self.document_index[i] as usize;
            let offset = if i == beg { beg_off } else { 0 };
            let length = if i == end {
                Some(end_off + 1 - offset)
            } else {
                None
            };
            self.dataset.read_into(doc, offset, length, &mut out)?;
        }
        out.resize(want.max(out.len()), self.config.pad.unwrap_or(-1));
        Ok(out)
    }
}

impl SampleSource for GptDataset {
    fn len(&self) -> usize {
        self.shuffle_index.len()
    }
    fn origin(&self, _idx: usize) -> Option<String> {
        Some(format!("{}.bin", self.dataset.prefix().display()))
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        let window = self.window(idx)?;
        let mut s = Sample::from_window(&window);
        if let (true, Some(eod)) = (self.config.eod_mask_loss, self.config.eod) {
            for (m, &t) in s.loss_mask.iter_mut().zip(&s.tokens) {
                if t == eod {
                    *m = 0.0;
                }
            }
        }
        let pad = self.config.pad.unwrap_or(-1);
        for ((m, l), t) in s
            .loss_mask
            .iter_mut()
            .zip(s.labels.iter_mut())
            .zip(s.tokens.iter_mut())
        {
            if *l == pad {
                *m = 0.0;
                *l = 0;
            }
            if *t == pad {
                *t = 0;
            }
        }
        Ok(s)
    }
}

fn document_index(docs: &[i64], epochs: i64, rng: &mut RandomState) -> Vec<i64> {
    let mut out: Vec<i64> = (0..epochs).flat_map(|_| docs.iter().copied()).collect();
    rng.shuffle(&mut out);
    out
}

/// Megatron's `build_sample_idx` (helpers.cpp), with one extra token per sample.
fn sample_index(
    sizes: &[i32],
    doc_index: &[i64],
    seq: i64,
    epochs: i64,
    tokens_per_epoch: i64,
    drop_last: bool,
) -> Vec<i64> {
    let num_samples = if drop_last {
        (epochs * tokens_per_epoch - 1) / seq
    } else {
        ((epochs * tokens_per_epoch - 1) as f32 / seq as f32).ceil() as i64
    };
    let mut out = Vec::with_capacity(2 * (num_samples as usize + 1));
    let (mut di, mut off) = (0usize, 0i64);
    out.extend([0, 0]);
    let mut k = 1;
    while k <= num_samples {
        let mut remaining = seq + 1;
        while remaining != 0 {
            let doc_len = sizes[doc_index[di] as usize] as i64 - off;
            remaining -= doc_len;
            if remaining <= 0 {
                off += remaining + doc_len - 1;
                remaining = 0;
            } else {
                if di == doc_index.len() - 1 {
                    off = sizes[doc_index[di] as usize] as i64 - 1;
                    break;
                }
                di += 1;
                off = 0;
            }
        }
        out.extend([di as i64, off]);
        k += 1;
    }
    out
}

fn shuffle_index(first: i64, total: i64, rng: &mut RandomState) -> Vec<i64> {
    let mut a: Vec<i64> = (0..first).collect();
    rng.shuffle(&mut a);
    if first < total {
        let mut b: Vec<i64> = (first..total).collect();
        rng.shuffle(&mut b);
        a.extend(b);
    }
    a
}

fn cache_dir(prefix: &Path, config: &GptConfig) -> PathBuf {
    match &config.cache_dir {
        Some(d) => d.clone(),
        None => prefix
            .parent()
            .unwrap_or(Path::new("."))
            .join("cache")
            .join("GPTDataset_indices"),
    }
}

fn describe(
    ds: &IndexedDataset,
    split: Split,
    indices: &Range<usize>,
    num_samples: Option<usize>,
    c: &GptConfig,
) -> String {
    serde_json::json!({
        "class": "GPTDataset",
        "dataset_path": ds.prefix().to_string_lossy(),
        "num_sequences": ds.len(),
        "num_tokens": ds.num_tokens(),
        "index_split": split.name(),
        "indices": [indices.start, indices.end],
        "num_samples": num_samples,
        "sequence_length": c.seq_length,
        "random_seed": c.seed,
        "add_extra_token_to_sequence": true,
        "drop_last_partial_validation_sequence": c.drop_last_partial_validation_sequence,
    })
    .to_string()
}

/// 64-bit FNV-1a: the cache file name key (Coil's names differ from Megatron's md5-based ones).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
