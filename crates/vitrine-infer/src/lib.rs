//! What a trained run is and how to use it: run directories and their files, configs and
//! `--set` overrides, pretrained models, and per task the inference side: search
//! (embedding, indexes, queries), copy (loading, generation), score (ranking) and caption
//! (decoding). The trainer writes what this crate reads; the server, the evaluator and the
//! CLI use it without depending on the trainer.

pub mod caption;
pub mod config;
pub mod copy;
pub mod error;
pub mod pretrained;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod score;
pub mod search;
pub mod sentence;
pub mod tokenizer;

pub use error::{InferError, Result};
