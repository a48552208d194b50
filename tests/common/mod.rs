//! Shared fixtures for the end-to-end tests: a tiny synthetic catalogue (three visually
//! distinct classes) and a helper that runs the `vitrine` binary.
#![allow(dead_code)]

pub mod http;
pub mod traces;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const CLASSES: [&str; 3] = ["red-vertical", "green-horizontal", "blue-diagonal"];
pub const PER_CLASS: usize = 8;

/// 16x16 RGB image of class `c`, varied by `seed` (position jitter and noise).
pub fn synth_image(c: usize, seed: u32) -> image::RgbImage {
    let mut img = image::RgbImage::new(16, 16);
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(c as u32 * 97);
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    let offset = (rnd() % 4) as i32;
    for y in 0..16 {
        for x in 0..16 {
            let on = match c {
                0 => (x as i32 - 6 - offset).abs() < 2,
                1 => (y as i32 - 6 - offset).abs() < 2,
                _ => (x as i32 - y as i32 + offset - 2).abs() < 2,
            };
            let noise = (rnd() % 40) as u8;
            let base = if on { 220 } else { 30 };
            let mut px = [noise, noise, noise];
            px[c] = px[c].saturating_add(base);
            img.put_pixel(x, y, image::Rgb(px));
        }
    }
    img
}

/// Writes `dir/images/<id>.png` and `dir/styles.csv` (id,colour,articleType,title).
pub fn write_catalogue(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut csv = String::from("id,colour,articleType,title\n");
    for c in 0..CLASSES.len() {
        for i in 0..PER_CLASS {
            let id = 100 + c * 100 + i;
            synth_image(c, i as u32)
                .save(images.join(format!("{id}.png")))
                .unwrap();
            let colour = if i % 2 == 0 { "dark" } else { "light" };
            csv.push_str(&format!(
                "{id},{colour},{},Item {id} {}\n",
                CLASSES[c], CLASSES[c]
            ));
        }
    }
    write_file(dir, "styles.csv", &csv)
}

/// Writes `text` to `dir/<name>` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `[data]` and `[split]` over the catalogue in `dir`, with the task's own lines of each.
fn catalogue_toml(dir: &Path, data: &str, split: &str) -> String {
    format!(
        r#"[data]
format = "csv"
csv = "{csv}"
images = "{images}"
image_pattern = "{{id}}.png"
{data}title_column = "title"

[split]
{split}
"#,
        csv = dir.join("styles.csv").display(),
        images = dir.join("images").display(),
    )
}

/// `[data]` and `[split]` of the search recipes over the catalogue in `dir`.
pub fn search_data_toml(dir: &Path) -> String {
    catalogue_toml(
        dir,
        "label_column = \"articleType\"\n",
        "holdout_fraction = 0.25\nseed = 1",
    )
}

/// `[data]` and `[split]` of the caption recipes over the catalogue in `dir`.
pub fn caption_data_toml(dir: &Path) -> String {
    catalogue_toml(dir, "", "test_fraction = 0.25\nseed = 2")
}

/// `[preprocess]` and `[augment]` of the tiny image recipes.
pub const IMAGE_TOML: &str = r#"[preprocess]
height = 16
width = 16
channels = 3

[augment]
hflip = 0.5
"#;

/// The tiny CNN encoder's keys (under `[model]` or `[model.encoder]`).
pub const CNN_TOML: &str = r#"arch = "cnn"
in_channels = 3
input_size = [16, 16]
widths = [8, 16]
depths = [1, 1]
embed_dim = 16
"#;

/// A trained BPE tokenizer's keys (under `[tokenizer]`).
pub const BPE_TOML: &str = "kind = \"bpe\"\nvocab_size = 300\n";

/// The tiny GPT's keys (under `[model]` or `[model.gpt]`).
pub const GPT_TOML: &str = "preset = \"tiny\"\nn_ctx = 40\nd_model = 32\n";

/// `[train]` (with `extra` lines after `batch_size`) and `[train.schedule]`.
pub fn train_toml(
    epochs: usize,
    batch_size: usize,
    extra: &str,
    lr: &str,
    warmup: usize,
) -> String {
    format!(
        r#"[train]
epochs = {epochs}
batch_size = {batch_size}
{extra}log_every_steps = 0

[train.schedule]
lr = {lr}
warmup_steps = {warmup}
"#
    )
}

/// `[data.train]` and `[data.valid]` naming the CSV files `dir/<train>` and `dir/<valid>`.
pub fn splits_toml(dir: &Path, train: &str, valid: &str) -> String {
    format!(
        "[data.train]\ncsv = \"{}\"\n[data.valid]\ncsv = \"{}\"\n",
        dir.join(train).display(),
        dir.join(valid).display(),
    )
}

