//! Headline A/B tests with click outcomes (the Upworthy Research Archive layout) and the
//! pairs a click-through scorer learns from and is judged on.
//!
//! A test shows several variants of a package to random audiences; a variant row has the
//! test id, its headline, impressions and clicks. The scorer sees only the headline, so:
//! - a pair is two variants of the same test with **different headlines** and **different
//!   CTR** (variants that share a headline differ in image or lede, invisible to a text
//!   model; they are counted, not paired);
//! - its evidence is the two-proportion z statistic of the CTR difference (pooled standard
//!   error). Training weights a pair by `clamp(|z| / full_weight_z, min_weight, 1)` and drops
//!   pairs with `|z| < min_z`: a 0.1-point CTR gap seen on 3,000 impressions each is mostly
//!   noise and should pull less than a gap the test could actually resolve;
//! - a pair is *significant* when `|z| ≥ significance_z` (1.96: p < 0.05, two-sided).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::copy::TEXT;
use crate::error::{DataError, Result};
use crate::table::Table;
use crate::text::EOS;

/// Which CSV columns hold what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTestsConfig {
    pub csv: PathBuf,
    #[serde(default = "default_test_column")]
    pub test_column: String,
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default = "default_impressions_column")]
    pub impressions_column: String,
    #[serde(default = "default_clicks_column")]
    pub clicks_column: String,
}

fn default_test_column() -> String {
    "test_id".into()
}
fn default_text_column() -> String {
    "headline".into()
}
fn default_impressions_column() -> String {
    "impressions".into()
}
fn default_clicks_column() -> String {
    "clicks".into()
}

impl AbTestsConfig {
    pub fn new(csv: impl Into<PathBuf>) -> Self {
        Self {
            csv: csv.into(),
            test_column: default_test_column(),
            text_column: default_text_column(),
            impressions_column: default_impressions_column(),
            clicks_column: default_clicks_column(),
        }
    }
}

/// One variant row.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub text: String,
    pub impressions: u64,
    pub clicks: u64,
}

impl Variant {
    pub fn new(text: impl Into<String>, impressions: u64, clicks: u64) -> Self {
        Self {
            text: text.into(),
            impressions,
            clicks,
        }
    }

    pub fn ctr(&self) -> f64 {
        self.clicks as f64 / self.impressions as f64
    }
}

/// The variants of one test, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct AbTest {
    pub id: String,
    pub variants: Vec<Variant>,
}

impl AbTest {
    pub fn new(id: &str, variants: Vec<Variant>) -> Self {
        Self {
            id: id.into(),
            variants,
        }
    }
}

/// Reads a CSV of variant rows and groups them by test id (tests in order of first
/// appearance, variants in file order; a test's rows need not be adjacent). A row with an
/// empty headline, unparsable counts, zero impressions or more clicks than impressions is an
/// error naming the file and row.
pub fn read_ab_tests(cfg: &AbTestsConfig) -> Result<Vec<AbTest>> {
    let mut table = Table::open(&cfg.csv)?;
    let test_at = table.column(&cfg.test_column, "test_column")?;
    let text_at = table.column(&cfg.text_column, "text_column")?;
    let imp_at = table.column(&cfg.impressions_column, "impressions_column")?;
    let clicks_at = table.column(&cfg.clicks_column, "clicks_column")?;
    let bad = |row: usize, reason: String| DataError::BadRow {
        file: cfg.csv.clone(),
        row,
        reason,
    };
    let mut tests: Vec<AbTest> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for (i, record) in table.reader.records().enumerate() {
        let row = i + 2; // 1-based, after the header
        let record = record.map_err(|e| bad(row, e.to_string()))?;
        let field = |at: usize| record.get(at).unwrap_or("").trim();
        let id = field(test_at);
        let text = field(text_at);
        if id.is_empty() {
            return Err(bad(row, format!("empty `{}`", cfg.test_column)));
        }
        if text.is_empty() {
            return Err(bad(row, format!("empty `{}`", cfg.text_column)));
        }
        let count = |at: usize, col: &str| {
            field(at).parse::<u64>().map_err(|_| {
                bad(
                    row,
                    format!("`{col}` = {:?} is not a whole number", field(at)),
                )
            })
        };
        let impressions = count(imp_at, &cfg.impressions_column)?;
        let clicks = count(clicks_at, &cfg.clicks_column)?;
        if impressions == 0 || clicks > impressions {
            return Err(bad(
                row,
                format!("{clicks} clicks on {impressions} impressions (need 0 <= clicks <= impressions, impressions >= 1)"),
            ));
        }
        let slot = *by_id.entry(id.to_string()).or_insert_with(|| {
            tests.push(AbTest {
                id: id.to_string(),
                variants: Vec::new(),
            });
            tests.len() - 1
        });
        tests[slot].variants.push(Variant {
            text: text.to_string(),
            impressions,
            clicks,
        });
    }
    if tests.is_empty() {
        return Err(bad(0, "no variant rows".into()));
    }
    Ok(tests)
}

