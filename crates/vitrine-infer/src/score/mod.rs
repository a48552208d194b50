//! Click-through scoring: what a scorer run is and how to rank lines with it.

mod config;
pub mod frozen;
mod run;

pub use config::{HeadInit, ScoreData, ScoreEvalConfig, ScoreLimits, ScoreRunConfig, ScoreTrain};
pub use run::{
    dev_split, encode_for_training, pad, read_lines, EncodedPairs, RowCodec, ScoreRun, ScoredLine,
};