/// `[data]` of the copy recipes over `write_copy_corpus`'s files in `dir`.
pub fn copy_data_toml(dir: &Path) -> String {
    let splits = splits_toml(dir, "train.csv", "valid.csv");
    format!("[data]\nformat = \"copy\"\n{splits}")
}

/// `[generate]` of the tiny copy recipes.
pub fn generate_toml(max_new_tokens: usize) -> String {
    format!(
        r#"[generate]
max_n = 4
max_chars = 100
max_brief_chars = 40
batch_size = 4
budget_factor = 3
max_new_tokens = {max_new_tokens}
"#
    )
}

/// `[decode]` and `[limits]` of the caption recipes.
pub fn caption_limits_toml(beam: usize) -> String {
    format!("[decode]\nbeam = {beam}\nmax_tokens = 12\n\n[limits]\nmax_beam = 4\nbatch_size = 4\n")
}

/// A tiny search recipe over the catalogue in `dir`.
pub fn write_config(dir: &Path, epochs: usize) -> PathBuf {
    let cfg = format!(
        "task = \"search\"\nseed = 3\n\n{}\n{IMAGE_TOML}\n[model]\n{CNN_TOML}\n{}",
        search_data_toml(dir),
        train_toml(epochs, 6, "", "3e-3", 2),
    );
    write_file(dir, "tiny.toml", &cfg)
}

/// A fresh temporary folder holding the catalogue and the tiny search recipe for `epochs`.
pub fn catalogue_and_config(epochs: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write_catalogue(dir.path());
    let config = write_config(dir.path(), epochs);
    (dir, config)
}

pub fn vitrine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .output()
        .expect("run vitrine")
}

/// An empty folder `name` under the test binary's scratch space (emptied if it was there).
pub fn fresh_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Runs vitrine with its stdout a pipe whose reader is already gone, as in `vitrine … | head`
/// once head has what it wants: every write fails with EPIPE.
pub fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vitrine");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait for vitrine")
}

/// A command whose output was cut off by its reader ended as `ls | head` does: exit code 0
/// (or killed by SIGPIPE, 141 in the shell), and no panic.
pub fn assert_quiet_end_of_output(out: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    let err = stderr(out);
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "{what}: {:?}\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(!err.contains("Broken pipe"), "{what}: {err}");
}

