//! `vitrine generate`, `vitrine score` and `vitrine export`: copy runs and scorers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vitrine_infer::copy::{
    check_request, export_hf, generate as sample, GenerateOutput, GenerateParams, LmRun,
};
use vitrine_infer::score::{read_lines, ScoreRun, ScoredLine};

use super::{outln, print_json, DeviceOpt};
use crate::device::{CpuBackend, OnBackend, PickDevice};

#[derive(Args)]
pub struct GenerateArgs {
    /// A copy run (task "copy").
    #[arg(long)]
    run: PathBuf,
    #[command(flatten)]
    params: GenerateParams,
    /// File of banned words or phrases, one per line.
    #[arg(long)]
    banned_words: Option<PathBuf>,
    /// Rank the candidates with this click-through scorer run (best first, score shown).
    #[arg(long, value_name = "SCORER_RUN")]
    rank_with: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

impl OnBackend for &GenerateArgs {
    type Output = GenerateOutput;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<GenerateOutput> {
        let run = LmRun::<B>::load(&self.run, &d)?;
        // Load the scorer before sampling, so a bad scorer run fails fast.
        let scorer = self
            .rank_with
            .as_deref()
            .map(|p| ScoreRun::<B>::load(p, &d))
            .transpose()?;
        let checked = check_request(&self.params, &run, &run.config.generate)?;
        let mut out = sample(&run, &checked, &run.config.generate, &d)?;
        if let Some(scorer) = &scorer {
            scorer.rank_candidates(&mut out.candidates, &d)?;
        }
        Ok(out)
    }
}

pub fn generate(mut a: GenerateArgs) -> Result<()> {
    if let Some(p) = &a.banned_words {
        a.params.banned = vitrine_data::copy::Constraints::read_banned(p)?;
    }
    let out = a.device.run(&a)?;
    if a.json {
        return print_json(&out);
    }
    for (i, c) in out.candidates.iter().enumerate() {
        match c.score {
            Some(s) => outln!("{:>3}. {s:>8.4}  {}", i + 1, c.text)?,
            None => outln!("{:>3}. {}", i + 1, c.text)?,
        }
    }
    if out.budget_exhausted {
        eprintln!(
            "only {} of {} candidates passed the constraints after sampling {} (rejected: {:?})",
            out.candidates.len(),
            out.requested,
            out.sampled,
            out.rejected
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ScoreArgs {
    /// A scorer run (task "score").
    #[arg(long)]
    run: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

/// Lines to rank with a scorer run.
struct Rank<'a> {
    run: &'a PathBuf,
    lines: Vec<String>,
}

impl OnBackend for Rank<'_> {
    type Output = Vec<ScoredLine>;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<Vec<ScoredLine>> {
        let run = ScoreRun::<B>::load(self.run, &d)?;
        Ok(run.rank(&self.lines, &d)?)
    }
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .context("reading lines from stdin (UTF-8 text, one line per candidate)")?;
    let (lines, blank) = read_lines(&input);
    let ranked = a.device.run(Rank { run: &a.run, lines })?;
    if blank > 0 {
        eprintln!("skipped {blank} blank lines");
    }
    if a.json {
        return print_json(&ranked);
    }
    for r in &ranked {
        outln!("{:>8.4}\t{}", r.score, r.text)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    run: PathBuf,
    /// Folder to write (created if missing; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<()> {
    // Weights are read on the CPU: exporting needs no accelerator.
    let report = export_hf::<CpuBackend>(&a.run, &a.out, &Default::default())?;
    outln!(
        "wrote {} ({} tensors): {}",
        report.out.display(),
        report.tensors,
        report.files.join(", ")
    )?;
    Ok(())
}
