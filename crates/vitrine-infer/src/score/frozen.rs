//! The frozen-embedding baseline: a pairwise logistic regression on the difference of two
//! headlines' fixed sentence embeddings, `P(a beats b) = σ(w · (e_a − e_b))`. It is what a
//! pretrained encoder gives without fine-tuning (`vitrine eval score` reports it) and the
//! head a fine-tuned scorer starts from (`train.head_init = "frozen-lr"`).
//!
//! Fitted by Newton's method (d ≤ a few thousand, so the d×d Hessian is cheap) on the
//! evidence-weighted pairs of [`PairRule`] with an L2 penalty, the penalty picked on the
//! dev split from a fixed grid. No intercept: swapping a pair flips its sign.

use serde::Serialize;
use vitrine_data::ctr::{pairwise_metrics, PairRule, PairwiseMetrics};

use super::run::EncodedPairs;

/// L2 strengths tried (on the sum of weighted losses), weakest last.
pub const L2_GRID: [f64; 5] = [100.0, 30.0, 10.0, 3.0, 1.0];
const NEWTON_STEPS: usize = 30;

#[derive(Debug, Clone, Serialize)]
pub struct FrozenLr {
    /// Weights over the embedding's dimensions.
    pub w: Vec<f32>,
    pub l2: f64,
    pub dev: Option<PairwiseMetrics>,
}

/// One split's pairs as (winner row, loser row, weight) over its encoded rows.
fn weighted_pairs(enc: &EncodedPairs, rule: &PairRule) -> Vec<(usize, usize, f64)> {
    enc.pairs
        .pairs
        .iter()
        .filter_map(|p| {
            rule.weight(p.z)
                .map(|w| (enc.row_of[p.winner()], enc.row_of[p.loser()], w))
        })
        .collect()
}

/// Minimises `Σ wᵢ softplus(−β·xᵢ) + l2/2 |β|²` over `xᵢ = e_winner − e_loser`.
pub fn fit_pairwise_logit(
    emb: &[f32],
    d: usize,
    pairs: &[(usize, usize, f64)],
    l2: f64,
    start: Option<&[f64]>,
) -> Vec<f64> {
    let mut beta = start.map_or_else(|| vec![0.0; d], <[f64]>::to_vec);
    let mut x = vec![0.0f64; d];
    for _ in 0..NEWTON_STEPS {
        let mut grad: Vec<f64> = beta.iter().map(|b| l2 * b).collect();
        let mut hess = vec![0.0f64; d * d];
        for i in 0..d {
            hess[i * d + i] = l2;
        }
        for &(a, b, w) in pairs {
            for k in 0..d {
                x[k] = emb[a * d + k] as f64 - emb[b * d + k] as f64;
            }
            let m: f64 = x.iter().zip(&beta).map(|(x, b)| x * b).sum();
            let p = 1.0 / (1.0 + m.exp()); // σ(−m)
            let (g, h) = (-w * p, w * p * (1.0 - p));
            for i in 0..d {
                grad[i] += g * x[i];
                let hx = h * x[i];
                let row = &mut hess[i * d..i * d + i + 1];
                for (j, r) in row.iter_mut().enumerate() {
                    *r += hx * x[j];
                }
            }
        }
        let step = solve_spd(&mut hess, &grad, d);
        let mut norm = 0.0;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            norm += s * s;
        }
        if norm.sqrt() < 1e-8 * (1.0 + beta.iter().map(|b| b * b).sum::<f64>().sqrt()) {
            break;
        }
    }
    beta
}

/// Solves `H s = g` for symmetric positive definite `H` (lower triangle filled) by
/// Cholesky, in place.
fn solve_spd(h: &mut [f64], g: &[f64], d: usize) -> Vec<f64> {
    for j in 0..d {
        let mut s = h[j * d + j];
        for k in 0..j {
            s -= h[j * d + k] * h[j * d + k];
        }
        let l = s.max(1e-300).sqrt();
        h[j * d + j] = l;
        for i in j + 1..d {
            let mut s = h[i * d + j];
            for k in 0..j {
                s -= h[i * d + k] * h[j * d + k];
            }
            h[i * d + j] = s / l;
        }
    }
    let mut y = g.to_vec();
    for i in 0..d {
        for k in 0..i {
            y[i] -= h[i * d + k] * y[k];
        }
        y[i] /= h[i * d + i];
    }
    for i in (0..d).rev() {
        for k in i + 1..d {
            y[i] -= h[k * d + i] * y[k];
        }
        y[i] /= h[i * d + i];
    }
    y
}

