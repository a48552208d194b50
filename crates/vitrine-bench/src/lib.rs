//! The benchmark suite behind `vitrine bench` and `scripts/bench.sh`: image-encoder
//! inference, one training step of each model, generation with a KV cache, and exact
//! top-k search, on whatever backend the caller picks. Every figure is a median over timed
//! repetitions after warm-up ([`timing`]); the report serialises to `bench-results.json`
//! and renders as one Markdown table ([`markdown`]).
//!
//! Inputs are synthetic (random pixels, tokens and embeddings of the real shapes): the
//! suite measures the models and the index, not data loading.

pub mod ann;
pub mod parity;
pub mod timing;
mod workloads;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vitrine_models::bert::BertConfig;
use vitrine_models::{ImageEncoderConfig, ModelError};

pub use parity::{parity, ParityConfig, ParityReport};
pub use timing::TimingConfig;
/// Float type of the inference workloads (encoders and generation); training and the
/// search index always run in f32.
pub use vitrine_models::Precision;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark config: {0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Infer(#[from] vitrine_infer::InferError),
    #[error(transparent)]
    Index(#[from] vitrine_index::IndexError),
    #[error("backend: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    Encoder,
    Train,
    Generate,
    Search,
}

impl std::str::FromStr for Group {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "encoder" | "encoders" => Ok(Self::Encoder),
            "train" => Ok(Self::Train),
            "generate" => Ok(Self::Generate),
            "search" => Ok(Self::Search),
            other => Err(format!(
                "unknown benchmark group {other:?}: use encoder, train, generate or search"
            )),
        }
    }
}

/// Encoder inference: images/s at each batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderCase {
    /// One of [`ImageEncoderConfig::PRESETS`].
    pub preset: String,
    pub batches: Vec<usize>,
}

/// Sentence-encoder inference (BERT family, random weights of a named shape): sentences/s
/// at each batch size, every row `seq_len` tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderCase {
    /// One of [`BertConfig::PRESETS`].
    pub preset: String,
    pub batches: Vec<usize>,
    pub seq_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainModel {
    /// Image encoder ([`ImageEncoderConfig`] preset) with the supervised contrastive loss.
    Search,
    /// GPT decoder ([`GptConfig`] preset) with next-token cross-entropy.
    Copy,
    /// Captioner (`CaptionerConfig` preset) with teacher-forced cross-entropy.
    Caption,
}

/// One optimiser step (forward, backward, AdamW update): examples/s and tokens/s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCase {
    pub model: TrainModel,
    pub preset: String,
    pub batch: usize,
    /// Tokens per example (copy and caption).
    #[serde(default)]
    pub seq_len: usize,
    /// Vocabulary size for presets whose vocabulary a run's tokenizer sets.
    #[serde(default)]
    pub vocab: Option<usize>,
}

/// Generation with a KV cache: prefill a prompt, then greedy-decode `new_tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateCase {
    /// One of [`GptConfig::PRESETS`].
    pub preset: String,
    #[serde(default)]
    pub vocab: Option<usize>,
    pub batches: Vec<usize>,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
}

/// Exact top-k over random unit embeddings: build time and queries/s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchCase {
    pub rows: usize,
    pub dim: usize,
    pub k: usize,
    /// Queries per call.
    pub query_batches: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchLimits {
    /// Largest batch (images, sequences or queries) one case may ask for.
    pub max_batch: usize,
    /// Largest index (rows x dim x 4 bytes) a search case may build; it is held about three
    /// times over (host embeddings, index, device copy).
    pub max_index_bytes: usize,
    /// Largest score matrix (queries per call x rows x 4 bytes) one search call may build.
    pub max_score_bytes: usize,
}

impl Default for BenchLimits {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            max_index_bytes: 4 << 30,
            max_score_bytes: 1 << 30,
        }
    }
}

/// The workloads to run. [`BenchConfig::full`] is the published suite; a TOML file with the
/// same fields (`vitrine bench --config`) runs exactly the cases it lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchConfig {
    pub timing: TimingConfig,
    pub limits: BenchLimits,
    pub encoders: Vec<EncoderCase>,
    pub text_encoders: Vec<TextEncoderCase>,
    pub train: Vec<TrainCase>,
    pub generate: Vec<GenerateCase>,
    pub search: Vec<SearchCase>,
}

