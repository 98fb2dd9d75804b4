//! NeMo `PreTrainingDataModule` over Megatron corpora: the blend list (`[p]`, `[p1, p2]` or weighted
//! `["30", p1, "70", p2]`), the train/valid/test split, the sample counts a run needs, and
//! megatron-core's blending index (each next sample comes from the dataset furthest below its weight).

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::{Sample, SampleSource};
use crate::error::{DataError, Result};
use crate::gpt::{parse_split, split_ranges, GptConfig, GptDataset, Split};
use crate::indexed::IndexedDataset;

/// Extra samples requested from each member of a weighted blend (Megatron `mid_level_dataset_surplus`).
pub const BLEND_SURPLUS: f64 = 0.005;

/// Parsed blend: dataset prefixes and, for the weighted form, normalized weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Blend {
    pub prefixes: Vec<PathBuf>,
    pub weights: Option<Vec<f64>>,
}

impl Blend {
    /// Parse NeMo's `paths` list (megatron-core `get_blend_from_list`): an even-length list whose every
    /// other item is a number is zipped `weight, prefix` pairs; otherwise every item is a prefix.
    pub fn parse(items: &[String]) -> Result<Blend> {
        if items.is_empty() {
            return Err(DataError::Config("the data paths list is empty".into()));
        }
        let all_prefixes = || Blend {
            prefixes: items.iter().map(|p| PathBuf::from(p.trim())).collect(),
            weights: None,
        };
        if items.len() % 2 == 1 {
            return Ok(all_prefixes());
        }
        let parsed: Vec<Option<f64>> = items
            .iter()
            .step_by(2)
            .map(|w| w.trim().parse().ok())
            .collect();
        if parsed.iter().all(Option::is_none) {
            return Ok(all_prefixes());
        }
        let mut weights = Vec::new();
        for (w, raw) in parsed.iter().zip(items.iter().step_by(2)) {
            match w {
                Some(w) if *w >= 0.0 && w.is_finite() => weights.push(*w),
                _ => {
                    return Err(DataError::Config(format!(
                        "blend weight {raw:?} is not a number >= 0 (a paths list is either all prefixes or [\"weight\", prefix, ...])"
                    )))
                }
            }
        }
        let prefixes = items
            .iter()
            .skip(1)
            .step_by(2)
            .map(|p| PathBuf::from(p.trim()))
            .collect();
        let sum: f64 = weights.iter().sum();
        if sum <= 0.0 {
            return Err(DataError::Config("blend weights sum to zero".into()));
        }
        Ok(Blend {
            prefixes,
            weights: Some(weights.iter().map(|w| w / sum).collect()),
        })
    }
}

/// Samples per split for a NeMo run: train `max_steps*gbs`, validation
/// `(max_steps//val_check_interval + 1)*limit_val_batches*gbs`, test `limit_test_batches*gbs`.
pub fn pretrain_sample_counts(
    max_steps: usize,
    global_batch_size: usize,
    val_check_interval: usize,
    limit_val_batches: usize,
    limit_test_batches: usize,
) -> [usize; 3] {
    let evals = max_steps / val_check_interval.max(1) + 1;
    [
        max_steps * global_batch_size,
        evals * limit_val_batches * global_batch_size,
        limit_test_batches * global_batch_size,
    ]
}

/// Several GPT datasets interleaved by weight.
pub struct BlendedDataset {
    datasets: Vec<GptDataset>,
    dataset_index: Vec<i16>,
    dataset_sample_index: Vec<i64>,
}

impl BlendedDataset {
    /// Interleave `datasets` so that after every prefix of `size` samples each member's share is as close
    /// to its weight as possible (megatron-core `build_blending_indices`).
    pub fn new(datasets: Vec<GptDataset>, weights: &[f64], size: usize) -> Result<Self> {
        if datasets.len() != weights.len()
            || datasets.is_empty()
            || datasets.len() > i16::MAX as usize
        {
            return Err(DataError::Config(
                "blend needs one weight per dataset".into(),
            ));
        }
        let (dataset_index, dataset_sample_index) = blending_indices(weights, size);
        Self::from_indices(datasets, dataset_index, dataset_sample_index)
    }

    fn from_indices(
        datasets: Vec<GptDataset>,
        dataset_index: Vec<i16>,
        dataset_sample_index: Vec<i64>,
    ) -> Result<Self> {
        for (&d, &s) in dataset_index.iter().zip(&dataset_sample_index) {
            let len = datasets[d as usize].len();
            if s as usize >= len {
                return Err(DataError::Config(format!(
                    "blend member {d} has only {len} samples but the blend needs more"
                )));
            }
        }
        Ok(Self {
            datasets,
            dataset_index,
            dataset_sample_index,
        })
    }
    /// Which member each sample comes from.
    pub fn dataset_index(&self) -> &[i16] {
        &self.dataset_index
    }
    /// The sample id within that member.
    pub fn dataset_sample_index(&self) -> &[i64] {
        &self.dataset_sample_index
    }
    /// The members.
    pub fn datasets(&self) -> &[GptDataset] {
        &self.datasets
    }
}

