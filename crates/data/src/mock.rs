//! Mock pretraining data in the shape of NeMo's `MockDataModule`: sample `i` is `seq_length + 1` uniform
//! random ids, `tokens = t[..T]`, `labels = t[1..]`, loss mask all ones, positions `0..T`.
//!
//! Difference from NeMo, on purpose: NeMo passes `create_attention_mask` into the dataset's `seed`
//! parameter, so its seed is 0 (or 1) whatever the user asked for, and train/validation/test produce the
//! same samples for the same index. Here the seed is real and each split has its own stream. The values
//! differ from numpy's `default_rng(seed + idx)` (a SplitMix64 stream keyed by seed, split and index).

use crate::batch::{Sample, SampleSource};
use crate::error::{DataError, Result};
use crate::gpt::Split;

/// Seeded random-token samples.
#[derive(Debug, Clone)]
pub struct MockDataset {
    pub vocab_size: usize,
    pub seq_length: usize,
    pub num_samples: usize,
    pub seed: u64,
    pub split: Split,
}

impl MockDataset {
    /// A mock split; `vocab_size` and `seq_length` must be positive.
    pub fn new(
        vocab_size: usize,
        seq_length: usize,
        num_samples: usize,
        seed: u64,
        split: Split,
    ) -> Result<Self> {
        if vocab_size == 0 || seq_length == 0 {
            return Err(DataError::Config(
                "mock data needs vocab_size > 0 and seq_length > 0".into(),
            ));
        }
        Ok(Self {
            vocab_size,
            seq_length,
            num_samples,
            seed,
            split,
        })
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SampleSource for MockDataset {
    fn len(&self) -> usize {
        self.num_samples
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        if idx >= self.num_samples {
            return Err(DataError::OutOfRange {
                index: idx,
                len: self.num_samples,
            });
        }
        let mut state = self.seed ^ ((self.split as u64) << 56);
        state = splitmix(&mut state) ^ idx as u64;
        let v = self.vocab_size as u128;
        let window: Vec<i64> = (0..=self.seq_length)
            .map(|_| ((splitmix(&mut state) as u128 * v) >> 64) as i64)
            .collect();
        Ok(Sample::from_window(&window))
    }
}
