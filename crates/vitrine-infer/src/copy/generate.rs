//! Copy generation: batched sampling with a KV cache, hard constraints, and resampling
//! until `n` candidates pass or the budget is spent.
//!
//! Sampling per step and row: keyword boost (a logit bonus for the first token of every
//! keyword the line has not used yet; a started keyword's remaining tokens are forced, as in
//! lexically constrained decoding), repetition penalty (CTRL-style, on tokens this candidate
//! has already generated; the brief is exempt so keywords are not discouraged), temperature,
//! top-k, top-p, then a draw from one seeded RNG in row order, so the same seed and request
//! give the same output.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use vitrine_data::copy::{contains_phrase, words, Brief, Rejection};

use super::lexicon::{KeywordTrie, LexiconIndex, WordState};
use super::params::{CheckedRequest, GenerateLimits, Sampling};
use super::run::LmRun;
use crate::error::{InferError, Result};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub text: String,
    pub keyword_coverage: f64,
    /// Set when a scorer ranked the candidates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateOutput {
    pub candidates: Vec<Candidate>,
    pub requested: usize,
    /// Candidates sampled in all.
    pub sampled: usize,
    /// Rejections by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Fewer than `requested` passed within the budget.
    pub budget_exhausted: bool,
    /// Tokens generated over all samples (end-of-line tokens included).
    pub tokens: usize,
}

/// Applies repetition penalty, temperature, top-k and top-p to `logits` in place and draws
/// one token id.
pub fn sample_token(logits: &mut [f32], generated: &[u32], s: &Sampling, rng: &mut StdRng) -> u32 {
    let all = (0..logits.len() as u32).collect();
    sample_among(logits, generated, s, rng, all).expect("a vocabulary is not empty")
}

/// [`sample_token`] restricted to the token ids `ids`: top-k and top-p apply among them, so
/// the draw is from the model's distribution conditioned on the allowed tokens. `None` when
/// `ids` is empty. With every id, in order, the draw is [`sample_token`]'s.
pub fn sample_among(
    logits: &mut [f32],
    generated: &[u32],
    s: &Sampling,
    rng: &mut StdRng,
    mut ids: Vec<u32>,
) -> Option<u32> {
    if s.repetition_penalty != 1.0 {
        let mut seen = HashSet::new();
        let p = s.repetition_penalty as f32;
        for &t in generated {
            if seen.insert(t) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p } else { *l * p };
                }
            }
        }
    }
    let inv_t = (1.0 / s.temperature) as f32;
    // Candidate ids sorted by logit, best first (top-k keeps the first k).
    let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if s.top_k > 0 && s.top_k < ids.len() {
        ids.select_nth_unstable_by(s.top_k - 1, cmp);
        ids.truncate(s.top_k);
    }
    ids.sort_unstable_by(cmp);
    let max = logits[*ids.first()? as usize] * inv_t;
    let mut probs: Vec<f64> = ids
        .iter()
        .map(|&i| (((logits[i as usize] * inv_t) - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    // Top-p: the smallest prefix whose mass reaches p (at least one token).
    let mut keep = probs.len();
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        for (j, p) in probs.iter().enumerate() {
            cum += p / total;
            if cum >= s.top_p {
                keep = j + 1;
                break;
            }
        }
    }
    probs.truncate(keep);
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (j, p) in probs.iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return Some(ids[j]);
        }
    }
    Some(ids[keep - 1])
}

/// One request's lexicon constraint: the run's index, the keywords' words, and the tokens
/// each word state allows, listed once per state (most steps of a request revisit states:
/// every word starts from the same one).
struct Constraint<'a> {
    index: &'a LexiconIndex,
    keywords: &'a KeywordTrie,
    allowed: HashMap<WordState, Vec<u32>>,
}