/// How pairs are weighted and which count as significant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairRule {
    /// Training drops pairs whose |z| is below this (0 = keep every pair).
    pub min_z: f64,
    /// |z| at which a pair gets full weight 1.
    pub full_weight_z: f64,
    /// Smallest weight a kept pair gets.
    pub min_weight: f64,
    /// |z| from which a pair counts as significant in evaluation.
    pub significance_z: f64,
}

impl Default for PairRule {
    fn default() -> Self {
        Self {
            min_z: 0.0,
            full_weight_z: 1.96,
            min_weight: 0.1,
            significance_z: 1.96,
        }
    }
}

impl PairRule {
    pub fn validate(&self) -> std::result::Result<(), String> {
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        let ok = finite_nonneg(self.min_z)
            && self.full_weight_z.is_finite()
            && self.full_weight_z > 0.0
            && self.min_weight > 0.0
            && self.min_weight <= 1.0
            && finite_nonneg(self.significance_z);
        if !ok {
            return Err(format!(
                "pairs: min_z = {}, full_weight_z = {}, min_weight = {}, significance_z = {} \
                 (need min_z >= 0, full_weight_z > 0, 0 < min_weight <= 1, significance_z >= 0, all finite)",
                self.min_z, self.full_weight_z, self.min_weight, self.significance_z
            ));
        }
        Ok(())
    }

    /// Training weight of a pair with statistic `z` (None: dropped).
    pub fn weight(&self, z: f64) -> Option<f64> {
        let z = z.abs();
        (z >= self.min_z).then(|| (z / self.full_weight_z).clamp(self.min_weight, 1.0))
    }
}

/// Two variants of one test with different headlines and different CTR. `a` comes before
/// `b` in the file; indices are into [`Pairs::variants`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub test: usize,
    pub a: usize,
    pub b: usize,
    /// `a` has the higher CTR.
    pub a_wins: bool,
    /// Two-proportion z statistic of the CTR difference (≥ 0).
    pub z: f64,
}

impl Pair {
    pub fn winner(&self) -> usize {
        if self.a_wins {
            self.a
        } else {
            self.b
        }
    }
    pub fn loser(&self) -> usize {
        if self.a_wins {
            self.b
        } else {
            self.a
        }
    }
}

/// Every variant of a set of tests, flattened, with the pairs among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Pairs {
    pub variants: Vec<Variant>,
    /// Test index of each variant.
    pub test_of: Vec<usize>,
    pub pairs: Vec<Pair>,
    /// Same-test variant pairs left out because their headlines are identical.
    pub same_text: usize,
    /// Same-test variant pairs left out because their CTRs are exactly equal.
    pub same_ctr: usize,
}

/// Two-proportion z statistic (pooled), |z|; 0 when both CTRs are 0 or 1.
pub fn two_proportion_z(a: &Variant, b: &Variant) -> f64 {
    let (na, nb) = (a.impressions as f64, b.impressions as f64);
    let p = (a.clicks + b.clicks) as f64 / (na + nb);
    let se = (p * (1.0 - p) * (1.0 / na + 1.0 / nb)).sqrt();
    if se > 0.0 {
        (a.ctr() - b.ctr()).abs() / se
    } else {
        0.0
    }
}

impl Pairs {
    /// All pairs within each test (see the module docs for which pairs exist).
    pub fn build(tests: &[AbTest]) -> Self {
        let mut out = Pairs {
            variants: Vec::new(),
            test_of: Vec::new(),
            pairs: Vec::new(),
            same_text: 0,
            same_ctr: 0,
        };
        for (t, test) in tests.iter().enumerate() {
            let base = out.variants.len();
            for (i, a) in test.variants.iter().enumerate() {
                for (j, b) in test.variants.iter().enumerate().skip(i + 1) {
                    if a.text == b.text {
                        out.same_text += 1;
                        continue;
                    }
                    // Exact comparison of clicks_a / imp_a and clicks_b / imp_b.
                    let (lhs, rhs) = (
                        a.clicks as u128 * b.impressions as u128,
                        b.clicks as u128 * a.impressions as u128,
                    );
                    if lhs == rhs {
                        out.same_ctr += 1;
                        continue;
                    }
                    out.pairs.push(Pair {
                        test: t,
                        a: base + i,
                        b: base + j,
                        a_wins: lhs > rhs,
                        z: two_proportion_z(a, b),
                    });
                }
            }
            out.variants.extend(test.variants.iter().cloned());
            out.test_of
                .extend(std::iter::repeat_n(t, test.variants.len()));
        }
        out
    }
}

