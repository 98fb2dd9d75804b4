//! The order in which NeMo's fine-tuning dataset visits its examples (`_OnlineSampleMapping`, used when
//! `max_num_samples` is set, i.e. for training): the index range `0..max(num_samples, dataset_size)` is
//! cut into blocks of `min(1_000_000, dataset_size)`, the block order is shuffled with
//! `RandomState(seed)`, block `b` (in shuffled position) is permuted with `RandomState(seed + b)`, and
//! indices wrap modulo the dataset size (so a dataset smaller than the request is revisited in new orders).
//!
//! NeMo quirk kept here: `GPTSFTDataset` does not pass its seed, so the mapping always uses seed 1.

use std::sync::{Arc, Mutex};

use crate::batch::{Sample, SampleSource};
use crate::error::{DataError, Result};
use crate::numpy_rng::RandomState;

/// NeMo's default block size.
pub const DEFAULT_BLOCK_SIZE: usize = 1_000_000;
/// The seed NeMo's SFT dataset ends up using.
pub const NEMO_SFT_MAPPING_SEED: u32 = 1;

/// Sample index -> example index, computed block by block on demand (the last two blocks are cached).
pub struct OnlineSampleMapping {
    dataset_size: usize,
    num_samples: usize,
    block_size: usize,
    seed: u32,
    block_ids: Vec<usize>,
    block_lens: Vec<usize>,
    block_ends: Vec<usize>,
    cache: Mutex<Vec<(usize, Arc<Vec<usize>>)>>,
}

impl OnlineSampleMapping {
    /// A mapping of `num_samples` samples over `dataset_size` examples.
    pub fn new(
        dataset_size: usize,
        num_samples: usize,
        block_size: usize,
        seed: u32,
    ) -> Result<Self> {
        if dataset_size == 0 || block_size == 0 {
            return Err(DataError::Config(
                "sample mapping needs a non-empty dataset and block size".into(),
            ));
        }
        let required = num_samples.max(dataset_size);
        let block_size = block_size.min(dataset_size);
        let num_blocks = required.div_ceil(block_size);
        let mut block_lens = vec![block_size; num_blocks];
        if !required.is_multiple_of(block_size) {
            block_lens[num_blocks - 1] = required % block_size;
        }
        let mut order: Vec<usize> = (0..num_blocks).collect();
        RandomState::new(seed).shuffle(&mut order);
        let block_lens: Vec<usize> = order.iter().map(|&b| block_lens[b]).collect();
        let block_ends = block_lens
            .iter()
            .scan(0, |acc, &l| {
                *acc += l;
                Some(*acc)
            })
            .collect();
        Ok(Self {
            dataset_size,
            num_samples,
            block_size,
            seed,
            block_ids: order,
            block_lens,
            block_ends,
            cache: Mutex::new(Vec::new()),
        })
    }

    /// NeMo's SFT training mapping: block size 1,000,000 and seed 1.
    pub fn nemo_sft(dataset_size: usize, num_samples: usize) -> Result<Self> {
        Self::new(
            dataset_size,
            num_samples,
            DEFAULT_BLOCK_SIZE,
            NEMO_SFT_MAPPING_SEED,
        )
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.num_samples
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.num_samples == 0
    }

    fn block(&self, b: usize) -> Arc<Vec<usize>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, v)) = cache.iter().find(|(k, _)| *k == b) {
            return v.clone();
        }
        let start = self.block_ids[b] * self.block_size;
        let mut ids: Vec<usize> = (start..start + self.block_lens[b]).collect();
        RandomState::new(self.seed.wrapping_add(b as u32)).shuffle(&mut ids);
        for x in ids.iter_mut() {
            *x %= self.dataset_size;
        }
        let ids = Arc::new(ids);
        if cache.len() >= 2 {
            cache.remove(0);
        }
        cache.push((b, ids.clone()));
        ids
    }

    /// The example index for sample `idx`.
    pub fn get(&self, idx: usize) -> Result<usize> {
        if idx >= self.num_samples {
            return Err(DataError::OutOfRange {
                index: idx,
                len: self.num_samples,
            });
        }
        let b = self.block_ends.partition_point(|&end| end <= idx);
        let local = idx - (self.block_ends[b] - self.block_lens[b]);
        Ok(self.block(b)[local])
    }
}

/// A sample source seen through a mapping (e.g. SFT examples in NeMo's training order).
pub struct Remapped<S: SampleSource> {
    pub source: S,
    pub mapping: OnlineSampleMapping,
}

impl<S: SampleSource> SampleSource for Remapped<S> {
    fn len(&self) -> usize {
        self.mapping.len()
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        self.source.sample(self.mapping.get(idx)?)
    }
    fn origin(&self, idx: usize) -> Option<String> {
        self.source.origin(self.mapping.get(idx).ok()?)
    }
}

/// NeMo's number of SFT training samples: `ceil(gbs * max_steps * 1.005)`.
pub fn nemo_sft_train_samples(global_batch_size: usize, max_steps: usize) -> usize {
    ((global_batch_size * max_steps) as f64 * 1.005).ceil() as usize
}
