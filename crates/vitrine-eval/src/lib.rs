//! Metrics and evaluation reports.

pub mod caption;
pub mod caption_metrics;
pub mod copy;
pub mod retrieval;
pub mod score;
pub mod search;

pub use caption::{eval_caption, CaptionEvalOptions, CaptionEvalReport};
pub use copy::{eval_copy, CopyEvalOptions, CopyEvalReport};
pub use retrieval::{evaluate_retrieval, RetrievalMetrics};
pub use score::{eval_score, ScoreEvalReport};
pub use search::{eval_search, SearchEvalReport};
