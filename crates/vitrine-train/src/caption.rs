//! Image-to-text training (`task = "caption"`): the encoder-decoder captioner with teacher
//! forcing.
//!
//! The catalogue's title column is the target text. Items are split by id into training
//! and test sets (`split.test_fraction`, seeded; the ids are saved as `split.json`). Each
//! caption is `<|endoftext|> title <|endoftext|>`: the first token starts decoding, the
//! last one ends it. `init.encoder = "runs/<search run>"` starts the image encoder from a
//! visual-search run (its architecture and preprocessing come along) and
//! `init.freeze_encoder` keeps it fixed.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use vitrine_data::catalog::{decode_pixels, Catalog, LoadReport};
use vitrine_data::split::mix;
use vitrine_data::text::{Tokenizer, EOS};
use vitrine_data::transform::Preprocess;
use vitrine_infer::caption::{
    open_caption_data, title_of, CaptionData, CaptionRunConfig, CaptionSplitRecord,
};
use vitrine_infer::config::RunConfig;
use vitrine_infer::copy::{inputs, masked_cross_entropy, HostBatch};
use vitrine_infer::progress::progress_bar;
use vitrine_infer::run::{files, RunDir};
use vitrine_infer::search::batch_tensor;
use vitrine_infer::tokenizer::build_tokenizer;
use vitrine_models::captioner::Captioner;

use crate::error::{Result, TrainError};
use crate::images::Images;
use crate::start::{Job, RunStart, Summary, Trained};
use crate::trainer::{BatchAt, FitOptions, FitSummary, Task};

/// A caption as a training sequence: `eos` + title + `eos`, cut to `max_len` tokens.
fn encode_caption(
    tok: &Tokenizer,
    eos: u32,
    title: &str,
    max_len: usize,
) -> Result<(Vec<u32>, bool)> {
    let mut ids = vec![eos];
    ids.extend(tok.encode(title)?);
    ids.push(eos);
    let cut = ids.len() > max_len;
    ids.truncate(max_len);
    Ok((ids, cut))
}

struct CaptionTask<'a, B: Backend> {
    config: &'a CaptionRunConfig,
    device: B::Device,
    /// Training images, in `seqs` order.
    images: Images,
    seqs: Vec<Vec<u32>>,
    test_pixels: Vec<u8>,
    test_seqs: Vec<Vec<u32>>,
    epoch_order: Option<(usize, Vec<usize>)>,
}

impl<B: Backend> CaptionTask<'_, B> {
    /// Makes `epoch_order` the seeded shuffle of `epoch`, once per epoch (a pure function
    /// of it, so a resumed run sees the same order).
    fn shuffle_for(&mut self, epoch: usize) {
        if self.epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.seqs.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(mix(
                self.config.seed,
                0xCA9 + epoch as u64,
            )));
            self.epoch_order = Some((epoch, order));
        }
    }
}

/// Token-weighted teacher-forced loss over cached images and their sequences.
pub fn caption_loss<B: Backend>(
    model: &Captioner<B>,
    pixels: &[u8],
    seqs: &[Vec<u32>],
    p: &Preprocess,
    batch_size: usize,
    device: &B::Device,
) -> Result<(f64, usize)> {
    let item = p.pixel_len();
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    for (chunk, px) in seqs
        .chunks(batch_size)
        .zip(pixels.chunks(item * batch_size))
    {
        let hb = HostBatch::from_rows(chunk.iter().map(Vec::as_slice).collect());
        let images = batch_tensor::<B>(px, p, device);
        let logits = model.forward(images, inputs::<B>(&hb, device))?;
        let loss: f32 = masked_cross_entropy(logits, &hb, device)
            .into_scalar()
            .elem();
        sum += loss as f64 * hb.tokens() as f64;
        tokens += hb.tokens();
    }
    Ok((sum / tokens.max(1) as f64, tokens))
}

