//! A language-model run's text as token batches: the corpora of its config, encoded;
//! padded host batches; the masked cross-entropy and the validation loss.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use vitrine_data::copy::{
    normalize, read_copy_corpus, Brief, CopyLine, KeywordCase, KeywordExtractor, SPECIAL_TOKENS,
};
use vitrine_data::split::mix;
use vitrine_data::text::Tokenizer;
use vitrine_models::gpt::Gpt;

use super::config::{LmData, LmRunConfig};
use crate::error::{io_err, InferError, Result};
use crate::tokenizer::build_tokenizer;

/// Text split into token sequences ready for batching.
#[derive(Debug, Clone)]
pub enum LmCorpus {
    /// One long stream; batches are random windows of `block + 1` tokens.
    Stream(Vec<u32>),
    /// One sequence per example (already cut to `n_ctx + 1` tokens).
    Examples(Vec<Vec<u32>>),
}

/// One batch on the host: inputs and targets [rows, t], loss weights (0 on padding).
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub rows: usize,
    pub t: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub mask: Vec<f32>,
}

impl HostBatch {
    pub fn from_rows(rows: Vec<&[u32]>) -> Self {
        let t = rows
            .iter()
            .map(|r| r.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let n = rows.len();
        let mut b = HostBatch {
            rows: n,
            t,
            inputs: vec![0; n * t],
            targets: vec![0; n * t],
            mask: vec![0.0; n * t],
        };
        for (i, r) in rows.iter().enumerate() {
            for j in 0..r.len().saturating_sub(1) {
                b.inputs[i * t + j] = r[j] as i64;
                b.targets[i * t + j] = r[j + 1] as i64;
                b.mask[i * t + j] = 1.0;
            }
        }
        b
    }

    /// Rows `r` of the batch, padded as in the whole batch (a data-parallel worker's share).
    pub fn select_rows(self, r: std::ops::Range<usize>) -> Self {
        if r == (0..self.rows) {
            return self;
        }
        let cells = r.start * self.t..r.end * self.t;
        HostBatch {
            rows: r.len(),
            t: self.t,
            inputs: self.inputs[cells.clone()].to_vec(),
            targets: self.targets[cells.clone()].to_vec(),
            mask: self.mask[cells].to_vec(),
        }
    }

    pub fn tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }
}

impl LmCorpus {
    /// Batches per epoch: text windows use the configured count; examples one pass.
    pub fn batches_per_epoch(&self, batch_size: usize, steps_per_epoch: usize) -> usize {
        match self {
            Self::Stream(_) => steps_per_epoch,
            Self::Examples(e) => e.len() / batch_size,
        }
    }

    /// Batch `batch` of `epoch`, a pure function of (seed, epoch, batch) so resume replays it.
    pub fn batch(
        &self,
        seed: u64,
        epoch: usize,
        batch: usize,
        batch_size: usize,
        block: usize,
    ) -> HostBatch {
        match self {
            Self::Stream(tokens) => {
                let mut rng = StdRng::seed_from_u64(mix(mix(seed, epoch as u64), batch as u64));
                let span = tokens.len() - block; // checked ≥ 1 when the corpus is built
                let rows = (0..batch_size)
                    .map(|_| {
                        let o = rng.random_range(0..span);
                        &tokens[o..o + block + 1]
                    })
                    .collect();
                HostBatch::from_rows(rows)
            }
            Self::Examples(seqs) => {
                let mut order: Vec<usize> = (0..seqs.len()).collect();
                order.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64)));
                let rows = order[batch * batch_size..(batch + 1) * batch_size]
                    .iter()
                    .map(|&i| seqs[i].as_slice())
                    .collect();
                HostBatch::from_rows(rows)
            }
        }
    }

    /// Deterministic validation batches: `n` seeded windows for a stream, every example
    /// (in order) otherwise.
    pub fn eval_batches(&self, batch_size: usize, block: usize, n: usize) -> Vec<HostBatch> {
        match self {
            Self::Stream(_) => (0..n)
                .map(|i| self.batch(0x5eed_7a1d, 0, i, batch_size, block))
                .collect(),
            Self::Examples(seqs) => seqs
                .chunks(batch_size)
                .map(|c| HostBatch::from_rows(c.iter().map(Vec::as_slice).collect()))
                .collect(),
        }
    }
}

