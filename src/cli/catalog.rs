//! `vitrine index build|add|remove` and `vitrine search`: catalogue indexes and queries.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vitrine_data::catalog::{CatalogConfig, CatalogSource};
use vitrine_index::{Filter, Index};
use vitrine_infer::search::{index_run, search as search_index, Encoder, Query, SearchResult};

use super::{outln, print_json, DeviceOpt};
use crate::device::{OnBackend, PickDevice};

/// A catalogue given on the command line (default: the run's training catalogue).
#[derive(Args, Clone, Default)]
pub struct CatalogArgs {
    /// CSV with an id column and attributes (with --images).
    #[arg(long, requires = "images", conflicts_with_all = ["image_folder", "idx_images"])]
    csv: Option<PathBuf>,
    /// Folder of images named by --image-pattern.
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long, default_value = "id")]
    id_column: String,
    #[arg(long, default_value = "{id}.jpg")]
    image_pattern: String,
    #[arg(long)]
    label_column: Option<String>,
    #[arg(long)]
    title_column: Option<String>,
    /// ImageFolder tree: DIR/<label>/<image>.
    #[arg(long, conflicts_with = "idx_images")]
    image_folder: Option<PathBuf>,
    /// idx or idx.gz images file (MNIST format).
    #[arg(long)]
    idx_images: Option<PathBuf>,
    #[arg(long, requires = "idx_images")]
    idx_labels: Option<PathBuf>,
}

impl CatalogArgs {
    /// The catalogue named, decoded with the run's limits (None: none named).
    fn to_config(&self, encoder_limits: &CatalogConfig) -> Option<CatalogConfig> {
        let source = if let (Some(csv), Some(images)) = (&self.csv, &self.images) {
            CatalogSource::Csv {
                csv: csv.clone(),
                images: images.clone(),
                id_column: self.id_column.clone(),
                image_pattern: self.image_pattern.clone(),
                image_column: None,
            }
        } else if let Some(root) = &self.image_folder {
            CatalogSource::ImageFolder { root: root.clone() }
        } else if let Some(images) = &self.idx_images {
            CatalogSource::Idx {
                images: images.clone(),
                labels: self.idx_labels.clone(),
                class_names: None,
                id_prefix: String::new(),
            }
        } else {
            return None;
        };
        Some(CatalogConfig {
            source,
            label_column: self.label_column.clone(),
            title_column: self.title_column.clone(),
            limits: encoder_limits.limits.clone(),
            max_items: 0,
        })
    }
}

/// How `index build` and `index add` embed a catalogue.
#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    device: DeviceOpt,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Skip bad catalogue rows and images (counted) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Embed a catalogue with a run's encoder and write an index file.
    Build {
        /// A search run, or a pretrained ViT / CLIP image encoder: a Hugging Face folder or
        /// hf:<repo>[@revision] (CLIP indexes also answer `vitrine search --text`).
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        embed: EmbedArgs,
    },
    /// Embed more items into an existing index (no rebuild); duplicate ids are refused.
    Add {
        #[arg(long)]
        index: PathBuf,
        /// Run whose encoder embeds the items (default: the one the index records).
        #[arg(long)]
        run: Option<PathBuf>,
        #[command(flatten)]
        embed: EmbedArgs,
    },
    /// Remove items by id (all-or-nothing).
    Remove {
        #[arg(long)]
        index: PathBuf,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub fn index(cmd: IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build { run, out, embed } => {
            let device = embed.device.clone();
            let (index, skipped) = device.run(Embed {
                run,
                index: None,
                args: embed,
            })?;
            index.save(&out)?;
            eprintln!(
                "wrote {} ({} items, {skipped} skipped)",
                out.display(),
                index.len()
            );
        }
        IndexCommand::Add {
            index: path,
            run,
            embed,
        } => {
            let index = Index::load(&path)?;
            let before = index.len();
            let device = embed.device.clone();
            let (index, _) = device.run(Embed {
                run: index_run(&index, run.as_deref())?,
                index: Some(index),
                args: embed,
            })?;
            index.save(&path)?;
            eprintln!(
                "added {} items; {} now holds {}",
                index.len() - before,
                path.display(),
                index.len()
            );
        }
        IndexCommand::Remove { index: path, ids } => {
            let mut index = Index::load(&path)?;
            index.remove(&ids)?;
            index.save(&path)?;
            eprintln!(
                "removed {} items; {} now holds {}",
                ids.len(),
                path.display(),
                index.len()
            );
        }
    }
    Ok(())
}