/// Per-variant scores `w · e` of a split whose row embeddings are `emb` [rows, d].
pub fn linear_scores(enc: &EncodedPairs, emb: &[f32], w: &[f32]) -> Vec<f64> {
    let d = w.len();
    enc.row_of
        .iter()
        .map(|&r| {
            emb[r * d..(r + 1) * d]
                .iter()
                .zip(w)
                .map(|(x, w)| (*x as f64) * (*w as f64))
                .sum()
        })
        .collect()
}

/// Fits on `fit`'s pairs; with a dev split, each L2 strength of [`L2_GRID`] is tried and
/// the best dev pairwise accuracy kept (ties: the stronger penalty); without one, the
/// middle strength.
pub fn fit_frozen_lr(
    fit: &EncodedPairs,
    fit_emb: &[f32],
    dev: Option<(&EncodedPairs, &[f32])>,
    rule: &PairRule,
    d: usize,
) -> FrozenLr {
    let pairs = weighted_pairs(fit, rule);
    let to_f32 = |b: &[f64]| b.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let Some((dev, dev_emb)) = dev else {
        let l2 = L2_GRID[L2_GRID.len() / 2];
        return FrozenLr {
            w: to_f32(&fit_pairwise_logit(fit_emb, d, &pairs, l2, None)),
            l2,
            dev: None,
        };
    };
    let mut best: Option<FrozenLr> = None;
    let mut start: Option<Vec<f64>> = None;
    for l2 in L2_GRID {
        let beta = fit_pairwise_logit(fit_emb, d, &pairs, l2, start.as_deref());
        let w = to_f32(&beta);
        let m = pairwise_metrics(
            &dev.pairs,
            &linear_scores(dev, dev_emb, &w),
            rule.significance_z,
        );
        if best
            .as_ref()
            .is_none_or(|b| m.accuracy > b.dev.as_ref().map_or(0.0, |x| x.accuracy))
        {
            best = Some(FrozenLr {
                w,
                l2,
                dev: Some(m),
            });
        }
        start = Some(beta);
    }
    best.expect("the grid is not empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On separable-ish synthetic pairs the fit recovers the direction that orders them,
    /// and a stronger penalty gives a smaller weight vector.
    #[test]
    fn newton_fit_recovers_the_ordering_direction() {
        let d = 3;
        let truth = [1.0f64, -2.0, 0.5];
        // 40 points on a deterministic spiral; pairs ordered by the true score.
        let emb: Vec<f32> = (0..40)
            .flat_map(|i| {
                let t = i as f32 * 0.7;
                [t.sin(), (1.3 * t).cos(), (0.4 * t).sin()]
            })
            .collect();
        let score = |r: usize| {
            (0..d)
                .map(|k| emb[r * d + k] as f64 * truth[k])
                .sum::<f64>()
        };
        let mut pairs = Vec::new();
        for a in 0..40 {
            for b in a + 1..40 {
                let (w, l) = if score(a) > score(b) { (a, b) } else { (b, a) };
                pairs.push((w, l, 1.0));
            }
        }
        let beta = fit_pairwise_logit(&emb, d, &pairs, 1.0, None);
        let cos = beta.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>()
            / (beta.iter().map(|x| x * x).sum::<f64>().sqrt()
                * truth.iter().map(|x| x * x).sum::<f64>().sqrt());
        assert!(cos > 0.99, "cosine to the true direction {cos}");
        let strong = fit_pairwise_logit(&emb, d, &pairs, 1000.0, None);
        let n = |b: &[f64]| b.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(n(&strong) < n(&beta));
        // The gradient vanishes at the optimum.
        let l2 = 1.0;
        let mut grad: Vec<f64> = beta.iter().map(|b| l2 * b).collect();
        for &(a, b, w) in &pairs {
            let x: Vec<f64> = (0..d)
                .map(|k| emb[a * d + k] as f64 - emb[b * d + k] as f64)
                .collect();
            let m: f64 = x.iter().zip(&beta).map(|(x, b)| x * b).sum();
            let p = 1.0 / (1.0 + m.exp());
            for k in 0..d {
                grad[k] -= w * p * x[k];
            }
        }
        assert!(grad.iter().all(|g| g.abs() < 1e-6), "{grad:?}");
    }
}
