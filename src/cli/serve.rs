//! `vitrine serve`: the HTTP server.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vitrine_serve::ServeConfig;

use super::DeviceOpt;
use crate::device::{OnBackend, PickDevice};

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (`[limits]`, `[batching]`, and any field below); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Visual search: an index file, or a search run (its index.vtridx, built if absent).
    #[arg(long, value_name = "RUN_OR_INDEX")]
    search: Option<PathBuf>,
    /// Copy generation: a copy run.
    #[arg(long, value_name = "RUN")]
    copy: Option<PathBuf>,
    /// Rank generated candidates with this click-through scorer run.
    #[arg(long, value_name = "RUN")]
    scorer: Option<PathBuf>,
    /// Captioning: a caption run.
    #[arg(long, value_name = "RUN")]
    caption: Option<PathBuf>,
    /// IP:PORT to listen on (port 0 picks a free one; the address is printed).
    #[arg(long)]
    bind: Option<String>,
    /// File with the API key that catalogue writes need.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceOpt,
}

impl OnBackend for ServeConfig {
    type Output = ();
    fn run<B: PickDevice>(self, d: B::Device) -> Result<()> {
        Ok(vitrine_serve::serve::<B>(self, d)?)
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => ServeConfig::load(p)?,
        None => ServeConfig::default(),
    };
    cfg.search = a.search.or(cfg.search);
    cfg.copy = a.copy.or(cfg.copy);
    cfg.scorer = a.scorer.or(cfg.scorer);
    cfg.caption = a.caption.or(cfg.caption);
    cfg.bind = a.bind.unwrap_or(cfg.bind);
    cfg.api_key_file = a.api_key_file.or(cfg.api_key_file);
    a.device.run(cfg)
}
