//! Metrics and evaluation reports.

pub mod bm25;
pub mod caption;
pub mod caption_metrics;
pub mod copy;
pub mod retrieval;
pub mod score;
pub mod search;
pub mod text_search;

pub use caption::{eval_caption, CaptionEvalOptions, CaptionEvalReport};
pub use copy::{eval_copy, CopyEvalOptions, CopyEvalReport};
pub use retrieval::{evaluate_retrieval, RetrievalMetrics};
pub use score::{eval_score, ScoreEvalReport};
pub use search::{eval_search, SearchEvalReport};
pub use text_search::{eval_text_search, TextSearchOptions, TextSearchReport};
