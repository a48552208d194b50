//! Data-parallel training over MPI end to end: `mpirun -np 2` on 127.0.0.1 (TCP over
//! loopback), two CPU ranks of `vitrine train`. Built with `--features mpi` (`.ci/run`
//! does); built without it, the binary must refuse to run under mpirun. Needs Open MPI's
//! `mpirun` (`bash scripts/setup.sh`): without it the tests skip and say so, unless
//! `VITRINE_REQUIRE_MPI` is set, as `.ci/run` sets it.

mod common;

use std::process::{Command, Output, Stdio};

use common::traces::{recipe, text};
use common::train_args;

/// Whether `mpirun` is on PATH; when not, says how to get it (or fails under CI).
fn have_mpirun() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mpirun").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("VITRINE_REQUIRE_MPI").is_none(),
            "mpirun not found and VITRINE_REQUIRE_MPI is set: run bash scripts/setup.sh"
        );
        eprintln!("skipped: mpirun not found (install Open MPI: bash scripts/setup.sh)");
    }
    found
}

/// `mpirun` on loopback: TCP only, no core binding (the ranks share the machine's cores),
/// allowed as root (CI containers); the ranks to start follow.
fn mpirun_on_loopback() -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args([
        "--mca",
        "btl",
        "tcp,self",
        "--mca",
        "btl_tcp_if_include",
        "lo",
    ])
    .args(["--mca", "oob_tcp_if_include", "lo"])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// `mpirun -np 2 vitrine ARGS…` on loopback.
fn mpirun(args: &[&str]) -> Command {
    let mut c = mpirun_on_loopback();
    c.args(["-np", "2"])
        .arg(env!("CARGO_BIN_EXE_vitrine"))
        .args(args);
    c
}

