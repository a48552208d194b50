//! A trained click-through scorer, loaded for inference: scoring and ranking lines, and the
//! encoded A/B-test pairs its training and evaluation share.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use vitrine_data::ctr::{
    pairwise_metrics, read_ab_tests, scorer_input, AbTest, PairRule, Pairs, PairwiseMetrics,
};
use vitrine_data::split::{mix, split_indices};
use vitrine_data::text::Tokenizer;
use vitrine_models::scorer::{Scorer, TrunkKind};

use super::config::ScoreRunConfig;
use crate::copy::Candidate;
use crate::error::{InferError, Result};
use crate::run::{RunDir, TaskKind};
use crate::sentence::{encode_sentence, TextLimits};

/// How a scorer's rows are made from headlines.
#[derive(Debug, Clone, PartialEq)]
pub enum RowCodec {
    /// `<|endoftext|> headline <|endoftext|>` for the GPT trunk, at most `n_ctx` tokens.
    Gpt { n_ctx: usize },
    /// The tokenizer's own framing (`[CLS] … [SEP]`) for a BERT trunk, within `limits`.
    Bert(TextLimits),
}

impl RowCodec {
    pub fn of(config: &ScoreRunConfig) -> Self {
        match config.model.trunk {
            TrunkKind::Gpt => Self::Gpt {
                n_ctx: config.model.gpt.n_ctx,
            },
            TrunkKind::Bert => Self::Bert(config.text.capped(config.model.n_ctx())),
        }
    }

    /// Ids of `text` for training and evaluation: too-long GPT rows are cut (keeping the
    /// final end-of-text); BERT rows are cut or refused as `text.overflow` says.
    /// Returns (ids, whether it was cut).
    pub fn encode(&self, tok: &Tokenizer, text: &str) -> Result<(Vec<u32>, bool)> {
        match self {
            Self::Gpt { n_ctx } => encode_for_training(tok, text, *n_ctx),
            Self::Bert(limits) => encode_sentence(tok, text, limits),
        }
    }

    /// Ids of a line to score: a GPT row past the context is refused; a BERT row is cut
    /// or refused as `text.overflow` says.
    fn encode_line(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Gpt { n_ctx } => {
                let ids = tok.encode(&scorer_input(text))?;
                if ids.len() > *n_ctx {
                    return Err(InferError::Invalid(format!(
                        "{} tokens, more than the model's context of {n_ctx}",
                        ids.len()
                    )));
                }
                Ok(ids)
            }
            Self::Bert(limits) => Ok(encode_sentence(tok, text, limits)?.0),
        }
    }
}

/// Token ids of a headline as the GPT scorer reads it, cut to `n_ctx` (the final
/// end-of-text kept, so `last` pooling still reads it). Returns (ids, whether it was cut).
pub fn encode_for_training(tok: &Tokenizer, text: &str, n_ctx: usize) -> Result<(Vec<u32>, bool)> {
    let mut ids = tok.encode(&scorer_input(text))?;
    if ids.len() <= n_ctx {
        return Ok((ids, false));
    }
    let last = *ids.last().expect("non-empty");
    ids.truncate(n_ctx - 1);
    ids.push(last);
    Ok((ids, true))
}

/// Right-pads rows into [rows, t] ids and their lengths.
pub fn pad<B: Backend>(rows: &[&[u32]], device: &B::Device) -> (Tensor<B, 2, Int>, Vec<usize>) {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut flat = vec![0i64; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        for (j, &id) in r.iter().enumerate() {
            flat[i * t + j] = id as i64;
        }
    }
    let lengths = rows.iter().map(|r| r.len()).collect();
    (
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device),
        lengths,
    )
}

/// Scores pre-encoded rows in batches of `batch_size`.
fn score_encoded<B: Backend>(
    model: &Scorer<B>,
    rows: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let (tokens, lengths) = pad::<B>(&refs, device);
        let s = model.forward(tokens, &lengths)?;
        let v: Vec<f32> = s.into_data().convert::<f32>().to_vec().map_err(|e| {
            InferError::Invalid(format!("reading scores back from the device: {e:?}"))
        })?;
        out.extend(v.into_iter().map(f64::from));
    }
    Ok(out)
}

