//! `vitrine bench`: the benchmark suite on a device, or (`--parity`) whether the device
//! computes what the CPU computes.

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Autodiff;
use clap::Args;
use vitrine_bench::{BenchConfig, Measurement, ParityConfig, RunOptions};
use vitrine_infer::config::load_toml;

use super::{out, write_file, DeviceOpt};
use crate::device::{CpuBackend, OnBackend, PickDevice};

#[derive(Args)]
pub struct BenchArgs {
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

impl BenchArgs {
    /// `--out` (JSON) and `--markdown`, written atomically.
    fn save<R: serde::Serialize>(&self, report: &R, table: &str) -> Result<()> {
        if let Some(out) = &self.out {
            write_file(out, &serde_json::to_vec_pretty(report)?)?;
        }
        if let Some(md) = &self.markdown {
            write_file(md, table.as_bytes())?;
        }
        Ok(())
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.parity {
        return parity(a);
    }
    let cfg = match &a.config {
        Some(path) => load_toml::<BenchConfig>(path, &[])?,
        None if a.profile == "quick" => BenchConfig::quick(),
        None => BenchConfig::full(),
    };
    let opts = RunOptions {
        groups: a.only.clone(),
        precision: a.precision,
        device_label: a.device.device.to_string(),
    };
    let report = a.device.run(Suite { cfg, opts })?;
    let table = vitrine_bench::markdown(&report);
    a.save(&report, &table)?;
    out!("{table}")?;
    Ok(())
}

/// The timed suite, printing each figure as it comes.
struct Suite {
    cfg: BenchConfig,
    opts: RunOptions,
}

impl OnBackend for Suite {
    type Output = vitrine_bench::BenchReport;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<vitrine_bench::BenchReport> {
        let mut progress = |m: &Measurement| {
            eprintln!(
                "{:>9.1} {} | {} | batch {} ({:.1} ms/call)",
                m.throughput, m.unit, m.workload, m.batch, m.median_ms
            )
        };
        Ok(vitrine_bench::run_suite::<Autodiff<B>>(
            &self.cfg,
            &self.opts,
            &d,
            &mut progress,
        )?)
    }
}

fn parity(a: BenchArgs) -> Result<()> {
    let cfg = match (&a.config, a.profile.as_str()) {
        (Some(path), _) => load_toml::<ParityConfig>(path, &[])?,
        (None, "quick") => ParityConfig::quick(),
        (None, _) => ParityConfig::full(),
    };
    let label = a.device.device.to_string();
    let job = Parity {
        cfg,
        label: label.clone(),
        precision: a.precision,
    };
    let report = a.device.run(job)?;
    let table = report.markdown();
    a.save(&report, &table)?;
    out!("{table}")?;
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

/// The device's outputs against the CPU's, same weights and inputs.
struct Parity {
    cfg: ParityConfig,
    label: String,
    precision: vitrine_bench::Precision,
}

impl OnBackend for Parity {
    type Output = vitrine_bench::ParityReport;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<vitrine_bench::ParityReport> {
        let cpu = burn::backend::flex::FlexDevice;
        Ok(vitrine_bench::parity::<CpuBackend, B>(
            &self.cfg,
            &cpu,
            &d,
            &self.label,
            self.precision,
        )?)
    }
}

/// `vitrine bench-ann`: the HNSW graph on vector files against their exact neighbours.
#[derive(Args)]
pub struct AnnBenchArgs {
    /// Base vectors (.fvecs).
    #[arg(long)]
    base: PathBuf,
    /// Query vectors (.fvecs).
    #[arg(long)]
    queries: PathBuf,
    /// Exact neighbours of each query, best first (.ivecs, row numbers of the base).
    #[arg(long)]
    truth: PathBuf,
    /// cosine (inner product of unit vectors) or l2.
    #[arg(long, default_value = "l2", value_parser = ["l2", "cosine"])]
    metric: String,
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Graph parameters: a TOML file of `AnnConfig` fields (connectivity, expansion_add…).
    #[arg(long)]
    ann_config: Option<PathBuf>,
    /// Search breadths (efSearch) to sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    ef: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batch: Vec<usize>,
    /// Time only the first N queries (0: all).
    #[arg(long, default_value_t = 0)]
    max_queries: usize,
    /// Passes over the queries per setting; the fastest counts (ann-benchmarks' protocol:
    /// a short pass on a busy machine moves by tens of percent).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also measure filtered search, for filters passing these shares of the items.
    #[arg(long, value_delimiter = ',')]
    filters: Vec<f64>,
    /// Queries per filtered measurement (0: all).
    #[arg(long, default_value_t = 1000)]
    filter_queries: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_ann(a: AnnBenchArgs) -> Result<()> {
    let graph = match &a.ann_config {
        Some(p) => load_toml::<vitrine_index::AnnConfig>(p, &[])?,
        None => vitrine_index::AnnConfig::default(),
    };
    graph.validate().map_err(anyhow::Error::msg)?;
    if a.ef.contains(&0) || a.threads.contains(&0) || a.batch.contains(&0) || a.repeat == 0 {
        anyhow::bail!("--ef, --threads, --batch and --repeat values must be at least 1");
    }
    if a.filters.iter().any(|f| !(0.0..=1.0).contains(f)) {
        anyhow::bail!("--filters are shares of the items, within 0..=1");
    }
    let config = vitrine_bench::ann::AnnBenchConfig {
        metric: match a.metric.as_str() {
            "cosine" => vitrine_index::Metric::Cosine,
            _ => vitrine_index::Metric::L2,
        },
        k: a.k,
        graph,
        efs: a.ef.clone(),
        threads: a.threads.clone(),
        batches: a.batch.clone(),
        max_queries: a.max_queries,
        repeat: a.repeat,
        filters: a.filters.clone(),
        filter_queries: a.filter_queries,
    };
    let report = vitrine_bench::ann::run_ann::<CpuBackend>(
        &a.base,
        &a.queries,
        &a.truth,
        &config,
        &Default::default(),
    )?;
    if let Some(path) = &a.out {
        write_file(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    super::print_json(&report)
}
