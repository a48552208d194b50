//! Visual-search training: metric learning on the catalogue's label column.

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use vitrine_data::catalog::LoadReport;
use vitrine_data::catalog::{decode_pixels, Catalog};
use vitrine_data::split::split_indices;
use vitrine_models::ImageEncoder;

use crate::config::{LossKind, Sampler, SearchRunConfig};
use crate::dist::Shard;
use crate::embed::{augmented_batch, progress_bar};
use crate::error::{Result, TrainError};
use crate::losses::{norm_softmax, proxy_anchor, supcon};
use crate::run::{save_module, RunDir};
use crate::trainer::{fit, FitOptions, FitSummary, Task};

/// What is trained: the encoder, plus one proxy per class for Proxy-Anchor.
#[derive(Module, Debug)]
pub struct SearchModel<B: Backend> {
    pub encoder: ImageEncoder<B>,
    /// Stored divided by `proxy_lr_multiplier`: Adam's step size is scale-free, so the
    /// effective proxies move that many times faster than the network.
    pub proxies: Option<Param<Tensor<B, 2>>>,
}

/// Class names in index order, saved as `labels.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelMap {
    pub column: Option<String>,
    pub classes: Vec<String>,
}

impl LabelMap {
    pub fn index_of(&self, label: &str) -> Option<u32> {
        self.classes
            .binary_search_by(|c| c.as_str().cmp(label))
            .ok()
            .map(|i| i as u32)
    }
}

/// Which catalogue items are trained on and which are held out as queries (`split.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    pub holdout_fraction: f32,
    pub seed: u64,
    pub train_items: usize,
    pub holdout_ids: Vec<String>,
}

/// splitmix64 of a combination: independent seeds for (run, epoch, item).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x632B_E59B_D9B5_E1A7);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The catalogue, opened and split as the run's config says.
pub struct Prepared {
    pub catalog: Catalog,
    pub report: LoadReport,
    pub train: Vec<usize>,
    pub holdout: Vec<usize>,
}

pub fn open_and_split(config: &SearchRunConfig, skip_bad: bool) -> Result<Prepared> {
    let (catalog, report) = Catalog::open(&config.data, skip_bad)?;
    if catalog.is_empty() {
        return Err(TrainError::Invalid(format!(
            "catalogue {} has no items",
            catalog.source_name
        )));
    }
    let (train, holdout) = if config.split.holdout_fraction > 0.0 {
        split_indices(
            catalog.len(),
            config.split.holdout_fraction,
            config.split.seed,
        )
    } else {
        ((0..catalog.len()).collect(), Vec::new())
    };
    Ok(Prepared {
        catalog,
        report,
        train,
        holdout,
    })
}

struct SearchTask<B: Backend> {
    device: B::Device,
    pixels: Vec<u8>,
    labels: Vec<u32>,
    config: SearchRunConfig,
    classes: usize,
    epoch_batches: Option<(usize, Vec<Vec<usize>>)>,
}

impl<B: Backend> SearchTask<B> {
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let t = &self.config.train;
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
            .chunks_exact(t.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

impl<B: AutodiffBackend> Task<B, SearchModel<B>> for SearchTask<B> {
    fn batches_per_epoch(&self) -> usize {
        self.batches(0).len()
    }

    fn loss(
        &mut self,
        model: &SearchModel<B>,
        epoch: usize,
        batch: usize,
        shard: Shard,
    ) -> Result<(Tensor<B, 1>, usize)> {
        if self.epoch_batches.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.epoch_batches = Some((epoch, self.batches(epoch)));
        }
        let (_, batches) = self.epoch_batches.as_ref().expect("just set");
        let idx = shard.of(batches
            .get(batch)
            .ok_or_else(|| TrainError::Invalid(format!("batch {batch} out of range")))?);
        let x = augmented_batch::<B>(
            &self.pixels,
            idx,
            &self.config.preprocess,
            &self.config.augment,
            mix(self.config.seed, 0xE90C + epoch as u64),
            &self.device,
        );
        let labels: Vec<u32> = idx.iter().map(|&i| self.labels[i]).collect();
        let z = model.encoder.forward(x);
        let t = &self.config.train;
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
                return Err(TrainError::Invalid("proxy losses need proxies".into()))
            }
        };
        Ok((loss, idx.len()))
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub fit: FitOptions,
    pub skip_bad: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub fit: FitSummary,
    pub data: LoadReport,
    pub train_items: usize,
    pub holdout_items: usize,
    pub classes: usize,
}