/// A split's pairs with every variant encoded (variants sharing a headline share a row).
pub struct EncodedPairs {
    pub pairs: Pairs,
    /// Distinct headlines, encoded.
    pub rows: Vec<Vec<u32>>,
    /// Row of each variant.
    pub row_of: Vec<usize>,
    pub truncated: usize,
}

impl EncodedPairs {
    pub fn new(tests: &[AbTest], tok: &Tokenizer, codec: &RowCodec) -> Result<Self> {
        let pairs = Pairs::build(tests);
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut rows = Vec::new();
        let mut row_of = Vec::with_capacity(pairs.variants.len());
        let mut truncated = 0;
        for v in &pairs.variants {
            let next = rows.len();
            let r = *index.entry(v.text.as_str()).or_insert(next);
            if r == next {
                let (ids, cut) = codec
                    .encode(tok, &v.text)
                    .map_err(|e| InferError::Invalid(format!("headline {:?}: {e}", v.text)))?;
                truncated += cut as usize;
                rows.push(ids);
            }
            row_of.push(r);
        }
        Ok(Self {
            pairs,
            rows,
            row_of,
            truncated,
        })
    }

    /// One score per variant.
    pub fn scores<B: Backend>(
        &self,
        model: &Scorer<B>,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        let per_row = score_encoded(model, &self.rows, batch_size, device)?;
        Ok(self.row_of.iter().map(|&r| per_row[r]).collect())
    }

    pub fn metrics<B: Backend>(
        &self,
        model: &Scorer<B>,
        rule: &PairRule,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<PairwiseMetrics> {
        let scores = self.scores(model, batch_size, device)?;
        Ok(pairwise_metrics(&self.pairs, &scores, rule.significance_z))
    }
}

/// Splits training tests into (fit, dev) (`train.dev_fraction`) by a seeded shuffle of the tests.
pub fn dev_split(tests: Vec<AbTest>, fraction: f64, seed: u64) -> (Vec<AbTest>, Vec<AbTest>) {
    let (fit_idx, dev_idx) = split_indices(tests.len(), fraction as f32, mix(seed, 0xde5));
    let mut slots: Vec<Option<AbTest>> = tests.into_iter().map(Some).collect();
    let mut take = |idx: Vec<usize>| -> Vec<AbTest> {
        idx.into_iter().filter_map(|i| slots[i].take()).collect()
    };
    let fit = take(fit_idx);
    (fit, take(dev_idx))
}

/// A trained scorer ready for inference.
pub struct ScoreRun<B: Backend> {
    pub config: ScoreRunConfig,
    pub model: Scorer<B>,
    pub tokenizer: Tokenizer,
    pub dir: RunDir,
}

/// One scored line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredLine {
    /// 1-based position in the input.
    pub line: usize,
    pub text: String,
    pub score: f64,
}

