//! Visual-search training: metric learning on the catalogue's label column.

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use vitrine_data::catalog::{decode_pixels, LoadReport};
use vitrine_data::split::mix;
use vitrine_infer::progress::progress_bar;
use vitrine_infer::run::files;
use vitrine_infer::search::{
    open_and_split, LabelMap, LossKind, Prepared, Sampler, SearchRunConfig, SplitRecord,
};
use vitrine_models::ImageEncoder;

use crate::error::{Result, TrainError};
use crate::images::Images;
use crate::losses::{norm_softmax, proxy_anchor, supcon};
use crate::start::{Job, RunStart, Summary, Trained};
use crate::trainer::{BatchAt, FitSummary, Task};

/// What is trained: the encoder, plus one proxy per class for Proxy-Anchor.
#[derive(Module, Debug)]
pub struct SearchModel<B: Backend> {
    pub encoder: ImageEncoder<B>,
    /// Stored divided by `proxy_lr_multiplier`: Adam's step size is scale-free, so the
    /// effective proxies move that many times faster than the network.
    pub proxies: Option<Param<Tensor<B, 2>>>,
}

struct SearchTask<B: Backend> {
    device: B::Device,
    images: Images,
    labels: Vec<u32>,
    config: SearchRunConfig,
    classes: usize,
    epoch_batches: Option<(usize, Vec<Vec<usize>>)>,
}

