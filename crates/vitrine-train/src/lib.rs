//! Training loops per task, run directories, checkpoints, resume, schedules and progress;
//! plus the catalogue pipeline (embed, index, query) that the CLI and server share.

pub mod caption;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod dist;
pub mod embed;
pub mod error;
pub mod generate;
pub mod lm;
pub mod losses;
pub mod pipeline;
pub mod pretrained;
pub mod run;
pub mod schedule;
pub mod scorer;
pub mod search;
pub mod trainer;

pub use error::{Result, TrainError};
