//! End to end through the binary: train a tiny copy model on a synthetic headline corpus,
//! generate from it, evaluate it, resume it, and refuse every invalid request clearly.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{
    assert_run_files, eval_json, field_strs, generate_json, metric_column, ok, outcome, resume, s,
    train_copy as train, train_full_and_stopped, write_copy_config as write_config,
};

/// What a trained copy run's folder holds.
const RUN_FILES: [&str; 6] = [
    "config.toml",
    "tokenizer.json",
    "model.mpk",
    "metrics.jsonl",
    "train-lines.txt",
    "lexicon.txt",
];

fn texts(v: &serde_json::Value) -> Vec<String> {
    let texts = field_strs(&v["candidates"], "text");
    texts.into_iter().map(String::from).collect()
}

#[test]
fn train_generate_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "run", 40);
    assert_run_files(&run, &RUN_FILES);
    let val = metric_column(&run, "val_loss");
    assert_eq!(val.len(), 40);
    assert!(val[39] < val[0], "validation loss should fall: {val:?}");

    let args = [
        "--keywords",
        "sandals",
        "-n",
        "3",
        "--max-chars",
        "60",
        "--seed",
        "11",
    ];
    let a = generate_json(&run, &args);
    let b = generate_json(&run, &args);
    assert_eq!(a, b, "same seed, same output");
    let lines = texts(&a);
    assert!(!lines.is_empty());
    let mut uniq = lines.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), lines.len(), "no duplicates: {lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.is_empty() && l.chars().count() <= 60),
        "{lines:?}"
    );

    // Banned words never appear; an empty brief is allowed.
    let banned = dir.path().join("banned.txt");
    std::fs::write(&banned, "# words legal said no to\nfree\nsale\n").unwrap();
    let out = generate_json(
        &run,
        &["-n", "4", "--banned-words", s(&banned), "--seed", "3"],
    );
    for l in texts(&out) {
        let lower = l.to_lowercase();
        assert!(
            !lower
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == "free" || w == "sale"),
            "{l}"
        );
    }

    // --no-copy refuses lines from the training set (saved in the run). A model this small
    // and this fitted to its templates reproduces training lines without the flag.
    let train_lines = std::fs::read_to_string(run.join("train-lines.txt")).unwrap();
    let is_copy = |l: &String| {
        let norm = vitrine_data::copy::normalize(l);
        train_lines.lines().any(|t| t == norm)
    };
    let free = generate_json(&run, &["-n", "4", "--seed", "9"]);
    assert!(texts(&free).iter().any(is_copy), "{:?}", texts(&free));
    let out = generate_json(&run, &["-n", "4", "--no-copy", "--seed", "9"]);
    assert!(
        out["rejected"]["training-copy"].as_u64().unwrap_or(0) > 0,
        "{out}"
    );
    assert!(!texts(&out).iter().any(is_copy), "{:?}", texts(&out));

    // Impossible constraints: fewer than n pass, and the output says so.
    let out = generate_json(&run, &["-n", "2", "--max-chars", "1"]);
    assert_eq!(out["budget_exhausted"], true);
    assert_eq!(out["sampled"], 6, "budget_factor 3 x n 2");
    assert!(texts(&out).is_empty());

    let report = eval_json("copy", &run, &[]);
    let ppl = report["val_perplexity"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0 && ppl < 300.0, "{ppl}");
    let g = &report["generation"];
    assert_eq!(g["briefs"], 3);
    assert_eq!(g["constraint_compliance"].as_f64().unwrap(), 1.0);
    assert!(run.join("eval.json").exists());
}

