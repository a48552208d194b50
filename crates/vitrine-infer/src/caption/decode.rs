//! Caption decoding: greedy and beam search over a batch of images, with the decoder's KV
//! cache (image keys/values computed once, one new token per step).
//!
//! Every hypothesis starts with `bos` and ends at `eos` (not returned) or at `max_tokens`.
//! Beam search follows Hugging Face's `BeamSearchScorer`: per image, the live beams expand
//! to the best `2 * beam` (beam, token) continuations; those ending in `eos` become finished
//! hypotheses scored `sum log p / len^length_penalty` (len = generated tokens, `eos`
//! included), the best `beam` others stay live. An image is done once it holds `beam`
//! finished hypotheses and no live beam can beat the worst of them at the current length;
//! at `max_tokens` the live beams are finished as they are. `beam = 1` is greedy search.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vitrine_models::captioner::Captioner;
use vitrine_models::gpt::KvCache;

use crate::error::{InferError, Result};

/// How captions are decoded (`[decode]` in a caption run, flags of `vitrine caption`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// Beams per image (1 = greedy).
    pub beam: usize,
    /// Exponent of the length normalisation (0 = raw sum of log-probabilities; > 0 favours
    /// longer captions).
    pub length_penalty: f64,
    /// End-of-text is not allowed before this many tokens.
    pub min_tokens: usize,
    /// Most generated tokens (end-of-text included); also bounded by the context.
    pub max_tokens: usize,
    /// No n-gram of this size appears twice in a caption (0 = off).
    pub no_repeat_ngram: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            beam: 3,
            length_penalty: 1.0,
            min_tokens: 1,
            max_tokens: 24,
            no_repeat_ngram: 3,
        }
    }
}

/// Per-request changes to a run's decoding settings: `vitrine caption` flags and the
/// fields of `POST /v1/caption`, declared once. Absent = the run's `[decode]` value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecodeOverrides {
    /// Beams per image (1 = greedy; default: the run's decode.beam).
    #[cfg_attr(feature = "clap", arg(long))]
    pub beam: Option<usize>,
    /// Length normalisation exponent (default: the run's decode.length_penalty).
    #[cfg_attr(feature = "clap", arg(long, allow_negative_numbers = true))]
    pub length_penalty: Option<f64>,
    /// End-of-text is not allowed before this many tokens.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_tokens: Option<usize>,
    /// Most generated tokens (the server caps it at `limits.max_tokens`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_tokens: Option<usize>,
    /// No n-gram of this size twice in a caption (0 = off).
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_repeat_ngram: Option<usize>,
}

impl DecodeOverrides {
    pub fn apply(&self, c: &mut DecodeConfig) {
        c.beam = self.beam.unwrap_or(c.beam);
        c.length_penalty = self.length_penalty.unwrap_or(c.length_penalty);
        c.min_tokens = self.min_tokens.unwrap_or(c.min_tokens);
        c.max_tokens = self.max_tokens.unwrap_or(c.max_tokens);
        c.no_repeat_ngram = self.no_repeat_ngram.unwrap_or(c.no_repeat_ngram);
    }
}

/// Limits on what a request may ask of the decoder (`[limits]` in a caption run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionLimits {
    pub max_beam: usize,
    /// Largest |length_penalty|.
    pub max_length_penalty: f64,
    /// Images decoded together (beam search runs batch_size x beam rows).
    pub batch_size: usize,
}

impl Default for CaptionLimits {
    fn default() -> Self {
        Self {
            max_beam: 16,
            max_length_penalty: 10.0,
            batch_size: 32,
        }
    }
}

impl CaptionLimits {
    pub fn validate(&self) -> Result<()> {
        if self.max_beam == 0 || self.max_beam > 256 {
            return Err(InferError::Invalid(format!(
                "limits.max_beam = {} (allowed 1..=256)",
                self.max_beam
            )));
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(InferError::Invalid(format!(
                "limits.batch_size = {} (allowed 1..=4096)",
                self.batch_size
            )));
        }
        if !(self.max_length_penalty.is_finite() && self.max_length_penalty >= 0.0) {
            return Err(InferError::Invalid(format!(
                "limits.max_length_penalty = {} (finite, >= 0)",
                self.max_length_penalty
            )));
        }
        Ok(())
    }
}

