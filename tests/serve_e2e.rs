//! `vitrine serve` over real HTTP on loopback: every endpoint, hostile inputs, capacity
//! limits, dynamic batching, persistence across restarts, graceful shutdown, and the search
//! page driven in headless Chromium. The tiny runs are trained once per test binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::http::{
    b64, get, multipart, post_json, post_json_bytes, read, send, sse_events, Reply, Server,
};
use common::{
    assert_succeeded, build_index, s, search_json, train_caption, train_copy, train_scorer,
    trained_run,
};
use serde_json::json;

struct Fixtures {
    root: PathBuf,
    index: PathBuf,
    copy: PathBuf,
    scorer: PathBuf,
    caption: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = common::fresh_dir("serve-e2e");
        let search = trained_run(&root, 4, "search");
        let index = root.join("products.vtridx");
        build_index(&search, &index);
        let copy = train_copy(&root, "copy", 3);
        let scorer = train_scorer(&root, "scorer", 1);
        let caption = train_caption(&root, "caption", 2, "");
        Fixtures {
            root,
            index,
            copy,
            scorer,
            caption,
        }
    })
}

/// A private copy of the index (catalogue writes change it) in a fresh folder.
fn own_index(name: &str) -> PathBuf {
    let f = fixtures();
    let dir = f.root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("products.vtridx");
    std::fs::copy(&f.index, &path).unwrap();
    path
}

/// A fresh index of the fixture run's catalogue with a text part: the tiny BERT fixture
/// over the titles.
fn hybrid_index(name: &str) -> PathBuf {
    let f = fixtures();
    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert");
    let dir = f.root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let index = dir.join("hybrid.vtridx");
    let run = f.root.join("search");
    let text = [
        "--text-model",
        s(&bert),
        "--text-column",
        "title",
        "--quiet",
    ];
    common::ok(&common::index_build_args(&run, &index, &text));
    index
}

/// A serve config file with `limits` lines (TOML under `[limits]`) and `extra` top-level
/// lines.
fn config(name: &str, top: &str, limits: &str, batching: &str) -> PathBuf {
    let path = fixtures().root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("{top}\n[limits]\n{limits}\n[batching]\n{batching}\n"),
    )
    .unwrap();
    path
}

