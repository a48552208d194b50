//! A search run's config, labels and split: what the trainer writes and the evaluator reads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vitrine_data::catalog::{Catalog, CatalogConfig, LoadReport};
use vitrine_data::split::split_indices;
use vitrine_data::transform::{Augment, Preprocess};
use vitrine_models::ImageEncoderConfig;

use crate::config::{
    check_task, resolve_init_path, LoopConfig, RunConfig, TrainExtras, TrainSection,
};
use crate::error::{InferError, Result};
use crate::run::TaskKind;
use crate::schedule::Schedule;

/// Metric-learning objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Supervised contrastive loss over the batch (Khosla et al. 2020).
    Supcon,
    /// Proxy-Anchor loss (Kim et al. 2020): one learned proxy per class.
    ProxyAnchor,
    /// Normalised softmax (Zhai & Wu 2019): cross-entropy over cosine similarities to one
    /// learned proxy per class, at `temperature`. A mean of per-example terms, so
    /// data-parallel workers' averaged gradients are exactly the combined batch's.
    NormSoftmax,
}

/// How batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    /// Seeded shuffle of all items each epoch.
    Random,
    /// Groups of `samples_per_class` items of one class, so every batch holds positives.
    Balanced,
}

/// The search task's own `[train]` fields (the loop's are in [`LoopConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchTrain {
    pub loss: LossKind,
    /// SupCon and norm-softmax temperature.
    pub temperature: f64,
    /// Proxy-Anchor scale (alpha) and margin (delta).
    pub proxy_alpha: f64,
    pub proxy_margin: f64,
    /// Proxies learn this many times faster than the network (the paper uses 100).
    pub proxy_lr_multiplier: f64,
    pub sampler: Sampler,
    pub samples_per_class: usize,
}

impl Default for SearchTrain {
    fn default() -> Self {
        Self {
            loss: LossKind::Supcon,
            temperature: 0.1,
            proxy_alpha: 32.0,
            proxy_margin: 0.1,
            proxy_lr_multiplier: 100.0,
            sampler: Sampler::Random,
            samples_per_class: 4,
        }
    }
}

impl TrainExtras for SearchTrain {
    fn loop_defaults() -> LoopConfig {
        LoopConfig {
            epochs: 10,
            batch_size: 128,
            schedule: Schedule::default(),
            weight_decay: 1e-4,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: crate::config::DEFAULT_EPSILON,
            grad_clip: 0.0,
            checkpoint_every_steps: 0,
            log_every_steps: 100,
        }
    }
}

/// The search task's `[train]`.
pub type TrainConfig = TrainSection<SearchTrain>;

/// Checks a search `[train]`: the loop's limits and the metric-learning ones.
pub fn validate_train(t: &TrainConfig) -> Result<()> {
    let bad = |m: String| Err(InferError::Invalid(format!("train: {m}")));
    let (fit, s) = (&t.fit, &t.task);
    fit.validate()?;
    if fit.batch_size < 2 {
        return bad(format!(
            "batch_size = {} (allowed 2..=65536: contrastive losses need pairs)",
            fit.batch_size
        ));
    }
    if !(s.temperature > 0.0) {
        return bad(format!("temperature = {} (must be > 0)", s.temperature));
    }
    if s.samples_per_class < 2 || s.samples_per_class > fit.batch_size {
        return bad(format!(
            "samples_per_class = {} (allowed 2..=batch_size)",
            s.samples_per_class
        ));
    }
    if !(s.proxy_lr_multiplier > 0.0) {
        return bad(format!(
            "proxy_lr_multiplier = {} (must be > 0)",
            s.proxy_lr_multiplier
        ));
    }
    Ok(())
}

/// Query/gallery split used by evaluation (and excluded from training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Fraction of items (by id) held out as queries; 0 = no hold-out.
    pub holdout_fraction: f32,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            holdout_fraction: 0.0,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub ks: Vec<usize>,
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            ks: vec![1, 5, 10],
            batch_size: 256,
        }
    }
}

/// Everything a visual-search run needs; saved resolved as `config.toml` in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRunConfig {
    #[serde(default = "default_task")]
    pub task: String,
    #[serde(default)]
    pub seed: u64,
    /// The catalogue trained on, and the gallery in evaluation.
    pub data: CatalogConfig,
    /// A separate query set for evaluation (e.g. Fashion-MNIST's test images).
    #[serde(default)]
    pub queries: Option<CatalogConfig>,
    #[serde(default)]
    pub split: SplitConfig,
    #[serde(default)]
    pub preprocess: Preprocess,
    #[serde(default)]
    pub augment: Augment,
    /// Fine-tune a pretrained image encoder: a Hugging Face ViT or CLIP folder, or
    /// `hf:<repo>[@revision]`. `[model]` and `[preprocess]` then come from the checkpoint
    /// (its `config.json` and `preprocessor_config.json`).
    #[serde(default)]
    pub init: Option<String>,
    #[serde(default)]
    pub model: ImageEncoderConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

