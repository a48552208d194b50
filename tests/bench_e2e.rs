//! `vitrine bench` end to end with the quick profile: every group reports rows with finite,
//! positive figures; the JSON and Markdown outputs agree; bad options are clear errors.

mod common;

use common::{ok, s, vitrine};
use serde_json::Value;

fn results(json: &Value) -> &Vec<Value> {
    json["results"].as_array().expect("results array")
}

/// `vitrine bench ARGS --out FILE`, asserting success; the parsed report.
fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", s(&out)]);
    ok(&all);
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn quick_suite_reports_every_group_in_json_and_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let (out, md) = (dir.path().join("r.json"), dir.path().join("r.md"));
    let printed = ok(&[
        "bench",
        "--profile",
        "quick",
        "--device",
        "cpu",
        "--out",
        s(&out),
        "--markdown",
        s(&md),
    ]);
    let json: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let rows = results(&json);
    // quick: 3 image-encoder and 2 text-encoder batches, 3 training steps, 2 generation
    // batches, 2 query batches.
    let count = |g: &str| rows.iter().filter(|r| r["group"] == g).count();
    assert_eq!(
        (
            count("encoder"),
            count("train"),
            count("generate"),
            count("search")
        ),
        (5, 3, 2, 2),
        "{json:#}"
    );
    let text_rows = rows.iter().filter(|r| r["unit"] == "sentences/s").count();
    assert_eq!(text_rows, 2, "{json:#}");
    for r in rows {
        for key in ["throughput", "median_ms", "min_ms", "max_ms"] {
            let v = r[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{key} = {v} in {r}");
        }
        assert!(r["min_ms"].as_f64() <= r["median_ms"].as_f64());
        assert!(r["median_ms"].as_f64() <= r["max_ms"].as_f64());
        assert!(
            r["reps"].as_u64().unwrap() >= 2,
            "quick profile: min_reps 2"
        );
        // Throughput is items per call over the median call time.
        let per_call = r["throughput"].as_f64().unwrap() * r["median_ms"].as_f64().unwrap() / 1e3;
        let items = match r["group"].as_str().unwrap() {
            "generate" => r["batch"].as_f64().unwrap() * 8.0, // quick: 8 new tokens
            _ => r["batch"].as_f64().unwrap(),
        };
        assert!((per_call - items).abs() < 1e-6 * items, "{r}");
    }
    let gen = rows.iter().find(|r| r["group"] == "generate").unwrap();
    assert!(gen["extra"]["TTFT ms"].as_f64().unwrap() > 0.0);
    let train = rows
        .iter()
        .find(|r| r["workload"].as_str().unwrap().starts_with("copy"))
        .unwrap();
    assert!(train["extra"]["tokens/s"].as_f64().unwrap() > 0.0);
    // The config that produced the rows travels with them.
    assert_eq!(json["config"]["search"][0]["rows"], 1000);
    // One table row per result, in the file and on stdout.
    let table = std::fs::read_to_string(&md).unwrap();
    assert_eq!(table, printed);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| group"))
            .count(),
        rows.len()
    );
}

#[test]
fn only_runs_the_chosen_groups_and_a_custom_config_is_checked() {
    let json = bench(&["--profile", "quick", "--only", "search"]);
    assert!(results(&json).iter().all(|r| r["group"] == "search"));
    assert_eq!(results(&json).len(), 2);

    // A workload file runs exactly its cases; its index must fit limits.max_index_bytes
    // (checked before running): 10 x 25 x 4 bytes is the limit, 11 rows one row past it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bench.toml");
    let write = |rows: usize| {
        let text = format!(
            "[limits]\nmax_index_bytes = 1000\n[[search]]\nrows = {rows}\ndim = 25\nk = 3\nquery_batches = [1]\n"
        );
        std::fs::write(&cfg, text).unwrap();
    };
    write(10);
    let json = bench(&["--config", s(&cfg)]);
    assert_eq!(results(&json).len(), 1);
    write(11);
    let o = vitrine(&["bench", "--config", s(&cfg)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("max_index_bytes"), "{err}");

    for bad in [
        vec!["bench", "--only", "trian"],
        vec!["bench", "--precision", "f8"],
        vec!["bench", "--profile", "huge"],
    ] {
        let o = vitrine(&bad);
        assert!(!o.status.success(), "{bad:?}");
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("panicked"),
            "{bad:?}"
        );
    }
}

#[test]
fn half_precision_inference_runs() {
    let json = bench(&[
        "--profile",
        "quick",
        "--only",
        "encoder,generate",
        "--precision",
        "f16",
    ]);
    assert_eq!(json["precision"], "f16");
    // 3 image-encoder, 2 text-encoder and 2 generation rows.
    assert_eq!(results(&json).len(), 7);
    assert!(results(&json).iter().all(|r| r["precision"] == "f16"));
}

#[test]
fn parity_against_the_cpu_on_wgpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("parity.json");
    let o = vitrine(&[
        "bench",
        "--parity",
        "--profile",
        "quick",
        "--device",
        "wgpu:cpu",
        "--out",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("device wgpu:cpu unavailable") || err.contains("device wgpu unavailable") {
        eprintln!("SKIP wgpu parity: {err}  (install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers`)");
        return;
    }
    assert!(o.status.success(), "{err}");
    let json: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let checks = json["checks"].as_array().unwrap();
    // quick: two encoders and one decoder, each within the f32 limits.
    assert_eq!(checks.len(), 3, "{json:#}");
    for c in checks {
        assert_eq!(c["pass"], true, "{c}");
        let v = c["value"].as_f64().unwrap();
        if c["metric"].as_str().unwrap().contains("cosine") {
            assert!(v >= 0.999, "{c}");
        } else {
            assert!(v <= 1e-3, "{c}");
        }
    }
}
