//! Visual search: what a search run is (its config, labels and split), and how to use it
//! (embed images and texts, build and query indexes).

mod config;
mod embed;
mod embedders;
mod encoder;
mod query;
mod text;

pub use config::{
    open_and_split, validate_train, EvalConfig, LabelMap, LossKind, Prepared, Sampler,
    SearchRunConfig, SearchTrain, SplitConfig, SplitRecord, TrainConfig,
};
pub use embed::{batch_tensor, embed_catalog, embed_pixels};
pub use embedders::{index_run, Embedders};
pub use encoder::{AddReport, Encoder};
pub use query::{query_embeddings, results, search, Query, SearchResult, DEFAULT_TEXT_WEIGHT};
pub use text::TextSide;
