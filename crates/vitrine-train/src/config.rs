//! Run configuration: one TOML file per recipe under `configs/`, CLI overrides with
//! `--set section.key=value`, and the resolved config saved in the run directory.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use vitrine_data::catalog::CatalogConfig;
use vitrine_data::transform::{Augment, Preprocess};
use vitrine_models::ImageEncoderConfig;

use crate::error::{Result, TrainError};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
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
    pub schedule: Schedule,
    pub weight_decay: f64,
    /// Per-parameter gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Also checkpoint every N steps inside an epoch (0 = only at epoch ends).
    pub checkpoint_every_steps: usize,
    /// Print a progress line every N steps when stderr is not a terminal (0 = never).
    pub log_every_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            loss: LossKind::Supcon,
            temperature: 0.1,
            proxy_alpha: 32.0,
            proxy_margin: 0.1,
            proxy_lr_multiplier: 100.0,
            sampler: Sampler::Random,
            samples_per_class: 4,
            schedule: Schedule::default(),
            weight_decay: 1e-4,
            grad_clip: 0.0,
            checkpoint_every_steps: 0,
            log_every_steps: 100,
        }
    }
}

impl TrainConfig {
    pub fn loop_config(&self) -> crate::trainer::LoopConfig {
        crate::trainer::LoopConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            schedule: self.schedule,
            weight_decay: self.weight_decay,
            beta_1: 0.9,
            beta_2: 0.999,
            grad_clip: self.grad_clip,
            checkpoint_every_steps: self.checkpoint_every_steps,
            log_every_steps: self.log_every_steps,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(format!("train: {m}")));
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad(format!("epochs = {} (allowed 1..=100000)", self.epochs));
        }
        if self.batch_size < 2 || self.batch_size > 65_536 {
            return bad(format!(
                "batch_size = {} (allowed 2..=65536: contrastive losses need pairs)",
                self.batch_size
            ));
        }
        if !(self.temperature > 0.0) {
            return bad(format!("temperature = {} (must be > 0)", self.temperature));
        }
        if self.samples_per_class < 2 || self.samples_per_class > self.batch_size {
            return bad(format!(
                "samples_per_class = {} (allowed 2..=batch_size)",
                self.samples_per_class
            ));
        }
        if !(self.schedule.lr > 0.0) || self.schedule.min_lr < 0.0 {
            return bad(format!(
                "schedule.lr = {}, min_lr = {} (lr > 0, min_lr >= 0)",
                self.schedule.lr, self.schedule.min_lr
            ));
        }
        if !(self.proxy_lr_multiplier > 0.0) {
            return bad(format!(
                "proxy_lr_multiplier = {} (must be > 0)",
                self.proxy_lr_multiplier
            ));
        }
        Ok(())
    }
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

impl SearchRunConfig {
    pub fn validate(&self) -> Result<()> {
        if self.task != "search" {
            return Err(TrainError::Invalid(format!(
                "task = {:?}: this config is for task \"search\"",
                self.task
            )));
        }
        self.model.validate()?;
        self.preprocess.validate()?;
        self.augment.validate()?;
        self.train.validate()?;
        let [c, h, w] = self.model.input_shape();
        let p = &self.preprocess;
        if [p.channels as usize, p.height as usize, p.width as usize] != [c, h, w] {
            return Err(TrainError::Invalid(format!(
                "preprocess produces {}x{}x{} (channels x height x width) but the model expects {c}x{h}x{w}",
                p.channels, p.height, p.width
            )));
        }
        if !(0.0..1.0).contains(&self.split.holdout_fraction) {
            return Err(TrainError::Invalid(format!(
                "split.holdout_fraction = {} (allowed 0.0 <= f < 1.0)",
                self.split.holdout_fraction
            )));
        }
        if self.eval.ks.is_empty() || self.eval.ks.iter().any(|&k| k == 0 || k > 1000) {
            return Err(TrainError::Invalid(format!(
                "eval.ks = {:?} (each 1..=1000)",
                self.eval.ks
            )));
        }
        if self.eval.batch_size == 0 || self.eval.batch_size > 65_536 {
            return Err(TrainError::Invalid(format!(
                "eval.batch_size = {} (allowed 1..=65536)",
                self.eval.batch_size
            )));
        }
        Ok(())
    }

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

    /// Makes data paths absolute against `base`, so the saved config works from anywhere.
    pub fn resolve_paths(&mut self, base: &Path) {
        crate::pretrained::resolve_init_path(&mut self.init, base);
        self.data.resolve_paths(base);
        if let Some(q) = &mut self.queries {
            q.resolve_paths(base);
        }
    }
}

/// Reads a TOML file, applies `key.path=value` overrides and deserialises it.
pub fn load_toml<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string(), overrides)
}

pub fn parse_toml<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    overrides: &[String],
) -> Result<T> {
    let cfg_err = |message: String| TrainError::Config {
        origin: origin.to_string(),
        message,
    };
    let mut value: toml::Table = toml::from_str(text).map_err(|e| cfg_err(e.to_string()))?;
    for ov in overrides {
        apply_override(&mut value, ov).map_err(|m| cfg_err(format!("--set {ov}: {m}")))?;
    }
    toml::Value::Table(value)
        .try_into()
        .map_err(|e: toml::de::Error| cfg_err(e.to_string()))
}

/// `a.b.c=value`: the value is parsed as a TOML literal (number, bool, array, quoted
/// string) and taken as a bare string otherwise.
fn apply_override(root: &mut toml::Table, spec: &str) -> std::result::Result<(), String> {
    let (key, raw) = spec.split_once('=').ok_or("expected key.path=value")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let mut table = root;
    for part in &parts[..parts.len() - 1] {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

pub fn to_toml_string<T: Serialize>(value: &T) -> String {
    toml::to_string_pretty(value).expect("configs serialise to TOML")
}

pub fn absolutize(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.train.loss, LossKind::ProxyAnchor);
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
        let ok = TrainConfig {
            batch_size: 2,
            samples_per_class: 2,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        assert!(TrainConfig {
            batch_size: 1,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(TrainConfig {
            epochs: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(TrainConfig {
            samples_per_class: 3,
            ..ok
        }
        .validate()
        .is_err());
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let c: SearchRunConfig = parse_toml(MINIMAL, "t", &[]).unwrap();
        let back: SearchRunConfig = parse_toml(&to_toml_string(&c), "t", &[]).unwrap();
        assert_eq!(back, c);
    }
}