/// Trains a search model into `run`. With `opts.fit.resume`, `config` is ignored and the
/// run's own saved config is used.
pub fn train_search<B: AutodiffBackend>(
    config: Option<SearchRunConfig>,
    run: &RunDir,
    opts: &TrainOptions,
    device: &B::Device,
) -> Result<TrainReport> {
    // Weights of `init`, loaded once while the config is resolved (a resumed run's come
    // from its checkpoint instead).
    let mut pretrained = None;
    // Only rank 0 of data-parallel training writes the run directory.
    let chief = opts.fit.is_chief();
    let config = if opts.fit.resume {
        if !run.checkpoint_path().exists() {
            return Err(TrainError::Run {
                path: run.path.clone(),
                message: "nothing to resume: no checkpoints/last.ckpt".into(),
            });
        }
        run.load_config()?
    } else {
        let mut config = config
            .ok_or_else(|| TrainError::Invalid("a config is required to start a run".into()))?;
        if let Some(spec) = &config.init {
            // The checkpoint decides the architecture and the preprocessing.
            let pv = crate::pretrained::load_vision::<B>(spec, device)?;
            config.model = pv.config;
            config.preprocess = pv.preprocess;
            pretrained = Some(pv.encoder);
        }
        config.validate()?;
        opts.fit.check_start(run, config.train.batch_size, true)?;
        if chief {
            run.create()?;
            run.save_config(&config)?;
        }
        config
    };
    let Prepared {
        catalog,
        mut report,
        train,
        holdout,
    } = open_and_split(&config, opts.skip_bad)?;
    // Classes come from the training items only; hold-out items are never seen.
    let mut classes: Vec<String> = Vec::new();
    for &i in &train {
        match &catalog.items[i].label {
            Some(l) => classes.push(l.clone()),
            None => {
                return Err(TrainError::Invalid(format!(
                    "item {:?} (row {}) has no label: set data.label_column",
                    catalog.items[i].id, catalog.items[i].row
                )))
            }
        }
    }
    classes.sort();
    classes.dedup();
    let label_map = LabelMap {
        column: config.data.label_column.clone(),
        classes,
    };
    if label_map.classes.len() < 2 {
        return Err(TrainError::Invalid(
            "metric learning needs at least 2 classes in the label column".into(),
        ));
    }
    if chief {
        run.save_json("labels.json", &label_map)?;
        run.save_json(
            "split.json",
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
    }

    let bar = progress_bar(train.len(), "decode", opts.fit.quiet());
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
    if !opts.fit.quiet() && report.skipped > 0 {
        eprintln!(
            "warning: skipped {} bad items (--skip-bad); first: {}",
            report.skipped,
            report.warnings.first().map_or("", |s| s.as_str())
        );
    }

    let seeded = crate::dist::seed_guard::<B>(device, config.seed);
    let encoder = match pretrained {
        Some(encoder) => encoder,
        None => config.model.init::<B>(device)?,
    };
    let proxies = matches!(
        config.train.loss,
        LossKind::ProxyAnchor | LossKind::NormSoftmax
    )
    .then(|| {
        let std = 1.0 / config.train.proxy_lr_multiplier;
        Initializer::Normal { mean: 0.0, std }
            .init([label_map.classes.len(), config.model.embed_dim()], device)
    });
    let model = seeded.finish(SearchModel { encoder, proxies });
    let mut task = SearchTask::<B> {
        device: device.clone(),
        pixels,
        labels,
        classes: label_map.classes.len(),
        config: config.clone(),
        epoch_batches: None,
    };
    let (model, fit_summary) = fit(
        model,
        &mut task,
        &config.train.loop_config(),
        run,
        &opts.fit,
        device,
    )?;
    if chief && !fit_summary.stopped_early {
        save_module(model.encoder.valid(), &run.model_path())?;
    }
    Ok(TrainReport {
        fit: fit_summary,
        data: report,
        train_items: kept.len(),
        holdout_items: holdout.len(),
        classes: label_map.classes.len(),
    })
}
