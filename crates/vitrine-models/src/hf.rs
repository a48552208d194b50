//! Pretrained Hugging Face checkpoints: where they are, what their `config.json` says, and
//! the tensors of their `model.safetensors`, copied into our own modules.
//!
//! A model is named as a local folder (`config.json`, `model.safetensors`, and
//! `tokenizer.json` / `preprocessor_config.json` where the model has them) or as
//! `hf:<repo>[@revision]`, fetched through `hf-hub` into the standard cache (`HF_HOME`,
//! default `~/.cache/huggingface`). With `HF_HUB_OFFLINE=1` only the cache is read. Pickle
//! checkpoints (`.bin`, `.pt`) are never loaded: they can run code.
//!
//! Each model's file (`gpt.rs`, `vit.rs`, `clip.rs`, `captioner.rs`) holds its name mapping
//! and calls [`Weights`] to copy one tensor at a time; [`Weights::finish`] then reports every
//! missing, unexpected and mis-shaped tensor together, by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::Value;
use thiserror::Error;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// Names listed in an error before "... and N more".
const LIST_MAX: usize = 12;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum HfError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{}", tensor_report(file, missing, unexpected, mismatched))]
    Tensors {
        file: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// `name: [file shape] where [expected] was expected`.
        mismatched: Vec<String>,
    },
    #[error("hub: {0}")]
    Hub(String),
}

