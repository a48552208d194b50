//! Captioning metrics: BLEU-1..4, ROUGE-L and CIDEr-D, computed exactly as the COCO caption
//! toolkit `pycocoevalcap` 1.2 (`Bleu(4)`, `Rouge()`, `Cider()`) computes them on text that
//! is already tokenised. The toolkit's Java PTB tokenizer is not run; [`tokenize`] is our
//! own documented pre-tokenisation, applied to hypotheses and references before scoring.
//!
//! Reproduced, quirks included (all arithmetic in `f64`, in the toolkit's order):
//! - **BLEU** (`BleuScorer.compute_score(option="closest")`): tokens from whitespace
//!   splitting; per image `guess[k] = max(0, len - k)`, `correct[k]` = sum over hypothesis
//!   n-grams of `min(count, max count in any reference)`; the effective reference length is
//!   the closest reference length (ties go to the shorter one). Precisions are smoothed as
//!   `(correct + 1e-15) / (guess + 1e-9)`, BLEU-n is the n-th root of the running product,
//!   and the brevity penalty `exp(1 - 1/ratio)` with `ratio = (len + 1e-15) / (reflen +
//!   1e-9)` applies when `ratio < 1`. The corpus score uses totals over images; per-image
//!   scores use the same formula on one image.
//! - **ROUGE-L** (`Rouge.calc_score`): tokens from splitting on single spaces (`split(" ")`,
//!   so an empty candidate is one empty token); `P = max lcs/len(cand)`, `R = max
//!   lcs/len(ref)` over references, taken independently; `F = (1+β²)PR / (R+β²P)` with
//!   `β = 1.2` when both are nonzero, else 0. Corpus = mean over images.
//! - **CIDEr-D** (`CiderScorer`, n = 4, σ = 6): document frequency of an n-gram = number of
//!   images whose references (as a set) contain it; `idf = ln(#images) - ln(max(1, df))`;
//!   TF-IDF vectors use raw counts as TF; the "length" used by the Gaussian length penalty is
//!   the number of *bigrams* (the toolkit only adds term frequencies when `n == 1`); the
//!   per-n similarity is the clipped dot product `Σ min(h, r)·r` divided by `|h||r|` (only
//!   when both norms are nonzero), times `exp(-δ²/(2σ²))`. Per image: mean over n of the sum
//!   over references, divided by the number of references, times 10. Corpus = mean over
//!   images.
//!
//! Means over arrays are computed with numpy's pairwise summation, so results normally
//! match the toolkit bit for bit; the tests require 1e-6 absolute against a fixture made
//! by `scripts/caption_metric_fixture.py`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest n-gram order for BLEU and CIDEr-D.
const MAX_N: usize = 4;
/// BLEU smoothing of the numerator ("tiny" in `bleu_scorer.py`).
const TINY: f64 = 1e-15;
/// BLEU smoothing of the denominator ("small" in `bleu_scorer.py`).
const SMALL: f64 = 1e-9;
/// ROUGE-L recall weight.
const BETA: f64 = 1.2;
/// CIDEr-D Gaussian length-penalty width.
const SIGMA: f64 = 6.0;

/// Invalid input to [`score_all`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetricError {
    #[error("{hyps} hypotheses for {refs} reference sets")]
    LengthMismatch { hyps: usize, refs: usize },
    #[error("no images to score")]
    Empty,
    #[error("image {0} has no reference captions")]
    NoReferences(usize),
}

/// Corpus-level scores, as reported by pycocoevalcap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionScores {
    /// BLEU-1..BLEU-4.
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider_d: f64,
    pub images: usize,
}

/// Punctuation dropped after splitting: the characters behind the tokens in
/// `PTBTokenizer.PUNCTUATIONS` (quotes, the bracket escapes `-LRB-` `-RRB-` `-LCB-` `-RCB-`,
/// `.` `?` `!` `,` `:` `;` `-` `--` `...`), plus their typographic Unicode forms.
fn is_dropped(c: char) -> bool {
    matches!(
        c,
        '\'' | '`'
            | '"'
            | '('
            | ')'
            | '{'
            | '}'
            | '.'
            | '?'
            | '!'
            | ','
            | ':'
            | ';'
            | '-'
            | '\u{2018}'
            | '\u{2019}'
            | '\u{201C}'
            | '\u{201D}'
            | '\u{2013}'
            | '\u{2014}'
            | '\u{2026}'
    )
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}')
}