#[test]
fn invalid_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "run", 1);
    let fails = |extra: &[&str], needle: &str| {
        let mut args = vec!["generate", "--run", s(&run)];
        if !extra.contains(&"-n") {
            // Within this config's generate.max_n, so only `extra` is at fault.
            args.extend_from_slice(&["-n", "1"]);
        }
        args.extend_from_slice(extra);
        let (good, err) = outcome(&args);
        assert!(!good, "{extra:?} should fail");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    let works = |extra: &[&str]| {
        let mut args = vec!["generate", "--run", s(&run), "--json"];
        args.extend_from_slice(extra);
        ok(&args);
    };
    for t in ["0", "-1", "NaN", "inf"] {
        fails(&["--temperature", t], "temperature");
    }
    fails(&["--top-p", "0"], "top_p");
    fails(&["--top-p", "1.01"], "top_p");
    works(&["--top-p", "1", "-n", "1"]);
    fails(&["--top-k", "0"], "top_k");
    works(&["--top-k", "1", "-n", "1"]);
    fails(&["-n", "0"], "n = 0");
    works(&["-n", "4"]);
    fails(&["-n", "5"], "generate.max_n");
    fails(&["--max-chars", "0"], "max_chars");
    works(&["--max-chars", "100", "-n", "1"]);
    fails(&["--max-chars", "101"], "generate.max_chars");
    fails(&["--repetition-penalty", "0"], "repetition_penalty");
    fails(&["--keyword-boost", "-1"], "keyword_boost");
    works(&["--keyword-boost", "20", "-n", "1"]);
    fails(&["--keyword-boost", "20.5"], "generate.max_keyword_boost");
    fails(&["--tone", "playful"], "tone");
    // Brief length: at the character limit is fine, one past it is refused.
    let forty = "sandals, jackets, sneakers, bags, watches";
    assert_eq!(forty.len(), 41);
    works(&["--keywords", &forty[..40], "-n", "1"]);
    fails(&["--keywords", forty], "generate.max_brief_chars");
    // Within the character limit but too many tokens for the context.
    let long: String = "ж".repeat(40);
    fails(&["--keywords", &long], "model.n_ctx");
    fails(
        &["--banned-words", s(&dir.path().join("missing.txt"))],
        "missing.txt",
    );
    // A missing run is a clear error.
    let (good, err) = outcome(&["generate", "--run", s(&dir.path().join("nope"))]);
    assert!(!good);
    assert!(err.contains("no config.toml"));
}

/// Stopping after one epoch and resuming gives exactly the uninterrupted run.
#[test]
fn resumed_copy_run_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = write_config(d, 3);
    let (full, parts) = (d.join("full"), d.join("parts"));
    train_full_and_stopped(&config, &full, &parts);
    resume(&parts);
    let read = |p: &Path| -> Vec<(f64, f64)> {
        let loss = metric_column(p, "loss");
        loss.into_iter().zip(metric_column(p, "val_loss")).collect()
    };
    assert_eq!(read(&full), read(&parts));
    let args = ["--keywords", "bags", "-n", "2", "--seed", "1"];
    assert_eq!(generate_json(&full, &args), generate_json(&parts, &args));
}

/// The words of `lines` that are neither in `lexicon` nor words of `keywords` nor numbers.
fn unknown_words(lines: &[String], lexicon: &HashSet<String>, keywords: &str) -> Vec<String> {
    let kw: HashSet<String> = vitrine_data::copy::words(keywords).into_iter().collect();
    lines
        .iter()
        .flat_map(|l| vitrine_data::copy::words(l))
        .filter(|w| {
            !lexicon.contains(w) && !kw.contains(w) && !w.bytes().all(|b| b.is_ascii_digit())
        })
        .collect()
}

fn read_words(p: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(p).unwrap();
    text.split_whitespace().map(String::from).collect()
}