impl DecodeConfig {
    /// Checks the settings against `limits` and the model's context `n_ctx` (the most
    /// tokens after `bos`).
    pub fn validate(&self, limits: &CaptionLimits, n_ctx: usize) -> Result<()> {
        let bad = |m: String| Err(InferError::Invalid(m));
        if self.beam == 0 || self.beam > limits.max_beam {
            return bad(format!(
                "beam = {} (allowed 1..={}, limits.max_beam)",
                self.beam, limits.max_beam
            ));
        }
        let max = n_ctx.saturating_sub(1);
        if self.max_tokens == 0 || self.max_tokens > max {
            return bad(format!(
                "max_tokens = {} (allowed 1..={max}: the model's context of {n_ctx} less the start token)",
                self.max_tokens
            ));
        }
        if self.min_tokens > self.max_tokens {
            return bad(format!(
                "min_tokens = {} (allowed 0..=max_tokens = {})",
                self.min_tokens, self.max_tokens
            ));
        }
        if !(self.length_penalty.is_finite()
            && self.length_penalty.abs() <= limits.max_length_penalty)
        {
            return bad(format!(
                "length_penalty = {} (allowed -{m}..={m}, limits.max_length_penalty)",
                self.length_penalty,
                m = limits.max_length_penalty
            ));
        }
        if self.no_repeat_ngram > self.max_tokens + 1 {
            return bad(format!(
                "no_repeat_ngram = {} (allowed 0..={}, max_tokens + 1)",
                self.no_repeat_ngram,
                self.max_tokens + 1
            ));
        }
        Ok(())
    }
}

/// Special tokens of a caption sequence.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub bos: u32,
    pub eos: u32,
}

/// Decodes one caption per image of `images` [N, C, H, W]: token ids without `bos`/`eos`.
/// `cfg` must have passed [`DecodeConfig::validate`].
pub fn decode<B: Backend>(
    model: &Captioner<B>,
    images: Tensor<B, 4>,
    sp: Specials,
    cfg: &DecodeConfig,
) -> Result<Vec<Vec<u32>>> {
    let batch = Batch::new(model, images, sp, cfg)?;
    if cfg.beam <= 1 {
        greedy(batch)
    } else {
        beam_search(batch)
    }
}

/// A batch of `n` images being decoded: the model and its cache over the images.
struct Batch<'a, B: Backend> {
    model: &'a Captioner<B>,
    cache: KvCache<B>,
    n: usize,
    device: B::Device,
    sp: Specials,
    cfg: &'a DecodeConfig,
}

impl<'a, B: Backend> Batch<'a, B> {
    /// Runs the encoder once over `images` [N, C, H, W] into the decoder's cache.
    fn new(
        model: &'a Captioner<B>,
        images: Tensor<B, 4>,
        sp: Specials,
        cfg: &'a DecodeConfig,
    ) -> Result<Self> {
        Ok(Self {
            n: images.dims()[0],
            device: images.device(),
            cache: model.new_cache(images)?,
            model,
            sp,
            cfg,
        })
    }
}

/// Log-probabilities [rows, V] of the next token after `last` [rows], on the host.
fn step<B: Backend>(
    model: &Captioner<B>,
    cache: &mut KvCache<B>,
    last: &[u32],
    device: &B::Device,
) -> Result<(Vec<f32>, usize)> {
    let rows = last.len();
    let ids: Vec<i64> = last.iter().map(|&t| t as i64).collect();
    let x = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, 1]), device);
    let logits = model.decoder.forward_cached(x, cache)?; // [rows, 1, V]
    let v = logits.dims()[2];
    let logp = log_softmax(logits.reshape([rows, v]), 1);
    let data: Vec<f32> = logp
        .into_data()
        .into_vec()
        .map_err(|e| InferError::Invalid(format!("reading decoder output: {e:?}")))?;
    Ok((data, v))
}

