//! Metrics and evaluation reports.

pub mod copy;
pub mod retrieval;
pub mod score;
pub mod search;

pub use copy::{eval_copy, CopyEvalReport};
pub use retrieval::{evaluate_retrieval, RetrievalMetrics};
pub use score::{eval_score, ScoreEvalReport};
pub use search::{eval_search, SearchEvalReport};
