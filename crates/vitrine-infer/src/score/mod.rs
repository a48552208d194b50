//! Click-through scoring: what a scorer run is and how to rank lines with it.

mod config;
mod run;

pub use config::{ScoreData, ScoreEvalConfig, ScoreLimits, ScoreRunConfig, ScoreTrain};
pub use run::{encode_for_training, pad, read_lines, EncodedPairs, ScoreRun, ScoredLine};