impl SampleSource for BlendedDataset {
    fn len(&self) -> usize {
        self.dataset_index.len()
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        let d = *self.dataset_index.get(idx).ok_or(DataError::OutOfRange {
            index: idx,
            len: self.len(),
        })?;
        self.datasets[d as usize].sample(self.dataset_sample_index[idx] as usize)
    }
    fn origin(&self, idx: usize) -> Option<String> {
        let d = *self.dataset_index.get(idx)?;
        self.datasets
            .get(d as usize)?
            .origin(self.dataset_sample_index[idx] as usize)
    }
}

/// megatron-core's greedy blending: each sample goes to the member with the largest
/// `weight * max(i, 1) - taken` (first one on ties).
pub fn blending_indices(weights: &[f64], size: usize) -> (Vec<i16>, Vec<i64>) {
    let mut taken = vec![0i64; weights.len()];
    let mut di = Vec::with_capacity(size);
    let mut dsi = Vec::with_capacity(size);
    for i in 0..size {
        let x = (i as f64).max(1.0);
        let mut best = 0;
        let mut best_err = weights[0] * x - taken[0] as f64;
        for (d, w) in weights.iter().enumerate().skip(1) {
            let err = w * x - taken[d] as f64;
            if err > best_err {
                best_err = err;
                best = d;
            }
        }
        di.push(best as i16);
        dsi.push(taken[best]);
        taken[best] += 1;
    }
    (di, dsi)
}

/// megatron-core's exhaustive blending (unweighted blend without a target size): every sample of every
/// member exactly once, interleaved in proportion to the member sizes; exhausted members drop out.
pub fn exhaustive_blending_indices(sizes: &[usize]) -> (Vec<i16>, Vec<i64>) {
    let total: usize = sizes.iter().sum();
    let weights: Vec<f64> = sizes.iter().map(|&s| s as f64 / total as f64).collect();
    let mut taken = vec![0usize; sizes.len()];
    let mut unspent: Vec<usize> = (0..sizes.len()).filter(|&d| sizes[d] > 0).collect();
    let (mut di, mut dsi) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let mut i = 0usize;
    while !unspent.is_empty() {
        let x = (i as f64).max(1.0);
        let mut best = unspent[0];
        let mut best_err = f64::MIN;
        for &d in &unspent {
            let err = weights[d] * x - taken[d] as f64;
            if err > best_err {
                best_err = err;
                best = d;
            }
        }
        di.push(best as i16);
        dsi.push(taken[best] as i64);
        taken[best] += 1;
        if taken[best] == sizes[best] {
            unspent.retain(|&d| d != best);
        }
        i += 1;
    }
    (di, dsi)
}

/// What a split of a pretraining run samples from: one dataset or a blend.
pub enum PretrainDataset {
    Single(GptDataset),
    Blended(BlendedDataset),
}

impl SampleSource for PretrainDataset {
    fn len(&self) -> usize {
        match self {
            PretrainDataset::Single(d) => d.len(),
            PretrainDataset::Blended(d) => d.len(),
        }
    }
    fn sample(&self, idx: usize) -> Result<Sample> {
        match self {
            PretrainDataset::Single(d) => d.sample(idx),
            PretrainDataset::Blended(d) => d.sample(idx),
        }
    }
    fn origin(&self, idx: usize) -> Option<String> {
        match self {
            PretrainDataset::Single(d) => d.origin(idx),
            PretrainDataset::Blended(d) => d.origin(idx),
        }
    }
}

/// Build train/valid/test the way NeMo's `PreTrainingDataModule` (megatron-core's
/// `BlendedMegatronDatasetBuilder`) does: `paths` as in [`Blend::parse`], `split` like "900,50,50",
/// `sizes` from [`pretrain_sample_counts`].
pub fn build_pretraining_datasets(
    paths: &[String],
    split: &str,
    sizes: [Option<usize>; 3],
    config: &GptConfig,
) -> Result<[Option<PretrainDataset>; 3]> {
    build_with_split(paths, parse_split(split)?, sizes, config)
}

/// NeMo's dict form of `paths` (`{"train": [...], "validation": [...], "test": [...]}`): each split has its
/// own blend over whole datasets and the split string is not used.
pub fn build_pretraining_datasets_per_split(
    paths: [Option<&[String]>; 3],
    sizes: [Option<usize>; 3],
    config: &GptConfig,
) -> Result<[Option<PretrainDataset>; 3]> {
    let mut out: [Option<PretrainDataset>; 3] = [None, None, None];
    for s in Split::ALL {
        let i = s as usize;
        if let Some(p) = paths[i] {
            let mut only = [0.0; 3];
            only[i] = 1.0;
            let mut only_size = [None; 3];
            only_size[i] = sizes[i];
            out[i] = build_with_split(p, only, only_size, config)?[i].take();
        }
    }
    Ok(out)
}

