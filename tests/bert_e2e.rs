//! BERT-family sentence encoders through the binary (`vitrine embed`): the tiny fixture
//! against `transformers` on CPU and wgpu, and the real all-MiniLM-L6-v2 against
//! `sentence-transformers` when `scripts/get-models.sh` has fetched it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use burn::backend::Flex;
use common::s;
use vitrine_infer::sentence::{encode_sentence, SentenceEncoder, TextLimits};

const TOL: f32 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/hf/bert")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `vitrine embed --model MODEL --json EXTRA…` over `lines`: Ok(embeddings) or Err(stderr).
fn embed(model: &Path, lines: &[&str], extra: &[&str]) -> Result<Vec<Vec<f32>>, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["embed", "--model", s(model), "--json"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = lines.join("\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if !out.status.success() {
        return Err(stderr);
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| floats(&r["embedding"]))
        .collect())
}

fn max_diff(got: &[Vec<f32>], want: &[f32]) -> f32 {
    let flat: Vec<f32> = got.concat();
    assert_eq!(flat.len(), want.len());
    flat.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn embed_matches_transformers_on_cpu_and_wgpu() {
    let r = json(&fixture().join("reference.json"));
    let texts: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let want = floats(&r["embeddings"]["data"]);
    let cpu = embed(&fixture(), &texts, &["--device", "cpu"]).unwrap();
    let diff = max_diff(&cpu, &want);
    println!("bert fixture, cpu: embeddings max abs diff {diff:.2e}");
    assert!(diff <= TOL, "cpu embeddings differ by {diff}");
    match embed(&fixture(), &texts, &["--device", "wgpu"]) {
        Ok(gpu) => {
            let diff = max_diff(&gpu, &want);
            println!("bert fixture, wgpu: embeddings max abs diff {diff:.2e}");
            assert!(diff <= TOL, "wgpu embeddings differ by {diff}");
        }
        Err(err) => {
            assert!(
                err.contains("device wgpu unavailable"),
                "wgpu failed: {err}"
            );
            eprintln!("SKIP wgpu: {err}  (install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers`)");
        }
    }
    // Limits: refused past --max-tokens with overflow = refuse, cut with truncate.
    let err = embed(
        &fixture(),
        &texts,
        &["--max-tokens", "4", "--overflow", "refuse"],
    )
    .unwrap_err();
    assert!(
        err.contains("text 1") && err.contains("max_tokens = 4"),
        "{err}"
    );
    assert!(embed(&fixture(), &texts, &["--max-tokens", "4"]).is_ok());
    let err = embed(&root().join("tests/fixtures/hf/gpt2"), &texts, &[]).unwrap_err();
    assert!(err.contains("is not bert"), "{err}");
}

/// The real model: skipped (with the command that fetches it) when absent.
fn minilm() -> Option<PathBuf> {
    let dir = root().join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} is absent; fetch it with scripts/get-models.sh",
            dir.display()
        );
        None
    }
}

#[test]
fn real_minilm_matches_sentence_transformers() {
    let Some(dir) = minilm() else { return };
    let r = json(&root().join("tests/fixtures/minilm-reference.json"));
    let sentences: Vec<&str> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let want: Vec<f32> = r["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();
    let got = embed(&dir, &sentences, &["--device", "cpu"]).unwrap();
    let diff = max_diff(&got, &want);
    println!("all-MiniLM-L6-v2: embeddings max abs diff {diff:.2e}");
    assert!(diff <= TOL, "embeddings differ by {diff}");
}

/// Tokenizer round trip on the real 30,522-token vocabulary: ids equal the Hugging Face
/// tokenizer's, and decoding then re-encoding gives the same ids.
#[test]
fn real_minilm_tokenizer_round_trip() {
    let Some(dir) = minilm() else { return };
    let enc = SentenceEncoder::<Flex>::load_dir(&dir, &Default::default()).unwrap();
    assert_eq!(enc.tokenizer.vocab_size(), 30_522);
    let r = json(&root().join("tests/fixtures/minilm-reference.json"));
    let limits = TextLimits::default();
    for (text, want) in r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["input_ids"].as_array().unwrap())
    {
        let text = text.as_str().unwrap();
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (ids, _) = encode_sentence(&enc.tokenizer, text, &limits).unwrap();
        assert_eq!(ids, want, "{text}");
        let back = enc.tokenizer.decode(&ids).unwrap();
        let (again, _) = encode_sentence(&enc.tokenizer, &back, &limits).unwrap();
        assert_eq!(again, ids, "{text} -> {back}");
    }
    let plain = "red summer dress with a floral print";
    let (ids, _) = encode_sentence(&enc.tokenizer, plain, &limits).unwrap();
    assert_eq!(enc.tokenizer.decode(&ids).unwrap(), plain);
}
