//! Run configuration: one TOML file per recipe under `configs/`, CLI overrides with
//! `--set section.key=value`, and the resolved config saved in the run directory. Also the
//! `[train]` fields every task shares ([`LoopConfig`], read through [`TrainSection`]).

use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{io_err, InferError, Result};
use crate::schedule::Schedule;

/// A task's run config: what its `config.toml` holds.
pub trait RunConfig: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Checks every field against its limits; the message names the field.
    fn validate(&self) -> Result<()>;
    /// The loop's `[train]` settings and the run's seed.
    fn fit(&self) -> (&LoopConfig, u64);
    /// Makes data paths absolute against `base`, so the saved config works from anywhere.
    fn resolve_paths(&mut self, base: &Path);
    /// The model's vocabulary size (tasks with a tokenizer), with its name in the file.
    fn vocab_size_mut(&mut self) -> Option<(&'static str, &mut usize)> {
        None
    }
    /// Token ids the model's embedding holds when the tokenizer need not match it exactly
    /// (a pretrained checkpoint's embedding may have more rows than its tokenizer has
    /// tokens); `None`: the tokenizer's size must equal `vocab_size_mut`.
    fn embedding_rows(&self) -> Option<usize> {
        None
    }
}

/// What a run was trained to do (`task` in its config; `search` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Search,
    /// A plain language model (e.g. the Shakespeare benchmark).
    Lm,
    /// Subject lines / headlines from a brief.
    Copy,
    /// Click-through scorer.
    Score,
    Caption,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        Self::Search,
        Self::Lm,
        Self::Copy,
        Self::Score,
        Self::Caption,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Lm => "lm",
            Self::Copy => "copy",
            Self::Score => "score",
            Self::Caption => "caption",
        }
    }

    /// The task a config table declares (`search` when it names none).
    pub fn of_table(table: &toml::Table) -> Result<Self> {
        let name = table
            .get("task")
            .and_then(|t| t.as_str())
            .unwrap_or("search");
        name.parse()
    }
}

impl std::str::FromStr for TaskKind {
    type Err = InferError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                InferError::Invalid(format!(
                    "task = {s:?}: this version knows {}",
                    known.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A config's `task` must be the task it is read as.
pub fn check_task(task: &str, expected: TaskKind) -> Result<()> {
    if task != expected.name() {
        return Err(InferError::Invalid(format!(
            "task = {task:?}: this config is for task {:?}",
            expected.name()
        )));
    }
    Ok(())
}

/// What the training loop reads from `[train]`, the same for every task: optimiser,
/// schedule and bookkeeping. Each task's `[train]` holds these next to its own fields
/// ([`TrainSection`]) and starts from its own defaults ([`TrainExtras::loop_defaults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    pub epochs: usize,
    /// The global batch (split evenly between data-parallel workers).
    pub batch_size: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    /// Adam's denominator term, `m / (sqrt(v) + epsilon)`. The default is Burn's 1e-5 (the
    /// recipes were tuned with it); PyTorch's is 1e-8, which can matter when fine-tuning a
    /// pretrained model at a small learning rate, where many gradients are tiny.
    pub epsilon: f64,
    /// Per-parameter gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Also checkpoint every N steps inside an epoch (0 = only at epoch ends).
    pub checkpoint_every_steps: usize,
    /// Print a progress line every N steps when stderr is not a terminal (0 = never).
    pub log_every_steps: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 32,
            schedule: Schedule::default(),
            weight_decay: 0.01,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: DEFAULT_EPSILON,
            grad_clip: 1.0,
            checkpoint_every_steps: 0,
            log_every_steps: 50,
        }
    }
}

/// Adam's epsilon unless a config says otherwise (Burn's default).
pub const DEFAULT_EPSILON: f64 = 1e-5;

impl LoopConfig {
    /// Checks what every `[train]` section shares (names as in the config file).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(InferError::Invalid(m));
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad(format!(
                "train.epochs = {} (allowed 1..=100000)",
                self.epochs
            ));
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return bad(format!(
                "train.batch_size = {} (allowed 1..=65536)",
                self.batch_size
            ));
        }
        for (name, b) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("train.{name} = {b} (allowed 0 <= beta < 1)"));
            }
        }
        if !(self.epsilon > 0.0 && self.epsilon <= 1.0) {
            return bad(format!(
                "train.epsilon = {} (allowed 0 < epsilon <= 1)",
                self.epsilon
            ));
        }
        let s = &self.schedule;
        if !(s.lr > 0.0) || s.min_lr < 0.0 {
            return bad(format!(
                "train.schedule.lr = {}, min_lr = {} (lr > 0, min_lr >= 0)",
                s.lr, s.min_lr
            ));
        }
        Ok(())
    }
}