/// Sets to -inf what `cfg` forbids after `seq` (`bos` + generated tokens): end-of-text
/// before `min_tokens`, and tokens that would repeat an n-gram.
fn mask_row(row: &mut [f32], seq: &[u32], sp: Specials, cfg: &DecodeConfig) {
    if seq.len() - 1 < cfg.min_tokens {
        row[sp.eos as usize] = f32::NEG_INFINITY;
    }
    let n = cfg.no_repeat_ngram;
    if n == 0 || seq.len() + 1 < n {
        return;
    }
    if n == 1 {
        for &t in &seq[1..] {
            row[t as usize] = f32::NEG_INFINITY;
        }
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for w in seq.windows(n) {
        if &w[..n - 1] == prefix {
            row[w[n - 1] as usize] = f32::NEG_INFINITY;
        }
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

fn greedy<B: Backend>(b: Batch<'_, B>) -> Result<Vec<Vec<u32>>> {
    let (model, n, device, sp, cfg) = (b.model, b.n, b.device, b.sp, b.cfg);
    let mut cache = b.cache;
    let mut seqs: Vec<Vec<u32>> = vec![vec![sp.bos]; n];
    let mut done = vec![false; n];
    for _ in 0..cfg.max_tokens {
        let last: Vec<u32> = seqs.iter().map(|s| *s.last().expect("bos")).collect();
        let (mut logp, v) = step(model, &mut cache, &last, &device)?;
        for (i, row) in logp.chunks_mut(v).enumerate() {
            if done[i] {
                continue;
            }
            mask_row(row, &seqs[i], sp, cfg);
            let t = argmax(row);
            if t == sp.eos {
                done[i] = true;
            } else {
                seqs[i].push(t);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(seqs.into_iter().map(|s| s[1..].to_vec()).collect())
}

#[derive(Debug, Clone)]
struct Hyp {
    /// `bos` + generated tokens (no `eos`).
    seq: Vec<u32>,
    logp: f64,
}

/// The `beam` best finished hypotheses of one image, by normalised score.
#[derive(Debug, Default)]
struct Finished {
    hyps: Vec<(f64, Vec<u32>)>,
}

impl Finished {
    fn add(&mut self, score: f64, seq: Vec<u32>, beam: usize) {
        self.hyps.push((score, seq));
        // Stable sort: among equal scores the earlier (found first) wins.
        self.hyps.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.hyps.truncate(beam);
    }

    fn worst(&self) -> f64 {
        self.hyps.last().map_or(f64::NEG_INFINITY, |h| h.0)
    }
}

fn normalised(logp: f64, len: usize, alpha: f64) -> f64 {
    logp / (len as f64).powf(alpha)
}

/// One image's share of a beam-search step: its beams' next-token log-probabilities.
struct Step<'a> {
    /// [beams, v], row-major.
    logp: &'a mut [f32],
    v: usize,
    /// The image's first row in the batch.
    base: usize,
    /// Tokens generated once this step's token is appended.
    gen_len: usize,
}

/// Advances one image's beams by a step: the `beam` best live continuations and the cache
/// rows they continue (continuations that end the caption become finished hypotheses), and
/// whether the image is done (nothing live can beat its finished hypotheses any more).
fn advance(
    beams: &[Hyp],
    step: Step<'_>,
    finished: &mut Finished,
    sp: Specials,
    cfg: &DecodeConfig,
) -> (Vec<Hyp>, Vec<i64>, bool) {
    let (k, v) = (cfg.beam, step.v);
    // Every (beam, token) continuation, best first; 2k are enough to fill k live
    // beams even if k of them end the caption.
    let mut cands: Vec<(f64, usize, u32)> = Vec::with_capacity(beams.len() * v);
    for (b, hyp) in beams.iter().enumerate() {
        let row = &mut step.logp[b * v..(b + 1) * v];
        mask_row(row, &hyp.seq, sp, cfg);
        for (tok, &lp) in row.iter().enumerate() {
            if lp > f32::NEG_INFINITY {
                cands.push((hyp.logp + lp as f64, b, tok as u32));
            }
        }
    }
    let keep = (2 * k).min(cands.len());
    if keep < cands.len() {
        cands.select_nth_unstable_by(keep, |a, b| b.0.total_cmp(&a.0));
        cands.truncate(keep);
    }
    // Ties broken by (beam, token) so the order never depends on the sort.
    cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut live: Vec<Hyp> = Vec::with_capacity(k);
    let mut rows: Vec<i64> = Vec::with_capacity(k);
    for (score, b, tok) in cands {
        if live.len() == k {
            break;
        }
        if tok == sp.eos {
            let score = normalised(score, step.gen_len, cfg.length_penalty);
            finished.add(score, beams[b].seq.clone(), k);
        } else {
            let mut seq = beams[b].seq.clone();
            seq.push(tok);
            live.push(Hyp { seq, logp: score });
            rows.push((step.base + b) as i64);
        }
    }
    // Too few continuations (tiny vocabularies): pad with copies of the best live beam so
    // every image keeps k rows; the copies only ever duplicate it.
    let Some(best) = live.first().cloned() else {
        // Everything ended: the image is done.
        return (vec![beams[0].clone(); k], vec![step.base as i64; k], true);
    };
    while live.len() < k {
        live.push(best.clone());
        rows.push(rows[0]);
    }
    let done = finished.hyps.len() >= k
        && finished.worst() >= normalised(best.logp, step.gen_len, cfg.length_penalty);
    (live, rows, done)
}

fn beam_search<B: Backend>(b: Batch<'_, B>) -> Result<Vec<Vec<u32>>> {
    let (model, device, sp, cfg) = (b.model, b.device, b.sp, b.cfg);
    let (n, k, mut cache) = (b.n, cfg.beam, b.cache);
    // Step 0 runs each image once; its top-k tokens seed the k beams.
    let mut beams: Vec<Vec<Hyp>> = vec![
        vec![Hyp {
            seq: vec![sp.bos],
            logp: 0.0,
        }];
        n
    ];
    let mut finished: Vec<Finished> = (0..n).map(|_| Finished::default()).collect();
    let mut done = vec![false; n];
    for t in 0..cfg.max_tokens {
        let width = beams[0].len();
        let last: Vec<u32> = beams
            .iter()
            .flat_map(|bs| bs.iter().map(|h| *h.seq.last().expect("bos")))
            .collect();
        let (mut logp, v) = step(model, &mut cache, &last, &device)?;
        let gen_len = t + 1; // tokens generated once this step's token is appended
        let mut rows: Vec<i64> = Vec::with_capacity(n * k);
        let mut next: Vec<Vec<Hyp>> = Vec::with_capacity(n);
        for i in 0..n {
            let base = i * width;
            if done[i] {
                // Keep the row count fixed; these rows are never read again.
                rows.extend(std::iter::repeat_n(base as i64, k));
                next.push(vec![beams[i][0].clone(); k]);
                continue;
            }
            let step = Step {
                logp: &mut logp[base * v..(base + width) * v],
                v,
                base,
                gen_len,
            };
            let (live, parents, ended) = advance(&beams[i], step, &mut finished[i], sp, cfg);
            done[i] = ended;
            rows.extend(parents);
            next.push(live);
        }
        beams = next;
        if done.iter().all(|&d| d) {
            break;
        }
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n * k]), &device);
        cache = cache.select(idx);
    }
    // At the token limit the live beams count as finished.
    let gen_len = |h: &Hyp| h.seq.len() - 1;
    Ok((0..n)
        .map(|i| {
            if !done[i] {
                for h in &beams[i] {
                    finished[i].add(
                        normalised(h.logp, gen_len(h), cfg.length_penalty),
                        h.seq.clone(),
                        k,
                    );
                }
            }
            finished[i]
                .hyps
                .first()
                .map(|(_, s)| s[1..].to_vec())
                .unwrap_or_default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use vitrine_models::captioner::CaptionerConfig;

    type B = Flex;
    /// The random network with its special tokens: end-of-text is the token it predicts
    /// most often when it may not end (12 greedy steps on 6 images), so captions end at
    /// different lengths and both finishing paths of beam search are exercised. Derived,
    /// not hard-coded, so it survives changes to the model's parameters.
    fn model_and_specials() -> (Captioner<B>, Specials) {
        let m = model();
        let bos = 0;
        let probe = DecodeConfig {
            min_tokens: 12,
            ..cfg(1)
        };
        // While min_tokens masks it, the eos id never wins; pick any id other than bos.
        let ids =
            greedy(Batch::new(&m, images(6), Specials { bos, eos: 1 }, &probe).unwrap()).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for &t in ids.iter().flatten().filter(|&&t| t != bos && t != 1) {
            *counts.entry(t).or_insert(0usize) += 1;
        }
        let eos = counts
            .into_iter()
            .max_by_key(|&(t, n)| (n, std::cmp::Reverse(t)))
            .map(|(t, _)| t)
            .expect("the probe generated tokens");
        (m, Specials { bos, eos })
    }

    /// `len` values uniform in [-a, a] from a private seeded generator (the backend's
    /// global one is shared by tests running in parallel).
    fn uniform(len: usize, a: f32, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-a..=a)).collect()
    }

    /// Every parameter redrawn (std 0.5): an untrained network whose next-token
    /// distributions are sharp and depend on the image and the prefix (the 0.02 GPT init
    /// gives near-uniform ones that decode the same token everywhere).
    struct Randomise(u64);

    impl burn::module::ModuleMapper<B> for Randomise {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<B, D>>,
        ) -> burn::module::Param<Tensor<B, D>> {
            let (id, t, mapper) = param.consume();
            self.0 += 1;
            let shape = t.shape();
            let data = TensorData::new(uniform(shape.num_elements(), 0.87, self.0), shape);
            burn::module::Param::from_mapped_value(id, Tensor::from_data(data, &t.device()), mapper)
        }
    }

    fn model() -> Captioner<B> {
        use burn::module::Module;
        CaptionerConfig::preset("tiny")
            .unwrap()
            .init::<B>(&Default::default())
            .unwrap()
            .map(&mut Randomise(11))
    }

    /// The test model, its special tokens, and `n` test images.
    fn setup(n: usize) -> (Captioner<B>, Specials, Tensor<B, 4>) {
        let (m, sp) = model_and_specials();
        (m, sp, images(n))
    }

    fn images(n: usize) -> Tensor<B, 4> {
        let data = TensorData::new(uniform(n * 3 * 16 * 12, 1.7, 5), [n, 3, 16, 12]);
        Tensor::from_data(data, &Default::default())
    }

    fn cfg(beam: usize) -> DecodeConfig {
        DecodeConfig {
            beam,
            length_penalty: 1.0,
            min_tokens: 0,
            max_tokens: 12,
            no_repeat_ngram: 0,
        }
    }

    #[test]
    fn beam_one_equals_greedy() {
        let (m, sp) = model_and_specials();
        for c in [
            DecodeConfig {
                min_tokens: 1,
                ..cfg(1)
            },
            DecodeConfig {
                min_tokens: 3,
                no_repeat_ngram: 2,
                ..cfg(1)
            },
            DecodeConfig {
                min_tokens: 2,
                length_penalty: 0.0,
                ..cfg(1)
            },
        ] {
            let g = greedy(Batch::new(&m, images(6), sp, &c).unwrap()).unwrap();
            let b = beam_search(Batch::new(&m, images(6), sp, &c).unwrap()).unwrap();
            assert_eq!(g, b, "{c:?}");
            // Not a degenerate comparison: the captions differ in length and content.
            let lens: std::collections::BTreeSet<usize> = g.iter().map(Vec::len).collect();
            assert!(
                lens.len() > 1 || g.windows(2).any(|w| w[0] != w[1]),
                "{g:?}"
            );
        }
    }

    #[test]
    fn batched_equals_unbatched() {
        let (m, sp, x) = setup(4);
        for beam in [1, 3] {
            let c = DecodeConfig {
                no_repeat_ngram: 3,
                ..cfg(beam)
            };
            let together = decode(&m, x.clone(), sp, &c).unwrap();
            let alone: Vec<Vec<u32>> = (0..4)
                .map(|i| {
                    let one = x.clone().narrow(0, i, 1);
                    decode(&m, one, sp, &c).unwrap().remove(0)
                })
                .collect();
            assert_eq!(together, alone, "beam {beam}");
        }
    }

    #[test]
    fn beam_search_finds_at_least_the_greedy_likelihood() {
        // With no length normalisation, a beam of 4 should find captions at least as likely
        // as greedy's and, on some images, likelier (not a theorem: beam search can prune
        // the greedy path; a regression in the search shows up here as a loss).
        let (m, sp, x) = setup(5);
        let c0 = DecodeConfig {
            length_penalty: 0.0,
            min_tokens: 3,
            ..cfg(1)
        };
        let greedy_ids = decode(&m, x.clone(), sp, &c0).unwrap();
        let beam_ids = decode(
            &m,
            x.clone(),
            sp,
            &DecodeConfig {
                beam: 4,
                ..c0.clone()
            },
        )
        .unwrap();
        let logp = |i: usize, ids: &[u32]| -> f64 {
            let mut seq = vec![sp.bos];
            seq.extend_from_slice(ids);
            let ended = ids.len() < c0.max_tokens;
            if ended {
                seq.push(sp.eos);
            }
            let toks = Tensor::<B, 2, Int>::from_data(
                TensorData::new(
                    seq.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                    [1, seq.len()],
                ),
                &Default::default(),
            );
            let inputs = toks.clone().slice([0..1, 0..seq.len() - 1]);
            let logits = m.forward(x.clone().narrow(0, i, 1), inputs).unwrap();
            let lp: Vec<f32> = log_softmax(logits, 2).into_data().into_vec().unwrap();
            let v = m.decoder.vocab_size();
            (1..seq.len())
                .map(|p| lp[(p - 1) * v + seq[p] as usize] as f64)
                .sum()
        };
        let mut better = 0;
        for i in 0..5 {
            let (g, b) = (logp(i, &greedy_ids[i]), logp(i, &beam_ids[i]));
            assert!(b >= g - 1e-4, "image {i}: beam {b} < greedy {g}");
            better += usize::from(b > g + 1e-4);
        }
        assert!(
            better > 0,
            "beam search never beat greedy: the test model is too easy"
        );
    }

    #[test]
    fn max_and_min_tokens_are_honoured() {
        let (m, sp, x) = setup(6);
        for beam in [1, 3] {
            for max in [1, 2, 5] {
                let c = DecodeConfig {
                    max_tokens: max,
                    ..cfg(beam)
                };
                let out = decode(&m, x.clone(), sp, &c).unwrap();
                assert!(
                    out.iter().all(|s| s.len() <= max),
                    "beam {beam} max {max}: {out:?}"
                );
                assert!(out.iter().all(|s| !s.contains(&sp.eos)), "{out:?}");
                let exact = DecodeConfig {
                    min_tokens: max,
                    ..c
                };
                let out = decode(&m, x.clone(), sp, &exact).unwrap();
                assert!(
                    out.iter().all(|s| s.len() == max),
                    "beam {beam} min=max {max}: {out:?}"
                );
            }
        }
        // Without a minimum, some captions end early: the limit is not what stops them all.
        let free = decode(&m, x, sp, &cfg(3)).unwrap();
        assert!(free.iter().any(|s| s.len() < 12), "{free:?}");
    }

    #[test]
    fn no_repeat_ngram_holds_in_the_output() {
        let (m, sp) = model_and_specials();
        for beam in [1, 3] {
            let c = DecodeConfig {
                no_repeat_ngram: 2,
                min_tokens: 12,
                ..cfg(beam)
            };
            for s in decode(&m, images(6), sp, &c).unwrap() {
                let mut seq = vec![sp.bos];
                seq.extend(s);
                let mut seen = std::collections::HashSet::new();
                for w in seq.windows(2) {
                    assert!(seen.insert(w.to_vec()), "bigram {w:?} repeated in {seq:?}");
                }
            }
        }
    }

    #[test]
    fn mask_bans_early_eos_and_repeated_ngrams() {
        let sp = Specials { bos: 0, eos: 1 };
        let cfg = DecodeConfig {
            min_tokens: 2,
            no_repeat_ngram: 2,
            ..Default::default()
        };
        // bos 5 6 5: "5 6" seen, so after "5" token 6 is banned; 1 generated token < 2.
        let mut row = vec![0.0f32; 8];
        mask_row(&mut row, &[0, 5], sp, &cfg);
        assert_eq!(row[1], f32::NEG_INFINITY);
        let mut row = vec![0.0f32; 8];
        mask_row(&mut row, &[0, 5, 6, 5], sp, &cfg);
        assert_eq!(row[6], f32::NEG_INFINITY);
        assert_eq!(row[1], 0.0, "eos allowed after 3 tokens");
        assert!(row.iter().filter(|x| x.is_infinite()).count() == 1);
        // Unigram: nothing generated may repeat (bos is not generated).
        let cfg1 = DecodeConfig {
            no_repeat_ngram: 1,
            min_tokens: 0,
            ..Default::default()
        };
        let mut row = vec![0.0f32; 8];
        mask_row(&mut row, &[0, 3, 4], sp, &cfg1);
        let banned: Vec<usize> = (0..8).filter(|&i| row[i].is_infinite()).collect();
        assert_eq!(banned, vec![3, 4]);
    }

    #[test]
    fn caption_limits_at_and_past_the_edge() {
        // Whether the default limits with `change` applied validate.
        let valid = |change: fn(&mut CaptionLimits)| {
            let mut l = CaptionLimits::default();
            change(&mut l);
            l.validate().is_ok()
        };
        assert!(valid(|l| (l.batch_size, l.max_beam) = (4096, 256)));
        assert!(!valid(|l| l.batch_size = 4097));
        assert!(!valid(|l| l.batch_size = 0));
        assert!(!valid(|l| l.max_beam = 257));
        assert!(!valid(|l| l.max_length_penalty = f64::INFINITY));
    }

    #[test]
    fn validate_limits() {
        let l = CaptionLimits::default();
        let ok = DecodeConfig::default();
        assert!(ok.validate(&l, 32).is_ok());
        let at = DecodeConfig {
            beam: 16,
            max_tokens: 31,
            ..ok.clone()
        };
        assert!(at.validate(&l, 32).is_ok());
        for bad in [
            DecodeConfig {
                beam: 17,
                ..ok.clone()
            },
            DecodeConfig {
                beam: 0,
                ..ok.clone()
            },
            DecodeConfig {
                max_tokens: 32,
                ..ok.clone()
            },
            DecodeConfig {
                max_tokens: 0,
                ..ok.clone()
            },
            DecodeConfig {
                min_tokens: 25,
                ..ok.clone()
            },
            DecodeConfig {
                length_penalty: f64::NAN,
                ..ok.clone()
            },
            DecodeConfig {
                length_penalty: 10.5,
                ..ok.clone()
            },
            DecodeConfig {
                no_repeat_ngram: 26,
                ..ok.clone()
            },
        ] {
            let err = bad.validate(&l, 32).unwrap_err().to_string();
            assert!(err.contains("allowed"), "{err}");
        }
    }
}
