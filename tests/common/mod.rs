//! Shared fixtures for the end-to-end tests: a tiny synthetic catalogue (three visually
//! distinct classes) and a helper that runs the `vitrine` binary.
#![allow(dead_code)]

pub mod http;

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
    let path = dir.join("styles.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// A tiny search recipe over the catalogue in `dir`.
pub fn write_config(dir: &Path, epochs: usize) -> PathBuf {
    let cfg = format!(
        r#"task = "search"
seed = 3

[data]
format = "csv"
csv = "{csv}"
images = "{images}"
image_pattern = "{{id}}.png"
label_column = "articleType"
title_column = "title"

[split]
holdout_fraction = 0.25
seed = 1

[preprocess]
height = 16
width = 16
channels = 3

[augment]
hflip = 0.5

[model]
arch = "cnn"
in_channels = 3
input_size = [16, 16]
widths = [8, 16]
depths = [1, 1]
embed_dim = 16

[train]
epochs = {epochs}
batch_size = 6
log_every_steps = 0

[train.schedule]
lr = 3e-3
warmup_steps = 2
"#,
        csv = dir.join("styles.csv").display(),
        images = dir.join("images").display(),
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

pub fn vitrine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .output()
        .expect("run vitrine")
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

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vitrine train --config CONFIG --run-dir RUN --quiet EXTRA…`, asserting success.
pub fn train_to(config: &Path, run: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--config",
        s(config),
        "--run-dir",
        s(run),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// Writes the tiny catalogue and recipe into `dir` and trains `dir/<name>` for `epochs`.
pub fn trained_run(dir: &Path, epochs: usize, name: &str) -> PathBuf {
    write_catalogue(dir);
    let config = write_config(dir, epochs);
    let run = dir.join(name);
    train_to(&config, &run, &[]);
    run
}

/// Builds an index of the run's catalogue on `device` and returns its row-major embeddings.
pub fn index_embeddings(
    run: &Path,
    out: &Path,
    device: &str,
) -> std::result::Result<Vec<f32>, String> {
    let o = vitrine(&[
        "index",
        "build",
        "--run",
        s(run),
        "--out",
        s(out),
        "--quiet",
        "--device",
        device,
    ]);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
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
        r#"task = "copy"
seed = 5

[data]
format = "copy"
[data.train]
csv = "{train}"
[data.valid]
csv = "{valid}"

[tokenizer]
kind = "bpe"
vocab_size = 300

[model]
preset = "tiny"
n_ctx = 40
d_model = 32

[train]
epochs = {epochs}
batch_size = 8
block_size = 40
log_every_steps = 0

[train.schedule]
lr = 5e-3
warmup_steps = 10

[generate]
max_n = 4
max_chars = 100
max_brief_chars = 40
batch_size = 4
budget_factor = 3
max_new_tokens = 30

[eval]
briefs = 3
n = 2
max_chars = 100
"#,
        train = dir.join("train.csv").display(),
        valid = dir.join("valid.csv").display(),
    );
    let path = dir.join("copy.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Writes the tiny copy recipe into `dir` and trains `dir/<name>` for `epochs`.
pub fn train_copy(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    let config = write_copy_config(dir, epochs);
    let run = dir.join(name);
    train_to(&config, &run, &[]);
    run
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
    let cfg = format!(
        r#"task = "score"
seed = 3
{top}

[data.train]
csv = "{train}"
[data.valid]
csv = "{valid}"

[tokenizer]
kind = "bpe"
vocab_size = 300

[model]
members = 2

[model.gpt]
preset = "tiny"
n_ctx = 40
d_model = 32

[train]
epochs = {epochs}
batch_size = 8
dev_fraction = 0.1
log_every_steps = 0

[train.schedule]
lr = 3e-3
warmup_steps = 5

[limits]
max_lines = 5
max_chars = 60
batch_size = 3
"#,
        train = dir.join("ab-train.csv").display(),
        valid = dir.join("ab-valid.csv").display(),
    );
    let path = dir.join("score.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

pub fn train_scorer(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    let config = write_score_config(dir, epochs, "");
    let run = dir.join(name);
    train_to(&config, &run, &[]);
    run
}

/// A tiny caption recipe over the catalogue in `dir` (title column = caption); its encoder
/// is the tiny search recipe's, so a search run can initialise it.
pub fn write_caption_config(dir: &Path, epochs: usize, init: &str) -> PathBuf {
    let cfg = format!(
        r#"task = "caption"
seed = 4

[data]
format = "csv"
csv = "{csv}"
images = "{images}"
image_pattern = "{{id}}.png"
title_column = "title"

[split]
test_fraction = 0.25
seed = 2

[preprocess]
height = 16
width = 16
channels = 3

[augment]
hflip = 0.5

[tokenizer]
kind = "bpe"
vocab_size = 300

[model]
preset = "tiny"
[model.encoder]
arch = "cnn"
in_channels = 3
input_size = [16, 16]
widths = [8, 16]
depths = [1, 1]
embed_dim = 16

{init}

[train]
epochs = {epochs}
batch_size = 6
log_every_steps = 0

[train.schedule]
lr = 5e-3
warmup_steps = 4

[decode]
beam = 2
max_tokens = 12

[limits]
max_beam = 4
batch_size = 4
"#,
        csv = dir.join("styles.csv").display(),
        images = dir.join("images").display(),
    );
    let path = dir.join("caption.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// `vitrine index build` of the CLIP fixture's two images (ids `image0`, `image1`, titled)
/// with the fixture model `clip` on `device`; the CSV goes into `dir`.
pub fn build_clip_index(clip: &Path, dir: &Path, index: &Path, device: &str) -> Output {
    let csv = dir.join("items.csv");
    std::fs::write(&csv, "id,title\nimage0,first\nimage1,second\n").unwrap();
    vitrine(&[
        "index",
        "build",
        "--run",
        s(clip),
        "--out",
        s(index),
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
    ])
}
