//! Parity with the PyTorch reference (`transformers`): tiny random checkpoints of each
//! architecture, and what the reference computed from them, live in `tests/fixtures/hf/`
//! (built by `scripts/make_hf_fixtures.py`). Logits and embeddings must agree within
//! 1e-4 (max abs diff) and greedy decoding must give the same token ids.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use vitrine_models::bert::{load_hf_bert, TextPooling};
use vitrine_models::captioner::load_hf_vit_gpt2;
use vitrine_models::clip::load_hf_clip;
use vitrine_models::gpt::{load_hf_gpt2, Gpt, KvCache};
use vitrine_models::vit::load_hf_vit;

type B = Flex;
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A `{"shape": [...], "data": [...]}` entry.
fn array(v: &Value) -> (Vec<usize>, Vec<f32>) {
    let numbers = |key: &str| -> Vec<f64> {
        let list = v[key].as_array().unwrap();
        list.iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let shape = numbers("shape").into_iter().map(|d| d as usize).collect();
    let data = numbers("data").into_iter().map(|x| x as f32).collect();
    (shape, data)
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn tensor<const D: usize>(v: &Value) -> Tensor<B, D> {
    let (shape, data) = array(v);
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn tokens(row: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(row.to_vec(), [1, row.len()]),
        &Default::default(),
    )
}

/// Max abs difference to the reference entry (shapes must agree).
fn max_diff<const D: usize>(ours: Tensor<B, D>, want: &Value) -> f32 {
    let (shape, data) = array(want);
    assert_eq!(ours.dims().to_vec(), shape, "shape");
    let got: Vec<f32> = ours.into_data().to_vec().unwrap();
    got.iter()
        .zip(&data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding with the KV cache: `n` new ids after `prompt`.
fn greedy(model: &Gpt<B>, cache: &mut KvCache<B>, prompt: &[i64], n: usize) -> Vec<i64> {
    let mut out = Vec::new();
    let mut logits = model.forward_cached(tokens(prompt), cache).unwrap();
    for _ in 0..n {
        let [_, t, v] = logits.dims();
        let last = logits.slice([0..1, t - 1..t, 0..v]).reshape([v]);
        let next = last.argmax(0).into_scalar() as i64;
        out.push(next);
        logits = model.forward_cached(tokens(&[next]), cache).unwrap();
    }
    out
}

#[test]
fn gpt2_logits_and_greedy_ids_match_transformers() {
    let r = reference("gpt2");
    let (config, model) = load_hf_gpt2::<B>(&fixture("gpt2"), &Default::default()).unwrap();
    assert_eq!((config.n_layers, config.d_model, config.n_ctx), (2, 16, 32));
    let prompt = ids(&r["input_ids"]);
    let diff = max_diff(model.forward(tokens(&prompt)).unwrap(), &r["logits"]);
    println!("gpt2 logits max abs diff {diff:.2e}");
    assert!(diff <= TOL, "logits differ by {diff}");
    let want = ids(&r["greedy_new_tokens"]);
    let got = greedy(&model, &mut model.new_cache(), &prompt, want.len());
    assert_eq!(got, want);
}

#[test]
fn vit_hidden_states_match_transformers() {
    let r = reference("vit");
    let (config, model) = load_hf_vit::<B>(&fixture("vit"), &Default::default()).unwrap();
    assert_eq!(config.layer_norm_eps, 1e-12);
    let diff = max_diff(
        model.forward_tokens(tensor(&r["pixel_values"])),
        &r["last_hidden_state"],
    );
    println!("vit last_hidden_state max abs diff {diff:.2e}");
    assert!(diff <= TOL, "hidden states differ by {diff}");
}

#[test]
fn clip_embeddings_and_logits_match_transformers() {
    let r = reference("clip");
    let (_, model) = load_hf_clip::<B>(&fixture("clip"), &Default::default()).unwrap();
    let image = model.embed_images(tensor(&r["pixel_values"]));
    let rows: Vec<Vec<u32>> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| ids(row).into_iter().map(|i| i as u32).collect())
        .collect();
    let text = model.embed_text(&rows).unwrap();
    let logits = model.logits_per_image(image.clone(), text.clone());
    let d_img = max_diff(image, &r["image_embeds"]);
    let d_txt = max_diff(text, &r["text_embeds"]);
    let d_log = max_diff(logits, &r["logits_per_image"]);
    println!("clip max abs diff: image {d_img:.2e}, text {d_txt:.2e}, logits {d_log:.2e}");
    assert!(
        d_img <= TOL && d_txt <= TOL && d_log <= TOL,
        "{d_img} {d_txt} {d_log}"
    );
}

#[test]
fn vit_gpt2_logits_and_greedy_caption_match_transformers() {
    let r = reference("vit-gpt2");
    let (config, model) = load_hf_vit_gpt2::<B>(&fixture("vit-gpt2"), &Default::default()).unwrap();
    assert!(config.decoder.cross_attention && !config.global_token);
    let pixels: Tensor<B, 4> = tensor(&r["pixel_values"]);
    let dec = ids(&r["decoder_input_ids"]);
    let diff = max_diff(
        model.forward(pixels.clone(), tokens(&dec)).unwrap(),
        &r["logits"],
    );
    println!("vit-gpt2 logits max abs diff {diff:.2e}");
    assert!(diff <= TOL, "logits differ by {diff}");
    let want = ids(&r["greedy_new_tokens"]);
    let mut cache = model.new_cache(pixels).unwrap();
    // Decoding starts from decoder_start_token_id, the first id the reference was fed.
    let got = greedy(&model.decoder, &mut cache, &dec[..1], want.len());
    assert_eq!(got, want);
}

/// A checkpoint that does not fit the architecture is an error naming the tensors.
#[test]
fn a_wrong_checkpoint_is_a_clear_error() {
    // The ViT folder's tensors read as a GPT-2: every GPT-2 tensor is missing, every ViT one
    // unexpected.
    let tmp = std::env::temp_dir().join(format!("vitrine-hf-wrong-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(fixture("gpt2").join("config.json"), tmp.join("config.json")).unwrap();
    std::fs::copy(
        fixture("vit").join("model.safetensors"),
        tmp.join("model.safetensors"),
    )
    .unwrap();
    let err = load_hf_gpt2::<B>(&tmp, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing: ") && err.contains("wte.weight"),
        "{err}"
    );
    assert!(
        err.contains("unexpected: ") && err.contains("embeddings.cls_token"),
        "{err}"
    );
    std::fs::remove_file(tmp.join("model.safetensors")).unwrap();
    let err = load_hf_gpt2::<B>(&tmp, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// BERT with the attention mask: a batch of two rows, the shorter right-padded with
/// [PAD] (0) as `transformers` was given them; every position's final state, and the
/// mean-pooled, normalised sentence embeddings (the folder's sentence-transformers files).
#[test]
fn bert_hidden_states_and_sentence_embeddings_match_transformers() {
    let r = reference("bert");
    let (config, model) = load_hf_bert::<B>(&fixture("bert"), &Default::default()).unwrap();
    assert_eq!(
        (config.pooling, config.normalize, config.layer_norm_eps),
        (TextPooling::Mean, true, 1e-12)
    );
    // Both dropouts come from config.json (used only while training).
    assert_eq!((config.dropout, config.attn_dropout), (0.1, 0.1));
    let rows: Vec<Vec<i64>> = r["input_ids"].as_array().unwrap().iter().map(ids).collect();
    let t = rows.iter().map(Vec::len).max().unwrap();
    let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
    let mut flat = vec![0i64; rows.len() * t];
    for (i, row) in rows.iter().enumerate() {
        flat[i * t..i * t + row.len()].copy_from_slice(row);
    }
    let batch = || -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(flat.clone(), [rows.len(), t]),
            &Default::default(),
        )
    };
    assert!(lengths[0] != lengths[1], "the fixture pads one row");
    let d_hidden = max_diff(
        model.forward_hidden(batch(), &lengths).unwrap(),
        &r["last_hidden_state"],
    );
    let d_emb = max_diff(model.embed(batch(), &lengths).unwrap(), &r["embeddings"]);
    println!("bert max abs diff: hidden {d_hidden:.2e}, embeddings {d_emb:.2e}");
    assert!(d_hidden <= TOL && d_emb <= TOL, "{d_hidden} {d_emb}");
}
