//! Image-to-text: what a caption run is, and how to caption images with it.

mod config;
mod decode;
mod run;

pub use config::{
    open_caption_data, title_of, title_of_item, CaptionData, CaptionEvalConfig, CaptionInit,
    CaptionRunConfig, CaptionSplit, CaptionSplitRecord,
};
pub use decode::{decode, CaptionLimits, DecodeConfig, DecodeOverrides, Specials};
pub use run::{captions_csv, list_images, CaptionResult, CaptionRun};
