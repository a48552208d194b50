//! Metrics and evaluation reports.

pub mod retrieval;
pub mod search;

pub use retrieval::{evaluate_retrieval, RetrievalMetrics};
pub use search::{eval_search, SearchEvalReport};
