//! `vitrine eval search|copy|caption|score|text-search`: evaluate a run (or an index); each
//! writes its report into the run (beside the index) and prints it as a table (or JSON).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use vitrine_infer::run::files;

use super::{out, outln, DeviceOpt};
use crate::device::{OnBackend, PickDevice};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Recall@K and mAP@R of a search run on its query/gallery split; writes eval.json.
    Search {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        skip_bad: bool,
        #[arg(long)]
        quiet: bool,
        /// Run the encoder in f32, f16 or bf16 (writes eval-f16.json / eval-bf16.json).
        #[arg(long, default_value = "f32")]
        precision: vitrine_models::Precision,
        #[command(flatten)]
        out: EvalOut,
    },
    /// Validation loss and perplexity of a copy or language-model run; for copy runs also
    /// keyword coverage, distinct-1/2, constraint compliance, training-copy rate, the share
    /// of words in the lexicon and tokens/s of candidates generated for the validation
    /// briefs. Writes eval.json (with --lexicon: eval-lexicon-MODE.json).
    Copy {
        #[arg(long)]
        run: PathBuf,
        /// Generate held to the run's lexicon or not (default: the run's generate.lexicon).
        #[arg(long, value_enum)]
        lexicon: Option<vitrine_infer::copy::LexiconMode>,
        /// Also report the share of candidate and validation words found in this word list
        /// (one word per line, e.g. /usr/share/dict/words from Debian's wamerican).
        #[arg(long)]
        word_list: Option<PathBuf>,
        #[command(flatten)]
        out: EvalOut,
    },
    /// BLEU-1..4, ROUGE-L and CIDEr-D of a caption run on its test split for each of
    /// eval.beams, and of the nearest-neighbour baseline under a search run. Writes
    /// eval.json.
    Caption {
        #[arg(long)]
        run: PathBuf,
        /// Search run for the nearest-neighbour baseline (default: the run's eval.search_run).
        #[arg(long)]
        search_run: Option<PathBuf>,
        /// Beam sizes to evaluate, comma-separated (default: the run's eval.beams).
        #[arg(long, value_delimiter = ',')]
        beams: Option<Vec<usize>>,
        /// Length normalisation exponent (default: the run's decode.length_penalty).
        #[arg(long, allow_negative_numbers = true)]
        length_penalty: Option<f64>,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        out: EvalOut,
    },
    /// Pairwise accuracy (all pairs and significant ones) and AUC of a scorer run on the
    /// validation A/B tests, with the "longer headline wins" and random baselines. Writes
    /// eval.json.
    Score {
        #[arg(long)]
        run: PathBuf,
        #[command(flatten)]
        out: EvalOut,
    },
    /// Text queries built from metadata ("<gender> <baseColour> <articleType>", relevant =
    /// same values) on an index built with --text-model, ranked by its text model and by
    /// BM25 over the same texts; with image embeddings too, mixed queries (an item's photo
    /// + another --hybrid-attr value). Recall@K and mAP@R; writes INDEX.text-eval.json.
    TextSearch {
        #[arg(long)]
        index: PathBuf,
        /// Metadata columns whose values make a query, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "gender,baseColour,articleType"
        )]
        attrs: Vec<String>,
        /// The column a mixed query changes ("this photo, but in <value>"); one of --attrs.
        #[arg(long, default_value = "baseColour")]
        hybrid_attr: String,
        /// Skip the mixed queries.
        #[arg(long)]
        no_hybrid: bool,
        /// Text weights of the mixed queries, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0.3,0.5,0.7")]
        text_weights: Vec<f32>,
        /// At most this many mixed queries (items taken evenly through the index).
        #[arg(long, default_value_t = 2000)]
        max_hybrid_queries: usize,
        #[command(flatten)]
        out: EvalOut,
    },
}

/// Where every evaluation runs and how it prints.
#[derive(Args, Clone)]
pub struct EvalOut {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

/// An evaluation's report: as JSON, as a table, and the file the run saved it in.
pub struct Evaluated {
    json: String,
    table: String,
    saved: PathBuf,
}

impl Evaluated {
    fn new<R: serde::Serialize>(report: &R, table: String, saved: PathBuf) -> Result<Self> {
        Ok(Self {
            json: serde_json::to_string_pretty(report)?,
            table,
            saved,
        })
    }
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    let out = match &cmd {
        EvalCommand::Search { out, .. }
        | EvalCommand::Copy { out, .. }
        | EvalCommand::Caption { out, .. }
        | EvalCommand::Score { out, .. }
        | EvalCommand::TextSearch { out, .. } => out.clone(),
    };
    let done = out.device.run(cmd)?;
    if out.json {
        outln!("{}", done.json)?;
    } else {
        out!("{}", done.table)?;
        eprintln!("wrote {}", done.saved.display());
    }
    Ok(())
}

impl OnBackend for EvalCommand {
    type Output = Evaluated;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<Evaluated> {
        match self {
            EvalCommand::Search {
                run,
                skip_bad,
                quiet,
                precision,
                ..
            } => {
                let r = vitrine_eval::eval_search::<B>(&run, &d, skip_bad, quiet, precision)?;
                let saved = run.join(vitrine_eval::search::search_eval_file(precision));
                Evaluated::new(&r, r.table(), saved)
            }
            EvalCommand::Copy {
                run,
                lexicon,
                word_list,
                ..
            } => {
                let opts = vitrine_eval::CopyEvalOptions { lexicon, word_list };
                let r = vitrine_eval::eval_copy::<B>(&run, &opts, &d)?;
                Evaluated::new(&r, r.table(), run.join(opts.report_file()))
            }
            EvalCommand::Score { run, .. } => {
                let r = vitrine_eval::eval_score::<B>(&run, &d)?;
                Evaluated::new(&r, r.table(), run.join(files::EVAL))
            }
            EvalCommand::TextSearch {
                index,
                attrs,
                hybrid_attr,
                no_hybrid,
                text_weights,
                max_hybrid_queries,
                ..
            } => {
                let opts = vitrine_eval::TextSearchOptions {
                    attrs,
                    hybrid_attr: (!no_hybrid).then_some(hybrid_attr),
                    text_weights,
                    max_hybrid_queries,
                };
                let r = vitrine_eval::eval_text_search::<B>(&index, &opts, &d)?;
                let saved = vitrine_eval::text_search::report_path(&index);
                vitrine_data::fsio::atomic_save(
                    &saved,
                    serde_json::to_string_pretty(&r)?.as_bytes(),
                )?;
                Evaluated::new(&r, r.table(), saved)
            }
            EvalCommand::Caption {
                run,
                search_run,
                beams,
                length_penalty,
                quiet,
                ..
            } => {
                let opts = vitrine_eval::CaptionEvalOptions {
                    search_run,
                    beams,
                    length_penalty,
                    quiet,
                };
                let r = vitrine_eval::eval_caption::<B>(&run, &opts, &d)?;
                Evaluated::new(&r, r.table(), run.join(files::EVAL))
            }
        }
    }
}
