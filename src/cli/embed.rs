//! `vitrine embed`: sentence embeddings of lines read from stdin with a pretrained
//! BERT-family encoder (a model folder or `hf:<repo>`).

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use vitrine_infer::score::read_lines;
use vitrine_infer::sentence::{Overflow, SentenceEncoder, TextLimits};

use super::{outln, print_json, DeviceOpt};
use crate::device::{OnBackend, PickDevice};

#[derive(Args)]
pub struct EmbedArgs {
    /// A BERT-family model folder (e.g. models/all-MiniLM-L6-v2) or hf:<repo>.
    #[arg(long)]
    model: String,
    /// Longest row in tokens, [CLS] and [SEP] included.
    #[arg(long, default_value_t = TextLimits::default().max_tokens)]
    max_tokens: usize,
    /// A longer line is cut (keeping [SEP]) or refused.
    #[arg(long, value_enum, default_value = "truncate")]
    overflow: OverflowArg,
    /// Lines per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OverflowArg {
    Truncate,
    Refuse,
}

#[derive(Serialize)]
struct Embedded {
    line: usize,
    text: String,
    embedding: Vec<f32>,
}

struct Embed<'a> {
    a: &'a EmbedArgs,
    lines: Vec<String>,
}

impl OnBackend for Embed<'_> {
    type Output = (usize, Vec<f32>);
    fn run<B: PickDevice>(self, d: B::Device) -> Result<(usize, Vec<f32>)> {
        let enc = SentenceEncoder::<B>::load(&self.a.model, &d)?;
        let limits = TextLimits {
            max_tokens: self.a.max_tokens,
            overflow: match self.a.overflow {
                OverflowArg::Truncate => Overflow::Truncate,
                OverflowArg::Refuse => Overflow::Refuse,
            },
        };
        let v = enc.embed(&self.lines, &limits, self.a.batch_size)?;
        Ok((enc.config.d_model, v))
    }
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .context("reading lines from stdin (UTF-8 text, one per line)")?;
    let (lines, blank) = read_lines(&input);
    if lines.is_empty() {
        anyhow::bail!("no lines on stdin to embed");
    }
    if blank > 0 {
        eprintln!("skipped {blank} blank lines");
    }
    let (d, v) = a.device.run(Embed {
        a: &a,
        lines: lines.clone(),
    })?;
    let rows: Vec<Embedded> = lines
        .into_iter()
        .zip(v.chunks(d))
        .enumerate()
        .map(|(i, (text, e))| Embedded {
            line: i + 1,
            text,
            embedding: e.to_vec(),
        })
        .collect();
    if a.json {
        return print_json(&rows);
    }
    for r in &rows {
        let nums: Vec<String> = r.embedding.iter().map(|x| format!("{x:.6}")).collect();
        outln!("{}\t{}", r.text, nums.join(" "))?;
    }
    Ok(())
}