impl<B: AutodiffBackend> Task<B, Captioner<B>> for CaptionTask<'_, B> {
    fn batches_per_epoch(&self) -> usize {
        self.seqs.len() / self.config.train.fit.batch_size
    }

    fn loss(&mut self, model: &Captioner<B>, at: BatchAt) -> Result<(Tensor<B, 1>, usize)> {
        let bs = self.config.train.fit.batch_size;
        self.shuffle_for(at.epoch);
        let order = &self.epoch_order.as_ref().expect("shuffled above").1;
        let idx = at.shard.of(&order[at.batch * bs..(at.batch + 1) * bs]);
        let seed = mix(self.config.seed, 0xA06 + at.epoch as u64);
        let images = self.images.batch::<B>(idx, seed, &self.device);
        let hb = HostBatch::from_rows(idx.iter().map(|&i| self.seqs[i].as_slice()).collect());
        let memory = if self.config.init.freeze_encoder {
            // A frozen encoder runs on the inner backend: no autodiff graph is recorded for
            // it at all (a detached graph of tracked parameters would never be freed).
            let (tokens, embedding) = model
                .encoder
                .valid()
                .forward_tokens_and_embedding(images.inner());
            model.memory_from_features(
                Tensor::from_inner(tokens),
                Some(Tensor::from_inner(embedding)),
            )
        } else {
            model.memory(images)
        };
        let logits = model
            .decoder
            .forward_with_memory(inputs::<B>(&hb, &self.device), memory)?;
        Ok((masked_cross_entropy(logits, &hb, &self.device), hb.tokens()))
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    fn epoch_end(&mut self, model: &Captioner<B>, _epoch: usize) -> Result<serde_json::Value> {
        let (loss, tokens) = caption_loss(
            &model.valid(),
            &self.test_pixels,
            &self.test_seqs,
            &self.config.preprocess,
            self.config.limits.batch_size,
            &self.device,
        )?;
        Ok(serde_json::json!({ "test_loss": loss, "test_tokens": tokens }))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub data: LoadReport,
    pub train_images: usize,
    pub test_images: usize,
    pub test_loss: f64,
    pub vocab_size: usize,
    pub parameters: usize,
    pub truncated_captions: usize,
    pub encoder_init: Option<PathBuf>,
}

impl Summary for Report {
    fn summary(&self, fit: &FitSummary) -> String {
        format!(
            "test loss {:.4}, {:.0} tokens/s, {:.1} s ({} train / {} test images, {} skipped, {} parameters, vocab {})",
            self.test_loss,
            fit.examples_per_sec,
            fit.wall_secs,
            self.train_images,
            self.test_images,
            self.data.skipped,
            self.parameters,
            self.vocab_size
        )
    }
}

/// Trains (or resumes, with `opts.resume`) a run of this task (`tasks::Caption`).
pub fn train<B: AutodiffBackend>(job: Job<'_, CaptionRunConfig, B>) -> Result<Trained<Report>> {
    let (opts, device) = (job.opts, job.device);
    let mut init_dir = None;
    let mut start = RunStart::open(job, |c: &mut CaptionRunConfig| {
        if c.init.model.is_some() && c.init.encoder.is_some() {
            c.validate()?;
        }
        init_dir = c.adopt_pretrained()?;
        c.adopt_search_encoder()?;
        Ok(())
    })?;
    let CaptionData {
        catalog,
        mut report,
        without_caption,
        train,
        test,
    } = open_caption_data(&start.config, opts.skip_bad)?;
    let tokenizer = start.tokenizer(|config| {
        let titles = train
            .iter()
            .map(|&i| catalog.items[i].title.as_deref().unwrap_or_default());
        Ok(build_tokenizer(&config.tokenizer, titles, &[EOS])?)
    })?;
    start.create(Some(&tokenizer))?;
    if !start.resume && !opts.quiet() && without_caption > 0 {
        eprintln!("note: {without_caption} items have an empty caption and are left out");
    }
    let config = &start.config;
    let ids = |v: &[usize]| v.iter().map(|&i| catalog.items[i].id.clone()).collect();
    start.keep(
        files::SPLIT,
        &CaptionSplitRecord {
            test_fraction: config.split.test_fraction,
            seed: config.split.seed,
            train_ids: ids(&train),
            test_ids: ids(&test),
        },
    )?;
    let ex = examples(
        config,
        &catalog,
        [&train, &test],
        &mut report,
        &tokenizer,
        opts,
    )?;
    if !opts.quiet() && report.skipped > without_caption {
        eprintln!(
            "warning: skipped {} unreadable images (--skip-bad); first: {}",
            report.skipped - without_caption,
            report
                .warnings
                .get(without_caption.min(report.warnings.len().saturating_sub(1)))
                .map_or("", |s| s.as_str())
        );
    }
    // A resumed run's weights come from its checkpoint (fit loads it), not from `init`.
    let model = start.init_model(|| initial_model::<B>(&start, init_dir, device))?;
    let parameters = burn::module::Module::num_params(&model);
    let mut task = CaptionTask::<B> {
        config,
        device: device.clone(),
        images: Images {
            pixels: ex.train.pixels,
            preprocess: config.preprocess.clone(),
            augment: config.augment.clone(),
        },
        seqs: ex.train.seqs,
        test_pixels: ex.test.pixels,
        test_seqs: ex.test.seqs,
        epoch_order: None,
    };
    let (model, fit) = start.fit(model, &mut task)?;
    // Rank 0 reports; the other workers' reports are not shown.
    let (test_loss, _) = if start.chief() {
        caption_loss(
            &model.valid(),
            &task.test_pixels,
            &task.test_seqs,
            &config.preprocess,
            config.limits.batch_size,
            device,
        )?
    } else {
        (f64::NAN, 0)
    };
    start.save_model(model.valid(), &fit)?;
    let out = Report {
        data: report,
        train_images: task.seqs.len(),
        test_images: task.test_seqs.len(),
        test_loss,
        vocab_size: tokenizer.vocab_size(),
        parameters,
        truncated_captions: ex.truncated,
        encoder_init: config.init.encoder.clone(),
    };
    start.report(fit, out)
}

/// One side of the split, ready to train or test on: images (CHW u8) and captions.
struct Examples {
    pixels: Vec<u8>,
    seqs: Vec<Vec<u32>>,
}

/// The training and test examples: images decoded once (unreadable ones left out with
/// `--skip-bad`) and their captions encoded.
struct Split {
    train: Examples,
    test: Examples,
    /// Captions longer than the context, cut.
    truncated: usize,
}

fn examples(
    config: &CaptionRunConfig,
    catalog: &Catalog,
    [train, test]: [&[usize]; 2],
    report: &mut LoadReport,
    tokenizer: &Tokenizer,
    opts: &FitOptions,
) -> Result<Split> {
    let eos = tokenizer
        .token_id(EOS)
        .ok_or_else(|| TrainError::invalid(format!("the tokenizer has no {EOS} token")))?;
    let max_len = config.model.decoder.n_ctx + 1;
    let bar = progress_bar(train.len() + test.len(), "decode", opts.quiet());
    let (p, limits) = (&config.preprocess, &config.data.limits);
    let mut truncated = 0;
    let mut side = |items: &[usize]| -> Result<Examples> {
        let (kept, pixels) =
            decode_pixels(catalog, items, p, limits, opts.skip_bad, report, Some(&bar))?;
        let seqs = kept
            .iter()
            .map(|&i| {
                let (ids, cut) = encode_caption(tokenizer, eos, title_of(catalog, i)?, max_len)?;
                truncated += usize::from(cut);
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        Ok(Examples { pixels, seqs })
    };
    let (train, test) = (side(train)?, side(test)?);
    bar.finish_and_clear();
    Ok(Split {
        train,
        test,
        truncated,
    })
}

/// The captioner a run starts from: a pretrained one (`init.model`, vocabulary resized to
/// the run's tokenizer) or a new one, with the encoder of `init.encoder` when fresh.
fn initial_model<B: AutodiffBackend>(
    start: &RunStart<'_, CaptionRunConfig, B>,
    init_dir: Option<PathBuf>,
    device: &B::Device,
) -> Result<Captioner<B>> {
    let config = &start.config;
    let mut model = match init_dir {
        Some(dir) => {
            let mut m = vitrine_models::captioner::load_hf_vit_gpt2::<B>(&dir, device)?.1;
            m.decoder = m.decoder.resize_vocab(config.model.decoder.vocab_size)?;
            m
        }
        None => config.model.init::<B>(device)?,
    };
    if let (Some(path), false) = (&config.init.encoder, start.resume) {
        model.encoder = RunDir::new(path).load_encoder::<B>(&config.model.encoder, device)?;
    }
    Ok(model)
}