fn is_combining_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}')
}

fn push_token(out: &mut String, token: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(token);
}

/// Pre-tokenisation applied to captions before scoring (ours, close to but not identical
/// with the PTB tokenizer pycocoevalcap runs):
///
/// 1. Lower-case (Unicode `to_lowercase`), then split on Unicode whitespace.
/// 2. Within each piece, a word is a maximal run of alphanumeric characters (Unicode
///    `is_alphanumeric`; combining marks U+0300..U+036F stay with the word before them),
///    which may contain
///    - an apostrophe (`'`, `‘`, `’`, kept as `'`) or a hyphen `-` *between* two
///      alphanumeric characters: `men's`, `usb-c`, `t-shirt`;
///    - a `.` or `,` *between* two digits: `2.5`, `1,000`, `v2.0`.
/// 3. Every other character becomes a token of its own, except those dropped, the
///    characters behind the tokens `PTBTokenizer` removes (its `PUNCTUATIONS`): `'` `"`
///    `(` `)` `{` `}` `.` `?` `!` `,` `:` `;` `-`, the backtick, and the typographic
///    `‘ ’ “ ” – — …`. So `&`, `/`, `+`, `%`, `$`, `#`, `[`, `]`,
///    `®`, `™` and the like are kept as separate tokens.
/// 4. Tokens are joined with single spaces; text with no tokens gives `""`.
///
/// `"Men's USB-C Cable, 2.5m (Black)!"` becomes `"men's usb-c cable 2.5m black"`.
pub fn tokenize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut token = String::new();
    for piece in lower.split_whitespace() {
        let chars: Vec<char> = piece.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            if c.is_alphanumeric() || (is_combining_mark(c) && !token.is_empty()) {
                token.push(c);
                continue;
            }
            // A non-empty token always ends with the previous character.
            let prev = if token.is_empty() {
                None
            } else {
                Some(chars[i - 1])
            };
            let next = chars.get(i + 1).copied();
            let joins = match (prev, next) {
                (Some(p), Some(n)) => {
                    ((is_apostrophe(c) || c == '-') && p.is_alphanumeric() && n.is_alphanumeric())
                        || ((c == '.' || c == ',') && p.is_numeric() && n.is_numeric())
                }
                _ => false,
            };
            if joins {
                token.push(if is_apostrophe(c) { '\'' } else { c });
                continue;
            }
            if !token.is_empty() {
                push_token(&mut out, &token);
                token.clear();
            }
            if !is_dropped(c) {
                let mut buf = [0u8; 4];
                push_token(&mut out, c.encode_utf8(&mut buf));
            }
        }
        if !token.is_empty() {
            push_token(&mut out, &token);
            token.clear();
        }
    }
    out
}