fn photo(id: u32) -> Vec<u8> {
    read(&fixtures().root.join(format!("images/{id}.png")))
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn ids(r: &Reply) -> Vec<String> {
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

fn expect(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
}

#[test]
fn every_endpoint_answers_over_http() {
    let f = fixtures();
    let index = own_index("endpoints");
    let srv = Server::start(&[
        "--search",
        s(&index),
        "--copy",
        s(&f.copy),
        "--scorer",
        s(&f.scorer),
        "--caption",
        s(&f.caption),
    ]);
    expect(&get(&srv.url("/healthz")), 200, "healthz");
    expect(&get(&srv.url("/readyz")), 200, "readyz");
    let page = get(&srv.url("/"));
    expect(&page, 200, "page");
    assert!(
        page.text().contains("<html") && !page.text().contains("https://"),
        "self-contained page"
    );

    let info = get(&srv.url("/v1/info")).json();
    assert_eq!(info["tasks"]["search"], true);
    assert_eq!(info["tasks"]["scorer"], true);
    assert_eq!(info["catalog"]["count"], 24);
    assert_eq!(
        info["catalog"]["columns"]["colour"],
        json!(["dark", "light"])
    );
    assert_eq!(
        info["limits"]["max_n"], 4,
        "the copy run's generate.max_n is below the server's"
    );

    let doc = get(&srv.url("/openapi.json")).json();
    assert!(doc["paths"]["/v1/generate"]["post"].is_object(), "{doc}");

    search_endpoints(&srv);
    generate_endpoints(&srv);
    caption_endpoints(&srv);
    let metrics = get(&srv.url("/metrics")).text();
    for needle in [
        "vitrine_http_requests_total{route=\"/v1/search\",status=\"200\"} 3",
        "vitrine_http_request_duration_seconds_count{route=\"/v1/generate\"} 4",
        "vitrine_http_requests_total{route=\"/v1/generate\",status=\"422\"} 1",
        "vitrine_batch_size_count{worker=\"search\"}",
        "vitrine_batch_size_count{worker=\"caption\"} 2",
        "vitrine_queue_depth{worker=\"generate\"} 0",
        "vitrine_in_flight_requests 0",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
}

/// `POST /v1/search` (JSON and multipart, by photo and by id with a filter) and the
/// product image it links to.
fn search_endpoints(srv: &Server) {
    // Search: a catalogue photo finds itself first, by JSON and by multipart.
    let r = post_json(
        &srv.url("/v1/search"),
        &json!({"image": b64(&photo(203)), "k": 5}),
    );
    expect(&r, 200, "search json");
    let hits = r.json()["results"].clone();
    assert_eq!(hits.as_array().unwrap().len(), 5);
    assert_eq!(hits[0]["id"], "203");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999, "{hits}");
    assert_eq!(hits[0]["title"], "Item 203 green-horizontal");
    let (ct, body) = multipart(&[("image", Some("q.png"), &photo(203)), ("k", None, b"5")]);
    let m = send("POST", &srv.url("/v1/search"), &ct, &body, &[]);
    expect(&m, 200, "search multipart");
    assert_eq!(ids(&m), ids(&r));
    // By item id, with a filter.
    let r = post_json(
        &srv.url("/v1/search"),
        &json!({"id": "203", "k": 24, "filters": {"colour": "dark"}}),
    );
    expect(&r, 200, "search by id");
    let hits = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 12, "half the catalogue is dark");
    assert!(hits.iter().all(|h| h["attrs"]["colour"] == "dark"));
    // The product image is served.
    let url = hits[0]["image_url"].as_str().unwrap().to_string();
    let img = get(&srv.url(&url));
    expect(&img, 200, "image");
    assert_eq!(img.header("content-type"), Some("image/png"));
    assert_eq!(
        img.body,
        photo(hits[0]["id"].as_str().unwrap().parse().unwrap())
    );
}

/// `POST /v1/generate`, plain and streamed, and a refused streamed request.
fn generate_endpoints(srv: &Server) {
    // Generate: n candidates, ranked by the scorer (best first).
    let r = post_json(
        &srv.url("/v1/generate"),
        &json!({"keywords": "sandals", "n": 3, "seed": 1}),
    );
    expect(&r, 200, "generate");
    let out = r.json();
    let cands = out["candidates"].as_array().unwrap();
    assert!(!cands.is_empty(), "{out}");
    let scores: Vec<f64> = cands.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "ranked: {scores:?}"
    );
    // Streamed: tokens, candidates, then the same final answer.
    let st = post_json(
        &srv.url("/v1/generate"),
        &json!({"keywords": "sandals", "n": 3, "seed": 1, "stream": true}),
    );
    expect(&st, 200, "generate stream");
    assert!(st
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&st.text());
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done, &out, "streaming does not change the answer");
    assert!(events.iter().any(|(e, _)| e == "token"));
    // Each accepted candidate is the text its sample streamed.
    let mut samples: std::collections::BTreeMap<u64, String> = Default::default();
    let mut accepted = 0;
    for (e, d) in &events {
        match e.as_str() {
            "token" => samples
                .entry(d["sample"].as_u64().unwrap())
                .or_default()
                .push_str(d["text"].as_str().unwrap()),
            "candidate" => {
                accepted += 1;
                let streamed = &samples[&d["sample"].as_u64().unwrap()];
                assert_eq!(streamed.trim(), d["text"].as_str().unwrap(), "{events:?}");
            }
            _ => {}
        }
    }
    assert_eq!(accepted, cands.len());
    // The lexicon constraint is on by default and can be turned off per request.
    let off = post_json(
        &srv.url("/v1/generate"),
        &json!({"keywords": "sandals", "n": 3, "seed": 1, "lexicon": "off"}),
    );
    expect(&off, 200, "generate without the lexicon");
    assert!(off.json()["tokens"].as_u64().unwrap() > 0);
    // A request the run's own limits refuse is a 422 before any event is sent.
    let r = post_json(
        &srv.url("/v1/generate"),
        &json!({"keywords": "sandals", "top_p": 2.0, "stream": true}),
    );
    expect(&r, 422, "invalid streamed request");
    assert_eq!(r.json()["field"], "top_p");
}

/// `POST /v1/caption` with a broken image among good ones, JSON and multipart.
fn caption_endpoints(srv: &Server) {
    // Caption: several images, one of them broken, which is reported and skipped.
    let r = post_json(
        &srv.url("/v1/caption"),
        &json!({"images": [b64(&photo(100)), b64(b"not an image"), b64(&photo(201))], "beam": 1}),
    );
    expect(&r, 200, "caption");
    let caps = r.json()["captions"].as_array().unwrap().clone();
    assert_eq!(caps.len(), 3);
    assert!(caps[0]["caption"].is_string() && caps[2]["caption"].is_string());
    assert!(caps[1]["caption"].is_null());
    assert!(
        caps[1]["error"].as_str().unwrap().contains("decode"),
        "{caps:?}"
    );
    let (ct, body) = multipart(&[("image", Some("a.png"), &photo(100)), ("beam", None, b"1")]);
    let m = send("POST", &srv.url("/v1/caption"), &ct, &body, &[]);
    expect(&m, 200, "caption multipart");
    assert_eq!(
        m.json()["captions"][0]["caption"],
        caps[0]["caption"],
        "same image, same caption"
    );
}