fn default_task() -> String {
    "search".into()
}

impl RunConfig for SearchRunConfig {
    fn validate(&self) -> Result<()> {
        check_task(&self.task, TaskKind::Search)?;
        self.model.validate()?;
        self.preprocess.validate()?;
        self.augment.validate()?;
        validate_train(&self.train)?;
        let [c, h, w] = self.model.input_shape();
        let p = &self.preprocess;
        if [p.channels as usize, p.height as usize, p.width as usize] != [c, h, w] {
            return Err(InferError::Invalid(format!(
                "preprocess produces {}x{}x{} (channels x height x width) but the model expects {c}x{h}x{w}",
                p.channels, p.height, p.width
            )));
        }
        if !(0.0..1.0).contains(&self.split.holdout_fraction) {
            return Err(InferError::Invalid(format!(
                "split.holdout_fraction = {} (allowed 0.0 <= f < 1.0)",
                self.split.holdout_fraction
            )));
        }
        if self.eval.ks.is_empty() || self.eval.ks.iter().any(|&k| k == 0 || k > 1000) {
            return Err(InferError::Invalid(format!(
                "eval.ks = {:?} (each 1..=1000)",
                self.eval.ks
            )));
        }
        if self.eval.batch_size == 0 || self.eval.batch_size > 65_536 {
            return Err(InferError::Invalid(format!(
                "eval.batch_size = {} (allowed 1..=65536)",
                self.eval.batch_size
            )));
        }
        Ok(())
    }

    fn fit(&self) -> (&LoopConfig, u64) {
        (&self.train.fit, self.seed)
    }

    /// Makes data paths absolute against `base`, so the saved config works from anywhere.
    fn resolve_paths(&mut self, base: &Path) {
        resolve_init_path(&mut self.init, base);
        self.data.resolve_paths(base);
        if let Some(q) = &mut self.queries {
            q.resolve_paths(base);
        }
    }
}

impl SearchRunConfig {
    /// The config of a pretrained encoder used without training (no catalogue of its own:
    /// `data` points at the model folder and is never read).
    pub fn for_pretrained(dir: &Path, model: ImageEncoderConfig, preprocess: Preprocess) -> Self {
        Self {
            task: default_task(),
            seed: 0,
            data: CatalogConfig {
                source: vitrine_data::catalog::CatalogSource::ImageFolder {
                    root: dir.to_owned(),
                },
                label_column: None,
                title_column: None,
                limits: Default::default(),
                max_items: 0,
            },
            queries: None,
            split: SplitConfig::default(),
            preprocess,
            augment: Augment::default(),
            init: Some(dir.display().to_string()),
            model,
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
        }
    }
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
        return Err(InferError::Invalid(format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_toml, to_toml_string};

    const MINIMAL: &str = r#"
[data]
format = "image-folder"
root = "photos"
"#;

    #[test]
    fn overrides_apply_and_typecheck() {
        let c: SearchRunConfig = parse_toml(
            MINIMAL,
            "t",
            &[
                "train.epochs=3".into(),
                "train.loss=proxy-anchor".into(),
                "seed=9".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.fit.epochs, 3);
        assert_eq!(c.train.task.loss, LossKind::ProxyAnchor);
        assert_eq!(c.seed, 9);
        let err =
            parse_toml::<SearchRunConfig>(MINIMAL, "t", &["train.epochs=many".into()]).unwrap_err();
        assert!(err.to_string().contains("epochs"), "{err}");
        assert!(parse_toml::<SearchRunConfig>(MINIMAL, "t", &["train.nope=1".into()]).is_err());
        assert!(parse_toml::<SearchRunConfig>(MINIMAL, "t", &["novalue".into()]).is_err());
    }

    #[test]
    fn validate_checks_model_matches_preprocess() {
        let mut c: SearchRunConfig = parse_toml(MINIMAL, "t", &[]).unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        c.preprocess.channels = 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("model expects"), "{err}");
    }

    #[test]
    fn train_limits_at_and_past() {
        let mut ok = TrainConfig::default();
        ok.fit.batch_size = 2;
        ok.task.samples_per_class = 2;
        assert!(validate_train(&ok).is_ok());
        let mut t = ok.clone();
        t.fit.batch_size = 1;
        assert!(validate_train(&t).is_err());
        let mut t = ok.clone();
        t.fit.epochs = 0;
        assert!(validate_train(&t).is_err());
        let mut t = ok;
        t.task.samples_per_class = 3;
        assert!(validate_train(&t).is_err());
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let c: SearchRunConfig = parse_toml(MINIMAL, "t", &[]).unwrap();
        let back: SearchRunConfig = parse_toml(&to_toml_string(&c), "t", &[]).unwrap();
        assert_eq!(back, c);
    }
}
