//! End to end through the binary: train a tiny click-through scorer on synthetic A/B tests
//! with a planted rule (the variant that says "free" gets the most clicks), evaluate it
//! against the baselines, score lines from stdin, rank generated candidates, resume, and
//! refuse bad input clearly.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    assert_run_files, eval_json, ok, outcome, resume, s, train_copy, train_full_and_stopped,
    train_in, train_output, train_scorer, write_file, write_score_config,
};

/// What a trained scorer's run folder holds.
const RUN_FILES: [&str; 5] = [
    "model.mpk",
    "best-model.mpk",
    "best.json",
    "tokenizer.json",
    "train-report.json",
];

/// `vitrine score --run RUN EXTRA…` with `input` on stdin: (success, stdout, stderr).
fn score(run: &Path, input: &[u8], extra: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["score", "--run", s(run)])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Bad input is an error message, never a panic.
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn scorer_learns_the_planted_rule_and_ranks_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_scorer(dir.path(), "run", 12);
    assert_run_files(&run, &RUN_FILES);

    let e = eval_json("score", &run, &[]);
    // 24 validation tests; per test 6 variant pairs, of which 1 repeats a headline and 5 count.
    assert_eq!(e["tests"], 24);
    assert_eq!(e["variants"], 96);
    assert_eq!(e["same_text_pairs"], 24);
    assert_eq!(e["same_ctr_pairs"], 0);
    for k in ["model", "longer_wins", "random"] {
        assert_eq!(e[k]["pairs"], 120, "{k}");
    }
    // Longer wins is right on (free, short) and (free, short repeat) only: 2 of 5.
    assert_eq!(e["longer_wins"]["accuracy"], 0.4);
    let acc = e["model"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "model pairwise accuracy {acc}");
    assert!(e["model"]["auc"].as_f64().unwrap() >= 0.9);
    assert!(run.join("eval.json").exists());

    // Unseen product: the free line first; blank lines skipped; scores descending.
    let input = b"Winter boots today only\n\nWinter boots free\nWinter boots\n";
    let (good, out, err) = score(&run, input, &[]);
    assert!(good, "{err}");
    assert!(err.contains("skipped 1 blank lines"), "{err}");
    let lines: Vec<(f64, &str)> = out
        .lines()
        .map(|l| {
            let (sc, text) = l.split_once('\t').unwrap();
            (sc.trim().parse().unwrap(), text)
        })
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].1, "Winter boots free");
    assert!(lines.windows(2).all(|w| w[0].0 >= w[1].0), "{out}");
    // Deterministic, and the JSON form carries the input line numbers (blank excluded).
    assert_eq!(score(&run, input, &[]).1, out);
    let (_, json, _) = score(&run, input, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["text"], "Winter boots free");
    assert_eq!(v[0]["line"], 2);
    assert!((v[0]["score"].as_f64().unwrap() - lines[0].0).abs() < 1e-4);
}

#[test]
fn score_input_limits_and_bad_lines_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_scorer(dir.path(), "run", 1);
    // Words the tokenizer knows, so 60 characters fit the tiny model's context.
    let words = "Summer sale on bags today free ".repeat(3);
    let at_limit: String = words.chars().take(60).collect();
    let over: String = words.chars().take(61).collect();
    // max_chars = 60: at the limit is scored, one past is refused naming the line.
    let (good, _, err) = score(&run, format!("{at_limit}\n").as_bytes(), &[]);
    assert!(good, "{err}");
    let (good, _, err) = score(&run, format!("fine\n{over}\n").as_bytes(), &[]);
    assert!(!good);
    assert!(
        err.contains("line 2: 61 characters") && err.contains("limits.max_chars = 60"),
        "{err}"
    );
    // Refused input, with an error that says why.
    let refused = |input: &[u8], why: &str| {
        let (good, _, err) = score(&run, input, &[]);
        assert!(!good && err.contains(why), "{err}");
    };
    // max_lines = 5.
    assert!(score(&run, b"a\nb\nc\nd\ne\n", &[]).0);
    refused(
        b"a\nb\nc\nd\ne\nf\n",
        "6 lines, more than limits.max_lines = 5",
    );
    // Nothing to score, control characters, invalid UTF-8.
    refused(b"\n  \n", "no lines to score");
    refused(b"ok\nbad\x07bell\n", "line 2: contains a control character");
    refused(b"caf\xe9\n", "UTF-8");
}

#[test]
fn generate_rank_with_sorts_candidates_by_score() {
    let dir = tempfile::tempdir().unwrap();
    let scorer = train_scorer(dir.path(), "scorer", 2);
    let copy = train_copy(dir.path(), "copy", 3);
    let args = [
        "generate",
        "--run",
        s(&copy),
        "--keywords",
        "sandals",
        "-n",
        "4",
        "--rank-with",
        s(&scorer),
        "--json",
    ];
    let out = ok(&args);
    assert_eq!(ok(&args), out, "ranked output is deterministic");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let scores: Vec<f64> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert!(!scores.is_empty());
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // The scores are the scorer's own for those lines.
    let texts = common::field_strs(&v["candidates"], "text");
    let (good, json, err) = score(&scorer, (texts.join("\n") + "\n").as_bytes(), &["--json"]);
    assert!(good, "{err}");
    let direct: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!((direct[0]["score"].as_f64().unwrap() - scores[0]).abs() < 1e-4);
    // A run that is not a scorer is refused before sampling.
    let (good, err) = outcome(&["generate", "--run", s(&copy), "--rank-with", s(&copy)]);
    assert!(!good);
    assert!(
        err.contains("a \"copy\" run") && err.contains("task \"score\""),
        "{err}"
    );

    // Warm start from the copy run: its tokenizer and trunk, a fresh head.
    let config = write_score_config(dir.path(), 1, &format!("init = \"{}\"", copy.display()));
    let warm = train_in(dir.path(), "warm", &config);
    assert_eq!(
        std::fs::read(warm.join("tokenizer.json")).unwrap(),
        std::fs::read(copy.join("tokenizer.json")).unwrap()
    );
    // Warm-starting from a scorer (not a copy run) is refused.
    let bad = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&copy.display().to_string(), &scorer.display().to_string());
    let bad = write_file(dir.path(), "bad.toml", &bad);
    let o = train_output(&bad, &dir.path().join("bad"), &[]);
    assert!(!o.status.success());
}