fn build_with_split(
    paths: &[String],
    split: [f64; 3],
    sizes: [Option<usize>; 3],
    config: &GptConfig,
) -> Result<[Option<PretrainDataset>; 3]> {
    let blend = Blend::parse(paths)?;
    let opened = blend
        .prefixes
        .iter()
        .map(|p| IndexedDataset::open(p).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let build_member =
        |ds: &Arc<IndexedDataset>, sizes: [Option<usize>; 3]| -> Result<[Option<GptDataset>; 3]> {
            let ranges = split_ranges(split, ds.len());
            let mut out: [Option<GptDataset>; 3] = [None, None, None];
            for s in Split::ALL {
                if let Some(r) = ranges[s as usize].clone() {
                    out[s as usize] = Some(GptDataset::build(
                        ds.clone(),
                        s,
                        r,
                        sizes[s as usize],
                        config,
                    )?);
                }
            }
            Ok(out)
        };
    if opened.len() == 1 && blend.weights.is_none() {
        let [a, b, c] = build_member(&opened[0], sizes)?;
        return Ok([
            a.map(PretrainDataset::Single),
            b.map(PretrainDataset::Single),
            c.map(PretrainDataset::Single),
        ]);
    }
    // Per-member targets: ceil(size * w) for the blend, with a small surplus requested from each member.
    let weights = blend.weights.clone();
    let mut members: Vec<[Option<GptDataset>; 3]> = Vec::new();
    for (d, ds) in opened.iter().enumerate() {
        let member_sizes = match &weights {
            Some(w) => sizes.map(|s| {
                s.map(|s| ((s as f64 * w[d]).ceil() * (1.0 + BLEND_SURPLUS)).ceil() as usize)
            }),
            None => [None; 3],
        };
        members.push(build_member(ds, member_sizes)?);
    }
    let mut out: [Option<PretrainDataset>; 3] = [None, None, None];
    for s in Split::ALL {
        let i = s as usize;
        let parts: Vec<GptDataset> = members.iter_mut().filter_map(|m| m[i].take()).collect();
        if parts.is_empty() {
            continue;
        }
        if parts.len() != opened.len() {
            return Err(DataError::Config(format!(
                "split {} is empty for some but not all blended datasets",
                s.name()
            )));
        }
        let (w, size) = match (&weights, sizes[i]) {
            (Some(w), Some(target)) => (
                w.clone(),
                w.iter().map(|w| (target as f64 * w).ceil() as usize).sum(),
            ),
            (Some(_), None) => {
                return Err(DataError::Config(
                    "a weighted blend needs sample counts for every split".into(),
                ))
            }
            (None, target) => {
                let lens: Vec<f64> = parts.iter().map(|p| p.len() as f64).collect();
                let total: f64 = lens.iter().sum();
                let size = target.map_or(total as usize, |t| t.min(total as usize));
                (lens.iter().map(|l| l / total).collect(), size)
            }
        };
        out[i] = Some(PretrainDataset::Blended(BlendedDataset::new(
            parts, &w, size,
        )?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn blend_list_forms() {
        let one = Blend::parse(&strings(&["data/a"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((one.prefixes.len(), one.weights), (1, None));
        let two = Blend::parse(&strings(&["data/a", " data/b "])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            two.prefixes,
            vec![PathBuf::from("data/a"), PathBuf::from("data/b")]
        );
        assert_eq!(two.weights, None);
        let w = Blend::parse(&strings(&["30", "a", "70", "b"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.weights, Some(vec![0.3, 0.7]));
        assert_eq!(w.prefixes, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert!(Blend::parse(&strings(&["30", "a", "b", "c"])).is_err());
        assert!(Blend::parse(&strings(&["0", "a", "0", "b"])).is_err());
        assert!(Blend::parse(&[]).is_err());
    }

    #[test]
    fn split_strings() {
        assert_eq!(
            parse_split("900,50,50").unwrap_or_else(|e| panic!("{e}")),
            [0.9, 0.05, 0.05]
        );
        assert_eq!(
            parse_split("99,1").unwrap_or_else(|e| panic!("{e}")),
            [0.99, 0.01, 0.0]
        );
        assert!(parse_split("a,b").is_err());
        let r = crate::gpt::split_ranges([0.9, 0.05, 0.05], 40);
        assert_eq!(r, [Some(0..36), Some(36..38), Some(38..40)]);
        // Python rounds half to even: 0.5 * 5 = 2.5 -> 2.
        assert_eq!(
            crate::gpt::split_ranges([0.5, 0.5, 0.0], 5),
            [Some(0..2), Some(2..5), None]
        );
    }
}