/// How well `scores` (one per variant of `pairs`) order the pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairwiseMetrics {
    pub pairs: usize,
    /// Fraction of pairs whose winner scores higher (a tie counts ½).
    pub accuracy: f64,
    pub significant_pairs: usize,
    pub significant_accuracy: f64,
    /// ROC AUC of the score difference `s_a - s_b` as a predictor of "`a` wins", with
    /// `a` the earlier variant in the file (ties ½); None without both outcomes.
    pub auc: Option<f64>,
    /// Pairs scored exactly equal.
    pub ties: usize,
}

/// Pairwise accuracy (all pairs and those with |z| ≥ `significance_z`) and AUC.
/// Every scorer (model and baselines) is judged by this one function.
pub fn pairwise_metrics(pairs: &Pairs, scores: &[f64], significance_z: f64) -> PairwiseMetrics {
    assert_eq!(scores.len(), pairs.variants.len(), "one score per variant");
    let credit = |p: &Pair| {
        let (w, l) = (scores[p.winner()], scores[p.loser()]);
        if w > l {
            1.0
        } else if w == l {
            0.5
        } else {
            0.0
        }
    };
    let mean = |it: &mut dyn Iterator<Item = f64>| {
        let (sum, n) = it.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        (if n > 0 { sum / n as f64 } else { f64::NAN }, n)
    };
    let (accuracy, n) = mean(&mut pairs.pairs.iter().map(credit));
    let (significant_accuracy, n_sig) = mean(
        &mut pairs
            .pairs
            .iter()
            .filter(|p| p.z >= significance_z)
            .map(credit),
    );
    let diffs: Vec<(f64, bool)> = pairs
        .pairs
        .iter()
        .map(|p| (scores[p.a] - scores[p.b], p.a_wins))
        .collect();
    PairwiseMetrics {
        pairs: n,
        accuracy,
        significant_pairs: n_sig,
        significant_accuracy,
        auc: auc(&diffs),
        ties: pairs
            .pairs
            .iter()
            .filter(|p| scores[p.a] == scores[p.b])
            .count(),
    }
}

