//! Data-parallel training end to end: `vitrine train` worker processes on loopback
//! (Burn's collective engine over 127.0.0.1), and several local CPU devices in one process.
//!
//! The two multi-process training tests are ignored: in burn-collective 0.21 the nodes'
//! end-of-all-reduce sync never resets its list of synced peers, so the second global
//! all-reduce of a process never returns (docs/distributed.md). They pass the first
//! collective calls and are kept to run as they are once Burn is upgraded:
//! `cargo test --test dist_e2e -- --ignored`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{catalogue_and_config, metric_column, ok, s, train_args, write_catalogue};
use tempfile::TempDir;

/// A fresh folder with the catalogue and the tiny search recipe with the per-example loss
/// (norm-softmax), so that two workers on half-batches must match one worker on the whole
/// batch.
fn recipe(epochs: usize) -> (TempDir, PathBuf) {
    let (tmp, path) = catalogue_and_config(epochs);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[train]\n", "[train]\nloss = \"norm-softmax\"\n");
    std::fs::write(&path, text).unwrap();
    (tmp, path)
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ports {
    coordinator: u16,
    nodes: [u16; 2],
}

/// Three distinct free ports (the OS may hand out a just-released port again).
fn ports() -> Ports {
    loop {
        let (a, b, c) = (free_port(), free_port(), free_port());
        if a != b && b != c && a != c {
            return Ports {
                coordinator: a,
                nodes: [b, c],
            };
        }
    }
}

/// A two-node cluster's setup: a fresh folder with `recipe(epochs)`, three free ports and
/// the shared run folder `dp`.
fn cluster(epochs: usize) -> (TempDir, PathBuf, Ports, PathBuf) {
    let (tmp, config) = recipe(epochs);
    let p = ports();
    let run = tmp.path().join("dp");
    (tmp, config, p, run)
}

/// `vitrine train` as node `rank` of 2 on loopback.
fn worker(
    config: &Path,
    run: &Path,
    p: &Ports,
    rank: usize,
    timeout_s: u64,
    trace: Option<&Path>,
) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitrine"));
    c.arg("train")
        .arg("--config")
        .arg(config)
        .arg("--run-dir")
        .arg(run)
        .args([
            "--device",
            "cpu",
            "--nodes",
            "2",
            "--node-rank",
            &rank.to_string(),
        ])
        .args(["--coordinator", &format!("127.0.0.1:{}", p.coordinator)])
        .args(["--node-address", &format!("127.0.0.1:{}", p.nodes[rank])])
        .args(["--collective-timeout-secs", &timeout_s.to_string()])
        .arg("--experimental-multi-node")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = trace {
        c.arg("--param-trace").arg(t);
    }
    c.spawn().expect("start vitrine")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One line of a `--param-trace` file.
#[derive(Debug, PartialEq)]
struct Traced {
    step: u64,
    /// The worker's own shard's loss, before the all-reduce.
    shard_loss: f64,
    /// The whole batch's loss.
    loss: f64,
    values: Vec<f64>,
}