fn mpirun_output(args: &[&str]) -> Output {
    mpirun(args).output().expect("start mpirun")
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_binary_built_without_mpi_refuses_to_run_under_mpirun() {
    if !have_mpirun() {
        return;
    }
    let (tmp, config) = recipe(1);
    let run = tmp.path().join("r");
    let o = mpirun_output(&train_args(&config, &run, &[]));
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("started by an MPI launcher") && out.contains("--features mpi"),
        "{out}"
    );
    assert!(!run.join("config.toml").exists(), "nothing written");
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::*;
    use common::traces::{assert_traces_match, assert_two_ranks_match_single_worker, trace};
    use common::traces::{train_single, with_suffix, Shards};
    use common::{metric_column, s};

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |m| m.lines().count())
    }

    /// `vitrine train` of `config` into `run` on two MPI ranks, each tracing its parameters.
    fn train_two_ranks(config: &Path, run: &Path, trace_base: &Path) {
        let o = mpirun_output(&train_args(
            config,
            run,
            &[
                "--device",
                "cpu",
                "--param-trace",
                s(trace_base),
                "--collective-timeout-secs",
                "60",
                "--quiet",
            ],
        ));
        assert!(o.status.success(), "{}", text(&o));
    }

    #[test]
    fn two_mpi_ranks_match_one_process_on_the_whole_batch() {
        if !have_mpirun() {
            return;
        }
        let (tmp, config) = recipe(2);
        let dir = tmp.path();
        let run = dir.join("mpi");
        let trace_base = dir.join("mpi-trace");
        train_two_ranks(&config, &run, &trace_base);
        // Rank 0 alone wrote the run: 18 training items in batches of 6, 3 steps per epoch.
        assert!(run.join("model.mpk").exists() && run.join("checkpoints/last.ckpt").exists());
        assert_eq!(lines(&run.join("metrics.jsonl")), 2, "one line per epoch");
        assert_two_ranks_match_single_worker(&config, dir, &trace_base, 6);
        // The epoch losses rank 0 logs are the whole batch's, as the single process's are.
        let single = metric_column(&dir.join("single"), "loss");
        for (a, b) in metric_column(&run, "loss").iter().zip(single) {
            assert!((a - b).abs() < 1e-5, "epoch loss {a} vs single {b}");
        }
    }

    #[test]
    fn two_mpi_ranks_train_the_language_model_as_one_process_would() {
        if !have_mpirun() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let config = common::write_copy_config(dir, 2);
        let trace_base = dir.join("mpi-trace");
        train_two_ranks(&config, &dir.join("mpi"), &trace_base);
        let single = dir.join("single-trace");
        train_single(&config, &dir.join("single"), &single);
        let steps = trace(&single).len();
        assert!(steps >= 4, "{steps} steps");
        let ranks = [0, 1].map(|r| with_suffix(&trace_base, &format!(".rank{r}")));
        assert_traces_match(&ranks, &single, steps, Shards::Tokens);
    }

    /// Pid of MPI rank `rank` of the job training into `run`.
    fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
        let marker = format!("OMPI_COMM_WORLD_RANK={rank}");
        let run = run.to_string_lossy().into_owned();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let has = |hay: &[u8], needle: &str| {
                hay.split(|&b| b == 0).any(|part| part == needle.as_bytes())
            };
            (has(&cmdline, &run) && has(&environ, &marker) && !has(&cmdline, "mpirun"))
                .then_some(pid)
        })
    }

    /// Starts a long job (`100_000` epochs) on two ranks with `timeout` seconds, waits until
    /// rank 0 has finished 3 epochs (each ends with a checkpoint), sends `sig` to rank 1 and
    /// waits for the job, which must fail. Returns the run, the job's output and how long
    /// it took to end after the signal.
    fn signal_rank_1(timeout: u64, sig: &str) -> (tempfile::TempDir, PathBuf, String, Duration) {
        let (tmp, config) = recipe(100_000);
        let run = tmp.path().join("dp");
        let t = timeout.to_string();
        let mut job = mpirun(&train_args(
            &config,
            &run,
            &[
                "--device",
                "cpu",
                "--collective-timeout-secs",
                &t,
                "--quiet",
            ],
        ))
        .spawn()
        .expect("start mpirun");
        let started = Instant::now();
        while lines(&run.join("metrics.jsonl")) < 3 {
            if let Some(st) = job.try_wait().unwrap() {
                panic!(
                    "the job ended early ({st}):\n{}",
                    text(&job.wait_with_output().unwrap())
                );
            }
            assert!(started.elapsed() < Duration::from_secs(180), "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = rank_pid(&run, 1).expect("rank 1's process");
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid}");
        let signalled = Instant::now();
        let o = job.wait_with_output().unwrap();
        let waited = signalled.elapsed();
        let out = text(&o);
        assert!(!o.status.success(), "the job must fail after {sig}:\n{out}");
        // The timeout, plus the slack of a loaded 2-core machine.
        assert!(
            waited < Duration::from_secs(timeout + 20),
            "took {waited:?}"
        );
        eprintln!("the job ended {waited:?} after {sig} to rank 1:\n{out}");
        (tmp, run, out, waited)
    }

    /// The last complete checkpoint is intact: two ranks resume it for one more epoch.
    fn resume_one_more_epoch(run: &Path) {
        let metrics = run.join("metrics.jsonl");
        let done = lines(&metrics);
        let more = (done + 1).to_string();
        let o = mpirun_output(&[
            "train",
            "--resume",
            s(run),
            "--stop-after-epochs",
            &more,
            "--device",
            "cpu",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            lines(&metrics),
            done + 1,
            "resumed for exactly one more epoch"
        );
    }

    #[test]
    fn a_killed_rank_ends_the_job_with_a_clear_error_and_the_checkpoint_survives() {
        if !have_mpirun() {
            return;
        }
        let (_tmp, run, out, _) = signal_rank_1(5, "-KILL");
        // Open MPI's launcher notices the death, names the rank and ends rank 0, which
        // says why it stops.
        assert!(
            out.contains("rank 1") && out.contains("signal 9"),
            "the launcher's error expected:\n{out}"
        );
        assert!(
            out.contains(
                "error: MPI rank 0 of 2: ended by the launcher (SIGTERM): another rank failed"
            ),
            "rank 0's error expected:\n{out}"
        );
        resume_one_more_epoch(&run);
    }

    #[test]
    fn a_hung_rank_times_out_on_the_other_and_the_run_resumes() {
        if !have_mpirun() {
            return;
        }
        // Stopped, not dead: nothing tells the launcher; only rank 0's deadline can.
        let (_tmp, run, out, waited) = signal_rank_1(3, "-STOP");
        assert!(
            out.contains("worker 0 of 2: no answer from the other workers within 3 s during")
                && out.contains("ending every rank of the job"),
            "clear error expected:\n{out}"
        );
        assert!(waited >= Duration::from_secs(3), "took {waited:?}");
        // MPI_Abort ended the stopped rank too.
        assert!(rank_pid(&run, 1).is_none(), "rank 1 outlived the job");
        resume_one_more_epoch(&run);
    }

    #[test]
    fn a_rank_gets_one_device_and_the_job_must_split_its_batch() {
        if !have_mpirun() {
            return;
        }
        let (tmp, config) = recipe(1);
        let run = tmp.path().join("r");
        let base = train_args(&config, &run, &["--quiet"]);
        let two_devices = mpirun_output(&[&base[..], &["--devices", "cpu,cpu"]].concat());
        let out = text(&two_devices);
        assert!(
            !two_devices.status.success() && out.contains("each rank trains on one device"),
            "{out}"
        );
        // Batches of 6 split over 2 ranks; of 5 they do not, and every rank says so.
        let odd = mpirun_output(&[&base[..], &["--set", "train.batch_size=5"]].concat());
        let out = text(&odd);
        assert!(
            !odd.status.success() && out.contains("does not split into 2 equal shares"),
            "{out}"
        );
        assert!(!run.join("checkpoints").exists(), "no checkpoint written");
    }

    #[test]
    fn ranks_on_different_configs_stop_at_start_up() {
        if !have_mpirun() {
            return;
        }
        let (tmp, config) = recipe(2);
        let run = tmp.path().join("r");
        let rank = |epochs: &'static str| {
            let mut args = vec!["-np", "1", env!("CARGO_BIN_EXE_vitrine")];
            args.extend(train_args(
                &config,
                &run,
                &[
                    "--device",
                    "cpu",
                    "--collective-timeout-secs",
                    "60",
                    "--quiet",
                ],
            ));
            args.extend(["--set", epochs]);
            args
        };
        // One job, two programs (MPMD): rank 1 was given one more epoch.
        let o = mpirun_on_loopback()
            .args(rank("train.epochs=2"))
            .arg(":")
            .args(rank("train.epochs=3"))
            .output()
            .expect("start mpirun");
        let out = text(&o);
        assert!(!o.status.success(), "{out}");
        assert!(
            out.contains("has another number of steps")
                && out.contains("every worker must run the same config"),
            "{out}"
        );
        assert!(
            !run.join("checkpoints/last.ckpt").exists() && !run.join("metrics.jsonl").exists(),
            "no step was taken"
        );
    }
}
