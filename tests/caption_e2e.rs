//! End-to-end runs of `vitrine train` (task "caption"), `vitrine caption` and
//! `vitrine eval caption` on the tiny synthetic catalogue.

mod common;

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::Tensor;
use common::{
    assert_run_files, assert_succeeded, eval_json, field_strs, metric_column, ok, outcome, resume,
    s, train_caption, train_full_and_stopped, train_search, train_to, trained_run, vitrine,
    write_caption_config, write_catalogue,
};
use vitrine_infer::caption::{CaptionRun, CaptionSplitRecord};
use vitrine_infer::search::Encoder;

/// The catalogue plus one item whose caption is empty (left out of the task).
fn catalogue(dir: &Path) {
    write_catalogue(dir);
    let csv = dir.join("styles.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("999,dark,red-vertical,\n");
    std::fs::write(&csv, text).unwrap();
    common::synth_image(0, 99)
        .save(dir.join("images/999.png"))
        .unwrap();
}

#[test]
fn caption_run_trains_captions_files_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    catalogue(dir.path());
    let run = train_caption(dir.path(), "cap", 4, "");
    assert_run_files(
        &run,
        &[
            "config.toml",
            "model.mpk",
            "tokenizer.json",
            "split.json",
            "metrics.jsonl",
        ],
    );
    // 24 captioned items (the empty caption is left out): 6 test, 18 train, disjoint.
    let split: CaptionSplitRecord =
        serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    assert_eq!((split.train_ids.len(), split.test_ids.len()), (18, 6));
    assert!(split
        .test_ids
        .iter()
        .all(|id| !split.train_ids.contains(id)));
    assert!(
        !split.train_ids.contains(&"999".to_string())
            && !split.test_ids.contains(&"999".to_string())
    );

    // Files: two good images and a truncated one, which is reported and skipped.
    let images = dir.path().join("images");
    let bad = dir.path().join("broken.png");
    let bytes = std::fs::read(images.join("100.png")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let (a, b) = (images.join("100.png"), images.join("200.png"));
    let args = ["caption", "--run", s(&run), s(&a), s(&bad), s(&b), "--json"];
    let out = vitrine(&args);
    assert_succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[0]["caption"].as_str().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert!(
        rows[2]["caption"].as_str().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert!(rows[1]["caption"].is_null());
    assert!(
        rows[1]["error"].as_str().unwrap().contains("broken.png"),
        "{v}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.png"));
    // Deterministic: the same command gives the same captions.
    assert_eq!(vitrine(&args).stdout, out.stdout);

    // Folder mode writes one CSV row per image file.
    let csv_out = dir.path().join("captions.csv");
    ok(&[
        "caption",
        "--run",
        s(&run),
        "--dir",
        s(&images),
        "--out",
        s(&csv_out),
        "--beam",
        "1",
    ]);
    let csv = std::fs::read_to_string(&csv_out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "image,caption,error");
    assert_eq!(lines.len(), 1 + 25, "{csv}");

    // Evaluation: greedy, beam 3 and the nearest-neighbour baseline under a search run.
    let search = train_search(dir.path(), "search", 2);
    let r = eval_json("caption", &run, &["--search-run", s(&search)]);
    assert_eq!(r["test_images"], 6);
    let methods = field_strs(&r["methods"], "method");
    assert_eq!(methods, ["greedy", "beam 3", "nearest neighbour"]);
    for m in r["methods"].as_array().unwrap() {
        let sc = &m["scores"];
        for key in ["rouge_l", "cider_d"] {
            let x = sc[key].as_f64().unwrap();
            assert!(x.is_finite() && x >= 0.0, "{key} = {x}");
        }
        assert_eq!(sc["images"], 6);
    }
    // The baseline returns training captions: every one is a real title.
    let titles = std::fs::read_to_string(dir.path().join("styles.csv")).unwrap();
    for e in r["examples"].as_array().unwrap() {
        let nn = e["captions"][2].as_str().unwrap();
        assert!(titles.contains(nn), "{nn:?} is not a catalogue title");
    }
    assert!(run.join("eval.json").exists());
}

#[test]
fn frozen_encoder_keeps_the_search_runs_weights() {
    let dir = tempfile::tempdir().unwrap();
    let search = trained_run(dir.path(), 1, "search");
    let init = format!(
        "[init]\nencoder = \"{}\"\nfreeze_encoder = true",
        search.display()
    );
    let run = train_caption(dir.path(), "cap", 2, &init);

    let device = Default::default();
    let cap = CaptionRun::<Flex>::load(&run, &device).unwrap();
    let enc = Encoder::<Flex>::load(&search, &device).unwrap();
    let x = Tensor::<Flex, 4>::ones([2, 3, 16, 16], &device).mul_scalar(0.3);
    let a = cap.model.encoder.forward_tokens(x.clone());
    let b = enc.model.forward_tokens(x);
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert!(diff < 1e-6, "the frozen encoder moved by {diff}");
    // The decoder did train: its loss fell.
    let losses = metric_column(&run, "loss");
    assert!(losses[1] < losses[0], "{losses:?}");
}

#[test]
fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_catalogue(dir.path());
    let run = train_caption(dir.path(), "cap", 1, "");
    let img = dir.path().join("images/100.png");
    // At the limits (max_beam 4, context 32 - 1 = 31 tokens): fine. Just past: errors.
    ok(&[
        "caption",
        "--run",
        s(&run),
        s(&img),
        "--beam",
        "4",
        "--max-tokens",
        "31",
    ]);
    for (flag, value, needle) in [
        ("--beam", "5", "beam = 5"),
        ("--max-tokens", "32", "max_tokens = 32"),
        ("--length-penalty", "NaN", "length_penalty"),
    ] {
        let (good, err) = outcome(&["caption", "--run", s(&run), s(&img), flag, value]);
        assert!(!good);
        assert!(err.contains(needle) && err.contains("allowed"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Only unreadable inputs: a failure that names them, not a panic.
    let junk = dir.path().join("junk.jpg");
    std::fs::write(&junk, b"not an image").unwrap();
    let (good, err) = outcome(&["caption", "--run", s(&run), s(&junk)]);
    assert!(!good);
    assert!(
        err.contains("junk.jpg") && !err.contains("panicked"),
        "{err}"
    );
    // A run of another task is refused by name.
    let search_like = dir.path().join("not-a-run");
    std::fs::create_dir_all(&search_like).unwrap();
    let (good, err) = outcome(&["caption", "--run", s(&search_like), s(&img)]);
    assert!(!good);
    assert!(err.contains("config.toml"));
}

#[test]
fn a_stopped_run_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    write_catalogue(dir.path());
    let config = write_caption_config(dir.path(), 2, "");
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    train_full_and_stopped(&config, &straight, &stopped);
    assert!(
        !stopped.join("model.mpk").exists(),
        "a stopped run has no final model"
    );
    resume(&stopped);
    // Same weights (the files differ only in parameter ids): same logits.
    let device = Default::default();
    let a = CaptionRun::<Flex>::load(&straight, &device).unwrap();
    let b = CaptionRun::<Flex>::load(&stopped, &device).unwrap();
    let x = Tensor::<Flex, 4>::ones([1, 3, 16, 16], &device).mul_scalar(0.2);
    let t =
        Tensor::<Flex, 2, burn::tensor::Int>::from_data([[a.specials.bos as i64, 5, 7]], &device);
    let la = a.model.forward(x.clone(), t.clone()).unwrap();
    let lb = b.model.forward(x, t).unwrap();
    let diff: f32 = (la - lb).abs().max().into_scalar();
    assert!(
        diff <= 1e-6,
        "resumed training differs from an uninterrupted run by {diff}"
    );

    // A catalogue that changed under a stopped run is refused, not silently re-split.
    let again = dir.path().join("again");
    train_to(&config, &again, &["--stop-after-epochs", "1"]);
    let csv = dir.path().join("styles.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let fewer: String = text.lines().take(20).map(|l| format!("{l}\n")).collect();
    std::fs::write(&csv, fewer).unwrap();
    let (good, err) = outcome(&["train", "--resume", s(&again), "--quiet"]);
    assert!(!good);
    assert!(err.contains("no longer matches"), "{err}");
}