/// A task's own `[train]` fields, and the loop settings it starts from.
pub trait TrainExtras: Serialize + DeserializeOwned + Default + Clone + PartialEq {
    fn loop_defaults() -> LoopConfig;
}

/// For tasks whose `[train]` holds only the loop's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoExtras {}

impl TrainExtras for NoExtras {
    fn loop_defaults() -> LoopConfig {
        LoopConfig::default()
    }
}

/// A `[train]` section: the loop's fields ([`LoopConfig`]) and the task's own (`E`), side
/// by side in one TOML table. A field left out takes the task's default.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSection<E> {
    pub fit: LoopConfig,
    pub task: E,
}

impl<E: TrainExtras> Default for TrainSection<E> {
    fn default() -> Self {
        Self {
            fit: E::loop_defaults(),
            task: E::default(),
        }
    }
}

impl<'de, E: TrainExtras> Deserialize<'de> for TrainSection<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut own = toml::Table::deserialize(d)?;
        // LoopConfig has no optional field, so its serialised defaults name every field.
        let mut fit = toml::Table::try_from(E::loop_defaults()).map_err(D::Error::custom)?;
        for (key, value) in fit.iter_mut() {
            if let Some(given) = own.remove(key) {
                *value = given;
            }
        }
        Ok(Self {
            fit: fit.try_into().map_err(D::Error::custom)?,
            task: own.try_into().map_err(D::Error::custom)?,
        })
    }
}

impl<E: TrainExtras> Serialize for TrainSection<E> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut table = toml::Table::try_from(&self.task).map_err(S::Error::custom)?;
        table.extend(toml::Table::try_from(&self.fit).map_err(S::Error::custom)?);
        table.serialize(s)
    }
}

/// Reads a TOML file, applies `key.path=value` overrides and deserialises it.
pub fn load_toml<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_toml(&text, &path.display().to_string(), overrides)
}

pub fn parse_toml<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    overrides: &[String],
) -> Result<T> {
    let cfg_err = |message: String| InferError::Config {
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

/// Makes a path absolute in place (see [`absolutize`]).
pub fn absolutize_in(base: &Path, p: &mut PathBuf) {
    *p = absolutize(base, p);
}

/// A model named by `init`: made absolute against the config's folder when it names a
/// folder, kept as it is when it is `hf:<repo>`.
pub fn resolve_init_path(init: &mut Option<String>, base: &Path) {
    if let Some(spec) = init {
        if !spec.starts_with("hf:") {
            *spec = absolutize(base, Path::new(spec.as_str()))
                .display()
                .to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_limits_at_and_past_the_edge() {
        // Whether the default loop settings with `change` applied validate.
        let valid = |change: fn(&mut LoopConfig)| {
            let mut c = LoopConfig::default();
            change(&mut c);
            c.validate().is_ok()
        };
        assert!(valid(|_| ()));
        assert!(valid(|c| (c.epochs, c.batch_size) = (100_000, 65_536)));
        assert!(!valid(|c| c.epochs = 100_001));
        assert!(!valid(|c| c.batch_size = 65_537));
        assert!(!valid(|c| c.beta_2 = 1.0));
        // Epsilon: any positive value up to 1; zero (a division by sqrt(v) alone) is refused.
        assert!(valid(|c| c.epsilon = 1e-12));
        assert!(valid(|c| c.epsilon = 1.0));
        assert!(!valid(|c| c.epsilon = 0.0));
        assert!(!valid(|c| c.epsilon = 1.0 + 1e-9));
        assert!(!valid(|c| c.epsilon = f64::NAN));
    }

    #[test]
    fn epsilon_defaults_to_burns_and_reads_from_the_config() {
        let c: LoopConfig = toml::from_str("epochs = 2").unwrap();
        assert_eq!(c.epsilon, DEFAULT_EPSILON);
        let c: LoopConfig = toml::from_str("epsilon = 1e-8").unwrap();
        assert_eq!(c.epsilon, 1e-8);
    }
}
