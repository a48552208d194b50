//! `vitrine`: a thin CLI. Each subcommand parses its arguments, opens the device and calls
//! one library function; the commands live in `cli/`, one file per group.

mod cli;
mod device;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc hands freed memory back to the OS 10 ms after a free; a training step frees and
/// reallocates the same hundreds of MB (gradients, optimiser temporaries) every step, so each
/// step page-faulted it all back in (the kernel zeroing pages was 17% of a BERT
/// fine-tuning step). Freed memory is kept for reuse instead: the process stays at its peak
/// size, as PyTorch's caching allocators do. `MIMALLOC_PURGE_DELAY` (milliseconds) overrides.
fn keep_freed_memory() {
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // `mi_option_purge_delay` in the mimalloc 2.x header that libmimalloc-sys builds.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it at each purge decision.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

#[derive(Parser)]
#[command(
    name = "vitrine",
    version,
    about = "Train, evaluate and serve a shop's neural networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config (configs/*.toml), or resume a run.
    Train(cli::train::TrainArgs),
    /// Evaluate a run.
    #[command(subcommand)]
    Eval(cli::eval::EvalCommand),
    /// Build and update search indexes.
    #[command(subcommand)]
    Index(cli::catalog::IndexCommand),
    /// Find the catalogue items most similar to a photo (or to an indexed item).
    Search(cli::catalog::SearchArgs),
    /// Write subject lines / headlines for a brief with a copy run.
    Generate(cli::generate::GenerateArgs),
    /// Score lines read from stdin (one per line) with a click-through scorer run; prints
    /// them best first.
    Score(cli::generate::ScoreArgs),
    /// Sentence embeddings of lines read from stdin with a pretrained BERT-family encoder
    /// (e.g. all-MiniLM-L6-v2; `scripts/get-models.sh` fetches it).
    Embed(cli::embed::EmbedArgs),
    /// Write a title / alt text for product photos with a caption run.
    Caption(cli::caption::CaptionArgs),
    /// Write a trained copy / language-model run as a Hugging Face GPT-2 folder
    /// (config.json, model.safetensors, tokenizer.json).
    Export(cli::generate::ExportArgs),
    /// Measure throughput and latency of the hot paths on a device and print one table
    /// (`scripts/bench.sh` runs it and keeps the results).
    Bench(cli::bench::BenchArgs),
    /// Approximate search (HNSW graph) on vector files: build time, memory, recall@k and
    /// queries/s per search breadth (`scripts/bench-ann.sh` runs it beside faiss).
    BenchAnn(cli::bench::AnnBenchArgs),
    /// Serve search, generation and captioning over HTTP, with a visual-search page at `/`.
    Serve(cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Subnormal floats cost Intel cores a microcode assist per instruction (see
    // vitrine_models::cpu); VITRINE_KEEP_SUBNORMALS=1 keeps IEEE gradual underflow.
    if std::env::var_os("VITRINE_KEEP_SUBNORMALS").is_none() {
        vitrine_models::cpu::flush_subnormals();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => cli::train::run(a),
        Command::Eval(c) => cli::eval::run(c),
        Command::Index(c) => cli::catalog::index(c),
        Command::Search(a) => cli::catalog::search(a),
        Command::Generate(a) => cli::generate::generate(a),
        Command::Score(a) => cli::generate::score(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::Caption(a) => cli::caption::run(a),
        Command::Export(a) => cli::generate::export(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::BenchAnn(a) => cli::bench::run_ann(a),
        Command::Serve(a) => cli::serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output is done (`| head`): so are we.
        Err(e) if e.chain().any(|c| c.is::<cli::StdoutClosed>()) => ExitCode::SUCCESS,
        Err(e) => {
            // Most of our errors already name their cause; print each cause once.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