impl Default for BenchConfig {
    /// No workloads: a config file runs exactly the cases it lists.
    fn default() -> Self {
        Self {
            timing: TimingConfig::default(),
            limits: BenchLimits::default(),
            encoders: Vec::new(),
            text_encoders: Vec::new(),
            train: Vec::new(),
            generate: Vec::new(),
            search: Vec::new(),
        }
    }
}

impl BenchConfig {
    /// The published suite (the workloads; about 5 minutes on a 2-core CPU).
    pub fn full() -> Self {
        let enc = |preset: &str| EncoderCase {
            preset: preset.into(),
            batches: vec![1, 32, 128],
        };
        let train = |model, preset: &str, batch, seq_len, vocab| TrainCase {
            model,
            preset: preset.into(),
            batch,
            seq_len,
            vocab,
        };
        Self {
            timing: TimingConfig::default(),
            limits: BenchLimits::default(),
            encoders: ImageEncoderConfig::PRESETS.iter().map(|p| enc(p)).collect(),
            // all-MiniLM-L6-v2's shape at a headline's length.
            text_encoders: vec![TextEncoderCase {
                preset: "minilm-l6".into(),
                batches: vec![1, 64],
                seq_len: 16,
            }],
            train: vec![
                // The shipped recipes' shapes: search-fashion-products, copy-upworthy,
                // caption-fashion-products; GPT-2 small at a CPU-sized batch.
                train(TrainModel::Search, "cnn-products", 64, 0, None),
                train(TrainModel::Copy, "nano-cpu", 32, 64, Some(2048)),
                train(TrainModel::Copy, "gpt2-124m", 4, 128, None),
                train(TrainModel::Caption, "cpu", 32, 24, Some(2106)),
            ],
            generate: vec![GenerateCase {
                preset: "gpt2-124m".into(),
                vocab: None,
                batches: vec![1, 16],
                prompt_tokens: 16,
                new_tokens: 64,
            }],
            search: [100_000, 1_000_000]
                .into_iter()
                .map(|rows| SearchCase {
                    rows,
                    dim: 256,
                    k: 10,
                    query_batches: vec![1, 64],
                })
                .collect(),
        }
    }

    /// Every workload kind at toy sizes: checks the suite end to end in seconds.
    pub fn quick() -> Self {
        Self {
            timing: TimingConfig {
                warmup: 1,
                min_reps: 2,
                max_reps: 3,
                min_secs: 0.0,
            },
            limits: BenchLimits::default(),
            encoders: vec![
                EncoderCase {
                    preset: "cnn-fmnist".into(),
                    batches: vec![1, 4],
                },
                EncoderCase {
                    preset: "vit-tiny".into(),
                    batches: vec![2],
                },
            ],
            text_encoders: vec![TextEncoderCase {
                preset: "tiny".into(),
                batches: vec![1, 3],
                seq_len: 8,
            }],
            train: vec![
                TrainCase {
                    model: TrainModel::Search,
                    preset: "cnn-fmnist".into(),
                    batch: 8,
                    seq_len: 0,
                    vocab: None,
                },
                TrainCase {
                    model: TrainModel::Copy,
                    preset: "tiny".into(),
                    batch: 4,
                    seq_len: 16,
                    vocab: None,
                },
                TrainCase {
                    model: TrainModel::Caption,
                    preset: "tiny".into(),
                    batch: 4,
                    seq_len: 8,
                    vocab: None,
                },
            ],
            generate: vec![GenerateCase {
                preset: "tiny".into(),
                vocab: None,
                batches: vec![1, 3],
                prompt_tokens: 4,
                new_tokens: 8,
            }],
            search: vec![SearchCase {
                rows: 1000,
                dim: 32,
                k: 10,
                query_batches: vec![1, 8],
            }],
        }
    }