/// Mann-Whitney AUC of (score, is_positive) with average ranks for ties.
pub fn auc(items: &[(f64, bool)]) -> Option<f64> {
    let pos = items.iter().filter(|x| x.1).count();
    let neg = items.len() - pos;
    if pos == 0 || neg == 0 || items.iter().any(|x| x.0.is_nan()) {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = items.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum_pos += avg * sorted[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// Baseline "the longer headline wins": its length in characters.
pub fn length_scores(pairs: &Pairs) -> Vec<f64> {
    pairs
        .variants
        .iter()
        .map(|v| v.text.chars().count() as f64)
        .collect()
}

/// Baseline "random": one seeded uniform score per distinct headline.
pub fn random_scores(pairs: &Pairs, seed: u64) -> Vec<f64> {
    use std::hash::{Hash, Hasher};
    pairs
        .variants
        .iter()
        .map(|v| {
            // A stable hash of (seed, text): the same headline always gets the same score.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            seed.hash(&mut h);
            v.text.hash(&mut h);
            (h.finish() >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// What the scorer reads for a headline: the text slot of the copy format, so a scorer
/// warm-started from a copy model sees headlines where that model saw them.
pub fn scorer_input(text: &str) -> String {
    format!("{EOS}{TEXT}{text}{EOS}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_csv(body: &str) -> (tempfile::TempDir, AbTestsConfig) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tests.csv");
        std::fs::write(&p, body).unwrap();
        (dir, AbTestsConfig::new(p))
    }

    fn v(text: &str, impressions: u64, clicks: u64) -> Variant {
        Variant::new(text, impressions, clicks)
    }

    #[test]
    fn groups_rows_by_test_id_even_when_interleaved() {
        let (_d, cfg) = write_csv(
            "test_id,headline,impressions,clicks,extra\n\
             t1,Alpha,100,10,x\n\
             t2,Beta,200,5,x\n\
             t1,Gamma,100,20,x\n\
             t2,\"Delta, quoted\",200,6,x\n\
             t3,Solo,50,1,x\n",
        );
        let tests = read_ab_tests(&cfg).unwrap();
        let ids: Vec<&str> = tests.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t1", "t2", "t3"]);
        assert_eq!(
            tests[0].variants,
            vec![v("Alpha", 100, 10), v("Gamma", 100, 20)]
        );
        assert_eq!(tests[1].variants[1].text, "Delta, quoted");
        assert_eq!(tests[2].variants.len(), 1);
    }

    #[test]
    fn bad_rows_name_the_row_and_missing_columns_list_the_header() {
        for (body, needle) in [
            ("test_id,headline,impressions,clicks\nt1,A,100,x\n", "row 2"),
            (
                "test_id,headline,impressions,clicks\nt1,A,10,11\n",
                "11 clicks on 10",
            ),
            (
                "test_id,headline,impressions,clicks\nt1,A,0,0\n",
                "impressions >= 1",
            ),
            (
                "test_id,headline,impressions,clicks\nt1,,10,1\n",
                "empty `headline`",
            ),
            (
                "test_id,headline,impressions,clicks\n,A,10,1\n",
                "empty `test_id`",
            ),
            ("test_id,headline,impressions,clicks\n", "no variant rows"),
            ("test,headline,impressions,clicks\nt1,A,10,1\n", "test_id"),
        ] {
            let (_d, cfg) = write_csv(body);
            let e = read_ab_tests(&cfg).unwrap_err().to_string();
            assert!(e.contains(needle), "{body:?}: {e}");
        }
    }

    #[test]
    fn pairs_skip_same_text_and_same_ctr_and_orient_the_winner() {
        let tests = vec![
            AbTest {
                id: "t1".into(),
                variants: vec![
                    v("A", 1000, 10), // 1.0%
                    v("B", 2000, 40), // 2.0%
                    v("A", 1000, 30), // same text as 0
                    v("C", 500, 10),  // 2.0%: same CTR as 1
                ],
            },
            AbTest::new("t2", vec![v("X", 100, 5), v("Y", 100, 1)]),
        ];
        let p = Pairs::build(&tests);
        assert_eq!(p.variants.len(), 6);
        assert_eq!(p.test_of, vec![0, 0, 0, 0, 1, 1]);
        assert_eq!(p.same_text, 1);
        assert_eq!(p.same_ctr, 1);
        let got: Vec<(usize, usize, bool)> = p.pairs.iter().map(|q| (q.a, q.b, q.a_wins)).collect();
        // t1: (0,1) B wins, (0,3) C wins, (1,2) A@3% wins, (2,3) A wins; t2: X wins.
        assert_eq!(
            got,
            vec![
                (0, 1, false),
                (0, 3, false),
                (1, 2, false),
                (2, 3, true),
                (4, 5, true)
            ]
        );
        assert!(p.pairs.iter().all(|q| p.test_of[q.a] == p.test_of[q.b]));
        assert_eq!(p.pairs[0].winner(), 1);
        assert_eq!(p.pairs[0].loser(), 0);
    }

    #[test]
    fn z_statistic_matches_a_hand_computation() {
        // 10/100 vs 20/100: p = 0.15, se = sqrt(0.15 * 0.85 * 0.02) = 0.050498, z = 1.98030
        let z = two_proportion_z(&v("a", 100, 10), &v("b", 100, 20));
        assert!((z - 1.980295).abs() < 1e-5, "{z}");
        assert_eq!(two_proportion_z(&v("a", 10, 0), &v("b", 10, 0)), 0.0);
    }

    #[test]
    fn weights_follow_the_rule() {
        let r = PairRule {
            min_z: 0.5,
            full_weight_z: 2.0,
            min_weight: 0.1,
            significance_z: 1.96,
        };
        assert_eq!(r.weight(0.49), None);
        assert_eq!(r.weight(0.5), Some(0.25));
        assert_eq!(r.weight(1.0), Some(0.5));
        assert_eq!(r.weight(2.0), Some(1.0));
        assert_eq!(r.weight(9.0), Some(1.0));
        let floor = PairRule {
            min_z: 0.0,
            ..r.clone()
        };
        assert_eq!(floor.weight(0.0), Some(0.1));
        assert!(PairRule::default().validate().is_ok());
        for bad in [
            PairRule {
                min_weight: 0.0,
                ..r.clone()
            },
            PairRule {
                min_weight: 1.01,
                ..r.clone()
            },
            PairRule {
                full_weight_z: 0.0,
                ..r.clone()
            },
            PairRule {
                min_z: f64::NAN,
                ..r.clone()
            },
            PairRule {
                significance_z: -1.0,
                ..r.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scorer_input_uses_the_copy_text_slot() {
        assert_eq!(scorer_input("Hi"), "<|endoftext|><|text|>Hi<|endoftext|>");
    }

    /// Three tests' pairs with known outcomes and hand-picked scores.
    #[test]
    fn metrics_on_a_hand_made_example() {
        let tests = vec![
            // CTR 1%, 3%, 2%: (0,1) b wins, (0,2) b wins, (1,2) a wins
            AbTest::new(
                "t1",
                vec![v("a", 1000, 10), v("bb", 1000, 30), v("ccc", 1000, 20)],
            ),
            AbTest::new("t2", vec![v("dddd", 100, 9), v("e", 100, 1)]),
        ];
        let p = Pairs::build(&tests);
        assert_eq!(p.pairs.len(), 4);
        // Scores: t1 ranks bb > a > ccc (right on (0,1) and (1,2), wrong on (0,2));
        // t2 ties.
        let scores = [0.5, 0.9, 0.1, 0.3, 0.3];
        let m = pairwise_metrics(&p, &scores, 1.96);
        assert_eq!(m.pairs, 4);
        assert_eq!(m.ties, 1);
        assert!((m.accuracy - (1.0 + 0.0 + 1.0 + 0.5) / 4.0).abs() < 1e-12);
        // z: (0,1) 3.19, (0,2) 1.84, (1,2) 1.43, (3,4) 2.60 -> significant: (0,1) right,
        // (3,4) tie.
        assert_eq!(m.significant_pairs, 2);
        assert!((m.significant_accuracy - 0.75).abs() < 1e-12);
        // AUC over (s_a - s_b, a_wins): (-0.4,F) (0.4,F) (0.8,T) (0.0,T).
        // Positives {0.8, 0.0} vs negatives {-0.4, 0.4}: 0.8 beats both, 0.0 beats one.
        assert!((m.auc.unwrap() - 0.75).abs() < 1e-12);
        // Length baseline: a<bb<ccc, dddd>e -> (0,1) right, (0,2) right, (1,2) wrong, t2 right.
        let l = pairwise_metrics(&p, &length_scores(&p), 1.96);
        assert!((l.accuracy - 0.75).abs() < 1e-12);
        // A perfect oracle: score = CTR.
        let oracle: Vec<f64> = p.variants.iter().map(Variant::ctr).collect();
        let o = pairwise_metrics(&p, &oracle, 1.96);
        assert_eq!(
            (o.accuracy, o.significant_accuracy, o.auc),
            (1.0, 1.0, Some(1.0))
        );
        // Reversed oracle: everything wrong.
        let rev: Vec<f64> = oracle.iter().map(|x| -x).collect();
        let r = pairwise_metrics(&p, &rev, 1.96);
        assert_eq!((r.accuracy, r.auc), (0.0, Some(0.0)));
    }

    #[test]
    fn auc_handles_ties_and_one_sided_input() {
        assert_eq!(auc(&[(1.0, true), (1.0, false)]), Some(0.5));
        assert_eq!(auc(&[(1.0, true), (2.0, true)]), None);
        assert_eq!(auc(&[]), None);
        assert_eq!(auc(&[(f64::NAN, true), (0.0, false)]), None);
    }

    #[test]
    fn random_baseline_is_seeded_and_per_headline() {
        let tests = vec![AbTest::new(
            "t",
            vec![v("x", 10, 1), v("y", 10, 2), v("x", 10, 3)],
        )];
        let p = Pairs::build(&tests);
        let a = random_scores(&p, 1);
        assert_eq!(a, random_scores(&p, 1));
        assert_ne!(a, random_scores(&p, 2));
        assert_eq!(a[0], a[2]);
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
    }

    /// The real validation split: counts and the length baseline agree with an independent
    /// Python computation (csv + itertools over the same file).
    #[test]
    fn real_upworthy_validation_pairs() {
        let csv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/upworthy/valid.csv");
        if !csv.exists() {
            eprintln!(
                "skipping: {} not present (the Upworthy data set lives in ../shared/data/upworthy beside the checkout)",
                csv.display()
            );
            return;
        }
        let tests = read_ab_tests(&AbTestsConfig::new(csv)).unwrap();
        let p = Pairs::build(&tests);
        assert_eq!(tests.len(), 487);
        assert_eq!(p.variants.len(), 2263);
        assert_eq!((p.pairs.len(), p.same_text, p.same_ctr), (2228, 2276, 1));
        let m = pairwise_metrics(&p, &length_scores(&p), 1.96);
        assert_eq!(m.significant_pairs, 688);
        assert_eq!(m.ties, 117);
        assert!(
            (m.accuracy - 0.5302962298025135).abs() < 1e-9,
            "{}",
            m.accuracy
        );
    }
}
