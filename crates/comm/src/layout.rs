//! Where a rank sits in a run split over tensor and data parallelism, in Megatron's rank order (TP innermost:
//! the ranks of one tensor-parallel group are consecutive, so they share a node whenever TP ≤ GPUs per node).

use crate::error::{CommError, Result};

/// `world = tp × dp` ranks; rank `r` is TP rank `r % tp` of TP group `r / tp` and DP rank `r / tp` of DP group
/// `r % tp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Ranks in the run.
    pub world: usize,
    /// Tensor-parallel group size.
    pub tp: usize,
    /// Data-parallel group size, `world / tp`.
    pub dp: usize,
}

impl Layout {
    /// The layout of `world` ranks at TP size `tp`; an error when `world` or `tp` is 0 or `tp` does not divide
    /// `world`.
    pub fn new(world: usize, tp: usize) -> Result<Layout> {
        if world == 0 {
            return Err(CommError::Invalid("a run needs at least one rank".into()));
        }
        if tp == 0 || !world.is_multiple_of(tp) {
            return Err(CommError::Invalid(format!(
                "tensor parallelism {tp} must divide the {world} ranks of the run"
            )));
        }
        Ok(Layout {
            world,
            tp,
            dp: world / tp,
        })
    }

    /// `rank`'s position in its TP group, `rank % tp`.
    pub fn tp_rank(&self, rank: usize) -> usize {
        rank % self.tp
    }

    /// `rank`'s position in its DP group (and the index of its TP group), `rank / tp`.
    pub fn dp_rank(&self, rank: usize) -> usize {
        rank / self.tp
    }

    /// The TP group of `rank`: the `tp` consecutive ranks `dp_rank·tp .. dp_rank·tp + tp`.
    pub fn tp_group(&self, rank: usize) -> Vec<usize> {
        let first = self.dp_rank(rank) * self.tp;
        (first..first + self.tp).collect()
    }

    /// The DP group of `rank`: the ranks with its TP rank, one per TP group (`tp_rank + k·tp`, ascending).
    pub fn dp_group(&self, rank: usize) -> Vec<usize> {
        (0..self.dp)
            .map(|k| self.tp_rank(rank) + k * self.tp)
            .collect()
    }

    /// Every TP group, in order of DP rank.
    pub fn tp_groups(&self) -> Vec<Vec<usize>> {
        (0..self.dp).map(|d| self.tp_group(d * self.tp)).collect()
    }

    /// Every DP group, in order of TP rank.
    pub fn dp_groups(&self) -> Vec<Vec<usize>> {
        (0..self.tp).map(|t| self.dp_group(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tp_is_innermost() {
        let l = Layout::new(8, 2).unwrap();
        assert_eq!((l.tp_rank(5), l.dp_rank(5)), (1, 2));
        assert_eq!(l.tp_group(5), [4, 5]);
        assert_eq!(l.dp_group(5), [1, 3, 5, 7]);
        assert_eq!(l.tp_groups(), [[0, 1], [2, 3], [4, 5], [6, 7]]);
        assert_eq!(l.dp_groups(), [[0, 2, 4, 6], [1, 3, 5, 7]]);
        let e = Layout::new(6, 4).unwrap_err().to_string();
        assert!(
            e.contains("tensor parallelism 4 must divide the 6 ranks"),
            "{e}"
        );
        let e = Layout::new(8, 0).unwrap_err().to_string();
        assert!(
            e.contains("tensor parallelism 0 must divide the 8 ranks"),
            "{e}"
        );
        assert!(Layout::new(0, 1).is_err());
    }

    #[test]
    fn whole_world_tp_and_dp() {
        let l = Layout::new(4, 4).unwrap();
        assert_eq!(
            (l.dp, l.tp_group(2), l.dp_group(2)),
            (1, vec![0, 1, 2, 3], vec![2])
        );
        let l = Layout::new(3, 1).unwrap();
        assert_eq!(
            (l.dp, l.tp_group(2), l.dp_group(2)),
            (3, vec![2], vec![0, 1, 2])
        );
        assert_eq!(l.tp_groups(), [[0], [1], [2]]);
        assert_eq!(l.dp_groups(), [[0, 1, 2]]);
    }
}