    /// Checks every case before anything runs, so a bad case does not fail minutes in.
    pub fn validate(&self) -> Result<()> {
        self.timing.validate()?;
        let bad = |m: String| Err(BenchError::Invalid(m));
        let max_batch = self.limits.max_batch;
        let check_batch = |what: &str, b: usize| {
            if b == 0 || b > max_batch {
                bad(format!(
                    "{what}: batch {b} (allowed 1..={max_batch}, limits.max_batch)"
                ))
            } else {
                Ok(())
            }
        };
        for c in &self.encoders {
            ImageEncoderConfig::preset(&c.preset)?;
            if c.batches.is_empty() {
                return bad(format!("encoder {}: no batch sizes", c.preset));
            }
            for &b in &c.batches {
                check_batch(&format!("encoder {}", c.preset), b)?;
            }
        }
        for c in &self.text_encoders {
            let positions = BertConfig::preset(&c.preset)?.max_positions;
            if c.batches.is_empty() {
                return bad(format!("text encoder {}: no batch sizes", c.preset));
            }
            for &b in &c.batches {
                check_batch(&format!("text encoder {}", c.preset), b)?;
            }
            if c.seq_len < 2 || c.seq_len > positions {
                return bad(format!(
                    "text encoder {}: seq_len {} (allowed 2..={positions}: [CLS] and [SEP] within the model's positions)",
                    c.preset, c.seq_len
                ));
            }
        }
        for c in &self.train {
            check_batch(&format!("train {}", c.preset), c.batch)?;
            match c.model {
                TrainModel::Search => {
                    ImageEncoderConfig::preset(&c.preset)?;
                }
                TrainModel::Copy | TrainModel::Caption => {
                    let n_ctx = match c.model {
                        TrainModel::Copy => workloads::gpt_config(&c.preset, c.vocab)?.n_ctx,
                        _ => {
                            workloads::captioner_config(&c.preset, c.vocab)?
                                .decoder
                                .n_ctx
                        }
                    };
                    if c.seq_len < 2 || c.seq_len > n_ctx + 1 {
                        return bad(format!(
                            "train {}: seq_len {} (allowed 2..={}: the model's context + 1)",
                            c.preset,
                            c.seq_len,
                            n_ctx + 1
                        ));
                    }
                }
            }
        }
        for c in &self.generate {
            let n_ctx = workloads::gpt_config(&c.preset, c.vocab)?.n_ctx;
            if c.batches.is_empty() {
                return bad(format!("generate {}: no batch sizes", c.preset));
            }
            for &b in &c.batches {
                check_batch(&format!("generate {}", c.preset), b)?;
            }
            if c.prompt_tokens == 0 || c.new_tokens == 0 || c.prompt_tokens + c.new_tokens > n_ctx {
                return bad(format!(
                    "generate {}: prompt_tokens {} + new_tokens {} (each >= 1, together <= the model's context {n_ctx})",
                    c.preset, c.prompt_tokens, c.new_tokens
                ));
            }
        }
        for c in &self.search {
            if c.query_batches.is_empty() {
                return bad(format!(
                    "search {} x {}: no query batch sizes",
                    c.rows, c.dim
                ));
            }
            for &b in &c.query_batches {
                check_batch("search queries", b)?;
                let scores = b.saturating_mul(c.rows).saturating_mul(4);
                if scores > self.limits.max_score_bytes {
                    return bad(format!(
                        "search {} x {}, {b} queries per call: {scores} bytes of scores (at most limits.max_score_bytes = {})",
                        c.rows, c.dim, self.limits.max_score_bytes
                    ));
                }
            }
            let bytes = c.rows.saturating_mul(c.dim).saturating_mul(4);
            if c.rows == 0 || c.dim == 0 || bytes > self.limits.max_index_bytes {
                return bad(format!(
                    "search {} x {}: {bytes} bytes of embeddings (rows, dim >= 1; at most limits.max_index_bytes = {})",
                    c.rows, c.dim, self.limits.max_index_bytes
                ));
            }
            if c.k == 0 || c.k > c.rows {
                return bad(format!(
                    "search: k = {} (allowed 1..=rows = {})",
                    c.k, c.rows
                ));
            }
        }
        Ok(())
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub group: Group,
    pub workload: String,
    pub batch: usize,
    /// What `throughput` counts, e.g. "images/s".
    pub unit: String,
    pub throughput: f64,
    /// Seconds per call (one batch, one step, one generation, one search call), in ms.
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub reps: usize,
    pub precision: Precision,
    /// Secondary figures: tokens/s of a training step, time to first token, build time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub os: String,
    pub arch: String,
}

impl Machine {
    pub fn this() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: Machine,
    /// The `--device` flag, e.g. "cpu".
    pub device: String,
    /// Burn's name for the backend.
    pub backend: String,
    pub precision: Precision,
    pub started_unix: u64,
    pub total_secs: f64,
    pub results: Vec<Measurement>,
    /// The workloads that produced `results`, so a run can be repeated exactly.
    pub config: BenchConfig,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Groups to run; empty = all.
    pub groups: Vec<Group>,
    pub precision: Precision,
    /// Label for the report, e.g. "cpu" or "cuda:0".
    pub device_label: String,
}

/// Runs every selected case of `cfg` on `device`; `on_result` sees each row as it lands.
pub fn run_suite<B: AutodiffBackend>(
    cfg: &BenchConfig,
    opts: &RunOptions,
    device: &B::Device,
    on_result: &mut dyn FnMut(&Measurement),
) -> Result<BenchReport> {
    cfg.validate()?;
    let started = std::time::Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let wants = |g| opts.groups.is_empty() || opts.groups.contains(&g);
    let mut results = Vec::new();
    let mut push = |m: Measurement| {
        on_result(&m);
        results.push(m);
    };
    let mut w = workloads::Work {
        timing: &cfg.timing,
        precision: opts.precision,
        push: &mut push,
    };
    for c in cfg.encoders.iter().filter(|_| wants(Group::Encoder)) {
        workloads::encoder::<B::InnerBackend>(c, &mut w, device)?;
    }
    for c in cfg.text_encoders.iter().filter(|_| wants(Group::Encoder)) {
        workloads::text_encoder::<B::InnerBackend>(c, &mut w, device)?;
    }
    for c in cfg.train.iter().filter(|_| wants(Group::Train)) {
        workloads::train_step::<B>(c, &mut w, device)?;
    }
    for c in cfg.generate.iter().filter(|_| wants(Group::Generate)) {
        workloads::generate::<B::InnerBackend>(c, &mut w, device)?;
    }
    for c in cfg.search.iter().filter(|_| wants(Group::Search)) {
        workloads::search::<B::InnerBackend>(c, &mut w, device)?;
    }
    Ok(BenchReport {
        machine: Machine::this(),
        device: opts.device_label.clone(),
        backend: <B::InnerBackend as burn::tensor::backend::Backend>::name(device),
        precision: opts.precision,
        started_unix,
        total_secs: started.elapsed().as_secs_f64(),
        results,
        config: cfg.clone(),
    })
}

/// Renders a number with three significant figures and thousands separators.
fn human(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.digits$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if frac.is_empty() {
        grouped
    } else {
        format!("{grouped}.{frac}")
    }
}

/// One Markdown table for the report, headed by the machine and device.
pub fn markdown(report: &BenchReport) -> String {
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Device `{}` (backend {}), {} inference; {} ({} threads, {} {}); suite took {:.0} s.\n",
        report.device,
        report.backend,
        report.precision,
        m.cpu,
        m.threads,
        m.os,
        m.arch,
        report.total_secs
    );
    out.push_str(
        "| group | workload | batch | throughput | per call (median, min–max) | reps | also |\n",
    );
    out.push_str("|---|---|---:|---:|---|---:|---|\n");
    for r in &report.results {
        let also: Vec<String> = r
            .extra
            .iter()
            .map(|(k, v)| format!("{k} {}", human(*v)))
            .collect();
        let group = serde_json::to_value(r.group)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {group} | {} | {} | {} {} | {} ms ({}–{}) | {} | {} |",
            r.workload,
            r.batch,
            human(r.throughput),
            r.unit,
            human(r.median_ms),
            human(r.min_ms),
            human(r.max_ms),
            r.reps,
            also.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_models::gpt::GptConfig;

    #[test]
    fn shipped_suites_validate() {
        BenchConfig::full().validate().unwrap();
        BenchConfig::quick().validate().unwrap();
    }

    #[test]
    fn batch_limit_holds_at_the_limit_and_fails_past_it() {
        let mut cfg = BenchConfig::quick();
        cfg.limits.max_batch = 8;
        cfg.search[0].query_batches = vec![8];
        cfg.validate().unwrap();
        cfg.search[0].query_batches = vec![9];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_batch"), "{err}");
        cfg.search[0].query_batches = vec![0];
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn index_size_limit_holds_at_the_limit_and_fails_past_it() {
        let mut cfg = BenchConfig::quick();
        let c = &cfg.search[0];
        cfg.limits.max_index_bytes = c.rows * c.dim * 4;
        cfg.validate().unwrap();
        cfg.search[0].rows += 1;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("max_index_bytes"), "{err}");
    }

    #[test]
    fn score_matrix_limit_holds_at_the_limit_and_fails_past_it() {
        let mut cfg = BenchConfig::quick();
        cfg.search[0].query_batches = vec![8];
        cfg.limits.max_score_bytes = 8 * cfg.search[0].rows * 4;
        cfg.validate().unwrap();
        cfg.search[0].query_batches = vec![9];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("max_score_bytes"), "{err}");
        // The published suite fits the default.
        BenchConfig::full().validate().unwrap();
    }