/// An index built with a CLIP model answers text queries over HTTP as the CLI does; an
/// image-only index refuses them.
#[test]
fn text_queries_on_a_clip_index_match_the_cli() {
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/clip");
    let dir = fixtures().root.join("clip");
    std::fs::create_dir_all(&dir).unwrap();
    let index = dir.join("clip.vtridx");
    assert_succeeded(&common::build_clip_index(&clip, &dir, &index, "cpu"));
    let text = "red summer dress";
    let cli = search_json(&index, &["-k", "2", "--text", text]);
    let srv = Server::start(&["--search", s(&index)]);
    assert_eq!(
        get(&srv.url("/v1/info")).json()["tasks"]["text_search"],
        true
    );
    let r = post_json(&srv.url("/v1/search"), &json!({"text": text, "k": 2}));
    expect(&r, 200, "text search");
    let (http, cli) = (r.json()["results"].clone(), cli[0].clone());
    assert_eq!(http.as_array().unwrap().len(), 2);
    for (h, c) in http.as_array().unwrap().iter().zip(cli.as_array().unwrap()) {
        assert_eq!(h["id"], c["id"]);
        let (a, b) = (h["score"].as_f64().unwrap(), c["score"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
    drop(srv);
    let srv = Server::start(&["--search", s(&own_index("no-text"))]);
    let r = post_json(&srv.url("/v1/search"), &json!({"text": text}));
    expect(&r, 422, "text on an image-only index");
    assert_eq!(r.json()["field"], "text");
}

/// A hybrid index (photos and titles, the tiny BERT fixture over the titles): text and
/// mixed queries over HTTP equal the CLI's, and an added item's title is embedded too.
#[test]
fn text_and_mixed_queries_on_a_hybrid_index_match_the_cli() {
    let f = fixtures();
    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert");
    let dir = f.root.join("hybrid");
    std::fs::create_dir_all(&dir).unwrap();
    let index = dir.join("hybrid.vtridx");
    let run = f.root.join("search");
    let args = common::index_build_args(
        &run,
        &index,
        &[
            "--text-model",
            s(&bert),
            "--text-column",
            "title",
            "--quiet",
        ],
    );
    common::ok(&args);
    let srv = Server::start(&["--search", s(&index)]);
    assert_eq!(
        get(&srv.url("/v1/info")).json()["tasks"]["text_search"],
        true
    );
    let same = |body: serde_json::Value, cli_args: &[&str]| {
        let r = post_json(&srv.url("/v1/search"), &body);
        expect(&r, 200, &body.to_string());
        let cli = search_json(&index, cli_args);
        let http = r.json()["results"].clone();
        assert_eq!(http.as_array().unwrap().len(), 3);
        for (h, c) in http
            .as_array()
            .unwrap()
            .iter()
            .zip(cli[0].as_array().unwrap())
        {
            assert_eq!(h["id"], c["id"], "{body}");
            let (a, b) = (h["score"].as_f64().unwrap(), c["score"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-5, "{body}: {a} vs {b}");
        }
    };
    same(
        json!({"text": "dark item", "k": 3}),
        &["-k", "3", "--text", "dark item"],
    );
    same(
        json!({"id": "201", "text": "dark item", "text_weight": 0.3, "k": 3}),
        &[
            "-k",
            "3",
            "--id",
            "201",
            "--text",
            "dark item",
            "--text-weight",
            "0.3",
        ],
    );
    let both = json!({"image": b64(&photo(201)), "id": "201"});
    expect(
        &post_json(&srv.url("/v1/search"), &both),
        422,
        "image and id",
    );
    let heavy = json!({"id": "201", "text": "x", "text_weight": 2.0});
    let r = post_json(&srv.url("/v1/search"), &heavy);
    expect(&r, 422, "text weight past 1");
    assert_eq!(r.json()["field"], "text_weight");
    // An added item gets a text part from its title: it is its own best match.
    let add = json!({"id": "new-1", "image": b64(&png(&common::synth_image(2, 5))), "title": "Item new blue-diagonal"});
    expect(&post_json(&srv.url("/v1/catalog/items"), &add), 201, "add");
    let r = post_json(&srv.url("/v1/search"), &json!({"id": "new-1", "k": 1}));
    expect(&r, 200, "search the new item");
    assert_eq!(r.json()["results"][0]["id"], "new-1");
    assert!(r.json()["results"][0]["score"].as_f64().unwrap() > 0.999);
}

#[test]
fn catalogue_writes_need_the_key_and_survive_a_restart() {
    let index = own_index("catalogue");
    let key_file = index.with_file_name("key");
    let key = "k3y-0123456789abcdef";
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let args = ["--search", s(&index), "--api-key-file", s(&key_file)];
    let new_photo = png(&common::synth_image(2, 777));
    let add = json!({"id": "new-1", "image": b64(&new_photo), "title": "New scarf", "attrs": {"colour": "dark", "articleType": "blue-diagonal"}});
    {
        let srv = Server::start(&args);
        let url = srv.url("/v1/catalog/items");
        let body = add.to_string();
        let r = post_json_bytes(&url, body.as_bytes(), &[]);
        expect(&r, 401, "no key");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let wrong = [("Authorization", "Bearer wrong-key-0123456789")];
        let r = post_json_bytes(&url, body.as_bytes(), &wrong);
        expect(&r, 403, "wrong key");
        let bearer = format!("Bearer {key}");
        let auth = [("Authorization", bearer.as_str())];
        let r = post_json_bytes(&url, body.as_bytes(), &auth);
        expect(&r, 201, "add");
        assert_eq!(r.json()["count"], 25);
        let r = post_json_bytes(&url, body.as_bytes(), &auth);
        expect(&r, 409, "duplicate id");
        // Ids up to limits.max_id_chars (128) characters, multi-byte ones included.
        let long = |n: usize| json!({"id": "é".repeat(n), "image": b64(&new_photo)}).to_string();
        let r = post_json_bytes(&url, long(129).as_bytes(), &auth);
        expect(&r, 422, "id one past the limit");
        assert!(r.error().contains("limits.max_id_chars"), "{}", r.text());
        let r = post_json_bytes(&url, long(128).as_bytes(), &auth);
        expect(&r, 201, "id at the limit");
        let r = send(
            "DELETE",
            &srv.url(&format!("/v1/catalog/items/{}", "%C3%A9".repeat(128))),
            "",
            b"",
            &auth,
        );
        expect(&r, 200, "delete the long id");
        // Multipart add, metadata from form fields, key in X-Api-Key.
        let other = png(&common::synth_image(0, 778));
        let (ct, mp) = multipart(&[
            ("id", None, b"new-2"),
            ("image", Some("p.png"), &other),
            ("colour", None, b"light"),
        ]);
        let r = send("POST", &url, &ct, &mp, &[("X-Api-Key", key)]);
        expect(&r, 201, "multipart add");
        // Reads need no key; the new photo finds its item.
        let r = post_json(
            &srv.url("/v1/search"),
            &json!({"image": b64(&new_photo), "k": 3}),
        );
        expect(&r, 200, "search");
        assert_eq!(ids(&r)[0], "new-1");
        assert_eq!(r.json()["results"][0]["title"], "New scarf");
        let img = get(&srv.url("/v1/catalog/items/new-1/image"));
        assert_eq!(img.body, new_photo);
        let r = send("DELETE", &srv.url("/v1/catalog/items/nope"), "", b"", &auth);
        expect(&r, 404, "unknown id");
        let r = send("DELETE", &srv.url("/v1/catalog/items/new-2"), "", b"", &[]);
        expect(&r, 401, "delete without key");
        let r = send(
            "DELETE",
            &srv.url("/v1/catalog/items/new-2"),
            "",
            b"",
            &auth,
        );
        expect(&r, 200, "delete");
        assert_eq!(r.json()["count"], 25);
    }
    // A restart keeps the change: new-1 is there with its image, new-2 is gone.
    let srv = Server::start(&args);
    assert_eq!(get(&srv.url("/v1/info")).json()["catalog"]["count"], 25);
    let r = post_json(&srv.url("/v1/search"), &json!({"id": "new-1", "k": 1}));
    expect(&r, 200, "search after restart");
    assert_eq!(
        get(&srv.url("/v1/catalog/items/new-1/image")).body,
        new_photo
    );
    expect(
        &get(&srv.url("/v1/catalog/items/new-2/image")),
        404,
        "deleted image",
    );
    let r = post_json(&srv.url("/v1/search"), &json!({"id": "new-2", "k": 1}));
    expect(&r, 404, "deleted item");
}

/// kill -9 in the middle of a burst of catalogue writes, 20 times over one index: every
/// write the server acknowledged is there after each kill, every acknowledged delete is
/// gone, and the index always loads. Compaction and device-copy refreshes are set to
/// happen every few writes, so kills land in them too.
#[test]
fn kill_9_during_catalogue_writes_loses_no_acknowledged_write() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let index = own_index("kill9");
    let cfg = index.with_file_name("serve.toml");
    std::fs::write(
        &cfg,
        "[index]\ncompact_ratio = 0.0\ncompact_min_bytes = 3000\nrefresh_ratio = 0.0\nrefresh_min_rows = 2\n",
    )
    .unwrap();
    let args = ["--config", s(&cfg), "--search", s(&index)];
    // id -> Some(present) as the server last acknowledged it; None while a request about
    // it is unanswered (a kill then may or may not have let it land).
    let acked: Arc<Mutex<BTreeMap<String, Option<bool>>>> = Arc::default();
    let mut next = 0u32;
    let mut log_seen = false;
    let (mut adds, mut deletes) = (0, 0);
    for trial in 0..20u64 {
        let srv = Server::start(&args);
        let url = srv.url("/v1/catalog/items");
        let writer = {
            let (acked, url, srv_base) = (acked.clone(), url.clone(), srv.base.clone());
            let first = next;
            std::thread::spawn(move || {
                let (mut adds, mut deletes) = (0, 0);
                for i in first.. {
                    let id = format!("k{i}");
                    let photo = png(&common::synth_image(i as usize % 3, 9000 + i));
                    let body = json!({"id": id, "image": b64(&photo), "attrs": {"colour": "dark"}});
                    acked.lock().unwrap().insert(id.clone(), None);
                    let r = post_json_bytes(&url, body.to_string().as_bytes(), &[]);
                    if r.status != 201 {
                        return (adds, deletes);
                    }
                    acked.lock().unwrap().insert(id, Some(true));
                    adds += 1;
                    // Every third write also deletes an earlier acknowledged item.
                    let victim = format!("k{}", i.saturating_sub(2));
                    if i % 3 == 2 && acked.lock().unwrap().get(&victim) == Some(&Some(true)) {
                        acked.lock().unwrap().insert(victim.clone(), None);
                        let url = format!("{srv_base}/v1/catalog/items/{victim}");
                        if send("DELETE", &url, "", b"", &[]).status != 200 {
                            return (adds, deletes);
                        }
                        acked.lock().unwrap().insert(victim, Some(false));
                        deletes += 1;
                    }
                }
                unreachable!()
            })
        };
        // Kill at a different moment each trial.
        std::thread::sleep(Duration::from_millis(40 + (trial * 37) % 260));
        let mut srv = srv;
        srv.child.kill().unwrap(); // SIGKILL
        srv.child.wait().unwrap();
        let (a, d) = writer.join().unwrap();
        (adds, deletes) = (adds + a, deletes + d);
        log_seen |= vitrine_index::store::log_path(&index).exists();
        let loaded = vitrine_index::Index::load(&index)
            .unwrap_or_else(|e| panic!("trial {trial}: the index does not load: {e}"));
        let mut acked = acked.lock().unwrap();
        for (id, state) in acked.iter_mut() {
            let there = loaded.row_of(id).is_some();
            match state {
                Some(present) => assert_eq!(
                    there,
                    *present,
                    "trial {trial}: an acknowledged {} of {id} was lost",
                    if *present { "add" } else { "delete" }
                ),
                // Unanswered: either outcome is right; from now on it is what landed.
                None => *state = Some(there),
            }
        }
        next = acked
            .keys()
            .filter_map(|k| k[1..].parse::<u32>().ok())
            .max()
            .map_or(next, |m| m + 1);
    }
    eprintln!("20 kills: {adds} acknowledged adds, {deletes} acknowledged deletes, none lost");
    assert!(
        adds >= 40,
        "too few writes acknowledged to mean anything: {adds}"
    );
    assert!(deletes >= 10, "{deletes}");
    assert!(log_seen, "writes never went through the log");
    let acked = acked.lock().unwrap();
    // A restarted server serves the surviving items.
    let srv = Server::start(&args);
    let (id, _) = acked.iter().rev().find(|(_, p)| **p == Some(true)).unwrap();
    let r = post_json(&srv.url("/v1/search"), &json!({"id": id, "k": 1}));
    expect(&r, 200, "search after the kills");
    assert_eq!(ids(&r)[0], *id);
}

/// A PNG whose header declares `w`×`h` pixels, with an empty image data stream.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    // An empty zlib stream: the decoder reaches the pixel data before it fails.
    for (kind, data) in [
        (&b"IHDR"[..], ihdr),
        (
            &b"IDAT"[..],
            vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        (&b"IEND"[..], Vec::new()),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

/// CRC-32 (IEEE), as PNG chunks use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

#[test]
fn hostile_inputs_get_clear_errors() {
    let f = fixtures();
    let index = own_index("hostile");
    let cfg = config(
        "hostile",
        "",
        "max_body_bytes = 4000\nmax_image_side = 64\nmax_image_pixels = 1024\nmax_k = 5\nmax_n = 3\nmax_prompt_chars = 40",
        "",
    );
    let srv = Server::start(&[
        "--config",
        s(&cfg),
        "--search",
        s(&index),
        "--copy",
        s(&f.copy),
    ]);
    let search = srv.url("/v1/search");
    let generate = srv.url("/v1/generate");

    // Body at the limit is read (and judged on content); one byte more is 413.
    let body_of = |len: usize| {
        let mut v = json!({"id": "100", "k": 1, "filters": {}}).to_string();
        v.insert_str(1, &" ".repeat(len - v.len()));
        v
    };
    let at = body_of(4000);
    assert_eq!(at.len(), 4000);
    expect(
        &post_json_bytes(&search, at.as_bytes(), &[]),
        200,
        "body at the limit",
    );
    let over = body_of(4001);
    let r = post_json_bytes(&search, over.as_bytes(), &[]);
    expect(&r, 413, "body one byte over");
    assert!(r.error().contains("limits.max_body_bytes"), "{}", r.text());

    hostile_images(&search);
    hostile_fields(&search, &generate);
    let whole = photo(100);
    // Unknown item id; a task that is not served; an unknown route.
    expect(
        &post_json(&search, &json!({"id": "no-such-item"})),
        404,
        "unknown id",
    );
    let r = post_json(&srv.url("/v1/caption"), &json!({"images": [b64(&whole)]}));
    expect(&r, 404, "caption not served");
    assert!(r.error().contains("--caption"), "{}", r.text());
    expect(&get(&srv.url("/v2/nothing")), 404, "unknown route");
    // After all that the server still answers.
    expect(&get(&srv.url("/readyz")), 200, "still up");
}

/// Image bombs, images past the side and pixel limits, and a truncated image: 422 naming
/// the limit; an image at the pixel limit is searched.
fn hostile_images(search: &str) {
    // Image bomb: the header declares 100000x100000; refused before any pixel buffer.
    let r = post_json(
        search,
        &json!({"image": b64(&png_header_only(100_000, 100_000))}),
    );
    expect(&r, 422, "image bomb");
    assert_eq!(r.json()["field"], "image");
    assert!(r.error().contains("limits.max_image_side"), "{}", r.text());
    // A real decompression bomb: 160,000 pixels in two kilobytes, refused from its header.
    let mut bomb = std::io::Cursor::new(Vec::new());
    image::GrayImage::new(400, 400)
        .write_to(&mut bomb, image::ImageFormat::Png)
        .unwrap();
    let bomb = bomb.into_inner();
    assert!(bomb.len() < 2800, "{} bytes", bomb.len());
    let r = post_json(search, &json!({"image": b64(&bomb)}));
    expect(&r, 422, "decompression bomb");
    assert!(r.error().contains("400x400"), "{}", r.text());
    // Within the side limit but past the pixel limit (40x40 = 1600 > 1024).
    let r = post_json(
        search,
        &json!({"image": b64(&png(&image::RgbImage::new(40, 40)))}),
    );
    expect(&r, 422, "pixel limit");
    assert!(
        r.error().contains("limits.max_image_pixels"),
        "{}",
        r.text()
    );
    // At the pixel limit (32x32 = 1024) it is searched.
    let r = post_json(
        search,
        &json!({"image": b64(&png(&image::RgbImage::new(32, 32))), "k": 1}),
    );
    expect(&r, 200, "at the pixel limit");
    // Truncated image.
    let whole = photo(100);
    let r = post_json(search, &json!({"image": b64(&whole[..whole.len() / 2])}));
    expect(&r, 422, "truncated image");
    assert!(r.error().contains("decode"), "{}", r.text());
}

/// A 1024x1024 JPEG of noise cut after its header and the first `keep` bytes of its scan,
/// with an end-of-image marker appended (so the file ends as a whole JPEG does).
fn cut_jpeg(keep: usize) -> (Vec<u8>, Vec<u8>) {
    let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).rotate_left(x % 7);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut whole = std::io::Cursor::new(Vec::new());
    img.write_to(&mut whole, image::ImageFormat::Jpeg).unwrap();
    let whole = whole.into_inner();
    let scan = whole.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    assert!(whole.len() > scan + 4 * keep, "{} bytes", whole.len());
    let mut cut = whole[..scan + keep].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    (whole, cut)
}

/// A JPEG whose data stops early (header intact, end marker present) is a 422 naming the
/// image on every path that takes one: search, catalogue add and caption.
#[test]
fn jpegs_whose_data_stops_early_are_refused_everywhere() {
    let f = fixtures();
    let index = own_index("cut-jpeg");
    let srv = Server::start(&["--search", s(&index), "--caption", s(&f.caption)]);
    let (whole, cut) = cut_jpeg(24 * 1024);
    let search = srv.url("/v1/search");
    expect(
        &post_json(&search, &json!({"image": b64(&whole), "k": 1})),
        200,
        "the whole JPEG",
    );
    let refused = |url: &str, body: serde_json::Value, what: &str, field: &str| {
        let r = post_json(url, &body);
        expect(&r, 422, what);
        assert_eq!(r.json()["field"], field, "{what}: {}", r.text());
        assert!(r.error().contains("JPEG"), "{what}: {}", r.text());
        r.error()
    };
    refused(
        &search,
        json!({"image": b64(&cut), "k": 1}),
        "search",
        "image",
    );
    let items = srv.url("/v1/catalog/items");
    let add = json!({"id": "cut-1", "image": b64(&cut)});
    refused(&items, add, "catalogue add", "image");
    // Nothing was added.
    let r = post_json(&search, &json!({"id": "cut-1"}));
    expect(&r, 404, "the refused item");
    let body = json!({"images": [b64(&cut)]});
    let error = refused(&srv.url("/v1/caption"), body, "caption", "images");
    assert!(error.contains("image 0"), "{error}");
}

/// Bad content types, malformed JSON and out-of-range fields of search and generate.
fn hostile_fields(search: &str, generate: &str) {
    // Wrong content type, invalid JSON, NaN, negative and huge numbers, empty text.
    let r = send("POST", search, "text/plain", b"{\"id\": \"100\"}", &[]);
    expect(&r, 415, "content type");
    let r = post_json_bytes(generate, b"{\"keywords\": \"a\",", &[]);
    expect(&r, 400, "invalid JSON");
    let nan = b"{\"keywords\": \"a\", \"temperature\": NaN}";
    expect(&post_json_bytes(generate, nan, &[]), 400, "NaN is not JSON");
    for (body, field) in [
        (json!({"id": "100", "k": -1}), "k"),
        (json!({"id": "100", "k": 6}), "k"),
        (json!({"id": "100", "k": 1e300}), "k"),
        (json!({"id": "  "}), "id"),
        (json!({"id": "100", "filters": {"nope": "x"}}), "filters"),
    ] {
        let r = post_json(search, &body);
        expect(&r, 422, &body.to_string());
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }
    for (body, field) in [
        (json!({"keywords": "sandals", "n": 4}), "n"),
        (
            json!({"keywords": "sandals", "temperature": -1.0}),
            "temperature",
        ),
        (json!({"keywords": "sandals", "top_p": 1e308}), "top_p"),
        (json!({"keywords": ""}), "keywords"),
        (json!({"keywords": "x".repeat(41)}), "keywords"),
        (
            json!({"keywords": "sandals", "max_tokens": 0}),
            "max_tokens",
        ),
        (json!({"keywords": "sandals", "lexicon": "all"}), "lexicon"),
    ] {
        let r = post_json(generate, &body);
        expect(&r, 422, &body.to_string());
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }
    // One past u64::MAX.
    let past_u64 = br#"{"keywords": "sandals", "n": 18446744073709551616}"#;
    let r = post_json_bytes(generate, past_u64, &[]);
    expect(&r, 422, "n past u64");
    assert_eq!(r.json()["field"], "n", "{}", r.text());
}

#[test]
fn bursts_over_capacity_get_429_or_503_while_admitted_requests_succeed() {
    let f = fixtures();
    let cfg = config("burst", "", "max_concurrent = 2\nmax_queue = 1", "");
    let srv = Server::start(&["--config", s(&cfg), "--copy", s(&f.copy)]);
    let url = srv.url("/v1/generate");
    let replies: Vec<Reply> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let url = url.clone();
                sc.spawn(move || {
                    post_json(&url, &json!({"keywords": "sandals", "n": 3, "seed": i}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(ok >= 1, "some requests are admitted");
    assert!(!refused.is_empty(), "12 at once exceed 2 in flight");
    for r in &refused {
        assert!(
            r.status == 429 || r.status == 503,
            "{}: {}",
            r.status,
            r.text()
        );
        assert_eq!(r.header("retry-after"), Some("1"), "{}", r.text());
    }
    for r in replies.iter().filter(|r| r.status == 200) {
        assert!(!r.json()["candidates"].as_array().unwrap().is_empty());
    }
    // Capacity comes back once the burst is over.
    let r = post_json(&url, &json!({"keywords": "sandals", "n": 1}));
    expect(&r, 200, "after the burst");
}

/// Search results and captions of each photo, asked one at a time or all at once.
fn answers(
    srv: &Server,
    photos: &[u32],
    together: bool,
) -> Vec<(serde_json::Value, serde_json::Value)> {
    let ask = |q: u32| {
        let img = b64(&photo(q));
        let hits = post_json(&srv.url("/v1/search"), &json!({"image": img, "k": 6}));
        let cap = post_json(
            &srv.url("/v1/caption"),
            &json!({"images": [img], "beam": 2}),
        );
        expect(&hits, 200, "search");
        expect(&cap, 200, "caption");
        (
            hits.json()["results"].clone(),
            cap.json()["captions"][0]["caption"].clone(),
        )
    };
    if !together {
        return photos.iter().map(|&q| ask(q)).collect();
    }
    std::thread::scope(|sc| {
        let hs: Vec<_> = photos.iter().map(|&q| sc.spawn(move || ask(q))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The number of forward passes of `worker` and how many of them held one image.
fn batches(metrics: &str, worker: &str) -> (u64, u64) {
    let value = |prefix: String| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (
        value(format!("vitrine_batch_size_count{{worker=\"{worker}\"}}")),
        value(format!(
            "vitrine_batch_size_bucket{{worker=\"{worker}\",le=\"1\"}}"
        )),
    )
}

#[test]
fn dynamic_batches_give_the_unbatched_results() {
    let f = fixtures();
    let index = own_index("batching");
    let photos: Vec<u32> = vec![100, 103, 201, 204, 302, 305];
    // One image per forward pass.
    let start = |cfg: &Path| {
        Server::start(&[
            "--config",
            s(cfg),
            "--search",
            s(&index),
            "--caption",
            s(&f.caption),
        ])
    };
    let single = config("single", "", "", "max_batch = 1\nmax_wait_ms = 0");
    let srv = start(&single);
    let alone = answers(&srv, &photos, false);
    drop(srv);
    // Concurrent requests wait up to 2 s for each other and share forward passes.
    let batched = config("batched", "", "", "max_batch = 8\nmax_wait_ms = 2000");
    let srv = start(&batched);
    let together = answers(&srv, &photos, true);
    for ((a, ca), (b, cb)) in alone.iter().zip(&together) {
        assert_eq!(ca, cb, "batched captions equal unbatched ones");
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x["id"], y["id"]);
            let (sx, sy) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!((sx - sy).abs() <= 1e-5, "{sx} vs {sy}");
        }
    }
    let metrics = get(&srv.url("/metrics")).text();
    for worker in ["search", "caption"] {
        // Six requests in fewer than six forward passes: some held more than one image.
        let (passes, singles) = batches(&metrics, worker);
        assert!(passes < 6 && singles < passes, "{worker}: {metrics}");
    }
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let f = fixtures();
    let cfg = config("disconnect", "", "max_concurrent = 1", "");
    let srv = Server::start(&["--config", s(&cfg), "--copy", s(&f.copy)]);
    let addr = srv.base.trim_start_matches("http://").to_string();
    // A streamed generation, abandoned after its first bytes.
    let body = json!({"keywords": "sandals", "n": 3, "stream": true}).to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let n = conn.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(conn);
    // The only slot comes back: a new request is admitted within a few seconds.
    let start = Instant::now();
    loop {
        let r = post_json(
            &srv.url("/v1/generate"),
            &json!({"keywords": "sandals", "n": 1}),
        );
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "slot never freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_drains_finishes_in_flight_requests_then_exits() {
    let f = fixtures();
    let cfg = config("shutdown", "shutdown_drain_ms = 3000", "", "");
    let mut srv = Server::start(&["--config", s(&cfg), "--copy", s(&f.copy)]);
    let addr = srv.base.trim_start_matches("http://").to_string();
    // A request in flight: admitted, its body half sent.
    let body = json!({"keywords": "sandals", "n": 2, "seed": 3}).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    let start = Instant::now();
    while !get(&srv.url("/metrics"))
        .text()
        .contains("vitrine_in_flight_requests 1")
    {
        assert!(start.elapsed() < Duration::from_secs(30), "never admitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    srv.terminate();
    // Draining: not ready, but still listening and serving.
    let start = Instant::now();
    while get(&srv.url("/readyz")).status != 503 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "readyz stayed 200"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = post_json(
        &srv.url("/v1/generate"),
        &json!({"keywords": "sandals", "n": 1}),
    );
    expect(&r, 200, "a request while draining is still served");
    // The in-flight request still completes.
    conn.write_all(tail.as_bytes()).unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"candidates\""), "{reply}");
    let status = srv.child.wait().unwrap();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        srv.stderr()
    );
    assert!(srv.stderr().contains("shutting down"), "{}", srv.stderr());
    assert_eq!(get(&srv.url("/healthz")).status, 0, "no longer listening");
}

#[test]
fn requests_past_their_timeouts_get_503_or_408() {
    let index = own_index("timeout");
    // A lone search waits 2 s for batch company; the request may take 300 ms.
    let cfg = config(
        "timeout",
        "",
        "request_timeout_ms = 300\nbody_timeout_ms = 300",
        "max_batch = 8\nmax_wait_ms = 2000",
    );
    let srv = Server::start(&["--config", s(&cfg), "--search", s(&index)]);
    let t = Instant::now();
    let r = post_json(&srv.url("/v1/search"), &json!({"id": "100"}));
    expect(&r, 503, "timed out");
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "answered at the timeout, not after the batch"
    );
    assert!(
        r.error().contains("limits.request_timeout_ms"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    // A body that stops arriving: 408 after limits.body_timeout_ms.
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/search HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":"
    )
    .unwrap();
    // The server may keep the connection open after answering: read until the answer.
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = String::new();
    let mut buf = [0u8; 1024];
    while !reply.contains("limits.body_timeout_ms") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("limits.body_timeout_ms"), "{reply}");
}

#[test]
fn a_model_that_cannot_load_stops_the_server_with_its_error() {
    let f = fixtures();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--copy",
            s(&f.root.join("no-such-run")),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-run"), "{err}");
}

/// The search page in headless Chromium: upload a catalogue photo, the same product comes
/// first; words typed with it (its own title) keep it first; the screenshot is kept as a
/// test artifact.
#[test]
fn search_page_in_headless_chromium() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("tests/browser/search_page.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<&str> = [
        (!Path::new(&chromium).exists()).then_some("chromium (apt-get install chromium)"),
        (std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err())
        .then_some("node"),
        (!repo
            .join("tests/browser/node_modules/playwright-core")
            .exists())
        .then_some("playwright-core (npm ci --prefix tests/browser)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        // CI sets this: there a missing browser is a failure, not a skip.
        assert!(
            std::env::var_os("VITRINE_REQUIRE_BROWSER").is_none(),
            "VITRINE_REQUIRE_BROWSER is set but {} missing",
            missing.join(", ")
        );
        eprintln!(
            "skipping the browser test: missing {}; scripts/setup.sh installs them",
            missing.join(", ")
        );
        return;
    }
    let f = fixtures();
    let index = hybrid_index("browser");
    let srv = Server::start(&["--search", s(&index), "--copy", s(&f.copy)]);
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("search-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = std::process::Command::new("node")
        .arg(&script)
        .env("VITRINE_URL", &srv.base)
        .env("QUERY_IMAGE", f.root.join("images/305.png"))
        .env("EXPECT_ID", "305")
        .env("QUERY_TEXT", "Item 305 blue-diagonal")
        .env("SCREENSHOT", &shot)
        .env("CHROMIUM", &chromium)
        .env("GENERATE", "1")
        .env("KEYWORDS", "sandals")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        srv.stderr()
    );
    let png = read(&shot);
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot at {}",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}
