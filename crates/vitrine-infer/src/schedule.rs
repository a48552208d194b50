//! Learning-rate schedule: linear warm-up, then cosine decay to `min_lr`. A pure function of
//! the step, so a resumed run needs no scheduler state.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    /// Steps over which the cosine decays (warm-up included); 0 = the whole run.
    pub decay_steps: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 100,
            decay_steps: 0,
        }
    }
}

impl Schedule {
    /// Learning rate for 0-based `step` of a run of `total_steps`.
    pub fn at(&self, step: usize, total_steps: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay = if self.decay_steps == 0 {
            total_steps
        } else {
            self.decay_steps
        };
        let span = decay.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            lr: 1.0,
            min_lr: 0.0,
            warmup_steps: 10,
            decay_steps: 0,
        };
        assert!((s.at(0, 110) - 0.1).abs() < 1e-12);
        assert!((s.at(9, 110) - 1.0).abs() < 1e-12);
        assert!((s.at(10, 110) - 1.0).abs() < 1e-12);
        assert!((s.at(60, 110) - 0.5).abs() < 1e-12);
        assert!(s.at(110, 110).abs() < 1e-12);
        assert!(
            s.at(500, 110).abs() < 1e-12,
            "stays at min after the decay span"
        );
    }
}
