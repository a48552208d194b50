//! `vitrine`: a thin CLI. Each subcommand parses its arguments, opens the device and calls
//! one library function.

mod device;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use clap::{Args, Parser, Subcommand};
use device::DeviceArg;
use vitrine_data::catalog::{CatalogConfig, CatalogSource};
use vitrine_index::{Filter, Index};
use vitrine_train::caption::{
    captions_csv, list_images, train_caption, CaptionResult, CaptionRun, CaptionRunConfig,
};
use vitrine_train::config::{load_toml, SearchRunConfig};
use vitrine_train::decode::DecodeOverrides;
use vitrine_train::embed::progress_bar;
use vitrine_train::generate::{generate, validate, GenerateRequest};
use vitrine_train::lm::{train_lm, LmRun, LmRunConfig};
use vitrine_train::pipeline::{index_run, search, Encoder, Query};
use vitrine_train::run::RunDir;
use vitrine_train::scorer::{read_lines, train_scorer, ScoreRun, ScoreRunConfig};
use vitrine_train::search::{train_search, TrainOptions};
use vitrine_train::trainer::FitOptions;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vitrine",
    version,
    about = "Train, evaluate and serve a shop's neural networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DeviceOpt {
    /// cpu, wgpu, wgpu:cpu, wgpu:N, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config (configs/*.toml), or resume a run.
    Train(TrainArgs),
    /// Evaluate a run.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Build and update search indexes.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Find the catalogue items most similar to a photo (or to an indexed item).
    Search(SearchArgs),
    /// Write subject lines / headlines for a brief with a copy run.
    Generate(GenerateArgs),
    /// Score lines read from stdin (one per line) with a click-through scorer run; prints
    /// them best first.
    Score(ScoreArgs),
    /// Write a title / alt text for product photos with a caption run.
    Caption(CaptionArgs),
    /// Write a trained copy / language-model run as a Hugging Face GPT-2 folder
    /// (config.json, model.safetensors, tokenizer.json).
    Export(ExportArgs),
    /// Measure throughput and latency of the hot paths on a device and print one table
    /// (`scripts/bench.sh` runs it and keeps the results).
    Bench(BenchArgs),
    /// Serve search, generation and captioning over HTTP, with a visual-search page at `/`.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (`[limits]`, `[batching]`, and any field below); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Visual search: an index file, or a search run (its index.vtridx, built if absent).
    #[arg(long, value_name = "RUN_OR_INDEX")]
    search: Option<PathBuf>,
    /// Copy generation: a copy run.
    #[arg(long, value_name = "RUN")]
    copy: Option<PathBuf>,
    /// Rank generated candidates with this click-through scorer run.
    #[arg(long, value_name = "RUN")]
    scorer: Option<PathBuf>,
    /// Captioning: a caption run.
    #[arg(long, value_name = "RUN")]
    caption: Option<PathBuf>,
    /// IP:PORT to listen on (port 0 picks a free one; the address is printed).
    #[arg(long)]
    bind: Option<String>,
    /// File with the API key that catalogue writes need.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceOpt,
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long)]
    run: PathBuf,
    /// Folder to write (created if missing; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// `full` (the published suite) or `quick` (toy sizes: checks the suite in seconds).
    #[arg(long, default_value = "full", value_parser = ["full", "quick"], conflicts_with = "config")]
    profile: String,
    /// Workloads from a TOML file (the fields of `config` in bench-results.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only these groups, comma-separated: encoder, train, generate, search.
    #[arg(long, value_delimiter = ',')]
    only: Vec<vitrine_bench::Group>,
    /// Float type of encoder and generation inference: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    precision: vitrine_bench::Precision,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the Markdown table here too (it is always printed).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Instead of timing: check that --device computes what the CPU computes (embedding
    /// cosine >= 0.999, logits within 1e-3, same weights and inputs); fails if not.
    /// With --config: a TOML file of ParityConfig fields (encoders, decoders, limits); the
    /// default limits are for f32; --precision f16/bf16 may need looser ones there.
    #[arg(long, conflicts_with = "only")]
    parity: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