impl<B: Backend> ScoreRun<B> {
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let task = (TaskKind::Score, "a scorer run");
        let (dir, config, tokenizer) = RunDir::open::<ScoreRunConfig>(path, Some(task))?;
        Ok(Self {
            model: dir.load_weights(config.model.init::<B>(device)?, device)?,
            config,
            tokenizer,
            dir,
        })
    }

    /// Encodes a batch of lines, checking each against the limits; every bad line is
    /// reported (1-based numbers), not just the first.
    fn encode_checked(&self, lines: &[String]) -> Result<Vec<Vec<u32>>> {
        let l = &self.config.limits;
        if lines.is_empty() {
            return Err(InferError::Invalid("no lines to score".into()));
        }
        if lines.len() > l.max_lines {
            return Err(InferError::Invalid(format!(
                "{} lines, more than limits.max_lines = {}",
                lines.len(),
                l.max_lines
            )));
        }
        let codec = RowCodec::of(&self.config);
        let mut errors = Vec::new();
        let mut rows = Vec::with_capacity(lines.len());
        for (i, text) in lines.iter().enumerate() {
            let chars = text.chars().count();
            if text.trim().is_empty() {
                errors.push(format!("line {}: empty", i + 1));
            } else if chars > l.max_chars {
                errors.push(format!(
                    "line {}: {chars} characters, more than limits.max_chars = {}",
                    i + 1,
                    l.max_chars
                ));
            } else if text.chars().any(char::is_control) {
                errors.push(format!("line {}: contains a control character", i + 1));
            } else {
                match codec.encode_line(&self.tokenizer, text) {
                    Ok(ids) => rows.push(ids),
                    Err(e) => errors.push(format!("line {}: {e}", i + 1)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(InferError::Invalid(errors.join("; ")));
        }
        Ok(rows)
    }

    /// Scores of `lines`, in input order.
    pub fn score(&self, lines: &[String], device: &B::Device) -> Result<Vec<f64>> {
        let rows = self.encode_checked(lines)?;
        score_encoded(&self.model, &rows, self.config.limits.batch_size, device)
    }

    /// `lines` with their scores, best first (equal scores keep input order).
    pub fn rank(&self, lines: &[String], device: &B::Device) -> Result<Vec<ScoredLine>> {
        let scores = self.score(lines, device)?;
        let mut out: Vec<ScoredLine> = lines
            .iter()
            .zip(scores)
            .enumerate()
            .map(|(i, (text, score))| ScoredLine {
                line: i + 1,
                text: text.clone(),
                score,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.line.cmp(&b.line)));
        Ok(out)
    }

    /// Sorts generated candidates best first by score (stable: equal scores keep the
    /// generator's order) and records each score.
    pub fn rank_candidates(
        &self,
        candidates: &mut Vec<Candidate>,
        device: &B::Device,
    ) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = candidates.iter().map(|c| c.text.clone()).collect();
        let ranked = self.rank(&texts, device)?;
        let mut unranked: Vec<Option<Candidate>> =
            std::mem::take(candidates).into_iter().map(Some).collect();
        *candidates = ranked
            .into_iter()
            .map(|r| {
                let mut c = unranked[r.line - 1]
                    .take()
                    .expect("rank lists each line once");
                c.score = Some(r.score);
                c
            })
            .collect();
        Ok(())
    }

    /// Validation-split pairs, encoded for this model.
    pub fn validation_pairs(&self) -> Result<EncodedPairs> {
        let tests = read_ab_tests(&self.config.data.valid)?;
        EncodedPairs::new(&tests, &self.tokenizer, &RowCodec::of(&self.config))
    }
}

/// Reads lines to score: blank lines are skipped (returned count), the rest kept verbatim
/// (trailing `\r` removed).
pub fn read_lines(text: &str) -> (Vec<String>, usize) {
    let mut blank = 0;
    let lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            let empty = l.trim().is_empty();
            blank += empty as usize;
            !empty
        })
        .map(String::from)
        .collect();
    (lines, blank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_data::copy::SPECIAL_TOKENS;

    #[test]
    fn read_lines_skips_blank_lines_and_counts_them() {
        let (lines, blank) = read_lines("First line\r\n\n   \nSecond, with comma\n");
        assert_eq!(lines, vec!["First line", "Second, with comma"]);
        assert_eq!(blank, 2);
        assert_eq!(read_lines(""), (Vec::<String>::new(), 0));
    }

    #[test]
    fn training_encoding_keeps_the_final_end_of_text_when_cut() {
        let tok = Tokenizer::train_bpe(["hello world"].into_iter(), 300, &SPECIAL_TOKENS).unwrap();
        let (full, cut) = encode_for_training(&tok, "hello world hello world", 64).unwrap();
        assert!(!cut);
        let (short, cut) = encode_for_training(&tok, "hello world hello world", 4).unwrap();
        assert!(cut);
        assert_eq!(short.len(), 4);
        assert_eq!(short[..3], full[..3]);
        assert_eq!(short.last(), full.last());
    }
}
