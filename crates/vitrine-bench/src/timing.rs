//! Warm-up, then timed repetitions until both a minimum count and a minimum time are
//! reached; statistics over the repetitions (median, not mean, so one stall does not move
//! the figure).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{BenchError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingConfig {
    /// Untimed calls first: kernel compilation, autotuning, allocator warm-up.
    pub warmup: usize,
    pub min_reps: usize,
    pub max_reps: usize,
    /// Keep repeating (up to `max_reps`) until the timed calls add up to this long.
    pub min_secs: f64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            warmup: 1,
            min_reps: 3,
            max_reps: 50,
            min_secs: 2.0,
        }
    }
}

impl TimingConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_reps == 0 || self.max_reps < self.min_reps {
            return Err(BenchError::Invalid(format!(
                "timing: min_reps = {}, max_reps = {} (need 1 <= min_reps <= max_reps)",
                self.min_reps, self.max_reps
            )));
        }
        if !(self.min_secs >= 0.0 && self.min_secs <= 3600.0) {
            return Err(BenchError::Invalid(format!(
                "timing.min_secs = {} (allowed 0..=3600)",
                self.min_secs
            )));
        }
        Ok(())
    }
}

/// Seconds per call over the timed repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub reps: usize,
}

/// Median of a non-empty slice (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times `f`; also returns what each timed call returned (e.g. its time to first token).
pub fn measure<T>(cfg: &TimingConfig, mut f: impl FnMut() -> Result<T>) -> Result<(Stats, Vec<T>)> {
    for _ in 0..cfg.warmup {
        f()?;
    }
    let mut secs = Vec::new();
    let mut outs = Vec::new();
    let mut total = 0.0;
    while secs.len() < cfg.max_reps && (secs.len() < cfg.min_reps || total < cfg.min_secs) {
        let start = Instant::now();
        outs.push(f()?);
        let s = start.elapsed().as_secs_f64();
        total += s;
        secs.push(s);
    }
    let stats = Stats {
        median: median(&secs),
        min: secs.iter().copied().fold(f64::INFINITY, f64::min),
        max: secs.iter().copied().fold(0.0, f64::max),
        reps: secs.len(),
    };
    Ok((stats, outs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn repeats_between_min_and_max_reps_and_warms_up_first() {
        let mut calls = 0;
        let cfg = TimingConfig {
            warmup: 2,
            min_reps: 3,
            max_reps: 5,
            min_secs: 0.0,
        };
        let (stats, outs) = measure(&cfg, || {
            calls += 1;
            Ok(calls)
        })
        .unwrap();
        assert_eq!(stats.reps, 3, "min_secs 0: stops at min_reps");
        assert_eq!(
            outs,
            vec![3, 4, 5],
            "the two warm-up calls are not reported"
        );
        assert!(stats.min <= stats.median && stats.median <= stats.max);

        // An unreachable min_secs stops at max_reps.
        let cfg = TimingConfig {
            min_secs: 3600.0,
            ..cfg
        };
        let (stats, _) = measure(&cfg, || Ok(())).unwrap();
        assert_eq!(stats.reps, 5);
    }

    #[test]
    fn an_error_in_the_workload_is_returned() {
        let r = measure(&TimingConfig::default(), || -> Result<()> {
            Err(BenchError::Invalid("boom".into()))
        });
        assert!(matches!(r, Err(BenchError::Invalid(m)) if m == "boom"));
    }

    #[test]
    fn invalid_timing_is_refused() {
        let bad = TimingConfig {
            min_reps: 4,
            max_reps: 3,
            ..TimingConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = TimingConfig {
            min_secs: f64::NAN,
            ..TimingConfig::default()
        };
        assert!(bad.validate().is_err());
        let at = TimingConfig {
            min_secs: 3600.0,
            ..TimingConfig::default()
        };
        at.validate().unwrap();
        let past = TimingConfig {
            min_secs: 3600.5,
            ..TimingConfig::default()
        };
        assert!(past.validate().is_err());
        TimingConfig::default().validate().unwrap();
    }
}