    #[test]
    fn empty_batch_lists_are_refused() {
        let mut cfg = BenchConfig::quick();
        cfg.generate[0].batches.clear();
        assert!(cfg.validate().is_err());
        let mut cfg = BenchConfig::quick();
        cfg.search[0].query_batches.clear();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn generation_must_fit_the_context() {
        let mut cfg = BenchConfig::quick();
        let n_ctx = GptConfig::preset("tiny").unwrap().n_ctx;
        cfg.generate[0].prompt_tokens = 4;
        cfg.generate[0].new_tokens = n_ctx - 4;
        cfg.validate().unwrap();
        cfg.generate[0].new_tokens = n_ctx - 3;
        assert!(cfg.validate().unwrap_err().to_string().contains("context"));
    }

    #[test]
    fn text_encoder_rows_must_fit_the_positions() {
        let mut cfg = BenchConfig::quick();
        let positions = BertConfig::preset("tiny").unwrap().max_positions;
        cfg.text_encoders[0].seq_len = positions;
        cfg.validate().unwrap();
        cfg.text_encoders[0].seq_len = positions + 1;
        assert!(cfg.validate().unwrap_err().to_string().contains("seq_len"));
        cfg.text_encoders[0].seq_len = 8;
        cfg.text_encoders[0].preset = "bert-9000".into();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn unknown_presets_and_groups_are_errors() {
        let mut cfg = BenchConfig::quick();
        cfg.encoders[0].preset = "resnet-9000".into();
        assert!(cfg.validate().is_err());
        assert!("trian".parse::<Group>().is_err());
        assert_eq!("search".parse::<Group>(), Ok(Group::Search));
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("f8".parse::<Precision>().is_err());
    }

    #[test]
    fn a_config_file_runs_only_what_it_lists() {
        let cfg: BenchConfig =
            toml::from_str("[[search]]\nrows = 10\ndim = 4\nk = 3\nquery_batches = [1]").unwrap();
        assert_eq!(cfg.search.len(), 1);
        assert!(cfg.encoders.is_empty() && cfg.train.is_empty() && cfg.generate.is_empty());
        assert_eq!(cfg.timing, TimingConfig::default());
    }

    #[test]
    fn config_round_trips_through_toml() {
        let cfg = BenchConfig::full();
        let text = toml::to_string(&cfg).unwrap();
        let back: BenchConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert!(toml::from_str::<BenchConfig>("[timing]\nwarmpu = 1").is_err());
    }

    #[test]
    fn numbers_render_readably() {
        assert_eq!(human(1234567.8), "1,234,568");
        assert_eq!(human(12.345), "12.3");
        assert_eq!(human(0.5), "0.50");
        assert_eq!(human(f64::NAN), "-");
    }
}
