//! `vitrine caption`: titles / alt text for photos with a caption run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vitrine_infer::caption::{
    captions_csv, list_images, CaptionResult, CaptionRun, DecodeOverrides,
};
use vitrine_infer::progress::progress_bar;

use super::{out, outln, print_json, write_file, DeviceOpt};
use crate::device::{OnBackend, PickDevice};

#[derive(Args)]
pub struct CaptionArgs {
    /// A caption run (task "caption").
    #[arg(long)]
    run: PathBuf,
    /// Image files to caption.
    #[arg(required_unless_present = "dir", conflicts_with = "dir")]
    images: Vec<PathBuf>,
    /// Caption every image file directly inside this folder (sorted by name).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write `image,caption,error` CSV here (atomically) instead of printing.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeOverrides,
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    #[arg(long)]
    csv: bool,
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

/// Image files to caption with a run.
struct Caption<'a> {
    args: &'a CaptionArgs,
    paths: Vec<PathBuf>,
}

impl OnBackend for Caption<'_> {
    type Output = Vec<CaptionResult>;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<Vec<CaptionResult>> {
        let run = CaptionRun::<B>::load(&self.args.run, &d)?;
        let cfg = run.decode_config(|c| self.args.decode.apply(c))?;
        let bar = progress_bar(self.paths.len(), "caption", self.args.quiet);
        let out = run.caption_files(&self.paths, &cfg, Some(&bar))?;
        bar.finish_and_clear();
        Ok(out)
    }
}

pub fn run(a: CaptionArgs) -> Result<()> {
    let paths = match &a.dir {
        Some(dir) => list_images(dir)?,
        None => a.images.clone(),
    };
    if paths.is_empty() {
        anyhow::bail!(
            "no images to caption{}",
            a.dir
                .as_ref()
                .map(|d| format!(
                    " in {} (looked for {})",
                    d.display(),
                    vitrine_data::catalog::IMAGE_EXTENSIONS.join(", ")
                ))
                .unwrap_or_default()
        );
    }
    let results = a.device.run(Caption { args: &a, paths })?;
    let failed: Vec<&CaptionResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if let Some(out) = &a.out {
        write_file(out, captions_csv(&results).as_bytes())?;
        eprintln!(
            "wrote {} ({} captioned, {} skipped)",
            out.display(),
            results.len() - failed.len(),
            failed.len()
        );
    } else if a.json {
        print_json(&results)?;
    } else if a.csv {
        out!("{}", captions_csv(&results))?;
    } else {
        for r in &results {
            if let Some(c) = &r.caption {
                outln!("{}\t{c}", r.image.display())?;
            }
        }
    }
    for r in &failed {
        eprintln!("skipped {}", r.error.as_deref().unwrap_or_default());
    }
    if failed.len() == results.len() {
        anyhow::bail!("none of the {} images could be read", results.len());
    }
    Ok(())
}
