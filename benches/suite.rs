//! `cargo bench`: the published benchmark suite on the CPU backend, the same workloads as
//! `vitrine bench --device cpu` (see `scripts/bench.sh` for other devices and the JSON).

use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Flex};
use vitrine_bench::{markdown, run_suite, BenchConfig, RunOptions};

fn main() {
    let opts = RunOptions {
        device_label: "cpu".into(),
        ..RunOptions::default()
    };
    let report = run_suite::<Autodiff<Flex>>(&BenchConfig::full(), &opts, &FlexDevice, &mut |m| {
        eprintln!(
            "{:>9.1} {} | {} | batch {}",
            m.throughput, m.unit, m.workload, m.batch
        )
    });
    match report {
        Ok(r) => print!("{}", markdown(&r)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
