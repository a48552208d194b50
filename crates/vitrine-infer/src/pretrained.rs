//! Pretrained Hugging Face vision models as search encoders: a ViT (`model_type = "vit"`)
//! or CLIP's image tower (`"clip"`, which also brings the text tower, so an index built with
//! it answers text queries). Used by `init = …` in search configs and wherever a run
//! directory is accepted (`vitrine index build --run hf:openai/clip-vit-base-patch32`).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use vitrine_data::text::Tokenizer;
use vitrine_data::transform::Preprocess;
use vitrine_models::clip::{load_hf_clip, Clip};
use vitrine_models::hf::{self, HfConfig};
use vitrine_models::vit::load_hf_vit;
use vitrine_models::{ImageEncoder, ImageEncoderConfig};

use crate::error::{InferError, Result};

/// CLIP's text tower with the tokenizer its ids come from.
pub struct TextTower<B: Backend> {
    pub model: Clip<B>,
    pub tokenizer: Tokenizer,
}

impl<B: Backend> TextTower<B> {
    /// Unit-norm embeddings of `texts`, row-major [n, projection_dim]. Texts longer than the
    /// context are cut (keeping the end token), as CLIP's processor does; empty ones are
    /// refused.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<f32>> {
        let n_ctx = self.model.text.n_ctx;
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            if t.trim().is_empty() {
                return Err(InferError::Invalid("empty text query".into()));
            }
            let mut ids = self.tokenizer.encode_with_special(t)?;
            if ids.len() > n_ctx {
                let last = *ids.last().expect("non-empty");
                ids.truncate(n_ctx - 1);
                ids.push(last);
            }
            rows.push(ids);
        }
        let emb = self.model.embed_text(&rows)?;
        Ok(emb.into_data().convert::<f32>().to_vec().expect("f32"))
    }
}

/// A pretrained vision model ready to embed images.
pub struct PretrainedVision<B: Backend> {
    pub dir: PathBuf,
    /// `vit` or `clip`.
    pub arch: &'static str,
    pub config: ImageEncoderConfig,
    pub encoder: ImageEncoder<B>,
    /// From the model's `preprocessor_config.json`.
    pub preprocess: Preprocess,
    pub text: Option<TextTower<B>>,
}

/// Whether `spec` names a pretrained model rather than a Vitrine run directory.
pub fn is_pretrained(spec: &Path) -> bool {
    let s = spec.to_string_lossy();
    s.starts_with("hf:")
        || (!spec.join("config.toml").exists() && spec.join(hf::CONFIG_FILE).is_file())
}

pub fn load_vision<B: Backend>(spec: &str, device: &B::Device) -> Result<PretrainedVision<B>> {
    let dir = hf::resolve(spec)?;
    let config = HfConfig::read(&dir)?;
    let preprocess_path = dir.join(hf::PREPROCESSOR_FILE);
    if !preprocess_path.is_file() {
        return Err(InferError::Invalid(format!(
            "{}: no {} (the image size and normalisation the model expects)",
            dir.display(),
            hf::PREPROCESSOR_FILE
        )));
    }
    let preprocess = Preprocess::from_hf(&preprocess_path)?;
    let (arch, config, encoder, text) = match config.model_type()? {
        "vit" => {
            let (c, m) = load_hf_vit::<B>(&dir, device)?;
            (
                "vit",
                ImageEncoderConfig::Vit(c),
                ImageEncoder::Vit(m),
                None,
            )
        }
        "clip" => {
            let (c, m) = load_hf_clip::<B>(&dir, device)?;
            let tok_path = dir.join(hf::TOKENIZER_FILE);
            let text = if tok_path.is_file() {
                Some(TextTower {
                    model: m.clone(),
                    tokenizer: Tokenizer::from_file(&tok_path)?,
                })
            } else {
                None
            };
            (
                "clip",
                ImageEncoderConfig::Vit(c.vision),
                ImageEncoder::Vit(m.vision),
                text,
            )
        }
        other => {
            return Err(InferError::Invalid(format!(
                "{}: model_type {other:?} is not an image encoder (supported: vit, clip)",
                dir.display()
            )))
        }
    };
    let [c, h, w] = config.input_shape();
    if (
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    ) != (c, h, w)
    {
        return Err(InferError::Invalid(format!(
            "{}: the image processor makes {}x{} images but the model takes {h}x{w}",
            dir.display(),
            preprocess.height,
            preprocess.width
        )));
    }
    Ok(PretrainedVision {
        dir,
        arch,
        config,
        encoder,
        preprocess,
        text,
    })
}

/// A pretrained model folder's `tokenizer.json`, or an error saying it has none.
pub fn pretrained_tokenizer(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(vitrine_models::hf::TOKENIZER_FILE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(InferError::Invalid(format!(
            "{}: the init model has no tokenizer.json; give tokenizer.kind = \"file\" with its tokenizer",
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn clip_fixture() -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/hf/clip")
            .display()
            .to_string()
    }

    /// The context (16 positions in the fixture) is the limit: a text that fills it is
    /// embedded whole; a longer one is cut to the context keeping its end token, so its
    /// embedding equals that of its first 14 words.
    #[test]
    fn text_queries_are_cut_to_the_context_keeping_the_end_token() {
        let pv = load_vision::<Flex>(&clip_fixture(), &Default::default()).unwrap();
        assert_eq!(pv.arch, "clip");
        let text = pv.text.expect("CLIP brings its text tower");
        assert_eq!(text.model.text.n_ctx, 16);
        let words = "summer sale on linen dresses and cotton shirts new arrivals leather boots wool coats and silk";
        let at_limit: String = words.split(' ').take(14).collect::<Vec<_>>().join(" ");
        let past_limit: String = words.split(' ').take(15).collect::<Vec<_>>().join(" ");
        let ids = |t: &str| text.tokenizer.encode_with_special(t).unwrap().len();
        assert_eq!((ids(&at_limit), ids(&past_limit)), (16, 17));
        let a = text.embed(std::slice::from_ref(&at_limit)).unwrap();
        let b = text.embed(&[past_limit]).unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "{diff}");
        let shorter = text.embed(&["summer sale".to_string()]).unwrap();
        assert!(a.iter().zip(&shorter).any(|(x, y)| (x - y).abs() > 1e-3));
        assert!(text.embed(&[String::new()]).is_err());
        assert!(text.embed(&[" \t".to_string()]).is_err());
    }

    #[test]
    fn a_model_that_is_not_an_image_encoder_is_refused() {
        let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/gpt2");
        let err = match load_vision::<Flex>(&gpt2.display().to_string(), &Default::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("GPT-2 loaded as an image encoder"),
        };
        assert!(
            err.contains("preprocessor_config.json") || err.contains("not an image encoder"),
            "{err}"
        );
        assert!(is_pretrained(Path::new("hf:openai/clip-vit-base-patch32")));
        assert!(is_pretrained(&gpt2));
        assert!(!is_pretrained(Path::new("runs/does-not-exist")));
    }
}
