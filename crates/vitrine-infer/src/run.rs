//! Run directories: what a trained run is on disk. Every file a run may hold is named in
//! [`files`]; the task a run was trained for is a [`TaskKind`].

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use serde::{de::DeserializeOwned, Serialize};
use vitrine_data::fsio::atomic_save;
use vitrine_data::text::Tokenizer;
use vitrine_models::{ImageEncoder, ImageEncoderConfig};

pub use crate::config::TaskKind;
use crate::config::{to_toml_string, RunConfig};
use crate::error::{io_err, InferError, Result};

pub type Rec = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// The files of a run directory.
pub mod files {
    /// The resolved config the run was trained with.
    pub const CONFIG: &str = "config.toml";
    /// The final weights.
    pub const MODEL: &str = "model.mpk";
    /// Model, optimiser and loop state, rewritten at every checkpoint.
    pub const CHECKPOINT: &str = "checkpoints/last.ckpt";
    pub const CHECKPOINT_DIR: &str = "checkpoints";
    /// One JSON line per epoch (and per logged step).
    pub const METRICS: &str = "metrics.jsonl";
    /// What `vitrine train` reported at the end.
    pub const TRAIN_REPORT: &str = "train-report.json";
    /// What `vitrine eval` reported (search runs in half precision: `eval-f16.json`, …).
    pub const EVAL: &str = "eval.json";
    pub const TOKENIZER: &str = "tokenizer.json";
    /// Search runs: class names in index order.
    pub const LABELS: &str = "labels.json";
    /// Search and caption runs: which items were held out.
    pub const SPLIT: &str = "split.json";
    /// Copy runs: the normalised training lines (`--no-copy`).
    pub const TRAIN_LINES: &str = "train-lines.txt";
    /// Copy runs: the words of the training corpus, one per line (lexicon-constrained
    /// decoding; runs made before it derive it from the training lines).
    pub const LEXICON: &str = "lexicon.txt";
    /// Scorer runs: the best development epoch and its weights.
    pub const BEST: &str = "best.json";
    pub const BEST_MODEL: &str = "best-model.mpk";
    /// The index `vitrine serve --search RUN` builds inside a search run.
    pub const INDEX: &str = "index.vtridx";
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.file(files::CONFIG)
    }
    pub fn model_path(&self) -> PathBuf {
        self.file(files::MODEL)
    }
    pub fn checkpoint_path(&self) -> PathBuf {
        self.file(files::CHECKPOINT)
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.file(files::METRICS)
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// An error about this run directory.
    pub fn error(&self, message: impl Into<String>) -> InferError {
        InferError::Run {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(self.file(files::CHECKPOINT_DIR)).map_err(io_err(&self.path))
    }

    /// The run's config, checked.
    pub fn load_config<C: RunConfig>(&self) -> Result<C> {
        let config: C = self.load_toml_config()?;
        config.validate()?;
        Ok(config)
    }

    /// The resolved `config.toml` of any task.
    pub fn load_toml_config<T: DeserializeOwned>(&self) -> Result<T> {
        let path = self.config_path();
        if !path.exists() {
            return Err(self.error(
                "no config.toml here: is this a run directory written by `vitrine train`?",
            ));
        }
        crate::config::load_toml(&path, &[])
    }

    pub fn save_toml_config<T: Serialize>(&self, config: &T) -> Result<()> {
        let path = self.config_path();
        atomic_save(&path, to_toml_string(config).as_bytes()).map_err(io_err(&path))
    }

    /// The task named in a run's `config.toml` (`search` when absent).
    pub fn task(&self) -> Result<TaskKind> {
        TaskKind::of_table(&self.load_toml_config()?)
    }

    /// Refuses a run of another task: `what` names the kind of run wanted in the message.
    pub fn expect_task(&self, task: TaskKind, what: &str) -> Result<()> {
        let found = self.task()?;
        if found != task {
            return Err(self.error(format!(
                "is a {:?} run; {what} (task {:?}) is needed",
                found.name(),
                task.name()
            )));
        }
        Ok(())
    }

    /// A trained run of `task` (any task when None; `what` names the kind wanted): its
    /// checked config and its tokenizer, which must fit the model's vocabulary.
    pub fn open<C: RunConfig>(
        path: &Path,
        task: Option<(TaskKind, &str)>,
    ) -> Result<(Self, C, Tokenizer)> {
        let dir = Self::new(path);
        if let Some((task, what)) = task {
            dir.expect_task(task, what)?;
        }
        let mut config: C = dir.load_config()?;
        let tokenizer = match config.embedding_rows() {
            Some(rows) => {
                let t = Tokenizer::from_file(&dir.file(files::TOKENIZER))?;
                if t.vocab_size() > rows {
                    return Err(dir.error(format!(
                        "tokenizer.json has {} tokens but the model's embedding has {rows} rows",
                        t.vocab_size()
                    )));
                }
                t
            }
            None => {
                let vocab = config.vocab_size_mut().map_or(0, |(_, v)| *v);
                dir.load_tokenizer(vocab)?
            }
        };
        Ok((dir, config, tokenizer))
    }

    /// The run's `tokenizer.json`, checked against the model's vocabulary size.
    pub fn load_tokenizer(&self, vocab_size: usize) -> Result<Tokenizer> {
        let tokenizer = Tokenizer::from_file(&self.file(files::TOKENIZER))?;
        if tokenizer.vocab_size() != vocab_size {
            return Err(self.error(format!(
                "tokenizer.json has {} tokens but the model has {vocab_size}",
                tokenizer.vocab_size(),
            )));
        }
        Ok(tokenizer)
    }

    pub fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.file(name);
        let bytes = serde_json::to_vec_pretty(value).expect("JSON serialises");
        atomic_save(&path, &bytes).map_err(io_err(&path))
    }

    pub fn load_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.file(name);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| InferError::Run {
            path,
            message: format!("invalid JSON: {e}"),
        })
    }

    /// Appends one JSON line to `metrics.jsonl` (flushed so a crash loses at most a line).
    pub fn append_metrics(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        writeln!(f, "{value}")
            .and_then(|_| f.flush())
            .map_err(io_err(&path))
    }

    /// Drops metrics lines past `step` (after a resume, the lines of the lost work).
    pub fn truncate_metrics_after(&self, step: usize) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        atomic_save(&path, kept.as_bytes()).map_err(io_err(&path))
    }

    /// Loads the trained image encoder of a search run.
    pub fn load_encoder<B: Backend>(
        &self,
        config: &ImageEncoderConfig,
        device: &B::Device,
    ) -> Result<ImageEncoder<B>> {
        self.load_weights(config.init::<B>(device)?, device)
    }

    /// Loads the final weights (`model.mpk`) into `module`.
    pub fn load_weights<B: Backend, M: Module<B>>(
        &self,
        module: M,
        device: &B::Device,
    ) -> Result<M> {
        let path = self.model_path();
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => self.error(
                "no model.mpk: the run has not finished training (resume it with `vitrine train --resume`)",
            ),
            _ => io_err(&path)(source),
        })?;
        load_module_bytes(module, bytes, &path, device)
    }
}

pub fn module_to_bytes<B: Backend, M: Module<B>>(module: M) -> Vec<u8> {
    Rec::default()
        .record(module.into_record(), ())
        .expect("module records serialise")
}

/// Loads weights into `module`; a file from another architecture or a corrupted file is an
/// error naming the file, never a panic.
pub fn load_module_bytes<B: Backend, M: Module<B>>(
    module: M,
    bytes: Vec<u8>,
    path: &Path,
    device: &B::Device,
) -> Result<M> {
    let record = Recorder::<B>::load::<M::Record>(&Rec::default(), bytes, device).map_err(|e| {
        InferError::Checkpoint {
            path: path.to_owned(),
            message: format!("cannot load weights ({e}); was it written by this model config?"),
        }
    })?;
    Ok(module.load_record(record))
}

pub fn save_module<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<()> {
    atomic_save(path, &module_to_bytes(module)).map_err(io_err(path))
}
