//! Run directories: `config.toml` (resolved), `model.mpk` (weights), `labels.json`,
//! `split.json`, `metrics.jsonl`, `checkpoints/`, `eval.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use serde::{de::DeserializeOwned, Serialize};
use vitrine_data::fsio::atomic_save;
use vitrine_data::text::Tokenizer;
use vitrine_models::{ImageEncoder, ImageEncoderConfig};

use crate::config::{to_toml_string, SearchRunConfig};
use crate::error::{io_err, Result, TrainError};

pub type Rec = NamedMpkBytesRecorder<FullPrecisionSettings>;

#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }
    pub fn model_path(&self) -> PathBuf {
        self.path.join("model.mpk")
    }
    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join("checkpoints").join("last.ckpt")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(self.path.join("checkpoints")).map_err(io_err(&self.path))
    }

    pub fn save_config(&self, config: &SearchRunConfig) -> Result<()> {
        self.save_toml_config(config)
    }

    pub fn load_config(&self) -> Result<SearchRunConfig> {
        let config: SearchRunConfig = self.load_toml_config()?;
        config.validate()?;
        Ok(config)
    }

    /// The resolved `config.toml` of any task.
    pub fn load_toml_config<T: DeserializeOwned>(&self) -> Result<T> {
        let path = self.config_path();
        if !path.exists() {
            return Err(TrainError::Run {
                path: self.path.clone(),
                message: "no config.toml here: is this a run directory written by `vitrine train`?"
                    .into(),
            });
        }
        crate::config::load_toml(&path, &[])
    }

    pub fn save_toml_config<T: Serialize>(&self, config: &T) -> Result<()> {
        let path = self.config_path();
        atomic_save(&path, to_toml_string(config).as_bytes()).map_err(io_err(&path))
    }

    /// The task named in a run's `config.toml` (`search` when absent).
    pub fn task(&self) -> Result<String> {
        let value: toml::Table = self.load_toml_config()?;
        Ok(value
            .get("task")
            .and_then(|t| t.as_str())
            .unwrap_or("search")
            .to_string())
    }

    /// Refuses a run of another task: `what` names the kind of run wanted in the message.
    pub fn expect_task(&self, task: &str, what: &str) -> Result<()> {
        let found = self.task()?;
        if found != task {
            return Err(TrainError::Run {
                path: self.path.clone(),
                message: format!("is a {found:?} run; {what} (task {task:?}) is needed"),
            });
        }
        Ok(())
    }

    /// The run's `tokenizer.json`, checked against the model's vocabulary size.
    pub fn load_tokenizer(&self, vocab_size: usize) -> Result<Tokenizer> {
        let tokenizer = Tokenizer::from_file(&self.file(crate::lm::TOKENIZER_FILE))?;
        if tokenizer.vocab_size() != vocab_size {
            return Err(TrainError::Run {
                path: self.path.clone(),
                message: format!(
                    "tokenizer.json has {} tokens but the model has {vocab_size}",
                    tokenizer.vocab_size(),
                ),
            });
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
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Run {
            path: path.clone(),
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
            std::io::ErrorKind::NotFound => TrainError::Run {
                path: self.path.clone(),
                message: "no model.mpk: the run has not finished training (resume it with `vitrine train --resume`)".into(),
            },
            _ => TrainError::Io { path: path.clone(), source },
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
        TrainError::Checkpoint {
            path: path.to_owned(),
            message: format!("cannot load weights ({e}); was it written by this model config?"),
        }
    })?;
    Ok(module.load_record(record))
}

pub fn save_module<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<()> {
    atomic_save(path, &module_to_bytes(module)).map_err(io_err(path))
}
