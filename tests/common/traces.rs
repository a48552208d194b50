//! Data-parallel checks shared by the local (`dist_e2e`) and MPI (`mpi_e2e`) tests: the
//! tiny recipes with per-example losses, and `--param-trace` files compared step by step.

use std::path::{Path, PathBuf};
use std::process::Output;

use tempfile::TempDir;

use super::{catalogue_and_config, ok, s, train_args};

/// A fresh folder with the catalogue and the tiny search recipe with the per-example loss
/// (norm-softmax), so that two workers on half-batches must match one worker on the whole
/// batch.
pub fn recipe(epochs: usize) -> (TempDir, PathBuf) {
    let (tmp, path) = catalogue_and_config(epochs);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[train]\n", "[train]\nloss = \"norm-softmax\"\n");
    std::fs::write(&path, text).unwrap();
    (tmp, path)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One line of a `--param-trace` file.
#[derive(Debug, PartialEq)]
pub struct Traced {
    pub step: u64,
    /// The worker's own shard's loss, before the all-reduce.
    pub shard_loss: f64,
    /// The whole batch's loss.
    pub loss: f64,
    pub values: Vec<f64>,
}

pub fn trace(path: &Path) -> Vec<Traced> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let values = v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            Traced {
                step: v["step"].as_u64().unwrap(),
                shard_loss: v["shard_loss"].as_f64().unwrap(),
                loss: v["loss"].as_f64().unwrap(),
                values,
            }
        })
        .collect()
}

pub fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// What a shard's loss averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    /// As many examples in every shard (search): the batch loss is the shards' mean.
    Equal,
    /// Tokens, as many as the shard's lines hold (LM): the batch loss weights the shards.
    Tokens,
}

/// Every step: the workers' parameters are bitwise identical and within 1e-5 of one worker
/// that took the whole batch with the same seed; each worker's shard is its own (the
/// shards' losses differ) and together they are the batch: the reduced loss is its loss
/// and, when every shard holds as many examples (`Shards::Equal`), so is their plain mean.
pub fn assert_traces_match(workers: &[PathBuf], single: &Path, steps: usize, shards: Shards) {
    let single = trace(single);
    assert_eq!(
        single.len(),
        steps,
        "single-worker trace: one line per step"
    );
    let traces: Vec<Vec<Traced>> = workers.iter().map(|w| trace(w)).collect();
    let first = &traces[0];
    assert_eq!(first.len(), steps);
    for (w, t) in workers.iter().zip(&traces).skip(1) {
        assert_eq!(t.len(), steps, "{}", w.display());
        for (a, b) in t.iter().zip(first) {
            assert_eq!((a.step, a.loss), (b.step, b.loss));
            assert!(
                a.values == b.values,
                "{} differs from rank 0 at step {}",
                w.display(),
                a.step
            );
        }
    }
    let mut worst = 0f64;
    for (i, (a, b)) in first.iter().zip(&single).enumerate() {
        assert_eq!(a.step, b.step);
        assert_eq!(a.values.len(), b.values.len());
        for (x, y) in a.values.iter().zip(&b.values) {
            worst = worst.max((x - y).abs());
        }
        let shard_losses: Vec<f64> = traces.iter().map(|t| t[i].shard_loss).collect();
        assert!(
            shard_losses.windows(2).all(|w| w[0] != w[1]),
            "step {}: the workers' shards gave one loss {shard_losses:?}: not disjoint",
            a.step
        );
        let mean = shard_losses.iter().sum::<f64>() / shard_losses.len() as f64;
        let mean_ok = shards == Shards::Tokens || (mean - b.loss).abs() < 1e-5;
        assert!(
            mean_ok && (a.loss - b.loss).abs() < 1e-5,
            "step {}: shards' mean loss {mean}, reduced loss {}, whole batch's {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    assert!(worst <= 1e-5, "max |data-parallel - single| = {worst}");
    // Training moved the parameters, so the comparison is not of two initial states.
    let (start, end) = (&single[0].values, &single[steps - 1].values);
    let moved = start
        .iter()
        .zip(end)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        moved > 1e-3,
        "training changed the parameters by only {moved}"
    );
    eprintln!("max |data-parallel - single| over {steps} steps: {worst:e}");
}

pub fn train_single(config: &Path, run: &Path, trace: &Path) {
    let extra = ["--device", "cpu", "--param-trace", s(trace), "--quiet"];
    ok(&train_args(config, run, &extra));
}

/// Trains the single-worker reference run `dir/single` on `config` and checks both ranks'
/// parameter traces (`trace_base.rank0`, `.rank1`) against its trace after each of `steps`.
pub fn assert_two_ranks_match_single_worker(
    config: &Path,
    dir: &Path,
    trace_base: &Path,
    steps: usize,
) {
    let single_trace = dir.join("single-trace");
    train_single(config, &dir.join("single"), &single_trace);
    assert_traces_match(
        &[
            with_suffix(trace_base, ".rank0"),
            with_suffix(trace_base, ".rank1"),
        ],
        &single_trace,
        steps,
        Shards::Equal,
    );
}
