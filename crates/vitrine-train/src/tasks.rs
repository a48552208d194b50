//! The tasks `vitrine train` knows: each a config, a report and its module's `train`.

use burn::tensor::backend::AutodiffBackend;
use vitrine_infer::caption::CaptionRunConfig;
use vitrine_infer::copy::LmRunConfig;
use vitrine_infer::score::ScoreRunConfig;
use vitrine_infer::search::SearchRunConfig;

use crate::error::Result;
use crate::start::{Job, TrainTask, Trained};
use crate::{caption, lm, scorer, search};

macro_rules! tasks {
    ($($(#[$doc:meta])* $name:ident = $module:ident($config:ty) -> $report:ty;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl TrainTask for $name {
            type Config = $config;
            type Report = $report;
            fn train<B: AutodiffBackend>(job: Job<'_, $config, B>) -> Result<Trained<$report>> {
                $module::train(job)
            }
        }
    )*};
}

tasks! {
    /// `task = "search"`: metric learning for visual search.
    Search = search(SearchRunConfig) -> search::Report;
    /// `task = "lm"` and `"copy"`: a GPT language model, plain or brief-conditioned.
    Lm = lm(LmRunConfig) -> lm::Report;
    /// `task = "score"`: the click-through scorer.
    Score = scorer(ScoreRunConfig) -> scorer::Report;
    /// `task = "caption"`: image-to-text.
    Caption = caption(CaptionRunConfig) -> caption::Report;
}