fn trace(path: &Path) -> Vec<Traced> {
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

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Every step: the workers' parameters are bitwise identical and within 1e-5 of one worker
/// that took the whole batch with the same seed; each worker's shard is its own (the
/// shards' losses differ) and together they are the batch (their mean is its loss).
fn assert_traces_match(workers: &[PathBuf], single: &Path, steps: usize) {
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
        assert!(
            (mean - b.loss).abs() < 1e-5 && (a.loss - b.loss).abs() < 1e-5,
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

fn train_single(config: &Path, run: &Path, trace: &Path) {
    let extra = ["--device", "cpu", "--param-trace", s(trace), "--quiet"];
    ok(&train_args(config, run, &extra));
}

/// Trains the single-worker reference run `dir/single` on `config` and checks both ranks'
/// parameter traces (`trace_base.rank0`, `.rank1`) against its trace after each of 6 steps.
fn assert_two_ranks_match_single_worker(config: &Path, dir: &Path, trace_base: &Path) {
    let single_trace = dir.join("single-trace");
    train_single(config, &dir.join("single"), &single_trace);
    assert_traces_match(
        &[
            with_suffix(trace_base, ".rank0"),
            with_suffix(trace_base, ".rank1"),
        ],
        &single_trace,
        6,
    );
}

#[test]
#[ignore = "Burn 0.21's global (multi-node) all-reduce completes only once per process: see docs/distributed.md"]
fn two_worker_processes_on_loopback_match_one_worker_on_the_whole_batch() {
    let (tmp, config, p, run) = cluster(2);
    let dir = tmp.path();
    let trace_base = dir.join("dp-trace");
    let w0 = worker(&config, &run, &p, 0, 60, Some(&trace_base));
    let w1 = worker(&config, &run, &p, 1, 60, Some(&trace_base));
    let (o0, o1) = (
        w0.wait_with_output().unwrap(),
        w1.wait_with_output().unwrap(),
    );
    assert!(
        o0.status.success() && o1.status.success(),
        "rank 0:\n{}\nrank 1:\n{}",
        text(&o0),
        text(&o1)
    );
    // Rank 0 wrote the run; 18 training items in batches of 6: 3 steps per epoch.
    assert!(run.join("model.mpk").exists() && run.join("checkpoints/last.ckpt").exists());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        2,
        "one metrics line per epoch, from rank 0 only"
    );

    assert_two_ranks_match_single_worker(&config, dir, &trace_base);
    // The epoch losses rank 0 logs are the whole batch's, as the single worker's are.
    let single_loss = metric_column(&dir.join("single"), "loss");
    for (a, b) in metric_column(&run, "loss").iter().zip(single_loss) {
        assert!((a - b).abs() < 1e-5, "epoch loss {a} vs single {b}");
    }
}

#[test]
fn two_local_cpu_devices_in_one_process_match_one_worker() {
    let (tmp, config) = recipe(2);
    let dir = tmp.path();
    let trace_base = dir.join("local-trace");
    let extra = [
        "--devices",
        "cpu,cpu",
        "--param-trace",
        s(&trace_base),
        "--quiet",
    ];
    ok(&train_args(&config, &dir.join("local"), &extra));
    assert_two_ranks_match_single_worker(&config, dir, &trace_base);
}

#[test]
#[ignore = "Burn 0.21's global (multi-node) all-reduce completes only once per process: see docs/distributed.md"]
fn a_killed_worker_stops_the_other_within_the_timeout_and_the_checkpoint_survives() {
    let (_tmp, config, p, run) = cluster(100_000);
    let timeout = 5;
    let mut w0 = worker(&config, &run, &p, 0, timeout, None);
    let mut w1 = worker(&config, &run, &p, 1, timeout, None);
    // Wait until rank 0 has finished a few epochs (each ends with a checkpoint).
    let metrics = run.join("metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        if let Some(s) = w0.try_wait().unwrap() {
            panic!(
                "rank 0 ended early ({s}):\n{}",
                text(&w0.wait_with_output().unwrap())
            );
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    w1.kill().unwrap();
    let killed = Instant::now();
    w1.wait().unwrap();
    let o0 = w0.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let out = text(&o0);
    assert!(
        !o0.status.success(),
        "rank 0 must fail without its peer:\n{out}"
    );
    assert!(
        out.contains("distributed training: worker 0 of 2"),
        "clear error expected:\n{out}"
    );
    // The timeout, plus the slack of a loaded 2-core machine.
    assert!(
        waited < Duration::from_secs(timeout + 20),
        "rank 0 took {waited:?} to stop"
    );
    // The last complete checkpoint is intact: one worker resumes from it.
    let done = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let more = (done + 1).to_string();
    ok(&[
        "train",
        "--resume",
        s(&run),
        "--stop-after-epochs",
        &more,
        "--quiet",
    ]);
    let after = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert_eq!(after, done + 1, "resumed for exactly one more epoch");
}

#[test]
fn a_worker_that_cannot_reach_the_coordinator_fails_within_the_timeout() {
    let (_tmp, config, p, run) = cluster(1);
    let started = Instant::now();
    // Node 1 alone: nobody runs the coordinator.
    let o = worker(&config, &run, &p, 1, 2, None)
        .wait_with_output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("no answer from the other workers within 2 s during start-up"),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(2 + 20));
}

#[test]
fn bad_cluster_flags_are_clear_errors() {
    let (tmp, config) = recipe(1);
    let run = tmp.path().join("r");
    let fails = |args: &[&str], needle: &str| {
        let mut all = train_args(&config, &run, &["--quiet"]);
        all.extend_from_slice(args);
        let o = common::vitrine(&all);
        let out = text(&o);
        assert!(
            !o.status.success() && out.contains(needle),
            "{args:?}: {out}"
        );
    };
    fails(
        &["--nodes", "2"],
        "multi-node training does not work with Burn 0.21",
    );
    fails(
        &["--nodes", "2", "--experimental-multi-node"],
        "needs --coordinator",
    );
    fails(
        &[
            "--experimental-multi-node",
            "--nodes",
            "2",
            "--node-rank",
            "2",
            "--coordinator",
            "127.0.0.1:1",
        ],
        "--node-rank = 2",
    );
    fails(
        &["--collective-timeout-secs", "0", "--devices", "cpu,cpu"],
        "--collective-timeout-secs = 0",
    );
    // 6 examples per batch do not split over 4 workers.
    fails(
        &["--devices", "cpu,cpu,cpu,cpu"],
        "does not split into 4 equal shares",
    );
    fails(&["--devices", "cpu,wgpu:cpu"], "of one kind");
    assert!(
        !run.join("config.toml").exists(),
        "nothing written before the checks"
    );
}

/// Copy, scorer and caption runs train on two local workers (rank 0 alone writes the
/// run), and a run stopped on two workers resumes on one: the global batch does not change.
#[test]
fn every_task_trains_on_two_local_workers_and_resumes_on_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_catalogue(dir);
    let configs = [
        ("copy", common::write_copy_config(dir, 2)),
        ("score", common::write_score_config(dir, 2, "")),
        ("caption", common::write_caption_config(dir, 2, "")),
    ];
    for (name, config) in &configs {
        let run = dir.join(name);
        let two = ["--devices", "cpu,cpu", "--stop-after-epochs", "1"];
        common::train_to(config, &run, &two);
        let metrics = || std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics().lines().count(), 1, "{name}: one line from rank 0");
        common::resume(&run);
        assert_eq!(metrics().lines().count(), 2, "{name}: resumed to the end");
        assert!(run.join("model.mpk").exists(), "{name}");
    }
}
