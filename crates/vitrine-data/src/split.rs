//! Seeded train/holdout splits, and the seed mixer every seeded choice derives from.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// splitmix64 of a combination: independent seeds for (run, epoch, item).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x632B_E59B_D9B5_E1A7);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic split of `n` items into `(train, holdout)` index lists.
///
/// `holdout_fraction` of the items (rounded to the nearest count; clamped to
/// `0.0..=1.0`, NaN treated as 0) is chosen by a shuffle seeded with `seed`.
/// Both lists are sorted ascending and together cover `0..n` exactly once.
pub fn split_indices(n: usize, holdout_fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let frac = if holdout_fraction.is_nan() {
        0.0
    } else {
        f64::from(holdout_fraction.clamp(0.0, 1.0))
    };
    // f64 keeps the count exact for any realistic n.
    let k = ((n as f64) * frac).round() as usize;
    let k = k.min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut holdout = order[..k].to_vec();
    let mut train = order[k..].to_vec();
    holdout.sort_unstable();
    train.sort_unstable();
    (train, holdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_disjoint_and_complete() {
        let (train, holdout) = split_indices(101, 0.2, 7);
        assert_eq!(holdout.len(), 20); // 20.2 rounds to 20
        assert_eq!(train.len(), 81);
        let mut all: Vec<usize> = train.iter().chain(&holdout).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..101).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert!(holdout.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn deterministic_per_seed() {
        assert_eq!(split_indices(1000, 0.1, 42), split_indices(1000, 0.1, 42));
        assert_ne!(
            split_indices(1000, 0.1, 42).1,
            split_indices(1000, 0.1, 43).1
        );
    }

    #[test]
    fn edge_fractions() {
        assert_eq!(split_indices(5, 0.0, 1), (vec![0, 1, 2, 3, 4], vec![]));
        assert_eq!(split_indices(5, 1.0, 1), (vec![], vec![0, 1, 2, 3, 4]));
        assert_eq!(split_indices(5, f32::NAN, 1).1, Vec::<usize>::new());
        assert_eq!(split_indices(5, 3.0, 1).1.len(), 5);
        assert_eq!(split_indices(0, 0.5, 1), (vec![], vec![]));
        // 2.5 rounds away from zero
        assert_eq!(split_indices(5, 0.5, 1).1.len(), 3);
    }
}