impl Constraint<'_> {
    /// States remembered at most (a request rarely reaches it; past it the lists are
    /// recomputed).
    const MAX_STATES: usize = 1 << 14;

    fn allowed(&mut self, state: WordState) -> Vec<u32> {
        if let Some(ids) = self.allowed.get(&state) {
            return ids.clone();
        }
        let ids = self.index.allowed_tokens(self.keywords, state);
        if self.allowed.len() < Self::MAX_STATES {
            self.allowed.insert(state, ids.clone());
        }
        ids
    }
}

/// How one sampled row ended.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    ids: Vec<u32>,
    text: String,
    done: bool,
    ended: bool,
    too_long: bool,
    /// Per keyword: not used yet, started (variant, tokens matched), or used.
    keywords: Vec<KeywordState>,
    /// The text reported to the observer so far.
    reported: String,
    /// Where the word being written stands in the lexicon (constrained requests).
    word: WordState,
}

impl Row {
    /// Tells the observer the text this row (sample `sample`) has grown by since it was last
    /// told ([`unreported`]); `end`: the row is over.
    fn report(
        &mut self,
        sample: usize,
        stops: &[String],
        end: bool,
        observer: &mut Observer<'_>,
    ) -> Result<()> {
        let delta = unreported(&self.text, &self.reported, stops, end);
        if delta.is_empty() {
            return Ok(());
        }
        if !observer(GenEvent::Token {
            sample,
            text: delta,
        }) {
            return Err(cancelled());
        }
        self.reported.push_str(delta);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum KeywordState {
    Unused,
    Started { variant: usize, matched: usize },
    Used,
}

/// The token a started keyword forces next, or else boosts the first token of each unused
/// keyword in `logits`.
fn keyword_step(row: &Row, kw: &[[Vec<u32>; 2]], boost: f32, logits: &mut [f32]) -> Option<u32> {
    for (state, seqs) in row.keywords.iter().zip(kw) {
        if let KeywordState::Started { variant, matched } = *state {
            return seqs[variant].get(matched).copied();
        }
    }
    if boost > 0.0 {
        // At the line's start a word has no leading space: variant 1.
        let variant = usize::from(row.ids.is_empty());
        for (state, seqs) in row.keywords.iter().zip(kw) {
            if *state == KeywordState::Unused {
                if let Some(l) = seqs[variant]
                    .first()
                    .and_then(|&t| logits.get_mut(t as usize))
                {
                    *l += boost;
                }
            }
        }
    }
    None
}

/// Advances the keyword states after `tok` was emitted.
fn keyword_advance(row: &mut Row, kw: &[[Vec<u32>; 2]], tok: u32, brief: &Brief) {
    let variant_now = usize::from(row.ids.len() == 1);
    let mut consumed = false;
    for (state, seqs) in row.keywords.iter_mut().zip(kw) {
        match *state {
            KeywordState::Started { variant, matched } => {
                let seq = &seqs[variant];
                *state = if seq.get(matched) == Some(&tok) {
                    if matched + 1 == seq.len() {
                        KeywordState::Used
                    } else {
                        KeywordState::Started {
                            variant,
                            matched: matched + 1,
                        }
                    }
                } else {
                    KeywordState::Unused
                };
                consumed = true;
            }
            KeywordState::Unused if !consumed && seqs[variant_now].first() == Some(&tok) => {
                *state = if seqs[variant_now].len() == 1 {
                    KeywordState::Used
                } else {
                    KeywordState::Started {
                        variant: variant_now,
                        matched: 1,
                    }
                };
                consumed = true;
            }
            _ => {}
        }
    }
    // A keyword the line wrote in its own way (other case, other tokens) counts as used.
    let hay = words(&row.text);
    for (state, k) in row.keywords.iter_mut().zip(&brief.keywords) {
        if *state == KeywordState::Unused && contains_phrase(&hay, k) {
            *state = KeywordState::Used;
        }
    }
}

/// What generation reports as it goes (the server streams it).
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent<'a> {
    /// A decoding step begins (nothing to show; a chance to cancel).
    Step,
    /// Sample `sample` (numbered from 0 over the whole request) grew by `text`.
    Token { sample: usize, text: &'a str },
    /// Sample `sample` passed the constraints and became candidate `index`.
    Candidate {
        index: usize,
        sample: usize,
        candidate: &'a Candidate,
    },
}

/// Receives [`GenEvent`]s; returning `false` cancels generation.
pub type Observer<'o> = dyn FnMut(GenEvent<'_>) -> bool + 'o;

fn cancelled() -> InferError {
    InferError::Cancelled("generation was cancelled".into())
}

/// The row's next token: the keyword's forced token, or a draw; under a lexicon constraint
/// only tokens that keep the line's words in the lexicon (a forced token that would not is
/// drawn instead). Advances the row's word state. `None`: no token is allowed.
fn next_token(
    row: &mut Row,
    forced: Option<u32>,
    logits: &mut [f32],
    draws: &mut Draws<'_>,
    sampling: &Sampling,
) -> Option<u32> {
    let rng = &mut draws.rng;
    let Some(c) = draws.constraint.as_mut() else {
        return Some(forced.unwrap_or_else(|| sample_token(logits, &row.ids, sampling, rng)));
    };
    let (state, kw) = (row.word, c.keywords);
    let tok = match forced.filter(|&t| c.index.allows(kw, state, t)) {
        Some(t) => t,
        None => sample_among(logits, &row.ids, sampling, rng, c.allowed(state))?,
    };
    row.word = c.index.advance(kw, state, tok)?;
    Some(tok)
}

/// What a request's draws share across its batches: one seeded RNG (so the same request
/// gives the same lines), the lexicon constraint, and the count of tokens drawn.
struct Draws<'a> {
    rng: StdRng,
    constraint: Option<Constraint<'a>>,
    tokens: usize,
}