/// Mean cross-entropy over the unmasked positions: logits [B, T, V] -> [1].
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    batch: &HostBatch,
    device: &B::Device,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let logp = vitrine_models::fused::log_softmax_last(logits.reshape([b * t, v]));
    let targets =
        Tensor::<B, 2, Int>::from_data(TensorData::new(batch.targets.clone(), [b * t, 1]), device);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(batch.mask.clone(), [b * t]), device);
    let picked = logp.gather(1, targets).reshape([b * t]);
    (picked * mask)
        .sum()
        .neg()
        .div_scalar(batch.tokens().max(1) as f64)
}

/// The batch's input ids: [rows, t].
pub fn inputs<B: Backend>(batch: &HostBatch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(batch.inputs.clone(), [batch.rows, batch.t]),
        device,
    )
}

/// Token-weighted mean loss of `model` over `batches`: (loss, tokens).
pub fn eval_loss<B: Backend>(
    model: &Gpt<B>,
    batches: &[HostBatch],
    device: &B::Device,
) -> Result<(f64, usize)> {
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    for b in batches {
        if b.t == 0 {
            continue;
        }
        let logits = model.forward(inputs::<B>(b, device))?;
        let loss: f32 = masked_cross_entropy(logits, b, device).into_scalar().elem();
        sum += loss as f64 * b.tokens() as f64;
        tokens += b.tokens();
    }
    Ok((sum / tokens.max(1) as f64, tokens))
}