fn tensor_report(
    file: &Path,
    missing: &[String],
    unexpected: &[String],
    mismatched: &[String],
) -> String {
    let list = |what: &str, names: &[String]| {
        if names.is_empty() {
            return String::new();
        }
        let shown: Vec<&str> = names.iter().take(LIST_MAX).map(String::as_str).collect();
        let more = names.len().saturating_sub(LIST_MAX);
        let tail = if more > 0 {
            format!(" ... and {more} more")
        } else {
            String::new()
        };
        format!("; {} {what}: {}{tail}", names.len(), shown.join(", "))
    };
    format!(
        "{} does not fit the model{}{}{}",
        file.display(),
        list("missing", missing),
        list("unexpected", unexpected),
        list("with the wrong shape", mismatched)
    )
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> HfError {
    HfError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Where a pretrained model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Folder(PathBuf),
    Hub { repo: String, revision: String },
}

impl std::str::FromStr for ModelSource {
    type Err = HfError;
    fn from_str(spec: &str) -> Result<Self, HfError> {
        let Some(rest) = spec.strip_prefix("hf:") else {
            return Ok(Self::Folder(PathBuf::from(spec)));
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (rest, "main"),
        };
        let valid_part = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(HfError::NotFound(format!(
                "{spec:?} is not a Hugging Face model name: use hf:<name> or hf:<owner>/<name>[@revision]"
            )));
        }
        if revision.is_empty() || revision.contains("..") {
            return Err(HfError::NotFound(format!(
                "{spec:?}: empty or invalid revision after '@'"
            )));
        }
        Ok(Self::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// Whether `HF_HUB_OFFLINE` asks for the cache only (as `huggingface_hub` reads it).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The folder holding a model's files: `spec` itself, or its snapshot in the HF cache
/// (downloaded first unless `HF_HUB_OFFLINE` is set).
pub fn resolve(spec: &str) -> Result<PathBuf, HfError> {
    resolve_with(spec, &hf_hub::Cache::from_env(), offline_from_env())
}

/// [`resolve`] against a given cache (tests use a temporary one).
pub fn resolve_with(spec: &str, cache: &hf_hub::Cache, offline: bool) -> Result<PathBuf, HfError> {
    let (repo, revision) = match spec.parse::<ModelSource>()? {
        ModelSource::Folder(dir) => {
            check_folder(&dir)?;
            return Ok(dir);
        }
        ModelSource::Hub { repo, revision } => (repo, revision),
    };
    let hub_repo =
        hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Model, revision.clone());
    let cached = |file: &str| {
        cache.repo(hub_repo.clone()).get(file).or_else(|| {
            // A pinned commit is a snapshot folder of its own, with no ref file.
            let p = cache
                .path()
                .join(hub_repo.folder_name())
                .join("snapshots")
                .join(&revision)
                .join(file);
            p.exists().then_some(p)
        })
    };
    let config = if offline {
        cached(CONFIG_FILE).ok_or_else(|| {
            HfError::NotFound(format!(
                "hf:{repo}@{revision} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set: download it once with the network on, or pass a local folder",
                cache.path().display()
            ))
        })?
    } else {
        let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .build()
            .map_err(|e| HfError::Hub(e.to_string()))?;
        let api_repo = api.repo(hub_repo.clone());
        let get = |file: &str| {
            cached(file).map(Ok).unwrap_or_else(|| {
                api_repo
                    .get(file)
                    .map_err(|e| HfError::Hub(format!("hf:{repo}@{revision}: {file}: {e}")))
            })
        };
        let config = get(CONFIG_FILE)?;
        get(WEIGHTS_FILE).map_err(|e| {
            HfError::NotFound(format!(
                "{e} (only safetensors checkpoints are loaded; pickle .bin files are not)"
            ))
        })?;
        // Optional: not every model has a tokenizer or an image processor.
        for file in [TOKENIZER_FILE, PREPROCESSOR_FILE] {
            let _ = get(file);
        }
        config
    };
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HfError::NotFound(format!("{}: no parent folder", config.display())))?;
    check_folder(&dir)?;
    Ok(dir)
}

fn check_folder(dir: &Path) -> Result<(), HfError> {
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(HfError::NotFound(format!(
            "{}: no {CONFIG_FILE} (expected a Hugging Face model folder or hf:<repo>)",
            dir.display()
        )));
    }
    if !dir.join(WEIGHTS_FILE).is_file() {
        let pickle = ["pytorch_model.bin", "model.pt"]
            .iter()
            .any(|f| dir.join(f).exists());
        let sharded = dir.join("model.safetensors.index.json").exists();
        return Err(HfError::NotFound(format!(
            "{}: no {WEIGHTS_FILE}{}",
            dir.display(),
            if sharded {
                " (sharded checkpoints are not supported: merge the shards into one file)"
            } else if pickle {
                " (pickle checkpoints are not loaded; convert it to safetensors first)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// A model folder's `config.json`, with typed getters whose errors name the file and key.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub path: PathBuf,
    pub value: Value,
}

impl HfConfig {
    pub fn read(dir: &Path) -> Result<Self, HfError> {
        Self::read_file(&dir.join(CONFIG_FILE))
    }

    pub fn read_file(path: &Path) -> Result<Self, HfError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        let value = serde_json::from_str(&text).map_err(|e| HfError::Config {
            path: path.to_owned(),
            message: format!("not valid JSON: {e}"),
        })?;
        Ok(Self {
            path: path.to_owned(),
            value,
        })
    }

    pub fn err(&self, message: impl Into<String>) -> HfError {
        HfError::Config {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The nested table `key` (e.g. `vision_config`) as a config of its own.
    pub fn sub(&self, key: &str) -> Result<Self, HfError> {
        match self.value.get(key) {
            Some(v @ Value::Object(_)) => Ok(Self {
                path: self.path.clone(),
                value: v.clone(),
            }),
            _ => Err(self.err(format!("no \"{key}\" table"))),
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    pub fn model_type(&self) -> Result<&str, HfError> {
        self.str("model_type")
            .ok_or_else(|| self.err("no \"model_type\""))
    }

    pub fn usize(&self, key: &str) -> Result<usize, HfError> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(format!("no \"{key}\"")))
    }

    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>, HfError> {
        let n = self.get(key, Value::as_u64, "a non-negative integer")?;
        Ok(n.map(|n| n as usize))
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, HfError> {
        Ok(self.get(key, Value::as_f64, "a number")?.unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, HfError> {
        Ok(self
            .get(key, Value::as_bool, "true/false")?
            .unwrap_or(default))
    }

    /// `key`'s value read by `read` (None when absent or null); a value of another kind is
    /// an error saying it is not `what`.
    fn get<T>(
        &self,
        key: &str,
        read: impl Fn(&Value) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>, HfError> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .ok_or_else(|| self.err(format!("\"{key}\" = {v} is not {what}"))),
        }
    }

    /// `key` must be one of `allowed` (or absent, meaning `default`).
    pub fn expect_str(
        &self,
        key: &str,
        default: &str,
        allowed: &[&str],
    ) -> Result<String, HfError> {
        let v = self.str(key).unwrap_or(default);
        if allowed.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(self.err(format!(
                "\"{key}\" = {v:?} is not supported (supported: {})",
                allowed.join(", ")
            )))
        }
    }
}

/// How a checkpoint lays out a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// torch `nn.Linear`: [out, in] (transposed into Burn's [in, out]).
    OutIn,
    /// GPT-2's `Conv1D`: [in, out], Burn's own layout.
    InOut,
}

/// One tensor held on the host as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    fn transpose(&self) -> Self {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self {
            shape: vec![c, r],
            data,
        }
    }

    /// Columns `cols` of a 2-d tensor, or elements `cols` of a 1-d one.
    fn columns(&self, cols: std::ops::Range<usize>) -> Self {
        match self.shape[..] {
            [r, c] => {
                let mut data = Vec::with_capacity(r * cols.len());
                for i in 0..r {
                    data.extend_from_slice(&self.data[i * c + cols.start..i * c + cols.end]);
                }
                Self {
                    shape: vec![r, cols.len()],
                    data,
                }
            }
            _ => Self {
                shape: vec![cols.len()],
                data: self.data[cols].to_vec(),
            },
        }
    }
}

/// The tensors of one safetensors file, taken one by one into a module. Problems are
/// collected rather than returned at once, so one error lists all of them.
#[derive(Debug)]
pub struct Weights {
    file: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<String>,
}

impl Weights {
    /// Reads every tensor of `path` (F32, F16, BF16 or F64) as f32.
    pub fn open(path: &Path) -> Result<Self, HfError> {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| io_err(path, format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                safetensors::Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
                // Integer buffers (e.g. CLIP's position_ids) are never weights.
                _ => continue,
            };
            tensors.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Self::from_tensors(path, tensors))
    }

    pub fn from_tensors(file: &Path, tensors: BTreeMap<String, HostTensor>) -> Self {
        Self {
            file: file.to_owned(),
            tensors,
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The first of `prefixes` under which `probe` exists (checkpoints saved from a task
    /// head carry e.g. `transformer.`, bare models none).
    pub fn prefix_of<'a>(&self, probe: &str, prefixes: &[&'a str]) -> &'a str {
        prefixes
            .iter()
            .find(|p| self.contains(&format!("{p}{probe}")))
            .copied()
            .unwrap_or(prefixes[0])
    }

    /// Marks tensors the model has no use for (buffers, unused heads) as expected.
    pub fn ignore(&mut self, pred: impl Fn(&str) -> bool) {
        let names: Vec<String> = self.tensors.keys().filter(|n| pred(n)).cloned().collect();
        self.used.extend(names);
    }

    /// The tensor `name` with `shape`; a missing one or a shape mismatch is recorded for
    /// [`Weights::finish`] and `None` returned.
    pub fn host(&mut self, name: &str, shape: &[usize]) -> Option<HostTensor> {
        let Some(t) = self.tensors.get(name) else {
            self.missing.push(name.to_string());
            return None;
        };
        self.used.insert(name.to_string());
        let same = t.shape == shape
            // [1, 1, D] and [D] hold the same values.
            || (t.shape.iter().product::<usize>() == shape.iter().product::<usize>()
                && t.shape.iter().filter(|&&d| d != 1).eq(shape.iter().filter(|&&d| d != 1)));
        if !same {
            self.mismatched.push(format!(
                "{name}: {:?} where {shape:?} was expected",
                t.shape
            ));
            return None;
        }
        Some(HostTensor {
            shape: shape.to_vec(),
            data: t.data.clone(),
        })
    }

    /// A host tensor of any shape (for fused or reshaped weights the caller checks).
    pub fn raw(&mut self, name: &str) -> Option<HostTensor> {
        match self.tensors.get(name) {
            Some(t) => {
                self.used.insert(name.to_string());
                Some(t.clone())
            }
            None => {
                self.missing.push(name.to_string());
                None
            }
        }
    }

    pub fn mismatch(&mut self, name: &str, got: &[usize], expected: &[usize]) {
        self.mismatched
            .push(format!("{name}: {got:?} where {expected:?} was expected"));
    }

    /// Copies `name` into `param` (same shape up to unit axes).
    pub fn param<B: Backend, const D: usize>(
        &mut self,
        param: &mut Param<Tensor<B, D>>,
        name: &str,
    ) {
        let shape = param.dims();
        if let Some(t) = self.host(name, &shape) {
            set(param, t);
        }
    }

    /// Copies a linear layer: `{prefix}.weight` in `layout`, `{prefix}.bias` if the layer
    /// has one (a checkpoint without it, as CLIP's projections, leaves it at zero).
    pub fn linear<B: Backend>(&mut self, lin: &mut Linear<B>, prefix: &str, layout: Layout) {
        let [d_in, d_out] = lin.weight.dims();
        let name = format!("{prefix}.weight");
        let w = match layout {
            Layout::InOut => self.host(&name, &[d_in, d_out]),
            Layout::OutIn => self.host(&name, &[d_out, d_in]).map(|t| t.transpose()),
        };
        if let Some(w) = w {
            set(&mut lin.weight, w);
        }
        self.bias(lin, &format!("{prefix}.bias"));
    }

    fn bias<B: Backend>(&mut self, lin: &mut Linear<B>, name: &str) {
        if let Some(b) = lin.bias.as_mut() {
            if self.contains(name) {
                self.param(b, name);
            } else {
                let d = b.dims();
                set(
                    b,
                    HostTensor {
                        shape: d.to_vec(),
                        data: vec![0.0; d[0]],
                    },
                );
            }
        }
    }

    /// Copies columns `part * d_out .. (part + 1) * d_out` of a fused `Conv1D` ([in, k*out],
    /// e.g. GPT-2's `c_attn` = query | key | value) into `lin`.
    pub fn fused_linear<B: Backend>(
        &mut self,
        lin: &mut Linear<B>,
        prefix: &str,
        part: usize,
        parts: usize,
    ) {
        let [d_in, d_out] = lin.weight.dims();
        let (wn, bn) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let cols = part * d_out..(part + 1) * d_out;
        if let Some(w) = self.raw(&wn) {
            if w.shape == [d_in, parts * d_out] {
                set(&mut lin.weight, w.columns(cols.clone()));
            } else {
                self.mismatch(&wn, &w.shape, &[d_in, parts * d_out]);
            }
        }
        if let (Some(b), Some(t)) = (lin.bias.as_mut(), self.raw(&bn)) {
            if t.shape == [parts * d_out] {
                set(b, t.columns(cols));
            } else {
                self.mismatch(&bn, &t.shape, &[parts * d_out]);
            }
        }
    }

    /// A non-overlapping patch convolution's weight [D, C, p, p] into a linear layer over
    /// flattened patches [C*p*p, D] (the flattening order of `vit.rs`).
    pub fn conv_as_linear<B: Backend>(&mut self, lin: &mut Linear<B>, name: &str) {
        let [k, d] = lin.weight.dims();
        if let Some(t) = self.raw(name) {
            if t.shape.len() == 4 && t.shape[0] == d && t.shape.iter().product::<usize>() == d * k {
                let flat = HostTensor {
                    shape: vec![d, k],
                    data: t.data,
                };
                set(&mut lin.weight, flat.transpose());
            } else {
                self.mismatch(name, &t.shape, &[d, k]);
            }
        }
    }

    /// `{prefix}.weight` / `{prefix}.bias` into a LayerNorm's gamma / beta.
    pub fn layer_norm<B: Backend>(&mut self, ln: &mut LayerNorm<B>, prefix: &str) {
        self.param(&mut ln.gamma, &format!("{prefix}.weight"));
        if let Some(beta) = ln.beta.as_mut() {
            self.param(beta, &format!("{prefix}.bias"));
        }
    }

    pub fn embedding<B: Backend>(&mut self, emb: &mut Embedding<B>, name: &str) {
        self.param(&mut emb.weight, name);
    }

    /// Ok when every tensor the model needs was present with its shape and every tensor of
    /// the file was used (or ignored); otherwise one error naming all of them.
    pub fn finish(self) -> Result<(), HfError> {
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| !self.used.contains(*n))
            .cloned()
            .collect();
        if self.missing.is_empty() && unexpected.is_empty() && self.mismatched.is_empty() {
            return Ok(());
        }
        Err(HfError::Tensors {
            file: self.file,
            missing: self.missing,
            unexpected,
            mismatched: self.mismatched,
        })
    }
}

fn set<B: Backend, const D: usize>(param: &mut Param<Tensor<B, D>>, t: HostTensor) {
    let device = param.device();
    let shape: [usize; D] = param.dims();
    // A trainable leaf, as `Param::from_tensor` makes (fine-tuning updates it).
    let value = Tensor::<B, D>::from_data(TensorData::new(t.data, shape), &device).require_grad();
    *param = Param::initialized(param.id, value);
}

/// Copies a folder's `model.safetensors` into `model` (built from its config) with `load`,
/// which maps the names; then every missing, unexpected and mis-shaped tensor is reported
/// together.
/// A loaded checkpoint: its config and the model holding its weights.
pub type Loaded<C, M> = Result<(C, M), crate::ModelError>;

/// A checkpoint folder as a model: its config read from `config.json` by `read`, the
/// model `init` builds from it, and the weights `load` copies in (every tensor must be
/// used, see [`Weights::finish`]).
pub fn load_checkpoint<C, M, E: From<HfError>>(
    dir: &Path,
    read: impl FnOnce(&HfConfig) -> Result<C, HfError>,
    init: impl FnOnce(&C) -> Result<M, E>,
    load: impl FnOnce(&mut M, &mut Weights),
) -> Result<(C, M), E> {
    let config = read(&HfConfig::read(dir)?)?;
    let model = load_folder(dir, init(&config)?, load)?;
    Ok((config, model))
}

pub fn load_folder<M>(
    dir: &Path,
    mut model: M,
    load: impl FnOnce(&mut M, &mut Weights),
) -> Result<M, HfError> {
    let mut w = Weights::open(&dir.join(WEIGHTS_FILE))?;
    load(&mut model, &mut w);
    w.finish()?;
    Ok(model)
}

/// An identity linear layer (a checkpoint with no projection where our module has one).
pub fn set_identity<B: Backend>(lin: &mut Linear<B>) {
    let [d_in, d_out] = lin.weight.dims();
    let mut data = vec![0.0; d_in * d_out];
    for i in 0..d_in.min(d_out) {
        data[i * d_out + i] = 1.0;
    }
    set(
        &mut lin.weight,
        HostTensor {
            shape: vec![d_in, d_out],
            data,
        },
    );
    if let Some(b) = lin.bias.as_mut() {
        set(
            b,
            HostTensor {
                shape: vec![d_out],
                data: vec![0.0; d_out],
            },
        );
    }
}

/// Sets every element of `param` to `value`.
pub fn fill<B: Backend, const D: usize>(param: &mut Param<Tensor<B, D>>, value: f32) {
    let shape = param.dims();
    let n = shape.iter().product();
    set(
        param,
        HostTensor {
            shape: shape.to_vec(),
            data: vec![value; n],
        },
    );
}

/// A module's tensors back on the host, under Hugging Face names (for exporting a run as
/// an HF folder): the inverse of [`Weights`].
#[derive(Debug, Default)]
pub struct Export {
    pub tensors: BTreeMap<String, HostTensor>,
}

impl Export {
    pub fn param<B: Backend, const D: usize>(&mut self, name: &str, p: &Param<Tensor<B, D>>) {
        self.put(name, host_of(&p.val()));
    }

    pub fn put(&mut self, name: &str, t: HostTensor) {
        self.tensors.insert(name.to_string(), t);
    }

    pub fn linear<B: Backend>(&mut self, prefix: &str, lin: &Linear<B>, layout: Layout) {
        let w = host_of(&lin.weight.val());
        let w = match layout {
            Layout::InOut => w,
            Layout::OutIn => w.transpose(),
        };
        self.put(&format!("{prefix}.weight"), w);
        if let Some(b) = &lin.bias {
            self.param(&format!("{prefix}.bias"), b);
        }
    }

    /// Several linear layers side by side as one fused `Conv1D` [in, k*out].
    pub fn fused_linear<B: Backend>(&mut self, prefix: &str, parts: &[&Linear<B>]) {
        let ws: Vec<HostTensor> = parts.iter().map(|l| host_of(&l.weight.val())).collect();
        let (r, c) = (ws[0].shape[0], ws[0].shape[1]);
        let mut data = Vec::with_capacity(r * c * ws.len());
        for i in 0..r {
            for w in &ws {
                data.extend_from_slice(&w.data[i * c..(i + 1) * c]);
            }
        }
        self.put(
            &format!("{prefix}.weight"),
            HostTensor {
                shape: vec![r, c * ws.len()],
                data,
            },
        );
        let mut bias = Vec::new();
        for l in parts {
            match &l.bias {
                Some(b) => bias.extend(host_of(&b.val()).data),
                None => bias.extend(std::iter::repeat_n(0.0, c)),
            }
        }
        self.put(
            &format!("{prefix}.bias"),
            HostTensor {
                shape: vec![bias.len()],
                data: bias,
            },
        );
    }

    pub fn layer_norm<B: Backend>(&mut self, prefix: &str, ln: &LayerNorm<B>) {
        self.param(&format!("{prefix}.weight"), &ln.gamma);
        if let Some(b) = &ln.beta {
            self.param(&format!("{prefix}.bias"), b);
        }
    }

    /// The tensors as safetensors bytes (f32, little-endian).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, HfError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), t.shape.clone(), raw)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, raw)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), raw)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| HfError::Hub(format!("{n}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors::serialize(views, Some(meta)).map_err(|e| HfError::Hub(e.to_string()))
    }
}