#[derive(Args)]
struct CaptionArgs {
    /// A caption run (task "caption").
    #[arg(long)]
    run: PathBuf,
    /// Image files to caption.
    #[arg(required_unless_present = "dir", conflicts_with = "dir")]
    images: Vec<PathBuf>,
    /// Caption every image file directly inside this folder (sorted by name).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write `image,caption,error` CSV here (atomically) instead of printing.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Beams per image (1 = greedy; default: the run's decode.beam).
    #[arg(long)]
    beam: Option<usize>,
    /// Length normalisation exponent (default: the run's decode.length_penalty).
    #[arg(long, allow_negative_numbers = true)]
    length_penalty: Option<f64>,
    #[arg(long)]
    min_tokens: Option<usize>,
    #[arg(long)]
    max_tokens: Option<usize>,
    /// No n-gram of this size twice in a caption (0 = off).
    #[arg(long)]
    no_repeat_ngram: Option<usize>,
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    #[arg(long)]
    csv: bool,
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

#[derive(Args)]
struct ScoreArgs {
    /// A scorer run (task "score").
    #[arg(long)]
    run: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

#[derive(Args)]
struct GenerateArgs {
    /// A copy run (task "copy").
    #[arg(long)]
    run: PathBuf,
    /// Comma-separated keywords or phrases the lines should use.
    #[arg(long, default_value = "")]
    keywords: String,
    /// Tone, for models trained with a tone column.
    #[arg(long)]
    tone: Option<String>,
    /// Candidates to return.
    #[arg(short, default_value_t = 10)]
    n: usize,
    /// Longest line, in characters.
    #[arg(long, default_value_t = 60)]
    max_chars: usize,
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample from the k most likely tokens (>= 1).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Nucleus sampling mass, 0 < p <= 1.
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f64,
    /// > 1 discourages tokens the line already used (1 = off).
    #[arg(long, default_value_t = 1.1, allow_negative_numbers = true)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// End a line at this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// File of banned words or phrases, one per line.
    #[arg(long)]
    banned_words: Option<PathBuf>,
    /// Refuse lines that repeat a training line.
    #[arg(long)]
    no_copy: bool,
    /// Logit bonus for keywords not used yet (default: the run's generate.keyword_boost).
    #[arg(long, allow_negative_numbers = true)]
    keyword_boost: Option<f64>,
    /// Tokens generated per candidate at most (default: the run's generate.max_new_tokens).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Rank the candidates with this click-through scorer run (best first, score shown).
    #[arg(long, value_name = "SCORER_RUN")]
    rank_with: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

#[derive(Args)]
struct TrainArgs {
    /// Recipe to train (required unless --resume).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Where the run is written (default: runs/<config name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Override a config value: --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "run_dir", "overrides"])]
    resume: Option<PathBuf>,
    /// Stop (resumably) after this many completed epochs, e.g. for time-boxed jobs.
    #[arg(long)]
    stop_after_epochs: Option<usize>,
    /// Skip bad catalogue rows and images (counted) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceOpt,
    #[command(flatten)]
    dist: DistArgs,
    /// Append every parameter after every step to this file (one JSON line per step;
    /// with several workers, PATH.rankN per worker), for reproducibility checks.
    #[arg(long, value_name = "PATH")]
    param_trace: Option<PathBuf>,
}

/// Data-parallel training (Burn's collective engine): gradients are averaged across all
/// workers every step; `train.batch_size` is the global batch, split evenly.
#[derive(Args, Clone)]
struct DistArgs {
    /// Several local devices of one kind, one worker each: cuda:0,cuda:1 or cpu,cpu.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    devices: Vec<DeviceArg>,
    /// Processes (machines) in the job, one per node.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// This process's index among the nodes (0 runs the coordinator and writes the run).
    #[arg(long, default_value_t = 0)]
    node_rank: u32,
    /// Node 0's HOST:PORT as every node reaches it (node 0 listens on PORT).
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// Where the other nodes reach this node's tensor service (HOST:PORT; default on a
    /// loopback coordinator: its host, port = coordinator port + 1 + node rank).
    #[arg(long, value_name = "HOST:PORT")]
    node_address: Option<String>,
    /// Longest wait for the other workers at any step before failing with an error.
    #[arg(long, default_value_t = vitrine_train::dist::DEFAULT_TIMEOUT_SECS)]
    collective_timeout_secs: u64,
    /// Allow --nodes > 1, which Burn 0.21 cannot complete (docs/distributed.md).
    #[arg(long)]
    experimental_multi_node: bool,
}

impl DistArgs {
    fn cluster(&self) -> vitrine_train::dist::Cluster {
        vitrine_train::dist::Cluster {
            nodes: self.nodes,
            node_rank: self.node_rank,
            coordinator: self.coordinator.clone(),
            node_address: self.node_address.clone(),
            timeout: std::time::Duration::from_secs(self.collective_timeout_secs),
            experimental_multi_node: self.experimental_multi_node,
        }
    }
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Recall@K and mAP@R of a search run on its query/gallery split; writes eval.json.
    Search {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        skip_bad: bool,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        quiet: bool,
        /// Run the encoder in f32, f16 or bf16 (writes eval-f16.json / eval-bf16.json).
        #[arg(long, default_value = "f32")]
        precision: vitrine_models::Precision,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Validation loss and perplexity of a copy or language-model run; for copy runs also
    /// keyword coverage, distinct-1/2, constraint compliance and training-copy rate of
    /// candidates generated for the validation briefs. Writes eval.json.
    Copy {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// BLEU-1..4, ROUGE-L and CIDEr-D of a caption run on its test split for each of
    /// eval.beams, and of the nearest-neighbour baseline under a search run. Writes
    /// eval.json.
    Caption {
        #[arg(long)]
        run: PathBuf,
        /// Search run for the nearest-neighbour baseline (default: the run's eval.search_run).
        #[arg(long)]
        search_run: Option<PathBuf>,
        /// Beam sizes to evaluate, comma-separated (default: the run's eval.beams).
        #[arg(long, value_delimiter = ',')]
        beams: Option<Vec<usize>>,
        /// Length normalisation exponent (default: the run's decode.length_penalty).
        #[arg(long, allow_negative_numbers = true)]
        length_penalty: Option<f64>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Pairwise accuracy (all pairs and significant ones) and AUC of a scorer run on the
    /// validation A/B tests, with the "longer headline wins" and random baselines. Writes
    /// eval.json.
    Score {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceOpt,
    },
}

/// A catalogue given on the command line (default: the run's training catalogue).
#[derive(Args, Clone, Default)]
struct CatalogArgs {
    /// CSV with an id column and attributes (with --images).
    #[arg(long, requires = "images", conflicts_with_all = ["image_folder", "idx_images"])]
    csv: Option<PathBuf>,
    /// Folder of images named by --image-pattern.
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long, default_value = "id")]
    id_column: String,
    #[arg(long, default_value = "{id}.jpg")]
    image_pattern: String,
    #[arg(long)]
    label_column: Option<String>,
    #[arg(long)]
    title_column: Option<String>,
    /// ImageFolder tree: DIR/<label>/<image>.
    #[arg(long, conflicts_with = "idx_images")]
    image_folder: Option<PathBuf>,
    /// idx or idx.gz images file (MNIST format).
    #[arg(long)]
    idx_images: Option<PathBuf>,
    #[arg(long, requires = "idx_images")]
    idx_labels: Option<PathBuf>,
}

impl CatalogArgs {
    fn to_config(&self, run: &SearchRunConfig) -> Option<CatalogConfig> {
        let source = if let (Some(csv), Some(images)) = (&self.csv, &self.images) {
            CatalogSource::Csv {
                csv: csv.clone(),
                images: images.clone(),
                id_column: self.id_column.clone(),
                image_pattern: self.image_pattern.clone(),
                image_column: None,
            }
        } else if let Some(root) = &self.image_folder {
            CatalogSource::ImageFolder { root: root.clone() }
        } else if let Some(images) = &self.idx_images {
            CatalogSource::Idx {
                images: images.clone(),
                labels: self.idx_labels.clone(),
                class_names: None,
                id_prefix: String::new(),
            }
        } else {
            return None;
        };
        Some(CatalogConfig {
            source,
            label_column: self.label_column.clone(),
            title_column: self.title_column.clone(),
            limits: run.data.limits.clone(),
            max_items: 0,
        })
    }
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Embed a catalogue with a run's encoder and write an index file.
    Build {
        /// A search run, or a pretrained ViT / CLIP image encoder: a Hugging Face folder or
        /// hf:<repo>[@revision] (CLIP indexes also answer `vitrine search --text`).
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        catalog: CatalogArgs,
        #[arg(long)]
        skip_bad: bool,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Embed more items into an existing index (no rebuild); duplicate ids are refused.
    Add {
        #[arg(long)]
        index: PathBuf,
        /// Run whose encoder embeds the items (default: the one the index records).
        #[arg(long)]
        run: Option<PathBuf>,
        #[command(flatten)]
        catalog: CatalogArgs,
        #[arg(long)]
        skip_bad: bool,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        device: DeviceOpt,
    },
    /// Remove items by id (all-or-nothing).
    Remove {
        #[arg(long)]
        index: PathBuf,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args)]
struct SearchArgs {
    #[arg(long)]
    index: PathBuf,
    /// Query photo(s); one ranking per photo.
    #[arg(long, required_unless_present_any = ["id", "text"], conflicts_with_all = ["id", "text"])]
    image: Vec<PathBuf>,
    /// Query by an item already in the index.
    #[arg(long, conflicts_with = "text")]
    id: Option<String>,
    /// Query by words ("red summer dress"; repeatable, one ranking each): needs an index
    /// built with a CLIP model.
    #[arg(long)]
    text: Vec<String>,
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Largest k accepted.
    #[arg(long, default_value_t = 1000)]
    max_k: usize,
    /// Exact metadata filter column=value (repeatable; same column = OR, different = AND).
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    filters: Vec<String>,
    /// Run whose encoder embeds the query (default: the one the index records).
    #[arg(long)]
    run: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Most of our errors already name their cause; print each cause once.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Eval(EvalCommand::Search {
            run,
            skip_bad,
            json,
            quiet,
            precision,
            device,
        }) => {
            let dev = device.device.open()?;
            let report = with_backend!(
                &dev,
                B,
                d,
                vitrine_eval::eval_search::<B>(&run, &d, skip_bad, quiet, precision)
            )?;
            let saved = run.join(vitrine_eval::search::search_eval_file(precision));
            print_eval(&report, report.table(), &saved, json)
        }
        Command::Eval(EvalCommand::Copy { run, json, device }) => {
            let dev = device.device.open()?;
            let report = with_backend!(&dev, B, d, vitrine_eval::eval_copy::<B>(&run, &d))?;
            print_eval(&report, report.table(), &run.join("eval.json"), json)
        }
        Command::Eval(EvalCommand::Score { run, json, device }) => {
            let dev = device.device.open()?;
            let report = with_backend!(&dev, B, d, vitrine_eval::eval_score::<B>(&run, &d))?;
            print_eval(&report, report.table(), &run.join("eval.json"), json)
        }
        Command::Eval(EvalCommand::Caption {
            run,
            search_run,
            beams,
            length_penalty,
            json,
            quiet,
            device,
        }) => {
            let opts = vitrine_eval::CaptionEvalOptions {
                search_run,
                beams,
                length_penalty,
                quiet,
            };
            let dev = device.device.open()?;
            let report =
                with_backend!(&dev, B, d, vitrine_eval::eval_caption::<B>(&run, &opts, &d))?;
            print_eval(&report, report.table(), &run.join("eval.json"), json)
        }
        Command::Index(cmd) => cmd_index(cmd),
        Command::Search(a) => cmd_search(a),
        Command::Generate(a) => cmd_generate(a),
        Command::Score(a) => cmd_score(a),
        Command::Caption(a) => cmd_caption(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Serve(a) => cmd_serve(a),
        Command::Export(a) => {
            // Weights are read on the CPU: exporting needs no accelerator.
            let report = vitrine_train::lm::export_hf::<device::CpuBackend>(
                &a.run,
                &a.out,
                &Default::default(),
            )?;
            println!(
                "wrote {} ({} tensors): {}",
                report.out.display(),
                report.tensors,
                report.files.join(", ")
            );
            Ok(())
        }
    }
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => vitrine_serve::ServeConfig::load(p)?,
        None => vitrine_serve::ServeConfig::default(),
    };
    cfg.search = a.search.or(cfg.search);
    cfg.copy = a.copy.or(cfg.copy);
    cfg.scorer = a.scorer.or(cfg.scorer);
    cfg.caption = a.caption.or(cfg.caption);
    cfg.bind = a.bind.unwrap_or(cfg.bind);
    cfg.api_key_file = a.api_key_file.or(cfg.api_key_file);
    let dev = a.device.device.open()?;
    with_backend!(&dev, B, d, vitrine_serve::serve::<B>(cfg, d))?;
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.parity {
        return cmd_parity(a);
    }
    let cfg = match &a.config {
        Some(path) => load_toml::<vitrine_bench::BenchConfig>(path, &[])?,
        None if a.profile == "quick" => vitrine_bench::BenchConfig::quick(),
        None => vitrine_bench::BenchConfig::full(),
    };
    let opts = vitrine_bench::RunOptions {
        groups: a.only.clone(),
        precision: a.precision,
        device_label: a.device.device.to_string(),
    };
    let dev = a.device.device.open()?;
    let mut progress = |m: &vitrine_bench::Measurement| {
        eprintln!(
            "{:>9.1} {} | {} | batch {} ({:.1} ms/call)",
            m.throughput, m.unit, m.workload, m.batch, m.median_ms
        )
    };
    let report = with_backend!(
        &dev,
        B,
        d,
        vitrine_bench::run_suite::<Autodiff<B>>(&cfg, &opts, &d, &mut progress)
    )?;
    let table = vitrine_bench::markdown(&report);
    save_bench_outputs(&a, &report, &table)?;
    print!("{table}");
    Ok(())
}

/// `--out` (JSON) and `--markdown` of `vitrine bench`, written atomically.
fn save_bench_outputs<R: serde::Serialize>(a: &BenchArgs, report: &R, table: &str) -> Result<()> {
    if let Some(out) = &a.out {
        vitrine_data::fsio::atomic_save(out, &serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(md) = &a.markdown {
        vitrine_data::fsio::atomic_save(md, table.as_bytes())
            .with_context(|| format!("writing {}", md.display()))?;
    }
    Ok(())
}

fn cmd_parity(a: BenchArgs) -> Result<()> {
    let cfg = match (&a.config, a.profile.as_str()) {
        (Some(path), _) => load_toml::<vitrine_bench::ParityConfig>(path, &[])?,
        (None, "quick") => vitrine_bench::ParityConfig::quick(),
        (None, _) => vitrine_bench::ParityConfig::full(),
    };
    let label = a.device.device.to_string();
    let dev = a.device.device.open()?;
    let cpu = burn::backend::flex::FlexDevice;
    let report = with_backend!(
        &dev,
        B,
        d,
        vitrine_bench::parity::<device::CpuBackend, B>(&cfg, &cpu, &d, &label, a.precision)
    )?;
    let table = report.markdown();
    save_bench_outputs(&a, &report, &table)?;
    print!("{table}");
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.model.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{label} differs from cpu beyond the limits for: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn cmd_caption(a: CaptionArgs) -> Result<()> {
    let paths = match &a.dir {
        Some(dir) => list_images(dir)?,
        None => a.images.clone(),
    };
    if paths.is_empty() {
        anyhow::bail!(
            "no images to caption{}",
            a.dir
                .as_ref()
                .map(|d| format!(
                    " in {} (looked for {})",
                    d.display(),
                    vitrine_data::catalog::IMAGE_EXTENSIONS.join(", ")
                ))
                .unwrap_or_default()
        );
    }
    let dev = a.device.device.open()?;
    let results = with_backend!(&dev, B, d, {
        let run = CaptionRun::<B>::load(&a.run, &d)?;
        let overrides = DecodeOverrides {
            beam: a.beam,
            length_penalty: a.length_penalty,
            min_tokens: a.min_tokens,
            max_tokens: a.max_tokens,
            no_repeat_ngram: a.no_repeat_ngram,
        };
        let cfg = run.decode_config(|c| overrides.apply(c))?;
        let bar = progress_bar(paths.len(), "caption", a.quiet);
        let out = run.caption_files(&paths, &cfg, Some(&bar))?;
        bar.finish_and_clear();
        anyhow::Ok(out)
    })?;
    let failed: Vec<&CaptionResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if let Some(out) = &a.out {
        vitrine_data::fsio::atomic_save(out, captions_csv(&results).as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "wrote {} ({} captioned, {} skipped)",
            out.display(),
            results.len() - failed.len(),
            failed.len()
        );
    } else if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if a.csv {
        print!("{}", captions_csv(&results));
    } else {
        for r in &results {
            if let Some(c) = &r.caption {
                println!("{}\t{c}", r.image.display());
            }
        }
    }
    for r in &failed {
        eprintln!("skipped {}", r.error.as_deref().unwrap_or_default());
    }
    if failed.len() == results.len() {
        anyhow::bail!("none of the {} images could be read", results.len());
    }
    Ok(())
}

/// Prints an evaluation report as JSON or as its table, and says where the run saved it.
fn print_eval<R: serde::Serialize>(
    report: &R,
    table: String,
    saved: &Path,
    json: bool,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
        eprintln!("wrote {}", saved.display());
    }
    Ok(())
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let banned = match &a.banned_words {
        Some(p) => vitrine_data::copy::Constraints::read_banned(p)?,
        None => Vec::new(),
    };
    let req = GenerateRequest {
        keywords: a.keywords.clone(),
        tone: a.tone.clone(),
        n: a.n,
        max_chars: a.max_chars,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop: a.stop.clone(),
        banned,
        no_copy: a.no_copy,
        keyword_boost: a.keyword_boost,
        max_tokens: a.max_tokens,
    };
    let dev = a.device.device.open()?;
    let out = with_backend!(&dev, B, d, {
        let run = LmRun::<B>::load(&a.run, &d)?;
        // Load the scorer before sampling, so a bad scorer run fails fast.
        let scorer = a
            .rank_with
            .as_deref()
            .map(|p| ScoreRun::<B>::load(p, &d))
            .transpose()?;
        let checked = validate(&req, &run, &run.config.generate)?;
        let mut out = generate(&run, &checked, &run.config.generate, &d)?;
        if let Some(scorer) = &scorer {
            scorer.rank_candidates(&mut out.candidates, &d)?;
        }
        anyhow::Ok(out)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (i, c) in out.candidates.iter().enumerate() {
        match c.score {
            Some(s) => println!("{:>3}. {s:>8.4}  {}", i + 1, c.text),
            None => println!("{:>3}. {}", i + 1, c.text),
        }
    }
    if out.budget_exhausted {
        eprintln!(
            "only {} of {} candidates passed the constraints after sampling {} (rejected: {:?})",
            out.candidates.len(),
            out.requested,
            out.sampled,
            out.rejected
        );
    }
    Ok(())
}

fn cmd_score(a: ScoreArgs) -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .context("reading lines from stdin (UTF-8 text, one line per candidate)")?;
    let (lines, blank) = read_lines(&input);
    let dev = a.device.device.open()?;
    let ranked = with_backend!(&dev, B, d, {
        let run = ScoreRun::<B>::load(&a.run, &d)?;
        anyhow::Ok(run.rank(&lines, &d)?)
    })?;
    if blank > 0 {
        eprintln!("skipped {blank} blank lines");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ranked)?);
    } else {
        for r in &ranked {
            println!("{:>8.4}\t{}", r.score, r.text);
        }
    }
    Ok(())
}

/// The `task` a config file or run declares (`search` when it says none).
fn task_of(a: &TrainArgs) -> Result<String> {
    let table: toml::Table = match (&a.resume, &a.config) {
        (Some(run), _) => RunDir::new(run).load_toml_config()?,
        (None, Some(path)) => load_toml(path, &a.overrides)?,
        (None, None) => unreachable!("clap requires --config or --resume"),
    };
    Ok(table
        .get("task")
        .and_then(|t| t.as_str())
        .unwrap_or("search")
        .to_string())
}

fn default_run_dir(a: &TrainArgs, config: &Path) -> PathBuf {
    a.run_dir.clone().unwrap_or_else(|| {
        let stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        Path::new("runs").join(stem)
    })
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    match task_of(&a)?.as_str() {
        "search" => cmd_train_search(a),
        "lm" | "copy" => cmd_train_lm(a),
        "score" => cmd_train_score(a),
        "caption" => cmd_train_caption(a),
        other => {
            anyhow::bail!(
                "task = {other:?}: this version trains \"search\", \"lm\", \"copy\", \"score\" and \"caption\""
            )
        }
    }
}

/// What `train` starts from: the config with its paths made absolute (None when resuming),
/// the run directory and the loop options.
fn train_plan<C: serde::de::DeserializeOwned>(
    a: &TrainArgs,
    resolve_paths: fn(&mut C, &Path),
) -> Result<(Option<C>, PathBuf, FitOptions)> {
    let (config, run_dir) = match (&a.resume, &a.config) {
        (Some(run), _) => (None, run.clone()),
        (None, Some(path)) => {
            let mut config: C = load_toml(path, &a.overrides)?;
            resolve_paths(
                &mut config,
                &std::env::current_dir().context("current directory")?,
            );
            (Some(config), default_run_dir(a, path))
        }
        (None, None) => unreachable!("clap requires --config or --resume"),
    };
    let opts = FitOptions {
        resume: a.resume.is_some(),
        stop_after_epochs: a.stop_after_epochs,
        quiet: a.quiet,
        peer: None,
        param_trace: a.param_trace.clone(),
    };
    Ok((config, run_dir, opts))
}

/// The devices `train` runs on: `--devices` (all of one kind) or `--device`.
fn train_devices(a: &TrainArgs) -> Result<Vec<device::Device>> {
    let args = if a.dist.devices.is_empty() {
        vec![a.device.device.clone()]
    } else {
        a.dist.devices.clone()
    };
    let kinds: Vec<&str> = args.iter().map(DeviceArg::kind).collect();
    if kinds.iter().any(|k| *k != kinds[0]) {
        anyhow::bail!(
            "--devices {}: all devices of one job must be of one kind (e.g. cuda:0,cuda:1)",
            args.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    args.iter().map(DeviceArg::open).collect()
}

/// Runs `$train` (an expression of `$opts: FitOptions` and `$d: device`) once per device
/// of the job, each a data-parallel worker (`vitrine_train::dist::launch`); the result is
/// rank 0's.
macro_rules! launch_training {
    ($a:expr, $opts:ident, $d:ident, $captures:expr, $train:expr) => {{
        let devices = train_devices($a)?;
        let cluster = $a.dist.cluster();
        let captured = $captures;
        let base_opts = $opts.clone();
        with_backend!(&devices[0], B, _first, {
            let devices = <B as device::PickDevice>::pick_all(&devices)?;
            vitrine_train::dist::launch::<Autodiff<B>, _, _>(devices, &cluster, move |peer, $d| {
                let mut $opts = base_opts.clone();
                $opts.peer = peer;
                let captured = captured.clone();
                ($train)(captured, &$opts, &$d)
            })
        })
    }};
}

fn cmd_train_lm(a: TrainArgs) -> Result<()> {
    let (config, run_dir, opts) = train_plan(&a, LmRunConfig::resolve_paths)?;
    let run = RunDir::new(&run_dir);
    let r = launch_training!(
        &a,
        opts,
        d,
        (config, run),
        |(config, run): (_, RunDir), opts, d| { train_lm::<Autodiff<B>>(config, &run, opts, d) }
    )?;
    eprintln!(
        "{} {}: {} epochs, {} steps, val loss {:.4} (perplexity {:.2}), {:.0} tokens/s, {:.1} s ({} parameters, vocab {})",
        if r.fit.stopped_early { "stopped (resumable)" } else { "trained" },
        run_dir.display(),
        r.fit.epochs_completed,
        r.fit.steps,
        r.val_loss,
        r.val_perplexity,
        r.tokens_per_sec,
        r.fit.wall_secs,
        r.parameters,
        r.vocab_size,
    );
    Ok(())
}

fn cmd_train_score(a: TrainArgs) -> Result<()> {
    let (config, run_dir, opts) = train_plan(&a, ScoreRunConfig::resolve_paths)?;
    let run = RunDir::new(&run_dir);
    let r = launch_training!(
        &a,
        opts,
        d,
        (config, run),
        |(config, run): (_, RunDir), opts, d| {
            train_scorer::<Autodiff<B>>(config, &run, opts, d)
        }
    )?;
    let f = &r.fit;
    let dev_text = match (&r.dev, r.best_epoch) {
        (Some(m), Some(e)) => format!(
            ", dev pairwise accuracy {:.4} (epoch {e} kept, {} dev tests)",
            m.accuracy, r.dev_tests
        ),
        _ => String::new(),
    };
    eprintln!(
        "{} {}: {} epochs, {} steps, last epoch loss {:.4}{dev_text}, {:.0} pairs/s, {:.1} s ({} train tests, {} pairs, {} parameters)",
        if f.stopped_early { "stopped (resumable)" } else { "trained" },
        run_dir.display(),
        f.epochs_completed,
        f.steps,
        f.last_epoch_loss,
        f.examples_per_sec,
        f.wall_secs,
        r.train_tests,
        r.train_pairs,
        r.parameters,
    );
    Ok(())
}

fn cmd_train_caption(a: TrainArgs) -> Result<()> {
    let (config, run_dir, opts) = train_plan(&a, CaptionRunConfig::resolve_paths)?;
    let run = RunDir::new(&run_dir);
    let skip_bad = a.skip_bad;
    let r = launch_training!(
        &a,
        opts,
        d,
        (config, run),
        |(config, run): (_, RunDir), opts, d| {
            train_caption::<Autodiff<B>>(config, &run, opts, skip_bad, d)
        }
    )?;
    let f = &r.fit;
    eprintln!(
        "{} {}: {} epochs, {} steps, test loss {:.4}, {:.0} tokens/s, {:.1} s ({} train / {} test images, {} skipped, {} parameters, vocab {})",
        if f.stopped_early { "stopped (resumable)" } else { "trained" },
        run_dir.display(),
        f.epochs_completed,
        f.steps,
        r.test_loss,
        f.examples_per_sec,
        f.wall_secs,
        r.train_images,
        r.test_images,
        r.data.skipped,
        r.parameters,
        r.vocab_size,
    );
    Ok(())
}

fn cmd_train_search(a: TrainArgs) -> Result<()> {
    let (config, run_dir, fit) = train_plan(&a, SearchRunConfig::resolve_paths)?;
    let run = RunDir::new(&run_dir);
    let skip_bad = a.skip_bad;
    let report = launch_training!(
        &a,
        fit,
        d,
        (config, run),
        |(config, run): (_, RunDir), fit, d| {
            let opts = TrainOptions {
                fit: FitOptions::clone(fit),
                skip_bad,
            };
            train_search::<Autodiff<B>>(config, &run, &opts, d)
        }
    )?;
    let f = &report.fit;
    eprintln!(
        "{} {}: {} epochs, {} steps, last epoch loss {:.4}, {:.0} examples/s, {:.1} s ({} train items, {} classes, {} skipped)",
        if f.stopped_early { "stopped (resumable)" } else { "trained" },
        run_dir.display(),
        f.epochs_completed,
        f.steps,
        f.last_epoch_loss,
        f.examples_per_sec,
        f.wall_secs,
        report.train_items,
        report.classes,
        report.data.skipped,
    );
    Ok(())
}

fn cmd_index(cmd: IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build {
            run,
            out,
            catalog,
            skip_bad,
            quiet,
            device,
        } => {
            let dev = device.device.open()?;
            let (n, skipped) = with_backend!(&dev, B, d, {
                let encoder = Encoder::<B>::load(&run, &d)?;
                let catalog = catalog.to_config(&encoder.config);
                let (index, report) = encoder.build_index(catalog.as_ref(), skip_bad, quiet)?;
                index.save(&out)?;
                anyhow::Ok((index.len(), report.data.skipped))
            })?;
            eprintln!("wrote {} ({n} items, {skipped} skipped)", out.display());
        }
        IndexCommand::Add {
            index: path,
            run,
            catalog,
            skip_bad,
            quiet,
            device,
        } => {
            let mut index = Index::load(&path)?;
            let run = index_run(&index, run.as_deref())?;
            let dev = device.device.open()?;
            let added = with_backend!(&dev, B, d, {
                let encoder = Encoder::<B>::load(&run, &d)?;
                let catalog = catalog.to_config(&encoder.config).context(
                    "give the items to add: --csv/--images, --image-folder or --idx-images",
                )?;
                let report = encoder.add_catalog(&mut index, &catalog, skip_bad, quiet)?;
                anyhow::Ok(report.added)
            })?;
            index.save(&path)?;
            eprintln!(
                "added {added} items; {} now holds {}",
                path.display(),
                index.len()
            );
        }
        IndexCommand::Remove { index: path, ids } => {
            let mut index = Index::load(&path)?;
            index.remove(&ids)?;
            index.save(&path)?;
            eprintln!(
                "removed {} items; {} now holds {}",
                ids.len(),
                path.display(),
                index.len()
            );
        }
    }
    Ok(())
}

fn cmd_search(a: SearchArgs) -> Result<()> {
    let index = Index::load(&a.index)?;
    let run = index_run(&index, a.run.as_deref())?;
    let filter = Filter::parse(&a.filters)?;
    let dev = a.device.device.open()?;
    let results = with_backend!(&dev, B, d, {
        let encoder = Encoder::<B>::load(&run, &d)?;
        let query = match &a.id {
            Some(id) => Query::ItemId(id),
            None if !a.text.is_empty() => Query::Texts(&a.text),
            None => Query::Images(&a.image),
        };
        anyhow::Ok(search(&index, &encoder, query, a.k, a.max_k, &filter)?)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    for (qi, hits) in results.iter().enumerate() {
        let label = match &a.id {
            Some(id) => format!("item {id}"),
            None if !a.text.is_empty() => format!("{:?}", a.text[qi]),
            None => a.image[qi].display().to_string(),
        };
        println!("query: {label}");
        println!("{:>4}  {:<12} {:>7}  title", "rank", "id", "score");
        for h in hits {
            println!(
                "{:>4}  {:<12} {:>7.4}  {}",
                h.rank,
                h.id,
                h.score,
                // Catalogues without titles (Fashion-MNIST) show the item's label.
                h.title
                    .as_deref()
                    .or(h.attrs.get("label").map(String::as_str))
                    .unwrap_or("-")
            );
        }
        if hits.is_empty() {
            println!("(no item passes the filters)");
        }
    }
    Ok(())
}