/// Samples `rows` continuations of the prompt in one batch with a KV cache; `first` is the
/// number of the batch's first sample in the request.
fn sample_batch<B: Backend>(
    run: &LmRun<B>,
    req: &CheckedRequest,
    rows: usize,
    first: usize,
    draws: &mut Draws<'_>,
    device: &B::Device,
    observer: &mut Observer<'_>,
) -> Result<Vec<Row>> {
    let eos = run.eos();
    let p = req.prompt_ids.len();
    let prompt: Vec<i64> = (0..rows)
        .flat_map(|_| req.prompt_ids.iter().map(|&t| t as i64))
        .collect();
    let mut cache = run.model.new_cache();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(prompt, [rows, p]), device);
    let h = run.model.forward_hidden(tokens, &mut cache, true)?;
    let d = h.dims()[2];
    let mut logits = run.model.logits(h.slice([0..rows, p - 1..p, 0..d]));
    let mut out: Vec<Row> = (0..rows)
        .map(|_| Row {
            ids: Vec::new(),
            text: String::new(),
            done: false,
            ended: false,
            too_long: false,
            keywords: vec![KeywordState::Unused; req.keyword_tokens.len()],
            reported: String::new(),
            word: WordState::START,
        })
        .collect();
    let max_chars = req.constraints.max_chars;
    for step in 0..req.max_new_tokens {
        if !observer(GenEvent::Step) {
            return Err(cancelled());
        }
        let v = logits.dims()[2];
        let host: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| InferError::Invalid(format!("reading logits: {e:?}")))?;
        let mut next = vec![eos.unwrap_or(0) as i64; rows];
        for (r, row) in out.iter_mut().enumerate() {
            if row.done {
                continue;
            }
            let mut l = host[r * v..(r + 1) * v].to_vec();
            let forced = keyword_step(row, &req.keyword_tokens, req.keyword_boost, &mut l);
            let Some(tok) = next_token(row, forced, &mut l, draws, &req.sampling) else {
                // No token can continue the line within the lexicon: it stays unfinished.
                row.done = true;
                continue;
            };
            draws.tokens += 1;
            if Some(tok) == eos {
                row.done = true;
                row.ended = true;
                continue;
            }
            row.ids.push(tok);
            next[r] = tok as i64;
            row.text = run.tokenizer.decode(&row.ids)?;
            keyword_advance(row, &req.keyword_tokens, tok, &req.brief);
            if let Some(cut) = req
                .stop
                .iter()
                .filter_map(|s| row.text.find(s.as_str()))
                .min()
            {
                row.text.truncate(cut);
                row.done = true;
                row.ended = true;
            } else if row.text.trim().chars().count() > max_chars {
                // Already over the limit: stop spending compute on it.
                row.done = true;
                row.too_long = true;
            }
            row.report(first + r, &req.stop, false, observer)?;
        }
        if out.iter().all(|r| r.done) || step + 1 == req.max_new_tokens {
            break;
        }
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [rows, 1]), device);
        logits = run.model.forward_cached(t, &mut cache)?;
    }
    // The rows are over: what was held back is final now.
    for (r, row) in out.iter_mut().enumerate() {
        row.report(first + r, &req.stop, true, observer)?;
    }
    Ok(out)
}

