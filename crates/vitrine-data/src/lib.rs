//! Data handling for Vitrine: catalogue readers (CSV + image folder, IDX,
//! ImageFolder trees), bounded image decoding, preprocessing and seeded
//! augmentation, seeded splits, tokenizers and copy corpora, and atomic file writes.
//!
//! Everything here is pure Rust (no tensor framework) so it builds fast and
//! can be tested on its own. Errors caused by user data name the file, row
//! and column involved and say what is allowed.

pub mod catalog;
pub mod copy;
pub mod ctr;
pub mod error;
pub mod fsio;
pub mod image_io;
pub mod split;
mod table;
pub mod text;
pub mod transform;

pub use error::{DataError, Result};
