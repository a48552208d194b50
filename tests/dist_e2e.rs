//! Data-parallel training end to end on several local CPU devices in one process (Burn's
//! local collective). Several processes, over MPI: `mpi_e2e`.

mod common;

use common::traces::{assert_two_ranks_match_single_worker, recipe, text};
use common::{ok, s, train_args, write_catalogue};

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
    // The tiny recipe: 18 training items in batches of 6, 2 epochs.
    assert_two_ranks_match_single_worker(&config, dir, &trace_base, 6);
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
    // The multi-node flags of Burn's collective engine are gone; each points to MPI.
    for removed in [
        &["--nodes", "2"][..],
        &["--node-rank", "1"],
        &["--coordinator", "127.0.0.1:29500"],
        &["--node-address", "127.0.0.1:29501"],
        &["--experimental-multi-node"],
    ] {
        fails(removed, "was removed");
        fails(removed, "--features mpi");
    }
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