/// Held to the lexicon (the default), a barely trained model writes only words of its
/// corpus, the keywords and numbers, over many seeds; unconstrained, it invents words (so
/// the check can fail). A keyword the corpus never had can still be written.
#[test]
fn lexicon_keeps_lines_to_known_words() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path(), "run", 1);
    let lexicon = read_words(&run.join("lexicon.txt"));
    assert_eq!(lexicon, read_words(&run.join("train-lines.txt")));
    let keywords = "sandals, Zorblax";
    let (mut candidates, mut invented, mut zorblax) = (0, 0, 0);
    for seed in 0..6 {
        let seed = seed.to_string();
        let args = ["--keywords", keywords, "-n", "4", "--seed", &seed];
        let on = generate_json(&run, &[&args[..], &["--lexicon", "corpus"]].concat());
        assert_eq!(on, generate_json(&run, &args), "corpus is the default");
        let lines = texts(&on);
        candidates += lines.len();
        assert_eq!(
            unknown_words(&lines, &lexicon, keywords),
            Vec::<String>::new(),
            "{lines:?}"
        );
        zorblax += lines.iter().filter(|l| l.contains("Zorblax")).count();
        let off = generate_json(&run, &[&args[..], &["--lexicon", "off"]].concat());
        invented += unknown_words(&texts(&off), &lexicon, keywords).len();
        assert!(on["tokens"].as_u64().unwrap() > 0);
    }
    assert!(candidates > 0);
    assert!(invented > 0, "the unconstrained model should invent words");
    assert!(
        zorblax > 0,
        "the keyword outside the lexicon was never written"
    );

    // A run made before lexicon.txt existed derives the same lexicon from its lines.
    let args = ["--keywords", keywords, "-n", "4", "--seed", "2"];
    let with_file = generate_json(&run, &args);
    std::fs::remove_file(run.join("lexicon.txt")).unwrap();
    assert_eq!(generate_json(&run, &args), with_file);

    // A lexicon no line can be finished with in the token budget: every sample is
    // rejected, the output says the budget ran out, and generation ends.
    std::fs::write(
        run.join("lexicon.txt"),
        "pneumonoultramicroscopicsilicovolcanoconiosis\n",
    )
    .unwrap();
    let out = generate_json(
        &run,
        &["-n", "2", "--max-tokens", "3", "--keyword-boost", "0"],
    );
    assert_eq!(out["budget_exhausted"], true, "{out}");
    assert_eq!(out["sampled"], 6);
    assert!(texts(&out).is_empty());

    // generate.lexicon_extra: read when the run loads; a missing file names itself.
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_extra = text.replace(
        "[generate]\n",
        "[generate]\nlexicon_extra = \"extra.txt\"\n",
    );
    assert_ne!(with_extra, text);
    std::fs::write(&config, with_extra).unwrap();
    let (good, err) = outcome(&["generate", "--run", s(&run), "-n", "1"]);
    assert!(
        !good && err.contains("generate.lexicon_extra") && err.contains("extra.txt"),
        "{err}"
    );
    std::fs::write(run.join("extra.txt"), "sale\n").unwrap();
    let out = generate_json(&run, &["-n", "1", "--max-tokens", "3"]);
    assert!(out["sampled"].as_u64().unwrap() > 0);

    // eval copy reports the lexicon figures, and --lexicon off goes to its own file.
    std::fs::write(&config, &text).unwrap();
    std::fs::remove_file(run.join("lexicon.txt")).unwrap();
    let list = dir.path().join("words.txt");
    std::fs::write(&list, "sandals\nsale\nsummer\n").unwrap();
    let on = eval_json("copy", &run, &["--word-list", s(&list)]);
    let lx = &on["generation"]["lexicon"];
    let shares = &lx["word_list"];
    for k in ["generated", "valid"] {
        let v = shares[k].as_f64().unwrap();
        assert!(v > 0.0 && v < 1.0, "{k}: {shares}");
    }
    assert_eq!(
        (lx["mode"].as_str(), lx["words_outside"].as_u64()),
        (Some("corpus"), Some(0)),
        "{on}"
    );
    assert!(lx["valid_share"].as_f64().unwrap() > 0.5, "{on}");
    assert!(on["generation"]["tokens_per_sec"].as_f64().unwrap() > 0.0);
    let off = eval_json("copy", &run, &["--lexicon", "off"]);
    assert_eq!(off["generation"]["lexicon"]["mode"], "off");
    assert!(run.join("eval-lexicon-off.json").exists());
}