type Gram<'a> = &'a [&'a str];

/// n-gram counts for n = 1..=4, each order listed in first-occurrence order (the iteration
/// order of the toolkit's `defaultdict`).
fn ngram_counts<'a>(words: &'a [&'a str]) -> [Vec<(Gram<'a>, usize)>; MAX_N] {
    std::array::from_fn(|k| {
        let mut order: Vec<(Gram<'a>, usize)> = Vec::new();
        let mut index: HashMap<Gram<'a>, usize> = HashMap::new();
        for gram in words.windows(k + 1) {
            match index.entry(gram) {
                Entry::Occupied(e) => order[*e.get()].1 += 1,
                Entry::Vacant(e) => {
                    e.insert(order.len());
                    order.push((gram, 1));
                }
            }
        }
        order
    })
}

/// `s.split()` in Python (for our pre-tokenised text).
fn split_words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

fn check_shapes(hyps: &[String], refs: &[Vec<String>]) {
    assert_eq!(
        hyps.len(),
        refs.len(),
        "caption metrics: one reference set per hypothesis"
    );
    assert!(
        refs.iter().all(|r| !r.is_empty()),
        "caption metrics: every image needs at least one reference"
    );
}

/// numpy's pairwise summation (`pairwise_sum` in `loops_utils.h`), which `np.mean` uses.
fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for chunk in a[8..whole].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(chunk) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[whole..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.mean`; 0.0 for an empty slice (numpy would give NaN).
fn numpy_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        0.0
    } else {
        pairwise_sum(a) / a.len() as f64
    }
}

fn bleu_from_counts(
    correct: &[usize; MAX_N],
    guess: &[usize; MAX_N],
    testlen: usize,
    reflen: usize,
) -> [f64; MAX_N] {
    let mut out = [0.0; MAX_N];
    let mut product = 1.0;
    for (k, ((b, &c), &g)) in out.iter_mut().zip(correct).zip(guess).enumerate() {
        product *= (c as f64 + TINY) / (g as f64 + SMALL);
        *b = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for b in &mut out {
            *b *= penalty;
        }
    }
    out
}

/// BLEU-1..4 as `Bleu(4).compute_score`: the corpus scores and the per-image scores (here
/// indexed by image, then by n).
///
/// # Panics
/// If `hyps` and `refs` differ in length or an image has no references
/// ([`score_all`] reports these as errors instead).
pub fn bleu(hyps: &[String], refs: &[Vec<String>]) -> ([f64; 4], Vec<[f64; 4]>) {
    check_shapes(hyps, refs);
    let mut total_correct = [0usize; MAX_N];
    let mut total_guess = [0usize; MAX_N];
    let mut total_testlen = 0usize;
    let mut total_reflen = 0usize;
    let mut per_image = Vec::with_capacity(hyps.len());
    for (hyp, image_refs) in hyps.iter().zip(refs) {
        let ref_words: Vec<Vec<&str>> = image_refs.iter().map(|r| split_words(r)).collect();
        let mut max_counts: HashMap<Gram<'_>, usize> = HashMap::new();
        for words in &ref_words {
            for order in ngram_counts(words) {
                for (gram, count) in order {
                    let m = max_counts.entry(gram).or_insert(0);
                    *m = (*m).max(count);
                }
            }
        }
        let words = split_words(hyp);
        let testlen = words.len();
        let reflen = ref_words
            .iter()
            .map(Vec::len)
            .min_by_key(|&l| (l.abs_diff(testlen), l))
            .unwrap_or(0);
        let mut correct = [0usize; MAX_N];
        let mut guess = [0usize; MAX_N];
        for (k, order) in ngram_counts(&words).iter().enumerate() {
            guess[k] = testlen.saturating_sub(k);
            correct[k] = order
                .iter()
                .map(|&(gram, count)| count.min(max_counts.get(gram).copied().unwrap_or(0)))
                .sum();
        }
        for (total, c) in total_correct.iter_mut().zip(correct) {
            *total += c;
        }
        for (total, g) in total_guess.iter_mut().zip(guess) {
            *total += g;
        }
        total_testlen += testlen;
        total_reflen += reflen;
        per_image.push(bleu_from_counts(&correct, &guess, testlen, reflen));
    }
    let corpus = bleu_from_counts(&total_correct, &total_guess, total_testlen, total_reflen);
    (corpus, per_image)
}

/// Length of the longest common subsequence of two token lists (`my_lcs`).
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() < b.len() { (b, a) } else { (a, b) };
    let mut row = vec![0usize; short.len() + 1];
    for x in long {
        let mut diag = 0;
        for (j, y) in short.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[short.len()]
}

fn rouge_l_image(hyp: &str, refs: &[String]) -> f64 {
    let cand: Vec<&str> = hyp.split(' ').collect();
    let mut prec_max = 0.0f64;
    let mut rec_max = 0.0f64;
    for reference in refs {
        let tokens: Vec<&str> = reference.split(' ').collect();
        let l = lcs(&tokens, &cand) as f64;
        prec_max = prec_max.max(l / cand.len() as f64);
        rec_max = rec_max.max(l / tokens.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let beta2 = BETA * BETA;
        ((1.0 + beta2) * prec_max * rec_max) / (rec_max + beta2 * prec_max)
    } else {
        0.0
    }
}

/// ROUGE-L as `Rouge().compute_score`: the corpus mean and the per-image scores.
/// With no images the mean is 0.0.
///
/// # Panics
/// If `hyps` and `refs` differ in length or an image has no references.
pub fn rouge_l(hyps: &[String], refs: &[Vec<String>]) -> (f64, Vec<f64>) {
    check_shapes(hyps, refs);
    let per_image: Vec<f64> = hyps
        .iter()
        .zip(refs)
        .map(|(hyp, image_refs)| rouge_l_image(hyp, image_refs))
        .collect();
    (numpy_mean(&per_image), per_image)
}

/// TF-IDF vector of one caption (`counts2vec`).
struct TfIdf<'a> {
    /// Per order, in the toolkit's iteration order.
    vec: [Vec<(Gram<'a>, f64)>; MAX_N],
    norm: [f64; MAX_N],
    /// Number of bigrams (sic).
    length: usize,
}

impl<'a> TfIdf<'a> {
    fn new(words: &'a [&'a str], df: &HashMap<Gram<'_>, usize>, ref_len: f64) -> Self {
        let mut vec: [Vec<(Gram<'a>, f64)>; MAX_N] = Default::default();
        let mut norm = [0.0f64; MAX_N];
        let mut length = 0;
        for (k, order) in ngram_counts(words).into_iter().enumerate() {
            for (gram, tf) in order {
                let doc_freq = df.get(gram).copied().unwrap_or(0) as f64;
                let value = tf as f64 * (ref_len - doc_freq.max(1.0).ln());
                norm[k] += value * value;
                vec[k].push((gram, value));
                if k == 1 {
                    length += tf;
                }
            }
        }
        Self {
            vec,
            norm: norm.map(f64::sqrt),
            length,
        }
    }

    fn lookup(&self) -> [HashMap<Gram<'a>, f64>; MAX_N] {
        std::array::from_fn(|k| self.vec[k].iter().copied().collect())
    }
}

/// Per-order similarity of a hypothesis to one reference (`sim`).
fn cider_sim(
    hyp: &TfIdf<'_>,
    reference: &TfIdf<'_>,
    ref_lookup: &[HashMap<Gram<'_>, f64>; MAX_N],
) -> [f64; MAX_N] {
    let delta = hyp.length as f64 - reference.length as f64;
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    std::array::from_fn(|k| {
        let mut val = 0.0;
        for &(gram, h) in &hyp.vec[k] {
            let r = ref_lookup[k].get(gram).copied().unwrap_or(0.0);
            val += h.min(r) * r;
        }
        if hyp.norm[k] != 0.0 && reference.norm[k] != 0.0 {
            val /= hyp.norm[k] * reference.norm[k];
        }
        val * penalty
    })
}

/// CIDEr-D as `Cider().compute_score` (n = 4, σ = 6): the corpus mean and the per-image
/// scores. With no images the mean is 0.0.
///
/// # Panics
/// If `hyps` and `refs` differ in length or an image has no references.
pub fn cider_d(hyps: &[String], refs: &[Vec<String>]) -> (f64, Vec<f64>) {
    check_shapes(hyps, refs);
    let hyp_words: Vec<Vec<&str>> = hyps.iter().map(|h| split_words(h)).collect();
    let ref_words: Vec<Vec<Vec<&str>>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| split_words(r)).collect())
        .collect();

    let mut df: HashMap<Gram<'_>, usize> = HashMap::new();
    for image_refs in &ref_words {
        let mut seen: HashSet<Gram<'_>> = HashSet::new();
        for words in image_refs {
            for order in ngram_counts(words) {
                seen.extend(order.into_iter().map(|(gram, _)| gram));
            }
        }
        for gram in seen {
            *df.entry(gram).or_insert(0) += 1;
        }
    }
    let ref_len = (refs.len() as f64).ln();

    let mut per_image = Vec::with_capacity(hyps.len());
    for (words, image_refs) in hyp_words.iter().zip(&ref_words) {
        let hyp = TfIdf::new(words, &df, ref_len);
        let mut score = [0.0f64; MAX_N];
        for words_r in image_refs {
            let reference = TfIdf::new(words_r, &df, ref_len);
            let sim = cider_sim(&hyp, &reference, &reference.lookup());
            for (s, v) in score.iter_mut().zip(sim) {
                *s += v;
            }
        }
        let mut avg = numpy_mean(&score);
        avg /= image_refs.len() as f64;
        avg *= 10.0;
        per_image.push(avg);
    }
    (numpy_mean(&per_image), per_image)
}

/// All corpus scores. Inputs are tokenised captions (see [`tokenize`]).
///
/// # Errors
/// [`MetricError`] unless there is one reference set per hypothesis, at least one image
/// and at least one reference per image.
pub fn score_all(hyps: &[String], refs: &[Vec<String>]) -> Result<CaptionScores, MetricError> {
    if hyps.len() != refs.len() {
        return Err(MetricError::LengthMismatch {
            hyps: hyps.len(),
            refs: refs.len(),
        });
    }
    if hyps.is_empty() {
        return Err(MetricError::Empty);
    }
    if let Some(i) = refs.iter().position(Vec::is_empty) {
        return Err(MetricError::NoReferences(i));
    }
    Ok(CaptionScores {
        bleu: bleu(hyps, refs).0,
        rouge_l: rouge_l(hyps, refs).0,
        cider_d: cider_d(hyps, refs).0,
        images: hyps.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn refs(x: &[&[&str]]) -> Vec<Vec<String>> {
        x.iter()
            .map(|r| r.iter().copied().map(s).collect())
            .collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn tokenize_rules() {
        assert_eq!(
            tokenize("Men's USB-C Cable, 2.5m (Black)!"),
            "men's usb-c cable 2.5m black"
        );
        assert_eq!(tokenize("  Size: 10,000 -- GREAT... "), "size 10,000 great");
        assert_eq!(tokenize("Salt & Pepper / Set"), "salt & pepper / set");
        assert_eq!(tokenize("\"Quoted\" 'word' - x"), "quoted word x");
        assert_eq!(tokenize("Kids’ Shirt’s"), "kids shirt's");
        assert_eq!(tokenize("50% off [new]"), "50 % off [ new ]");
        assert_eq!(tokenize("-5.5 e.g. 3."), "5.5 e g 3");
        assert_eq!(tokenize("Cafe\u{301} CRÈME"), "cafe\u{301} crème");
        assert_eq!(tokenize(" ,.;: "), "");
        assert_eq!(tokenize(""), "");
    }

    #[test]
    fn lcs_hand_worked() {
        let a = ["a", "b", "c", "d", "e"];
        let b = ["a", "x", "c", "e"];
        assert_eq!(lcs(&a, &b), 3);
        assert_eq!(lcs(&b, &a), 3);
        assert_eq!(lcs(&["a", "b"], &["b", "a"]), 1);
        assert_eq!(lcs(&[], &["a"]), 0);
    }

    #[test]
    fn identical_caption_scores_one() {
        let hyps = vec![s("a b c d e")];
        let r = refs(&[&["a b c d e"]]);
        let (corpus, per) = bleu(&hyps, &r);
        for b in corpus.iter().chain(&per[0]) {
            assert!(close(*b, 1.0, 1e-8), "{b}");
        }
        let (rouge, _) = rouge_l(&hyps, &r);
        assert_eq!(rouge, 1.0);
    }

    #[test]
    fn brevity_penalty() {
        // 2 tokens against a 4-token reference: precisions 1, penalty exp(1 - 4/2).
        let hyps = vec![s("a b")];
        let r = refs(&[&["a b c d"]]);
        let (corpus, per) = bleu(&hyps, &r);
        let expected = (-1.0f64).exp();
        assert!(close(corpus[0], expected, 1e-8));
        assert!(close(corpus[1], expected, 1e-8));
        assert!(close(per[0][0], expected, 1e-8));
        // No trigram to match: (0 + 1e-15) / (0 + 1e-9) enters the product.
        assert!(close(per[0][2], (1e-6f64).powf(1.0 / 3.0) * expected, 1e-9));
    }

    #[test]
    fn closest_reference_tie_takes_shorter() {
        // Lengths 2 and 4 are both 1 away from 3; the shorter wins, so no penalty.
        let hyps = vec![s("a b c")];
        let r = refs(&[&["a b", "a b c d"]]);
        let (corpus, _) = bleu(&hyps, &r);
        assert!(close(corpus[0], 1.0, 1e-8));
    }

    #[test]
    fn rouge_hand_worked() {
        let hyps = vec![s("a b c d e")];
        let r = refs(&[&["a x c e", "z"]]);
        let (p, rec) = (3.0 / 5.0, 3.0 / 4.0);
        let expected = (1.0 + 1.44) * p * rec / (rec + 1.44 * p);
        let (mean, per) = rouge_l(&hyps, &r);
        assert!(close(per[0], expected, 1e-12));
        assert!(close(mean, expected, 1e-12));
    }

    #[test]
    fn cider_hand_worked() {
        // Two images, each hypothesis equal to its single reference, disjoint vocabularies:
        // cosine 1 for unigrams and bigrams, 0 for the missing 3- and 4-grams, no length
        // penalty: (1 + 1 + 0 + 0) / 4 * 10 = 5.
        let hyps = vec![s("a b"), s("c d")];
        let r = refs(&[&["a b"], &["c d"]]);
        let (mean, per) = cider_d(&hyps, &r);
        assert!(close(mean, 5.0, 1e-12));
        assert!(per.iter().all(|&x| close(x, 5.0, 1e-12)));
        // A single image has idf ln(1) - ln(1) = 0 everywhere.
        let (single, _) = cider_d(&hyps[..1], &r[..1]);
        assert_eq!(single, 0.0);
    }

    #[test]
    fn empty_hypothesis_scores_zero() {
        let hyps = vec![s(""), s("a b")];
        let r = refs(&[&["a b c"], &["a b"]]);
        assert_eq!(bleu(&hyps, &r).1[0], [0.0; 4]);
        assert_eq!(rouge_l(&hyps, &r).1[0], 0.0);
        assert_eq!(cider_d(&hyps, &r).1[0], 0.0);
        assert!(score_all(&hyps, &r).is_ok());
    }

    #[test]
    fn score_all_rejects_bad_input() {
        let hyps = vec![s("a")];
        assert_eq!(
            score_all(&hyps, &[]),
            Err(MetricError::LengthMismatch { hyps: 1, refs: 0 })
        );
        assert_eq!(score_all(&[], &[]), Err(MetricError::Empty));
        assert_eq!(
            score_all(&hyps, &[vec![]]),
            Err(MetricError::NoReferences(0))
        );
    }

    #[test]
    fn pairwise_sum_matches_layout() {
        let a: Vec<f64> = (0..300).map(|i| 0.1 * i as f64).collect();
        for n in [0, 1, 7, 8, 9, 17, 128, 129, 300] {
            let exact: f64 = (0..n).map(|i| 0.1 * i as f64).sum();
            assert!(close(pairwise_sum(&a[..n]), exact, 1e-9));
        }
    }

    #[derive(Deserialize)]
    struct Fixture {
        hyps: Vec<String>,
        refs: Vec<Vec<String>>,
        corpus: FixtureScores<[f64; 4], f64>,
        per_image: FixtureScores<Vec<[f64; 4]>, Vec<f64>>,
    }

    #[derive(Deserialize)]
    struct FixtureScores<B, S> {
        bleu: B,
        rouge_l: S,
        cider_d: S,
    }

    #[test]
    fn matches_pycocoevalcap_fixture() {
        const TOL: f64 = 1e-6;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/caption-metrics.json"
        );
        let text = std::fs::read_to_string(path).expect("read fixture");
        let fx: Fixture = serde_json::from_str(&text).expect("parse fixture");
        let n = fx.hyps.len();
        assert_eq!(fx.refs.len(), n);

        let (bleu_corpus, bleu_per) = bleu(&fx.hyps, &fx.refs);
        let (rouge_corpus, rouge_per) = rouge_l(&fx.hyps, &fx.refs);
        let (cider_corpus, cider_per) = cider_d(&fx.hyps, &fx.refs);
        assert_eq!(bleu_per.len(), n);
        assert_eq!(fx.per_image.bleu.len(), n);
        assert_eq!(fx.per_image.rouge_l.len(), n);
        assert_eq!(fx.per_image.cider_d.len(), n);

        for (k, (got, want)) in bleu_corpus.iter().zip(&fx.corpus.bleu).enumerate() {
            assert!(
                close(*got, *want, TOL),
                "corpus BLEU-{}: {got} vs {want}",
                k + 1
            );
        }
        assert!(close(rouge_corpus, fx.corpus.rouge_l, TOL));
        assert!(close(cider_corpus, fx.corpus.cider_d, TOL));
        for (i, (got, want)) in bleu_per.iter().zip(&fx.per_image.bleu).enumerate() {
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(close(*g, *w, TOL), "image {i} BLEU-{}: {g} vs {w}", k + 1);
            }
        }
        for (i, (g, w)) in rouge_per.iter().zip(&fx.per_image.rouge_l).enumerate() {
            assert!(close(*g, *w, TOL), "image {i} ROUGE-L: {g} vs {w}");
        }
        for (i, (g, w)) in cider_per.iter().zip(&fx.per_image.cider_d).enumerate() {
            assert!(close(*g, *w, TOL), "image {i} CIDEr-D: {g} vs {w}");
        }

        let all = score_all(&fx.hyps, &fx.refs).expect("valid fixture");
        assert_eq!(all.images, n);
        assert_eq!(all.bleu, bleu_corpus);
        assert_eq!(all.rouge_l, rouge_corpus);
        assert_eq!(all.cider_d, cider_corpus);
    }
}