impl<B: Backend> SearchTask<B> {
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let (t, batch_size) = (&self.config.train.task, self.config.train.fit.batch_size);
        let mut rng = StdRng::seed_from_u64(mix(self.config.seed, 1 + epoch as u64));
        let order: Vec<usize> = match t.sampler {
            Sampler::Random => {
                let mut all: Vec<usize> = (0..self.labels.len()).collect();
                all.shuffle(&mut rng);
                all
            }
            Sampler::Balanced => {
                let mut by_class = vec![Vec::new(); self.classes];
                for (i, &l) in self.labels.iter().enumerate() {
                    by_class[l as usize].push(i);
                }
                let mut groups: Vec<Vec<usize>> = Vec::new();
                for mut members in by_class {
                    members.shuffle(&mut rng);
                    // Singletons cannot form a positive pair: they only serve as negatives
                    // through the other groups' batches.
                    groups.extend(
                        members
                            .chunks(t.samples_per_class)
                            .filter(|g| g.len() >= 2)
                            .map(<[usize]>::to_vec),
                    );
                }
                groups.shuffle(&mut rng);
                groups.concat()
            }
        };
        order
            .chunks_exact(batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

impl<B: AutodiffBackend> Task<B, SearchModel<B>> for SearchTask<B> {
    fn batches_per_epoch(&self) -> usize {
        self.batches(0).len()
    }

    fn loss(&mut self, model: &SearchModel<B>, at: BatchAt) -> Result<(Tensor<B, 1>, usize)> {
        if self
            .epoch_batches
            .as_ref()
            .is_none_or(|(e, _)| *e != at.epoch)
        {
            self.epoch_batches = Some((at.epoch, self.batches(at.epoch)));
        }
        let (_, batches) = self.epoch_batches.as_ref().expect("just set");
        let idx = at.shard.of(batches
            .get(at.batch)
            .ok_or_else(|| TrainError::invalid(format!("batch {} out of range", at.batch)))?);
        let seed = mix(self.config.seed, 0xE90C + at.epoch as u64);
        let x = self.images.batch::<B>(idx, seed, &self.device);
        let labels: Vec<u32> = idx.iter().map(|&i| self.labels[i]).collect();
        let z = model.encoder.forward(x);
        let t = &self.config.train.task;
        let loss = match (&t.loss, &model.proxies) {
            (LossKind::Supcon, _) => supcon(z, &labels, t.temperature),
            (LossKind::ProxyAnchor, Some(proxies)) => proxy_anchor(
                z,
                proxies.val().mul_scalar(t.proxy_lr_multiplier),
                &labels,
                t.proxy_alpha,
                t.proxy_margin,
            ),
            (LossKind::NormSoftmax, Some(proxies)) => norm_softmax(
                z,
                proxies.val().mul_scalar(t.proxy_lr_multiplier),
                &labels,
                t.temperature,
            ),
            (LossKind::ProxyAnchor | LossKind::NormSoftmax, None) => {
                return Err(TrainError::invalid("proxy losses need proxies"))
            }
        };
        Ok((loss, idx.len()))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub data: LoadReport,
    pub train_items: usize,
    pub holdout_items: usize,
    pub classes: usize,
}

impl Summary for Report {
    fn summary(&self, fit: &FitSummary) -> String {
        format!(
            "last epoch loss {:.4}, {:.0} examples/s, {:.1} s ({} train items, {} classes, {} skipped)",
            fit.last_epoch_loss,
            fit.examples_per_sec,
            fit.wall_secs,
            self.train_items,
            self.classes,
            self.data.skipped
        )
    }
}

/// Trains a search model into `run` (or resumes it with `opts.resume`, from its own
/// Trains (or resumes, with `opts.resume`) a run of this task (`tasks::Search`).
pub fn train<B: AutodiffBackend>(job: Job<'_, SearchRunConfig, B>) -> Result<Trained<Report>> {
    let (opts, device) = (job.opts, job.device);
    // Weights of `init`, loaded once while the config is resolved (a resumed run's come
    // from its checkpoint instead).
    let mut pretrained = None;
    let start = RunStart::open(job, |config: &mut SearchRunConfig| {
        if let Some(spec) = &config.init {
            // The checkpoint decides the architecture and the preprocessing.
            let pv = vitrine_infer::pretrained::load_vision::<B>(spec, device)?;
            config.model = pv.config;
            config.preprocess = pv.preprocess;
            pretrained = Some(pv.encoder);
        }
        Ok(())
    })?;
    start.create(None)?;
    let config = &start.config;
    let Prepared {
        catalog,
        mut report,
        train,
        holdout,
    } = open_and_split(config, opts.skip_bad)?;
    let label_map = label_map(config, &catalog, &train)?;
    start.keep(files::LABELS, &label_map)?;
    start.keep(
        files::SPLIT,
        &SplitRecord {
            holdout_fraction: config.split.holdout_fraction,
            seed: config.split.seed,
            train_items: train.len(),
            holdout_ids: holdout
                .iter()
                .map(|&i| catalog.items[i].id.clone())
                .collect(),
        },
    )?;

    let bar = progress_bar(train.len(), "decode", opts.quiet());
    let (kept, pixels) = decode_pixels(
        &catalog,
        &train,
        &config.preprocess,
        &config.data.limits,
        opts.skip_bad,
        &mut report,
        Some(&bar),
    )?;
    bar.finish_and_clear();
    let labels: Vec<u32> = kept
        .iter()
        .map(|&i| {
            catalog.items[i]
                .label
                .as_deref()
                .and_then(|l| label_map.index_of(l))
                .expect("labelled above")
        })
        .collect();
    if !opts.quiet() && report.skipped > 0 {
        eprintln!(
            "warning: skipped {} bad items (--skip-bad); first: {}",
            report.skipped,
            report.warnings.first().map_or("", |s| s.as_str())
        );
    }

    let classes = label_map.classes.len();
    let model = start.init_model(|| {
        let encoder = match pretrained {
            Some(encoder) => encoder,
            None => config.model.init::<B>(device)?,
        };
        let t = &config.train.task;
        let proxies = matches!(t.loss, LossKind::ProxyAnchor | LossKind::NormSoftmax).then(|| {
            let std = 1.0 / t.proxy_lr_multiplier;
            Initializer::Normal { mean: 0.0, std }.init([classes, config.model.embed_dim()], device)
        });
        Ok(SearchModel { encoder, proxies })
    })?;
    let mut task = SearchTask::<B> {
        device: device.clone(),
        images: Images {
            pixels,
            preprocess: config.preprocess.clone(),
            augment: config.augment.clone(),
        },
        labels,
        classes,
        config: config.clone(),
        epoch_batches: None,
    };
    let (model, fit) = start.fit(model, &mut task)?;
    start.save_model(model.encoder.valid(), &fit)?;
    let out = Report {
        data: report,
        train_items: kept.len(),
        holdout_items: holdout.len(),
        classes,
    };
    start.report(fit, out)
}

/// Classes of the training items (hold-out items are never seen), sorted.
fn label_map(
    config: &SearchRunConfig,
    catalog: &vitrine_data::catalog::Catalog,
    train: &[usize],
) -> Result<LabelMap> {
    let mut classes: Vec<String> = Vec::new();
    for &i in train {
        match &catalog.items[i].label {
            Some(l) => classes.push(l.clone()),
            None => {
                return Err(TrainError::invalid(format!(
                    "item {:?} (row {}) has no label: set data.label_column",
                    catalog.items[i].id, catalog.items[i].row
                )))
            }
        }
    }
    classes.sort();
    classes.dedup();
    if classes.len() < 2 {
        return Err(TrainError::invalid(
            "metric learning needs at least 2 classes in the label column",
        ));
    }
    Ok(LabelMap {
        column: config.data.label_column.clone(),
        classes,
    })
}
