//! `vitrine train`: a fresh run from a config, or `--resume`, on one device or several.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use clap::Args;
use vitrine_infer::config::{load_toml, RunConfig};
use vitrine_infer::run::{RunDir, TaskKind};
use vitrine_train::dist::{Cluster, MpiLaunch, DEFAULT_TIMEOUT_SECS};
use vitrine_train::start::{train_on, Summary, TrainTask, Trained};
use vitrine_train::tasks::{Caption, Lm, Score, Search};
use vitrine_train::trainer::FitOptions;

use super::DeviceOpt;
use crate::device::{self, DeviceArg, OnBackend, PickDevice};

#[derive(Args)]
pub struct TrainArgs {
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

/// Data-parallel training: gradients are averaged across all workers every step;
/// `train.batch_size` is the global batch, split evenly. Several devices of this process
/// (`--devices`), or one process per rank under `mpirun` / `srun` (built with `--features mpi`).
#[derive(Args, Clone)]
struct DistArgs {
    /// Several local devices of one kind, one worker each: cuda:0,cuda:1 or cpu,cpu.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    devices: Vec<DeviceArg>,
    /// Longest wait for the other workers at any step before failing with an error.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    collective_timeout_secs: u64,
    /// Removed: the multi-node flags of Burn's collective engine, whose global all-reduce
    /// never completes twice. Each is a clear error pointing to MPI.
    #[arg(long, hide = true)]
    nodes: Option<String>,
    #[arg(long, hide = true)]
    node_rank: Option<String>,
    #[arg(long, hide = true)]
    coordinator: Option<String>,
    #[arg(long, hide = true)]
    node_address: Option<String>,
    #[arg(long, hide = true)]
    experimental_multi_node: bool,
}

impl DistArgs {
    fn cluster(&self) -> Result<Cluster> {
        let removed = [
            ("--nodes", self.nodes.is_some()),
            ("--node-rank", self.node_rank.is_some()),
            ("--coordinator", self.coordinator.is_some()),
            ("--node-address", self.node_address.is_some()),
            ("--experimental-multi-node", self.experimental_multi_node),
        ];
        if let Some((flag, _)) = removed.iter().find(|(_, given)| *given) {
            anyhow::bail!(
                "{flag} was removed with Burn's multi-node collective, whose global all-reduce never completes a second time; train across processes or machines over MPI: build with `cargo build --release --features mpi` and start one rank per device, e.g. `mpirun -np 2 -H a,b vitrine train --config C.toml --device cuda` (docs/distributed.md)"
            );
        }
        Ok(Cluster {
            mpi: MpiLaunch::from_env(),
            timeout: std::time::Duration::from_secs(self.collective_timeout_secs),
        })
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let table: toml::Table = match (&a.resume, &a.config) {
        (Some(run), _) => RunDir::new(run).load_toml_config()?,
        (None, Some(path)) => load_toml(path, &a.overrides)?,
        (None, None) => unreachable!("clap requires --config or --resume"),
    };
    match TaskKind::of_table(&table)? {
        TaskKind::Search => train::<Search>(&a),
        TaskKind::Lm | TaskKind::Copy => train::<Lm>(&a),
        TaskKind::Score => train::<Score>(&a),
        TaskKind::Caption => train::<Caption>(&a),
    }
}

/// Trains task `T` as the arguments say and prints its summary line.
fn train<T: TrainTask>(a: &TrainArgs) -> Result<()> {
    let (config, run_dir) = match (&a.resume, &a.config) {
        (Some(run), _) => (None, run.clone()),
        (None, Some(path)) => {
            let mut config: T::Config = load_toml(path, &a.overrides)?;
            config.resolve_paths(&std::env::current_dir().context("current directory")?);
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
        skip_bad: a.skip_bad,
    };
    let cluster = a.dist.cluster()?;
    let devices = train_devices(a, cluster.mpi.as_ref())?
        .iter()
        .map(DeviceArg::open)
        .collect::<Result<Vec<_>>>()?;
    let launch = Launch::<T> {
        config,
        run: RunDir::new(&run_dir),
        opts,
        devices: devices.clone(),
        cluster: cluster.clone(),
    };
    let trained = device::on(&devices[0], launch)?;
    // Under MPI every rank returns here; rank 0 speaks for the job.
    if !cluster.mpi.as_ref().is_none_or(MpiLaunch::is_chief) {
        return Ok(());
    }
    let f = &trained.fit;
    eprintln!(
        "{} {}: {} epochs, {} steps, {}",
        if f.stopped_early {
            "stopped (resumable)"
        } else {
            "trained"
        },
        run_dir.display(),
        f.epochs_completed,
        f.steps,
        trained.report.summary(f)
    );
    Ok(())
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

/// The devices `train` runs on: `--devices` (all of one kind) or `--device`. Under MPI,
/// `--device cuda` (= `cuda:0`) is the rank's GPU on its machine ([`MpiLaunch::gpu_index`]).
fn train_devices(a: &TrainArgs, mpi: Option<&MpiLaunch>) -> Result<Vec<DeviceArg>> {
    let args = if a.dist.devices.is_empty() {
        match (&a.device.device, mpi) {
            (DeviceArg::Cuda(0), Some(m)) => {
                let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                vec![DeviceArg::Cuda(m.gpu_index(visible.as_deref()))]
            }
            (d, _) => vec![d.clone()],
        }
    } else {
        a.dist.devices.clone()
    };
    if args.iter().any(|d| d.kind() != args[0].kind()) {
        anyhow::bail!(
            "--devices {}: all devices of one job must be of one kind (e.g. cuda:0,cuda:1)",
            args.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(args)
}

/// One training job: every device of it a data-parallel worker; rank 0's report.
struct Launch<T: TrainTask> {
    config: Option<T::Config>,
    run: RunDir,
    opts: FitOptions,
    devices: Vec<device::Device>,
    cluster: Cluster,
}

impl<T: TrainTask> OnBackend for Launch<T> {
    type Output = Trained<T::Report>;
    fn run<B: PickDevice>(self, _first: B::Device) -> Result<Trained<T::Report>> {
        let devices = B::pick_all(&self.devices)?;
        let report =
            train_on::<T, Autodiff<B>>(self.config, self.run, self.opts, devices, &self.cluster)?;
        Ok(report)
    }
}