/// The run's corpora, encoded.
pub struct LmPrepared {
    pub tokenizer: Tokenizer,
    pub train: LmCorpus,
    pub valid: LmCorpus,
    /// Normalised training lines (copy runs), for `--no-copy` and the copy rate.
    pub train_lines: Vec<String>,
    /// Examples longer than the context, cut to fit.
    pub truncated: usize,
    /// How the corpus cases its words.
    pub keyword_case: KeywordCase,
    /// The brief of every validation line (copy runs), as in training.
    pub valid_briefs: Vec<Brief>,
    /// The validation lines as written (copy runs).
    pub valid_texts: Vec<String>,
    pub train_tokens: usize,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Reads the data, trains or loads the tokenizer (`existing`: a resumed run's), encodes.
pub fn prepare(config: &LmRunConfig, existing: Option<Tokenizer>) -> Result<LmPrepared> {
    match &config.data {
        LmData::Text {
            path,
            valid_fraction,
        } => {
            let text = read_text(path)?;
            let chars: Vec<char> = text.chars().collect();
            let cut = ((chars.len() as f64) * (1.0 - valid_fraction)) as usize;
            let train_text: String = chars[..cut].iter().collect();
            let valid_text: String = chars[cut..].iter().collect();
            let tokenizer = match existing {
                Some(t) => t,
                None => build_tokenizer(&config.tokenizer, std::iter::once(text.as_str()), &[])?,
            };
            let train = tokenizer.encode(&train_text)?;
            let valid = tokenizer.encode(&valid_text)?;
            let need = config.train.task.block_size + 2;
            for (name, toks) in [("training", &train), ("validation", &valid)] {
                if toks.len() < need {
                    return Err(InferError::Invalid(format!(
                        "{}: the {name} split has {} tokens; train.block_size = {} needs at least {need}",
                        path.display(),
                        toks.len(),
                        config.train.task.block_size
                    )));
                }
            }
            Ok(LmPrepared {
                tokenizer,
                train_tokens: train.len(),
                train: LmCorpus::Stream(train),
                valid: LmCorpus::Stream(valid),
                train_lines: Vec::new(),
                truncated: 0,
                keyword_case: KeywordCase::AsTyped,
                valid_briefs: Vec::new(),
                valid_texts: Vec::new(),
            })
        }
        LmData::Copy { train, valid } => {
            let train_lines = read_copy_corpus(train)?;
            let valid_lines = read_copy_corpus(valid)?;
            let kx = KeywordExtractor::fit(train_lines.iter().map(|l| l.text.as_str()));
            let tokenizer = match existing {
                Some(t) => t,
                None => build_tokenizer(
                    &config.tokenizer,
                    train_lines.iter().map(|l| l.text.as_str()),
                    &SPECIAL_TOKENS,
                )?,
            };
            let max_len = config.model.n_ctx + 1;
            let mut truncated = 0;
            let mut encode = |lines: &[CopyLine], briefs: &[Brief]| -> Result<Vec<Vec<u32>>> {
                lines
                    .iter()
                    .zip(briefs)
                    .map(|(l, b)| {
                        let mut ids = tokenizer.encode(&b.example(&l.text))?;
                        if ids.len() > max_len {
                            ids.truncate(max_len);
                            truncated += 1;
                        }
                        Ok(ids)
                    })
                    .collect()
            };
            let briefs = |lines: &[CopyLine]| -> Vec<Brief> {
                lines.iter().map(|l| kx.training_brief(l)).collect()
            };
            let valid_briefs = briefs(&valid_lines);
            let train_seqs = encode(&train_lines, &briefs(&train_lines))?;
            let valid_seqs = encode(&valid_lines, &valid_briefs)?;
            Ok(LmPrepared {
                keyword_case: KeywordCase::detect(train_lines.iter().map(|l| l.text.as_str())),
                train_tokens: train_seqs.iter().map(Vec::len).sum(),
                tokenizer,
                train: LmCorpus::Examples(train_seqs),
                valid: LmCorpus::Examples(valid_seqs),
                train_lines: train_lines.iter().map(|l| normalize(&l.text)).collect(),
                truncated,
                valid_briefs,
                valid_texts: valid_lines.into_iter().map(|l| l.text).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_models::gpt::GptConfig;

    #[test]
    fn host_batch_pads_and_masks() {
        let a = [5u32, 6, 7, 8];
        let b = [9u32, 10];
        let hb = HostBatch::from_rows(vec![&a[..], &b[..]]);
        assert_eq!((hb.rows, hb.t), (2, 3));
        assert_eq!(hb.inputs, vec![5, 6, 7, 9, 0, 0]);
        assert_eq!(hb.targets, vec![6, 7, 8, 10, 0, 0]);
        assert_eq!(hb.mask, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(hb.tokens(), 4);
    }

    #[test]
    fn stream_batches_are_seeded_windows() {
        let c = LmCorpus::Stream((0..100).collect());
        let x = c.batch(1, 0, 3, 4, 8);
        assert_eq!(x, c.batch(1, 0, 3, 4, 8));
        assert_ne!(x, c.batch(1, 0, 4, 4, 8));
        assert_eq!((x.rows, x.t), (4, 8));
        for r in 0..4 {
            let row = &x.inputs[r * 8..r * 8 + 8];
            assert!(row.windows(2).all(|w| w[1] == w[0] + 1), "{row:?}");
            assert_eq!(x.targets[r * 8], row[0] + 1);
        }
    }

    #[test]
    fn example_batches_cover_each_example_once_per_epoch() {
        let seqs: Vec<Vec<u32>> = (0..10).map(|i| vec![i, i + 100, i + 200]).collect();
        let c = LmCorpus::Examples(seqs);
        assert_eq!(c.batches_per_epoch(3, 999), 3);
        let mut firsts: Vec<i64> = (0..3)
            .flat_map(|b| {
                let hb = c.batch(2, 1, b, 3, 0);
                (0..3).map(move |r| hb.inputs[r * hb.t]).collect::<Vec<_>>()
            })
            .collect();
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), 9);
    }

    /// The masked loss equals the loss over the unpadded rows alone.
    #[test]
    fn padding_does_not_change_the_loss() {
        use burn::backend::Flex;
        type B = Flex;
        let device = Default::default();
        let model = GptConfig::preset("tiny")
            .unwrap()
            .init::<B>(&device)
            .unwrap();
        let long = [1u32, 2, 3, 4, 5];
        let short = [6u32, 7, 8];
        let both = HostBatch::from_rows(vec![&long[..], &short[..]]);
        let (l_both, n_both) = eval_loss(&model, &[both], &device).unwrap();
        let sep = [
            HostBatch::from_rows(vec![&long[..]]),
            HostBatch::from_rows(vec![&short[..]]),
        ];
        let (l_sep, n_sep) = eval_loss(&model, &sep, &device).unwrap();
        assert_eq!(n_both, 6);
        assert_eq!(n_sep, 6);
        assert!((l_both - l_sep).abs() < 1e-5, "{l_both} vs {l_sep}");
        // Near log(V) for an untrained model.
        assert!((l_both - (32f64).ln()).abs() < 0.5, "{l_both}");
    }
}
