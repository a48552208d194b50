//! End to end: train a tiny search model with the binary, evaluate it, build an index,
//! query it by photo and by id, filter, add and remove items, resume equivalence.

mod common;

use common::*;

#[test]
fn train_eval_index_search_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = trained_run(d, 4, "run");
    assert_run_files(
        &run,
        &[
            "config.toml",
            "model.mpk",
            "labels.json",
            "split.json",
            "metrics.jsonl",
            "checkpoints/last.ckpt",
        ],
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "one metrics line per epoch");

    // Evaluation: the three classes are trivially separable.
    let report = eval_json("search", &run, &["--quiet"]);
    let r1 = report["metrics"]["recall"][0][1].as_f64().unwrap();
    assert!(r1 >= 0.8, "Recall@1 {r1} on separable synthetic classes");
    assert!(run.join("eval.json").exists());

    // Index the catalogue and query with one of its own photos: the item itself is first.
    let index = d.join("catalog.index");
    build_index(&run, &index);
    let query = d.join("images/201.png");
    let hits = search_json(&index, &["--image", s(&query), "-k", "5"]);
    let hits = hits[0].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0]["id"], "201");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999);
    assert_eq!(hits[0]["title"], "Item 201 green-horizontal");

    // Filters are exact and applied before top-k: only "light" items come back.
    let hits = search_json(
        &index,
        &["--id", "201", "-k", "50", "--filter", "colour=light"],
    );
    let hits = hits[0].as_array().unwrap();
    assert_eq!(hits.len(), 12, "12 light items in the catalogue");
    assert!(hits.iter().all(|h| h["attrs"]["colour"] == "light"));
    let filtered = |f: &'static str| ["search", "--index", s(&index), "--id", "201", "--filter", f];
    let text = ok(&filtered("colour=none"));
    assert!(text.contains("no item passes the filters"), "{text}");
    let (good, err) = outcome(&filtered("size=M"));
    assert!(!good);
    assert!(err.contains("unknown filter column"));

    // Remove and re-add items without a rebuild.
    ok(&["index", "remove", "--index", s(&index), "201", "202"]);
    let hits = search_json(&index, &["--image", s(&query), "-k", "30"]);
    assert_eq!(hits[0].as_array().unwrap().len(), 22);
    assert!(hits[0].as_array().unwrap().iter().all(|h| h["id"] != "201"));
    let missing = vitrine(&["index", "remove", "--index", s(&index), "nope"]);
    assert!(!missing.status.success(), "removing an unknown id fails");

    let extra = d.join("extra");
    std::fs::create_dir_all(extra.join("images")).unwrap();
    synth_image(1, 1)
        .save(extra.join("images/201.png"))
        .unwrap();
    std::fs::write(
        extra.join("new.csv"),
        "id,colour,articleType,title\n201,light,green-horizontal,Item 201 back\n",
    )
    .unwrap();
    let (csv, images) = (extra.join("new.csv"), extra.join("images"));
    let add = |title: &[&'static str]| {
        let mut args = vec!["index", "add", "--index", s(&index), "--csv", s(&csv)];
        args.extend_from_slice(&["--images", s(&images), "--image-pattern", "{id}.png"]);
        args.extend_from_slice(title);
        args.push("--quiet");
        args
    };
    ok(&add(&["--title-column", "title"]));
    let hits = search_json(&index, &["--image", s(&query), "-k", "1"]);
    assert_eq!(hits[0][0]["id"], "201");
    assert_eq!(hits[0][0]["title"], "Item 201 back");
    // Adding the same id again is refused and the index is unchanged.
    let (good, err) = outcome(&add(&[]));
    assert!(!good);
    assert!(err.contains("already in the index"));

    // Those writes went to the log beside the index; compaction folds it in.
    let log = d.join("catalog.index.log");
    let before = search_json(&index, &["--id", "203", "-k", "23"]);
    assert!(
        std::fs::metadata(&log).unwrap().len() > 16,
        "adds and removes are logged"
    );
    let text = ok(&["index", "compact", "--index", s(&index)]);
    assert!(text.is_empty());
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 16, "an empty log");
    assert_eq!(search_json(&index, &["--id", "203", "-k", "23"]), before);

    // An HNSW graph (exact_below = 0: used even on 24 items) gives the exact answers here,
    // filters included, and follows later writes through the log.
    let ann = d.join("ann.index");
    let cfg = d.join("ann.toml");
    // `index build --ann hnsw` with `toml` as the graph's parameters.
    let build_graph = |out: &std::path::Path, toml: &str| {
        std::fs::write(&cfg, toml).unwrap();
        let mut args = index_build_args(&run, out, &["--ann", "hnsw", "--ann-config", s(&cfg)]);
        args.push("--quiet");
        outcome(&args)
    };
    let (good, err) = build_graph(
        &ann,
        "exact_below = 0\nfilter_exact_below = 0.0\nconnectivity = 8\n",
    );
    assert!(good, "{err}");
    assert!(d.join("ann.index.hnsw").exists());
    let plain = d.join("plain.index");
    ok(&index_build_args(&run, &plain, &["--quiet"]));
    for extra in [&[][..], &["--filter", "colour=light"][..]] {
        let mut q = vec!["--id", "205", "-k", "10", "--ef", "64"];
        q.extend_from_slice(extra);
        let ids = |index: &std::path::Path| {
            let mut v: Vec<String> = field_strs(&search_json(index, &q)[0], "id")
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&ann), ids(&plain), "{extra:?}");
    }
    // An 8-bit graph finds the same items, and rescoring (on by default) gives them the
    // exact cosines of the f32 embeddings.
    let sq8 = d.join("sq8.index");
    let (good, err) = build_graph(
        &sq8,
        "exact_below = 0\nfilter_exact_below = 0.0\nconnectivity = 8\nquantization = \"sq8\"\n",
    );
    assert!(good, "{err}");
    let scored = |index: &std::path::Path| {
        let hits = search_json(index, &["--id", "205", "-k", "10", "--ef", "64"]);
        let mut v = id_scores(&hits[0]);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (coded, exact) = (scored(&sq8), scored(&plain));
    assert_eq!(coded.len(), 10);
    for ((id, a), (want, b)) in coded.iter().zip(&exact) {
        assert_eq!(id, want);
        assert!((a - b).abs() < 1e-5, "{id}: {a} vs {b}");
    }
    ok(&["index", "remove", "--index", s(&ann), "205"]);
    let hits = search_json(&ann, &["--id", "206", "-k", "23"]);
    assert!(field_strs(&hits[0], "id").iter().all(|id| *id != "205"));
    assert_eq!(hits[0].as_array().unwrap().len(), 23);
    let (good, err) = outcome(&["search", "--index", s(&ann), "--id", "206", "--ef", "0"]);
    assert!(!good && err.contains("--ef 0"), "{err}");
    let (good, err) = build_graph(&ann, "connectivity = 0\n");
    assert!(!good && err.contains("ann.connectivity"), "{err}");
    // The graph parameters docs/search.md's figures were measured with build as they are.
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/ann")).unwrap();
    let mut count = 0;
    for entry in shipped {
        let toml = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let (good, err) = build_graph(
            &d.join("shipped.index"),
            &format!("{toml}exact_below = 0\n"),
        );
        assert!(good, "{toml}: {err}");
        count += 1;
    }
    assert!(
        count >= 3,
        "configs/ann holds the benchmarked graph settings"
    );
}