/// Embeds a catalogue into a new index (`index` None) or into `index`: (index, skipped).
struct Embed {
    run: PathBuf,
    index: Option<Index>,
    args: EmbedArgs,
}

impl OnBackend for Embed {
    type Output = (Index, usize);
    fn run<B: PickDevice>(self, d: B::Device) -> Result<(Index, usize)> {
        let encoder = Encoder::<B>::load(&self.run, &d)?;
        let a = &self.args;
        let catalog = a.catalog.to_config(&encoder.config.data);
        match self.index {
            None => {
                let (index, report) = encoder.build_index(catalog.as_ref(), a.skip_bad, a.quiet)?;
                Ok((index, report.data.skipped))
            }
            Some(mut index) => {
                let catalog = catalog.context(
                    "give the items to add: --csv/--images, --image-folder or --idx-images",
                )?;
                let report = encoder.add_catalog(&mut index, &catalog, a.skip_bad, a.quiet)?;
                Ok((index, report.data.skipped))
            }
        }
    }
}

#[derive(Args)]
pub struct SearchArgs {
    #[arg(long)]
    index: PathBuf,
    /// Query photo(s); one ranking per photo.
    #[arg(long, required_unless_present_any = ["id", "text"], conflicts_with_all = ["id", "text"])]
    image: Vec<PathBuf>,
    /// Query by an item already in the index.
    #[arg(long, conflicts_with = "text")]
    id: Option<String>,
    /// Query by words ("red summer dress"; repeatable, one ranking each): needs an index
    /// built with a CLIP model.
    #[arg(long)]
    text: Vec<String>,
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Largest k accepted.
    #[arg(long, default_value_t = 1000)]
    max_k: usize,
    /// Exact metadata filter column=value (repeatable; same column = OR, different = AND).
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    filters: Vec<String>,
    /// Run whose encoder embeds the query (default: the one the index records).
    #[arg(long)]
    run: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

impl SearchArgs {
    fn query(&self) -> Query<'_> {
        match &self.id {
            Some(id) => Query::ItemId(id),
            None if !self.text.is_empty() => Query::Texts(&self.text),
            None => Query::Images(&self.image),
        }
    }

    /// How query `qi` is named in the printed rankings.
    fn label(&self, qi: usize) -> String {
        match &self.id {
            Some(id) => format!("item {id}"),
            None if !self.text.is_empty() => format!("{:?}", self.text[qi]),
            None => self.image[qi].display().to_string(),
        }
    }
}

/// A query against a loaded index.
struct Ask<'a> {
    args: &'a SearchArgs,
    index: Index,
    run: PathBuf,
    filter: Filter,
}

impl OnBackend for Ask<'_> {
    type Output = Vec<Vec<SearchResult>>;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<Vec<Vec<SearchResult>>> {
        let a = self.args;
        let encoder = Encoder::<B>::load(&self.run, &d)?;
        let hits = search_index(&self.index, &encoder, a.query(), a.k, a.max_k, &self.filter)?;
        Ok(hits)
    }
}

pub fn search(a: SearchArgs) -> Result<()> {
    let index = Index::load(&a.index)?;
    let run = index_run(&index, a.run.as_deref())?;
    let filter = Filter::parse(&a.filters)?;
    let results = a.device.run(Ask {
        args: &a,
        index,
        run,
        filter,
    })?;
    if a.json {
        return print_json(&results);
    }
    for (qi, hits) in results.iter().enumerate() {
        outln!("query: {}", a.label(qi))?;
        outln!("{:>4}  {:<12} {:>7}  title", "rank", "id", "score")?;
        for h in hits {
            outln!(
                "{:>4}  {:<12} {:>7.4}  {}",
                h.rank,
                h.id,
                h.score,
                // Catalogues without titles (Fashion-MNIST) show the item's label.
                h.title
                    .as_deref()
                    .or(h.attrs.get("label").map(String::as_str))
                    .unwrap_or("-")
            )?;
        }
        if hits.is_empty() {
            outln!("(no item passes the filters)")?;
        }
    }
    Ok(())
}