/// The text of a row to report now, after `reported`: while the row runs, an incomplete
/// character at the end (a byte-level token decodes it as U+FFFD) and a tail that may be
/// the start of a stop string are held back; at the `end` everything left is reported.
/// Text that no longer extends `reported` (cut by a stop string) reports nothing.
fn unreported<'a>(text: &'a str, reported: &str, stops: &[String], end: bool) -> &'a str {
    if !text.starts_with(reported) {
        return "";
    }
    let mut upto = text.len();
    if !end {
        upto = text.trim_end_matches('\u{FFFD}').len();
        let whole = &text[..upto];
        let held = stops
            .iter()
            .filter_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| whole.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        upto -= held;
    }
    text.get(reported.len()..upto).unwrap_or("")
}

/// Generates until `n` candidates pass the constraints or `budget_factor × n` are sampled.
pub fn generate<B: Backend>(
    run: &LmRun<B>,
    req: &CheckedRequest,
    limits: &GenerateLimits,
    device: &B::Device,
) -> Result<GenerateOutput> {
    generate_observed(run, req, limits, device, &mut |_| true)
}

/// [`generate`], reporting tokens and accepted candidates to `observer` as they come; the
/// output is the same as without an observer. An observer that returns `false` stops
/// generation with [`InferError::Cancelled`].
pub fn generate_observed<B: Backend>(
    run: &LmRun<B>,
    req: &CheckedRequest,
    limits: &GenerateLimits,
    device: &B::Device,
    observer: &mut Observer<'_>,
) -> Result<GenerateOutput> {
    let budget = req.n * limits.budget_factor;
    let mut accepted: HashSet<String> = HashSet::new();
    let mut candidates = Vec::new();
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    let mut sampled = 0;
    // The lexicon constraint of this request: the run's index and the keywords' words.
    let constraint = match &req.lexicon {
        Some(keywords) => Some(Constraint {
            index: run
                .lexicon_index
                .as_ref()
                .map_err(|e| InferError::Invalid(e.clone()))?,
            keywords,
            allowed: HashMap::new(),
        }),
        None => None,
    };
    let mut draws = Draws {
        rng: StdRng::seed_from_u64(req.seed),
        constraint,
        tokens: 0,
    };
    while candidates.len() < req.n && sampled < budget {
        let rows = limits.batch_size.min(budget - sampled);
        let batch = sample_batch(run, req, rows, sampled, &mut draws, device, observer)?;
        let first = sampled;
        sampled += rows;
        for (r, row) in batch.into_iter().enumerate() {
            let text = row.text.trim().to_string();
            let verdict = if row.too_long {
                Some(Rejection::TooLong)
            } else if !row.ended {
                Some(Rejection::Unfinished)
            } else {
                req.constraints.check(&text, &accepted)
            };
            match verdict {
                Some(r) => {
                    let key = serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    *rejected.entry(key).or_default() += 1;
                }
                None if candidates.len() < req.n => {
                    accepted.insert(vitrine_data::copy::normalize(&text));
                    let candidate = Candidate {
                        keyword_coverage: req.brief.coverage(&text),
                        text,
                        score: None,
                    };
                    if !observer(GenEvent::Candidate {
                        index: candidates.len(),
                        sample: first + r,
                        candidate: &candidate,
                    }) {
                        return Err(cancelled());
                    }
                    candidates.push(candidate);
                }
                None => {}
            }
        }
    }
    Ok(GenerateOutput {
        budget_exhausted: candidates.len() < req.n,
        candidates,
        requested: req.n,
        sampled,
        rejected,
        tokens: draws.tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> Sampling {
        Sampling {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }

    #[test]
    fn top_k_one_is_argmax_and_penalty_demotes_repeats() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut l = vec![0.1, 2.0, 1.9, -1.0];
        assert_eq!(sample_token(&mut l, &[], &greedy(), &mut rng), 1);
        let s = Sampling {
            repetition_penalty: 1.2,
            ..greedy()
        };
        let mut l = vec![0.1, 2.0, 1.9, -1.0];
        // 2.0 / 1.2 < 1.9: the repeated token loses.
        assert_eq!(sample_token(&mut l, &[1, 1], &s, &mut rng), 2);
        assert!(
            (l[1] - 2.0 / 1.2).abs() < 1e-6,
            "penalised once, not per repeat"
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_prefix() {
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            repetition_penalty: 1.0,
        };
        // Token 0 holds ~0.84 of the mass: with top_p 0.5 it is always drawn.
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let mut l = vec![3.0, 1.0, 0.5, 0.0];
            assert_eq!(sample_token(&mut l, &[], &s, &mut rng), 0);
        }
        // With top_p 1 and temperature 1 every token is drawn sometimes.
        let s = Sampling { top_p: 1.0, ..s };
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let mut l = vec![1.0, 1.0, 0.5, 0.0];
            seen.insert(sample_token(&mut l, &[], &s, &mut rng));
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn allowed_tokens_bound_the_draw_and_all_allowed_changes_nothing() {
        let s = Sampling {
            temperature: 0.9,
            top_k: 3,
            top_p: 0.95,
            repetition_penalty: 1.1,
        };
        let logits = |i: usize| -> Vec<f32> {
            (0..40)
                .map(|j| ((i * 7 + j * 13) % 17) as f32 * 0.4)
                .collect()
        };
        let (mut a, mut b) = (StdRng::seed_from_u64(4), StdRng::seed_from_u64(4));
        for i in 0..200 {
            let plain = sample_token(&mut logits(i), &[2, 5], &s, &mut a);
            let all = sample_among(&mut logits(i), &[2, 5], &s, &mut b, (0..40).collect());
            assert_eq!(Some(plain), all);
        }
        // Only odd tokens: every draw is odd, and with top-k 1 it is the best odd token.
        let odd: Vec<u32> = (1..40).step_by(2).collect();
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..200 {
            let t = sample_among(&mut logits(i), &[], &s, &mut rng, odd.clone()).unwrap();
            assert_eq!(t % 2, 1);
        }
        let l = logits(3);
        let best_odd = odd.iter().map(|&t| l[t as usize]).fold(f32::MIN, f32::max);
        let got = sample_among(&mut l.clone(), &[], &greedy(), &mut rng, odd).unwrap();
        assert_eq!(l[got as usize], best_odd);
        // Nothing allowed: no token.
        assert_eq!(
            sample_among(&mut logits(0), &[], &s, &mut rng, Vec::new()),
            None
        );
    }

    fn row(ids: Vec<u32>, n_keywords: usize) -> Row {
        Row {
            ids,
            text: String::new(),
            done: false,
            ended: false,
            too_long: false,
            keywords: vec![KeywordState::Unused; n_keywords],
            reported: String::new(),
            word: WordState::START,
        }
    }

    #[test]
    fn keyword_boost_then_forced_continuation() {
        // One keyword: [5, 6] inside a line, [7] at its start.
        let kw = vec![[vec![5, 6], vec![7]]];
        let brief = Brief::parse("zq", None);
        let mut r = row(vec![1], 1);
        let mut l = vec![0.0f32; 10];
        assert_eq!(keyword_step(&r, &kw, 3.0, &mut l), None);
        assert_eq!(l[5], 3.0);
        assert_eq!(
            l.iter().sum::<f32>(),
            3.0,
            "only the first token is boosted"
        );
        r.ids.push(5);
        keyword_advance(&mut r, &kw, 5, &brief);
        assert_eq!(
            r.keywords[0],
            KeywordState::Started {
                variant: 0,
                matched: 1
            }
        );
        let mut l = vec![0.0f32; 10];
        assert_eq!(keyword_step(&r, &kw, 3.0, &mut l), Some(6));
        r.ids.push(6);
        keyword_advance(&mut r, &kw, 6, &brief);
        assert_eq!(r.keywords[0], KeywordState::Used);
        let mut l = vec![0.0f32; 10];
        assert_eq!(keyword_step(&r, &kw, 3.0, &mut l), None);
        assert!(l.iter().all(|&x| x == 0.0), "a used keyword is not boosted");

        // At the start of a line the no-space variant is boosted and completes at once.
        let mut r = row(Vec::new(), 1);
        let mut l = vec![0.0f32; 10];
        keyword_step(&r, &kw, 2.0, &mut l);
        assert_eq!((l[5], l[7]), (0.0, 2.0));
        r.ids.push(7);
        keyword_advance(&mut r, &kw, 7, &brief);
        assert_eq!(r.keywords[0], KeywordState::Used);

        // Boost 0 leaves the logits alone.
        let r = row(vec![1], 1);
        let mut l = vec![0.0f32; 10];
        assert_eq!(keyword_step(&r, &kw, 0.0, &mut l), None);
        assert!(l.iter().all(|&x| x == 0.0));

        // Written another way (other case) still counts as used.
        let mut r = row(vec![1, 2], 1);
        r.text = "About ZQ".into();
        keyword_advance(&mut r, &kw, 2, &brief);
        assert_eq!(r.keywords[0], KeywordState::Used);
    }

    #[test]
    fn streamed_text_holds_back_partial_characters_and_stop_prefixes() {
        let stop = vec!["END".to_string()];
        // First token; an incomplete character waits for its next byte.
        assert_eq!(unreported("Hi", "", &stop, false), "Hi");
        assert_eq!(unreported("Hi caf\u{FFFD}", "Hi", &stop, false), " caf");
        assert_eq!(unreported("Hi café", "Hi caf", &stop, false), "é");
        // "E" may start "END": held; the stop then cuts the text, nothing more is sent.
        assert_eq!(unreported("Hi café E", "Hi café", &stop, false), " ");
        assert_eq!(unreported("Hi café ", "Hi café ", &stop, false), "");
        // "EN" turned out not to be the stop: sent once it cannot be.
        assert_eq!(unreported("Hi café ENx", "Hi café ", &stop, false), "ENx");
        // At the end, everything left goes out, even an incomplete character.
        assert_eq!(unreported("ab\u{FFFD}", "ab", &stop, true), "\u{FFFD}");
        assert_eq!(unreported("abE", "ab", &stop, true), "E");
        // Text cut below what was reported sends nothing.
        assert_eq!(unreported("ab", "abc", &stop, true), "");
    }

    #[test]
    fn same_seed_same_draws() {
        let s = Sampling {
            temperature: 0.7,
            top_k: 3,
            top_p: 0.9,
            repetition_penalty: 1.1,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|i| {
                    let mut l: Vec<f32> = (0..10).map(|j| ((i * j) % 7) as f32 * 0.3).collect();
                    sample_token(&mut l, &[1, 2], &s, &mut rng)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }
}