/// `vitrine search … | head -3`: a reader that stops early ends the command quietly.
#[test]
fn printing_commands_end_quietly_when_the_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = trained_run(d, 1, "run");
    let index = d.join("catalog.index");
    build_index(&run, &index);
    let search = ["search", "--index", s(&index), "--id", "201", "-k", "5"];
    // The same command with a reader that stays prints its results.
    assert!(ok(&search).contains("201"));
    for args in [
        &search[..],
        &["search", "--index", s(&index), "--id", "201", "--json"],
        &["eval", "search", "--run", s(&run), "--quiet"],
    ] {
        assert_quiet_end_of_output(&with_closed_stdout(args), &args.join(" "));
    }
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let (dir, config) = catalogue_and_config(3);
    let d = dir.path();
    let (full, parts) = (d.join("full"), d.join("parts"));
    train_full_and_stopped(&config, &full, &parts);
    assert!(
        !parts.join("model.mpk").exists(),
        "an interrupted run has no final model yet"
    );
    ok(&[
        "train",
        "--resume",
        s(&parts),
        "--stop-after-epochs",
        "2",
        "--quiet",
    ]);
    resume(&parts);
    // Weight files carry random parameter ids, so compare what the weights compute: the
    // embeddings of every catalogue item.
    let a = index_embeddings(&full, &d.join("full.index"), "cpu").unwrap();
    let b = index_embeddings(&parts, &d.join("parts.index"), "cpu").unwrap();
    assert_eq!(a.len(), 24 * 16);
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff <= 1e-6,
        "resumed run's embeddings differ by {max_diff}"
    );
    assert_eq!(metric_column(&full, "loss"), metric_column(&parts, "loss"));

    // A run directory is never overwritten by a new run.
    let again = train_output(&config, &full, &["--quiet"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a run"));
}

#[test]
fn bad_rows_fail_clearly_or_are_skipped() {
    let (dir, config) = catalogue_and_config(1);
    let d = dir.path();
    // One row pointing at a missing file, one undecodable image.
    let mut csv = std::fs::read_to_string(d.join("styles.csv")).unwrap();
    csv.push_str("999,dark,red-vertical,Ghost item\n");
    std::fs::write(d.join("styles.csv"), csv).unwrap();
    std::fs::write(d.join("images/100.png"), b"not a png at all").unwrap();

    let out = train_output(&config, &d.join("r1"), &["--quiet"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("999") || err.contains("100.png"),
        "error names the row or file: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    let out = train_output(&config, &d.join("r2"), &["--skip-bad", "--quiet"]);
    assert_succeeded(&out);
    let summary = stderr(&out);
    assert!(summary.contains("skipped"), "{summary}");
}

#[test]
fn unavailable_devices_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 1);
    for (device, needle) in [
        ("cuda", "cuda"),
        ("wgpu:7", "wgpu:7"),
        ("tpu", "unknown device"),
    ] {
        let out = train_output(&config, &dir.path().join("r"), &["--device", device]);
        assert!(!out.status.success(), "--device {device} should fail here");
        let err = stderr(&out);
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        if device != "tpu" {
            // Exactly one line of ours (the Vulkan loader may add its own notices when it
            // probes for adapters).
            let ours: Vec<&str> = err
                .lines()
                .filter(|l| l.starts_with("error: device"))
                .collect();
            assert_eq!(ours.len(), 1, "{err}");
            assert!(ours[0].contains("unavailable"), "{err}");
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let out = vitrine(&["train", "--config", s(&config), "--device", "cuda:0"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
    }
}

/// An index with a text embedding per item (the tiny BERT fixture over the titles) beside
/// the image one: text queries, mixed queries whose score is the weighted sum of both
/// similarities, adds through the log, a text-only index, and `eval text-search`.
#[test]
fn text_and_mixed_queries_on_a_hybrid_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = trained_run(d, 1, "run");
    let bert = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert");
    let index = d.join("hybrid.index");
    let text_model = [
        "--text-model",
        s(&bert),
        "--text-column",
        "title",
        "--quiet",
    ];
    ok(&index_build_args(&run, &index, &text_model));

    let photo = d.join("images/201.png");
    let all = |extra: &[&str]| {
        let mut args = vec!["-k", "24"];
        args.extend_from_slice(extra);
        let hits = search_json(&index, &args);
        let hits = hits[0].as_array().unwrap().clone();
        assert_eq!(hits.len(), 24);
        hits.iter()
            .map(|h| {
                (
                    h["id"].as_str().unwrap().to_string(),
                    h["score"].as_f64().unwrap(),
                )
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    let by_photo = all(&["--image", s(&photo)]);
    assert!(by_photo["201"] > 0.999, "the photo's own item scores 1");
    let by_text = all(&["--text", "dark blue item"]);
    for w in ["0", "0.3", "1"] {
        let mixed = all(&[
            "--image",
            s(&photo),
            "--text",
            "dark blue item",
            "--text-weight",
            w,
        ]);
        let w: f64 = w.parse().unwrap();
        for (id, score) in &mixed {
            let want = (1.0 - w) * by_photo[id] + w * by_text[id];
            assert!(
                (score - want).abs() < 1e-4,
                "w {w}, item {id}: {score} vs {want}"
            );
        }
    }
    // An item of the index stands for its photo in a mixed query.
    let by_item = all(&[
        "--id",
        "201",
        "--text",
        "dark blue item",
        "--text-weight",
        "0",
    ]);
    for (id, score) in &by_item {
        assert!((score - by_photo[id]).abs() < 1e-4, "item {id}");
    }

    let fails = |args: &[&str], want: &str| {
        let mut all = vec!["search", "--index", s(&index)];
        all.extend_from_slice(args);
        let (good, err) = outcome(&all);
        assert!(!good && err.contains(want), "{args:?}: {err}");
    };
    fails(
        &["--text", "x", "--id", "201", "--text-weight", "1.5"],
        "outside [0, 1]",
    );
    fails(
        &[
            "--text",
            "a",
            "--text",
            "b",
            "--image",
            s(&photo),
            "--image",
            s(&photo),
            "--image",
            s(&photo),
        ],
        "as many of each",
    );
    let plain = d.join("plain.index");
    build_index(&run, &plain);
    let (good, err) = outcome(&["search", "--index", s(&plain), "--text", "red"]);
    assert!(!good && err.contains("--text-model"), "{err}");

    // Adding an item embeds its title too.
    let extra = d.join("extra");
    std::fs::create_dir_all(extra.join("images")).unwrap();
    synth_image(2, 99)
        .save(extra.join("images/900.png"))
        .unwrap();
    let csv = write_file(
        &extra,
        "new.csv",
        "id,colour,articleType,title\n900,dark,blue-diagonal,Item 900 blue-diagonal\n",
    );
    let images = extra.join("images");
    ok(&[
        "index",
        "add",
        "--index",
        s(&index),
        "--csv",
        s(&csv),
        "--images",
        s(&images),
        "--image-pattern",
        "{id}.png",
        "--title-column",
        "title",
        "--quiet",
    ]);
    let hits = search_json(&index, &["--id", "900", "-k", "1"]);
    assert_eq!(hits[0][0]["id"], "900");
    assert!(hits[0][0]["score"].as_f64().unwrap() > 0.999);

    // Text only: no image model, no photo queries.
    let text_only = d.join("text.index");
    let styles = d.join("styles.csv");
    let imgs = d.join("images");
    let mut args = vec![
        "index",
        "build",
        "--out",
        s(&text_only),
        "--csv",
        s(&styles),
        "--images",
        s(&imgs),
    ];
    args.extend_from_slice(&["--image-pattern", "{id}.png", "--title-column", "title"]);
    args.extend_from_slice(&text_model);
    ok(&args);
    let t = search_json(&text_only, &["--text", "dark blue item", "-k", "24"]);
    let only = id_scores(&t[0]);
    assert_eq!(only.len(), 24);
    for (id, score) in &only {
        assert!(
            (score - by_text[id]).abs() < 1e-4,
            "text-only index, item {id}"
        );
    }
    let (good, err) = outcome(&["search", "--index", s(&text_only), "--image", s(&photo)]);
    assert!(!good && err.contains("only text embeddings"), "{err}");

    // Attribute queries: BM25 finds each class by the words of its name in the titles.
    let args = [
        "eval",
        "text-search",
        "--index",
        s(&index),
        "--attrs",
        "colour,articleType",
        "--hybrid-attr",
        "colour",
        "--json",
    ];
    let r: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let methods = r["attribute_queries"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    assert!(methods[0]["method"].as_str().unwrap().starts_with("BM25"));
    assert_eq!(methods[0]["metrics"]["queries"], 6, "2 colours x 3 classes");
    assert_eq!(
        methods[0]["metrics"]["recall"][2][1].as_f64().unwrap(),
        1.0,
        "{r}"
    );
    let hybrid = r["hybrid"]["methods"].as_array().unwrap();
    assert_eq!(hybrid.len(), 2 + 3, "photo, text, three weights");
    for m in methods.iter().chain(hybrid) {
        let v = m["metrics"]["map_at_r"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{m}");
    }
    assert!(d.join("hybrid.index.text-eval.json").exists());
    let (good, err) = outcome(&["eval", "text-search", "--index", s(&plain)]);
    assert!(!good && err.contains("no text embeddings"), "{err}");
}

/// (id, score) of each hit of one query's JSON results, best first.
fn id_scores(hits: &serde_json::Value) -> Vec<(String, f64)> {
    hits.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap(),
            )
        })
        .collect()
}
