//! Training only: the [`trainer::Task`] trait and the loop written once, starting and
//! resuming a run ([`start`]), checkpoints, data parallelism, losses and batching, and per
//! task its `Task` impl and `train_*`. What a run is and how to use it lives in
//! `vitrine-infer`.

pub mod caption;
pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod images;
pub mod lm;
pub mod losses;
pub mod scorer;
pub mod search;
pub mod start;
pub mod tasks;
pub mod trainer;

pub use error::{Result, TrainError};
