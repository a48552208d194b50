//! A trained caption run, loaded for inference: decoding titles for images and image files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use indicatif::ProgressBar;
use serde::Serialize;
use vitrine_data::catalog::IMAGE_EXTENSIONS;
use vitrine_data::image_io::load_image;
use vitrine_data::text::{Tokenizer, EOS};
use vitrine_data::transform::{to_pixels, Augment};
use vitrine_models::captioner::Captioner;

use super::config::CaptionRunConfig;
use super::decode::{decode, DecodeConfig, Specials};
use crate::error::{io_err, Result};
use crate::run::{RunDir, TaskKind};
use crate::search::batch_tensor;

/// One input of `vitrine caption`: its caption, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionResult {
    pub image: PathBuf,
    pub caption: Option<String>,
    pub error: Option<String>,
}

/// A trained caption run ready for inference.
pub struct CaptionRun<B: Backend> {
    pub config: CaptionRunConfig,
    pub model: Captioner<B>,
    pub tokenizer: Tokenizer,
    pub dir: RunDir,
    pub specials: Specials,
    pub device: B::Device,
}

impl<B: Backend> CaptionRun<B> {
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let task = (TaskKind::Caption, "a caption run");
        let (dir, config, tokenizer) = RunDir::open::<CaptionRunConfig>(path, Some(task))?;
        let eos = tokenizer
            .token_id(EOS)
            .ok_or_else(|| dir.error(format!("tokenizer.json has no {EOS} token")))?;
        Ok(Self {
            model: dir.load_weights(config.model.init::<B>(device)?, device)?,
            config,
            tokenizer,
            dir,
            specials: Specials { bos: eos, eos },
            device: device.clone(),
        })
    }

    /// The run's decoding settings with `change` applied, checked against its limits.
    pub fn decode_config(&self, change: impl FnOnce(&mut DecodeConfig)) -> Result<DecodeConfig> {
        let mut cfg = self.config.decode.clone();
        change(&mut cfg);
        cfg.validate(&self.config.limits, self.config.model.decoder.n_ctx)?;
        Ok(cfg)
    }

    /// Captions cached CHW u8 images (the run's preprocessing), `limits.batch_size` at a
    /// time.
    pub fn caption_pixels(&self, pixels: &[u8], cfg: &DecodeConfig) -> Result<Vec<String>> {
        cfg.validate(&self.config.limits, self.config.model.decoder.n_ctx)?;
        let p = &self.config.preprocess;
        let item = p.pixel_len();
        let mut out = Vec::with_capacity(pixels.len() / item.max(1));
        for chunk in pixels.chunks(item * self.config.limits.batch_size) {
            let images = batch_tensor::<B>(chunk, p, &self.device);
            for ids in decode(&self.model, images, self.specials, cfg)? {
                out.push(self.tokenizer.decode(&ids)?.trim().to_string());
            }
        }
        Ok(out)
    }

    /// Captions image files. An image that cannot be read or decoded (within the run's
    /// decode limits) gets its error instead; the others are still captioned.
    pub fn caption_files(
        &self,
        paths: &[PathBuf],
        cfg: &DecodeConfig,
        progress: Option<&ProgressBar>,
    ) -> Result<Vec<CaptionResult>> {
        cfg.validate(&self.config.limits, self.config.model.decoder.n_ctx)?;
        let p = &self.config.preprocess;
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(self.config.limits.batch_size) {
            let mut pixels = Vec::new();
            let mut good = Vec::new();
            let start = out.len();
            for path in chunk {
                match load_image(path, &self.config.data.limits) {
                    Ok(img) => {
                        pixels.extend(to_pixels(&img, p, &Augment::default(), None));
                        good.push(out.len());
                        out.push(CaptionResult {
                            image: path.clone(),
                            caption: None,
                            error: None,
                        });
                    }
                    Err(e) => out.push(CaptionResult {
                        image: path.clone(),
                        caption: None,
                        error: Some(e.to_string()),
                    }),
                }
            }
            if !good.is_empty() {
                for (slot, caption) in good.into_iter().zip(self.caption_pixels(&pixels, cfg)?) {
                    out[slot].caption = Some(caption);
                }
            }
            if let Some(bar) = progress {
                bar.inc((out.len() - start) as u64);
            }
        }
        Ok(out)
    }
}

/// Image files directly inside `dir` (by extension, case-insensitive), sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `image,caption,error` CSV of the results (RFC 4180 quoting).
pub fn captions_csv(results: &[CaptionResult]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from("image,caption,error\n");
    for r in results {
        out.push_str(&format!(
            "{},{},{}\n",
            field(&r.image.to_string_lossy()),
            field(r.caption.as_deref().unwrap_or("")),
            field(r.error.as_deref().unwrap_or(""))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = vec![
            CaptionResult {
                image: "a.jpg".into(),
                caption: Some("Nike Men, \"Air\" Shoes".into()),
                error: None,
            },
            CaptionResult {
                image: "b.jpg".into(),
                caption: None,
                error: Some("b.jpg: not an image".into()),
            },
        ];
        assert_eq!(
            captions_csv(&r),
            "image,caption,error\na.jpg,\"Nike Men, \"\"Air\"\" Shoes\",\nb.jpg,,b.jpg: not an image\n"
        );
    }
}
