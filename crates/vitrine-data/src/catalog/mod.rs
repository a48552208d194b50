//! Catalogue readers: a CSV of products plus a folder of images ([`csv`]), IDX files
//! (MNIST, Fashion-MNIST; [`idx`]), and ImageFolder trees (`root/<label>/<file>`;
//! [`folder`]), all read into one [`Catalog`] of [`Item`]s.
//!
//! Opening a catalogue checks every row up front (fields, ids, image files
//! present) so training does not fail hours in on a bad row. With
//! `skip_bad` such rows are skipped and counted instead.

mod config;
mod csv;
#[cfg(test)]
mod fixtures;
mod folder;
mod idx;
mod item;
mod open;

pub use config::{CatalogConfig, CatalogSource};
pub use item::{Catalog, ImageRef, Item, LoadReport, IMAGE_EXTENSIONS, MAX_WARNINGS};
pub use open::decode_pixels;
