//! Copy generation and language models: what a copy / LM run is (config, corpora), how to
//! load it, and how to generate with it.

mod config;
mod corpus;
mod generate;
mod lexicon;
mod params;
mod request;
mod run;

pub use config::{CopyEvalConfig, LmData, LmRunConfig, LmTrain};
pub use corpus::{
    eval_loss, inputs, masked_cross_entropy, prepare, HostBatch, LmCorpus, LmPrepared,
};
pub use generate::{
    generate, generate_observed, sample_among, sample_token, Candidate, GenEvent, GenerateOutput,
    Observer,
};
pub use lexicon::{is_number, KeywordTrie, Lexicon, LexiconIndex, LexiconMode, WordState};
pub use params::{CheckedRequest, GenerateLimits, GenerateParams, Sampling, DEFAULTS, DEFAULT_N};
pub use request::check_request;
pub use run::{export_hf, ExportReport, LmRun};