/// Runs vitrine and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = vitrine(args);
    assert!(
        out.status.success(),
        "vitrine {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs vitrine without judging the outcome: (success, stderr).
pub fn outcome(args: &[&str]) -> (bool, String) {
    success_and_stderr(&vitrine(args))
}

/// Whether a finished command succeeded, and its stderr.
pub fn success_and_stderr(out: &Output) -> (bool, String) {
    (out.status.success(), stderr(out))
}

/// A finished command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a finished command succeeded, showing its stderr otherwise.
pub fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that a finished command failed with `want` in its stderr.
pub fn assert_failed_with(out: &Output, want: &str) {
    let err = stderr(out);
    assert!(!out.status.success() && err.contains(want), "{err}");
}

/// Asserts that each of `files` exists in the run folder `run`.
pub fn assert_run_files(run: &Path, files: &[&str]) {
    for f in files {
        assert!(run.join(f).exists(), "{f} missing from the run");
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train --config CONFIG --run-dir RUN EXTRA…` as vitrine's arguments.
pub fn train_args<'a>(config: &'a Path, run: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--config", s(config), "--run-dir", s(run)];
    args.extend_from_slice(extra);
    args
}

/// `vitrine train --config CONFIG --run-dir RUN EXTRA…`, without judging the outcome.
pub fn train_output(config: &Path, run: &Path, extra: &[&str]) -> Output {
    vitrine(&train_args(config, run, extra))
}

/// `vitrine train --config CONFIG --run-dir RUN --quiet EXTRA…`, asserting success.
pub fn train_to(config: &Path, run: &Path, extra: &[&str]) {
    let mut args = train_args(config, run, &["--quiet"]);
    args.extend_from_slice(extra);
    ok(&args);
}

/// Trains `full` to the end and `stopped` for one epoch only, both from `config`.
pub fn train_full_and_stopped(config: &Path, full: &Path, stopped: &Path) {
    train_to(config, full, &[]);
    train_to(config, stopped, &["--stop-after-epochs", "1"]);
}

/// `vitrine train --resume RUN --quiet`, asserting success.
pub fn resume(run: &Path) {
    ok(&["train", "--resume", s(run), "--quiet"]);
}

/// Writes the tiny search recipe into `dir` (its catalogue already there) and trains
/// `dir/<name>` for `epochs`.
pub fn train_search(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    train_in(dir, name, &write_config(dir, epochs))
}

/// Trains `dir/<name>` from `config`, asserting success; the run folder.
pub fn train_in(dir: &Path, name: &str, config: &Path) -> PathBuf {
    let run = dir.join(name);
    train_to(config, &run, &[]);
    run
}

/// Writes the tiny catalogue and recipe into `dir` and trains `dir/<name>` for `epochs`.
pub fn trained_run(dir: &Path, epochs: usize, name: &str) -> PathBuf {
    write_catalogue(dir);
    train_search(dir, name, epochs)
}

/// The value of `key` on every line of the run's `metrics.jsonl`.
pub fn metric_column(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// `vitrine eval KIND --run RUN EXTRA… --json`, asserting success; the parsed report.
pub fn eval_json(kind: &str, run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["eval", kind, "--run", s(run)];
    args.extend_from_slice(extra);
    args.push("--json");
    serde_json::from_str(&ok(&args)).unwrap()
}

/// The string `key` of each object in the JSON array `items`.
pub fn field_strs<'a>(items: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap())
        .collect()
}

/// `index build --run RUN --out OUT EXTRA…` as vitrine's arguments.
pub fn index_build_args<'a>(run: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["index", "build", "--run", s(run), "--out", s(out)];
    args.extend_from_slice(extra);
    args
}

/// `vitrine index build --run RUN --out OUT --quiet`, asserting success.
pub fn build_index(run: &Path, out: &Path) {
    ok(&index_build_args(run, out, &["--quiet"]));
}

/// `vitrine search --index INDEX ARGS… --json`, asserting success; the parsed hits.
pub fn search_json(index: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["search", "--index", s(index)];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&ok(&all)).unwrap()
}

/// `vitrine generate --run RUN --json EXTRA…`, asserting success; the parsed answer.
pub fn generate_json(run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--run", s(run), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).unwrap()
}

/// Builds an index of the run's catalogue on `device` and returns its row-major embeddings.
pub fn index_embeddings(
    run: &Path,
    out: &Path,
    device: &str,
) -> std::result::Result<Vec<f32>, String> {
    let o = vitrine(&index_build_args(
        run,
        out,
        &["--quiet", "--device", device],
    ));
    if !o.status.success() {
        return Err(stderr(&o));
    }
    Ok(vitrine_index::Index::load(out)
        .unwrap()
        .embeddings()
        .to_vec())
}

pub const PRODUCTS: [&str; 6] = [
    "sandals", "jackets", "sneakers", "scarves", "watches", "bags",
];
pub const OPENERS: [&str; 5] = [
    "Summer sale on",
    "Last chance for",
    "New season",
    "You will love these",
    "Free shipping on",
];
pub const CLOSERS: [&str; 4] = ["today", "this week", "for everyone", "while they last"];

/// `dir/train.csv` and `dir/valid.csv` in the Upworthy layout (headline column).
pub fn write_copy_corpus(dir: &Path) {
    let mut train = String::from("test_id,headline,clicks\n");
    let mut valid = String::from("test_id,headline,clicks\n");
    let mut i = 0;
    for p in PRODUCTS {
        for o in OPENERS {
            for c in CLOSERS {
                let line = format!("{o} {p} {c}");
                let row = format!("t{i},\"{line}\",{}\n", i % 7);
                if i % 10 == 0 {
                    valid.push_str(&row);
                } else {
                    train.push_str(&row);
                }
                i += 1;
            }
        }
    }
    std::fs::write(dir.join("train.csv"), train).unwrap();
    std::fs::write(dir.join("valid.csv"), valid).unwrap();
}

/// A tiny copy recipe over a synthetic headline corpus in `dir`.
pub fn write_copy_config(dir: &Path, epochs: usize) -> PathBuf {
    write_copy_corpus(dir);
    let cfg = format!(
        "task = \"copy\"\nseed = 5\n\n{}\n[tokenizer]\n{BPE_TOML}\n[model]\n{GPT_TOML}\n{}\n{}\n{}",
        copy_data_toml(dir),
        train_toml(epochs, 8, "block_size = 40\n", "5e-3", 10),
        generate_toml(30),
        "[eval]\nbriefs = 3\nn = 2\nmax_chars = 100\n",
    );
    write_file(dir, "copy.toml", &cfg)
}

/// Writes the tiny copy recipe into `dir` and trains `dir/<name>` for `epochs`.
pub fn train_copy(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    train_in(dir, name, &write_copy_config(dir, epochs))
}

/// Variants of one test: (headline, impressions, clicks). "free" wins; among the rest the
/// short one beats the long one; a repeat of the short headline (other image, say) and an
/// equal-CTR variant are pairs a text scorer must not be judged on.
pub fn score_variants(o: &str, p: &str, c: &str) -> Vec<(String, u64, u64)> {
    let base = format!("{o} {p} {c}");
    vec![
        (format!("{base} free"), 5000, 400),       // 8.0 %
        (format!("{base} today only"), 5000, 150), // 3.0 %
        (base.clone(), 5000, 200),                 // 4.0 %
        (base.clone(), 4000, 180),                 // 4.5 %, same headline as above
    ]
}

/// `dir/ab-train.csv` and `dir/ab-valid.csv` in the Upworthy layout.
pub fn write_ab_tests(dir: &Path) {
    let header = "test_id,test_week,headline,lede,impressions,clicks,ctr,winner\n";
    let (mut train, mut valid) = (header.to_string(), header.to_string());
    let mut i = 0;
    for p in PRODUCTS {
        for o in OPENERS {
            for c in CLOSERS {
                let out = if i % 5 == 0 { &mut valid } else { &mut train };
                for (h, imp, clicks) in score_variants(o, p, c) {
                    out.push_str(&format!(
                        "t{i},201401,\"{h}\",lede,{imp},{clicks},{:.6},0\n",
                        clicks as f64 / imp as f64
                    ));
                }
                i += 1;
            }
        }
    }
    std::fs::write(dir.join("ab-train.csv"), train).unwrap();
    std::fs::write(dir.join("ab-valid.csv"), valid).unwrap();
}

/// The tiny click-through scorer recipe; `top` adds top-level keys (e.g. `init = "…"`).
pub fn write_score_config(dir: &Path, epochs: usize, top: &str) -> PathBuf {
    write_ab_tests(dir);
    let train = train_toml(epochs, 8, "dev_fraction = 0.1\n", "3e-3", 5);
    let cfg = format!(
        "task = \"score\"\nseed = 3\n{top}\n\n{}\n[tokenizer]\n{BPE_TOML}\n[model]\nmembers = 2\n\n[model.gpt]\n{GPT_TOML}\n{train}\n{}",
        splits_toml(dir, "ab-train.csv", "ab-valid.csv"),
        "[limits]\nmax_lines = 5\nmax_chars = 60\nbatch_size = 3\n",
    );
    write_file(dir, "score.toml", &cfg)
}

/// Writes the tiny scorer recipe into `dir` and trains `dir/<name>` for `epochs`.
pub fn train_scorer(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    train_in(dir, name, &write_score_config(dir, epochs, ""))
}

/// A tiny caption recipe over the catalogue in `dir` (title column = caption); its encoder
/// is the tiny search recipe's, so a search run can initialise it.
pub fn write_caption_config(dir: &Path, epochs: usize, init: &str) -> PathBuf {
    let model = format!("[model]\npreset = \"tiny\"\n[model.encoder]\n{CNN_TOML}");
    let cfg = format!(
        "task = \"caption\"\nseed = 4\n\n{}\n{IMAGE_TOML}\n[tokenizer]\n{BPE_TOML}\n{model}\n{init}\n\n{}\n{}",
        caption_data_toml(dir),
        train_toml(epochs, 6, "", "5e-3", 4),
        caption_limits_toml(2),
    );
    write_file(dir, "caption.toml", &cfg)
}

/// Writes the tiny caption recipe (with `init`) into `dir` and trains `dir/<name>`.
pub fn train_caption(dir: &Path, name: &str, epochs: usize, init: &str) -> PathBuf {
    train_in(dir, name, &write_caption_config(dir, epochs, init))
}

/// `vitrine index build` of the CLIP fixture's two images (ids `image0`, `image1`, titled)
/// with the fixture model `clip` on `device`; the CSV goes into `dir`.
pub fn build_clip_index(clip: &Path, dir: &Path, index: &Path, device: &str) -> Output {
    let csv = write_file(dir, "items.csv", "id,title\nimage0,first\nimage1,second\n");
    vitrine(&index_build_args(
        clip,
        index,
        &[
            "--csv",
            s(&csv),
            "--images",
            s(clip),
            "--image-pattern",
            "{id}.png",
            "--title-column",
            "title",
            "--quiet",
            "--device",
            device,
        ],
    ))
}