#[test]
fn resumed_scorer_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_score_config(dir.path(), 3, "");
    let (full, part) = (dir.path().join("full"), dir.path().join("part"));
    train_full_and_stopped(&config, &full, &part);
    assert!(!part.join("model.mpk").exists());
    resume(&part);
    let input =
        b"Summer sale on bags today free\nNew season scarves\nLast chance for watches today only\n";
    let a = score(&full, input, &["--json"]);
    let b = score(&part, input, &["--json"]);
    let parse = |j: &str| -> Vec<(String, f64)> {
        serde_json::from_str::<serde_json::Value>(j)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["text"].as_str().unwrap().to_string(),
                    x["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (parse(&a.1), parse(&b.1));
    assert_eq!(a.len(), 3);
    for ((ta, sa), (tb, sb)) in a.iter().zip(&b) {
        assert_eq!(ta, tb);
        assert!((sa - sb).abs() < 1e-4, "{sa} vs {sb}");
    }
    let best = |r: &Path| std::fs::read_to_string(r.join("best.json")).unwrap();
    assert_eq!(best(&full), best(&part));
}

#[test]
fn bad_scorer_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_score_config(dir.path(), 1, "");
    let text = std::fs::read_to_string(&config).unwrap();
    for (from, to, needle) in [
        (
            "[tokenizer]\nkind = \"bpe\"\nvocab_size = 300\n",
            "",
            "init",
        ),
        ("dev_fraction = 0.1", "dev_fraction = 0.5", "dev_fraction"),
        ("max_lines = 5", "max_lines = 0", "limits.max_lines"),
        (
            "[train]\n",
            "[pairs]\nmin_weight = 0.0\n\n[train]\n",
            "min_weight",
        ),
    ] {
        assert!(text.contains(from), "{from:?}");
        let path = write_file(dir.path(), "bad.toml", &text.replace(from, to));
        let o = train_output(&path, &dir.path().join("bad"), &[]);
        let err = common::stderr(&o);
        assert!(!o.status.success() && err.contains(needle), "{to:?}: {err}");
    }
}

/// The tiny scorer recipe on a pretrained BERT trunk (the fixture folder), its head
/// started from the frozen-embedding logistic regression.
fn write_bert_score_config(dir: &Path, overflow: &str) -> std::path::PathBuf {
    common::write_ab_tests(dir);
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert");
    let train = common::train_toml(
        8,
        8,
        "dev_fraction = 0.1\nhead_init = \"frozen-lr\"\n",
        "3e-3",
        5,
    );
    let cfg = format!(
        "task = \"score\"\nseed = 3\ninit = \"{}\"\n\n{}\n[model]\ntrunk = \"bert\"\nhead_lr_scale = 2.0\n\n[text]\nmax_tokens = 64\noverflow = \"{overflow}\"\n\n{train}\n[limits]\nmax_lines = 5\nmax_chars = 200\nbatch_size = 3\n",
        init.display(),
        common::splits_toml(dir, "ab-train.csv", "ab-valid.csv"),
    );
    write_file(dir, &format!("score-bert-{overflow}.toml"), &cfg)
}

#[test]
fn bert_trunk_scorer_trains_scores_and_reports_the_frozen_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_in(
        dir.path(),
        "bert",
        &write_bert_score_config(dir.path(), "refuse"),
    );
    assert_run_files(&run, &RUN_FILES);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train-report.json")).unwrap())
            .unwrap();
    let frozen = &report["frozen_lr"];
    assert!(frozen["l2"].as_f64().unwrap() > 0.0, "{report}");
    // The config holds the folder's architecture, so the run loads without the folder.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("[model.bert]") && config.contains("d_model = 16"),
        "{config}"
    );

    let e = eval_json("score", &run, &[]);
    assert_eq!(e["model"]["pairs"], 120);
    let acc = e["model"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "model pairwise accuracy {acc}");
    let f = &e["frozen_lr"];
    assert_eq!(f["valid"]["pairs"], 120, "{e}");
    assert!(f["valid"]["accuracy"].as_f64().is_some());

    // The free line first; a line past text.max_tokens = 64 is refused, naming it.
    let input = b"Winter boots today only\nWinter boots free\n";
    let (good, out, err) = score(&run, input, &[]);
    assert!(good, "{err}");
    assert!(
        out.lines().next().unwrap().ends_with("Winter boots free"),
        "{out}"
    );
    let long = b"ok\nsummer sale on linen dresses and cotton shirts, new arrivals: leather boots, wool coats and silk scarves, free shipping on every order over fifty dollars, last chance: twenty percent off\n";
    let (good, _, err) = score(&run, long, &[]);
    assert!(
        !good && err.contains("line 2") && err.contains("max_tokens = 64"),
        "{err}"
    );
    // With overflow = "truncate" the same line is cut and scored.
    let cut = train_in(
        dir.path(),
        "bert-cut",
        &write_bert_score_config(dir.path(), "truncate"),
    );
    let (good, out, err) = score(&cut, long, &[]);
    assert!(good && out.lines().count() == 2, "{err}");
}