fn host_of<B: Backend, const D: usize>(t: &Tensor<B, D>) -> HostTensor {
    let data = t.to_data().convert::<f32>();
    HostTensor {
        shape: t.dims().to_vec(),
        data: data.to_vec().expect("f32 after convert"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_sources_parse() {
        assert_eq!(
            "hf:gpt2".parse::<ModelSource>().unwrap(),
            ModelSource::Hub {
                repo: "gpt2".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            "hf:openai/clip-vit-base-patch32@v1.0"
                .parse::<ModelSource>()
                .unwrap(),
            ModelSource::Hub {
                repo: "openai/clip-vit-base-patch32".into(),
                revision: "v1.0".into()
            }
        );
        assert_eq!(
            "models/gpt2".parse::<ModelSource>().unwrap(),
            ModelSource::Folder("models/gpt2".into())
        );
        for bad in [
            "hf:",
            "hf:a/b/c",
            "hf:../x",
            "hf:gpt2@",
            "hf:a b",
            "hf:gpt2@../x",
        ] {
            assert!(bad.parse::<ModelSource>().is_err(), "{bad}");
        }
    }

    /// The cache layout `huggingface_hub` writes: refs/<revision> holds a commit, the files
    /// sit in snapshots/<commit>/. Offline, a cached model resolves and a missing one is an
    /// error naming the cache, without touching the network.
    #[test]
    fn offline_resolution_reads_the_cache_only() {
        let root = std::env::temp_dir().join(format!("vitrine-hf-cache-{}", std::process::id()));
        let repo = root.join("models--acme--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        std::fs::write(snap.join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(snap.join(WEIGHTS_FILE), b"").unwrap();
        let cache = hf_hub::Cache::new(root.clone());
        assert_eq!(resolve_with("hf:acme/tiny", &cache, true).unwrap(), snap);
        // A pinned commit without a ref file.
        assert_eq!(
            resolve_with("hf:acme/tiny@abc123", &cache, true).unwrap(),
            snap
        );
        let err = resolve_with("hf:acme/other", &cache, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        // A folder with a pickle checkpoint only is refused with the reason.
        let pickle = root.join("pickle");
        std::fs::create_dir_all(&pickle).unwrap();
        std::fs::write(pickle.join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(pickle.join("pytorch_model.bin"), b"").unwrap();
        let err = resolve_with(pickle.to_str().unwrap(), &cache, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pickle"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn host(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
        HostTensor { shape, data }
    }

    #[test]
    fn problems_are_listed_together_by_name() {
        use burn::backend::Flex;
        use burn::nn::LinearConfig;
        let mut tensors = BTreeMap::new();
        tensors.insert("a.weight".to_string(), host(vec![3, 2], vec![0.0; 6]));
        tensors.insert("stray".to_string(), host(vec![1], vec![0.0]));
        let mut w = Weights::from_tensors(Path::new("m.safetensors"), tensors);
        let mut lin = LinearConfig::new(2, 4).init::<Flex>(&Default::default());
        // [out, in] = [4, 2] expected; the file has [3, 2]; no bias: zero, not an error.
        w.linear(&mut lin, "a", Layout::OutIn);
        let mut lin2 = LinearConfig::new(2, 2).init::<Flex>(&Default::default());
        w.linear(&mut lin2, "b", Layout::OutIn);
        let err = w.finish().unwrap_err();
        let HfError::Tensors {
            missing,
            unexpected,
            mismatched,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(missing, &["b.weight"]);
        assert_eq!(unexpected, &["stray"]);
        assert_eq!(mismatched, &["a.weight: [3, 2] where [4, 2] was expected"]);
        let text = err.to_string();
        assert!(
            text.contains("1 missing: b.weight") && text.contains("1 unexpected: stray"),
            "{text}"
        );
    }

    #[test]
    fn linear_layouts_and_fused_columns() {
        use burn::backend::Flex;
        use burn::nn::LinearConfig;
        // torch [out=3, in=2] = [[1,2],[3,4],[5,6]] is Burn [in=2, out=3] = [[1,3,5],[2,4,6]].
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "l.weight".to_string(),
            host(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]),
        );
        // Conv1D [in=2, 2*out=4]: query | key.
        tensors.insert(
            "c.weight".to_string(),
            host(vec![2, 4], vec![1., 2., 3., 4., 5., 6., 7., 8.]),
        );
        tensors.insert("c.bias".to_string(), host(vec![4], vec![9., 10., 11., 12.]));
        let mut w = Weights::from_tensors(Path::new("m"), tensors);
        let dev = Default::default();
        let mut l = LinearConfig::new(2, 3).with_bias(false).init::<Flex>(&dev);
        w.linear(&mut l, "l", Layout::OutIn);
        let v: Vec<f32> = l.weight.val().into_data().to_vec().unwrap();
        assert_eq!(v, [1., 3., 5., 2., 4., 6.]);
        let mut k = LinearConfig::new(2, 2).init::<Flex>(&dev);
        w.fused_linear(&mut k, "c", 1, 2);
        let v: Vec<f32> = k.weight.val().into_data().to_vec().unwrap();
        assert_eq!(v, [3., 4., 7., 8.]);
        let b: Vec<f32> = k.bias.unwrap().val().into_data().to_vec().unwrap();
        assert_eq!(b, [11., 12.]);
        w.finish().unwrap();
    }
}
