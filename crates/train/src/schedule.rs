//! Learning-rate schedule: linear warmup, cosine annealing to `min_lr`, then hold (NeMo's
//! `CosineAnnealing` / `WarmupAnnealHoldPolicy` math, docs/nemo.md §4.2).
//!
//! Difference from NeMo, on purpose: NeMo's `CosineAnnealingScheduler` silently anneals over `max_steps = 10`
//! (its default is never linked to the trainer), so after warmup the LR drops straight to `min_lr`. Coil anneals
//! over the run's real `max_steps`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// Steps held at `min_lr` at the end of the decay window.
    #[serde(default)]
    pub constant_steps: u64,
    pub max_steps: u64,
}

impl LrSchedule {
    /// The LR used by optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if w > 0 && step <= w {
            return self.max_lr * (step + 1) as f64 / (w + 1) as f64;
        }
        if step > self.max_steps {
            return self.min_lr;
        }
        let decay = self.max_steps.saturating_sub(w + self.constant_steps);
        let into = step - w;
        if decay == 0 || into >= decay {
            return self.min_lr;
        }
        let mult = 0.5 * (1.0 + (std::f64::consts::PI * into as f64 / decay as f64).cos());
        (self.max_lr - self.min_lr) * mult + self.min_lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_then_min() {
        let s = LrSchedule {
            max_lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 10,
            constant_steps: 0,
            max_steps: 110,
        };
        assert!((s.lr_at(0) - 3e-4 / 11.0).abs() < 1e-15);
        assert!((s.lr_at(10) - 3e-4).abs() < 1e-15); // end of warmup reaches max
                                                     // half way through the cosine window: midpoint of max and min
        assert!((s.lr_at(60) - (3e-4 + 3e-5) / 2.0).abs() < 1e-12);
        assert!((s.lr_at(110) - 3e-5).abs() < 1e-15);
        assert_eq!(s.lr_at(500), 3e-5);
        let mono: Vec<f64> = (10..=110).map(|i| s.lr_at(i)).collect();
        assert!(
            mono.windows(2).all(|w| w[1] <= w[0]),
            "decays monotonically"
        );
    }

    #[test]
    fn no_warmup_and_hold() {
        let s = LrSchedule {
            max_lr: 1.0,
            min_lr: 0.0,
            warmup_steps: 0,
            constant_steps: 20,
            max_steps: 120,
        };
        assert_eq!(s.lr_at(0), 1.0);
        assert!(s.lr_at(99) > 0.0);
        assert_eq!(s.lr_at(100), 0.0); // decay window is max - warmup - constant = 100 steps
        assert_eq!(s.lr_at(115), 0.0);
    }
}
