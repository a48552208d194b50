//! Causal language-model training for the GPT decoder: plain text (the Shakespeare
//! benchmark, random windows as in nanoGPT) and copy corpora (one brief-conditioned example
//! per line, right-padded, padding masked out of the loss). Both go through the shared
//! loop.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde::Serialize;
use vitrine_data::copy::KeywordCase;
use vitrine_infer::copy::{
    eval_loss, inputs, masked_cross_entropy, prepare, HostBatch, Lexicon, LmCorpus, LmRunConfig,
};
use vitrine_infer::run::files;
use vitrine_models::gpt::Gpt;

use crate::dist::Shard;
use crate::error::Result;
use crate::start::{Job, RunStart, Summary, Trained};
use crate::trainer::{BatchAt, FitSummary, Task};

/// A data-parallel worker's rows of a batch.
pub trait ShardRows {
    /// This shard's rows (all of them for [`Shard::WHOLE`]), padded as in the whole batch.
    fn shard(self, shard: Shard) -> Self;
}

impl ShardRows for HostBatch {
    fn shard(self, shard: Shard) -> Self {
        let rows = shard.range(self.rows);
        self.select_rows(rows)
    }
}

struct LmTask<'a, B: AutodiffBackend> {
    train: &'a LmCorpus,
    valid: Vec<HostBatch>,
    config: &'a LmRunConfig,
    device: B::Device,
}

impl<B: AutodiffBackend> Task<B, Gpt<B>> for LmTask<'_, B> {
    fn batches_per_epoch(&self) -> usize {
        self.train.batches_per_epoch(
            self.config.train.fit.batch_size,
            self.config.train.task.steps_per_epoch,
        )
    }

    fn loss(&mut self, model: &Gpt<B>, at: BatchAt) -> Result<(Tensor<B, 1>, usize)> {
        let (t, seed) = (&self.config.train, self.config.seed);
        let (rows, block) = (t.fit.batch_size, t.task.block_size);
        let b = self
            .train
            .batch(seed, at.epoch, at.batch, rows, block)
            .shard(at.shard);
        let logits = model.forward(inputs::<B>(&b, &self.device))?;
        Ok((masked_cross_entropy(logits, &b, &self.device), b.tokens()))
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    fn epoch_end(&mut self, model: &Gpt<B>, _epoch: usize) -> Result<serde_json::Value> {
        let (loss, tokens) = eval_loss(&model.valid(), &self.valid, &self.device)?;
        Ok(serde_json::json!({ "val_loss": loss, "val_tokens": tokens }))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub val_loss: f64,
    pub val_perplexity: f64,
    pub tokens_per_sec: f64,
    pub train_tokens: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    pub truncated_examples: usize,
}

impl Summary for Report {
    fn summary(&self, fit: &FitSummary) -> String {
        format!(
            "val loss {:.4} (perplexity {:.2}), {:.0} tokens/s, {:.1} s ({} parameters, vocab {})",
            self.val_loss,
            self.val_perplexity,
            self.tokens_per_sec,
            fit.wall_secs,
            self.parameters,
            self.vocab_size
        )
    }
}

/// Trains (or resumes, with `opts.resume`) a run of this task (`tasks::Lm`).
pub fn train<B: AutodiffBackend>(job: Job<'_, LmRunConfig, B>) -> Result<Trained<Report>> {
    let device = job.device;
    let mut init_dir = None;
    let mut start = RunStart::open(job, |c: &mut LmRunConfig| {
        init_dir = c.apply_init()?;
        Ok(())
    })?;
    let prepared = prepare(&start.config, start.saved_tokenizer()?)?;
    start.adopt_vocab(&prepared.tokenizer)?;
    let g = &mut start.config.generate;
    if !start.resume && g.keyword_case == KeywordCase::Auto {
        g.keyword_case = prepared.keyword_case;
    }
    start.create(Some(&prepared.tokenizer))?;
    let config = &start.config;
    if config.is_copy() {
        let mut text = prepared.train_lines.join("\n");
        text.push('\n');
        start.keep_text(files::TRAIN_LINES, &text)?;
        let lexicon = Lexicon::from_texts(prepared.train_lines.iter().map(String::as_str));
        start.keep_text(files::LEXICON, &lexicon.to_text())?;
    }
    // A resumed run's weights come from its checkpoint (fit loads it), not from `init`.
    let model = start.init_model(|| match &init_dir {
        // Pretrained weights; tokens the run added (brief markers) get new rows.
        Some(dir) => Ok(vitrine_models::gpt::load_hf_gpt2::<B>(dir, device)?
            .1
            .resize_vocab(config.model.vocab_size)?),
        None => Ok(config.model.init::<B>(device)?),
    })?;
    let parameters = burn::module::Module::num_params(&model);
    let t = &config.train;
    let valid =
        prepared
            .valid
            .eval_batches(t.fit.batch_size, t.task.block_size, t.task.eval_batches);
    let mut task = LmTask::<B> {
        train: &prepared.train,
        valid,
        config,
        device: device.clone(),
    };
    let (model, fit) = start.fit(model, &mut task)?;
    // Rank 0 reports; the other workers' reports are not shown.
    let (val_loss, _) = if start.chief() {
        eval_loss(&model.valid(), &task.valid, device)?
    } else {
        (f64::NAN, 0)
    };
    start.save_model(model, &fit)?;
    let report = Report {
        tokens_per_sec: fit.examples_per_sec,
        val_loss,
        val_perplexity: val_loss.exp(),
        train_tokens: prepared.train_tokens,
        vocab_size: prepared.tokenizer.vocab_size(),
        parameters,
        truncated_examples: prepared.truncated,
    };
    start.report(fit, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_batch_shards_are_its_rows_in_order() {
        let rows: Vec<Vec<u32>> = (0..4).map(|i| vec![i, i + 10, i + 20]).collect();
        let hb = HostBatch::from_rows(rows.iter().map(|r| r.as_slice()).collect());
        let a = hb.clone().shard(Shard { index: 0, count: 2 });
        let b = hb.clone().shard(Shard { index: 1, count: 2 });
        assert_eq!((a.rows, a.t, b.rows), (2, 2, 2));
        assert_eq!(a.tokens() + b.tokens(), hb.tokens());
        assert_eq!([a.inputs, b.inputs].concat(), hb.inputs);
        assert_eq!([a.targets, b.targets].concat(), hb.targets);
        assert_eq!(hb.clone().shard(Shard::WHOLE), hb);
    }
}
