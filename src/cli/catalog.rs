//! `vitrine index build|add|remove` and `vitrine search`: catalogue indexes and queries.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vitrine_data::catalog::{CatalogConfig, CatalogSource};
use vitrine_data::image_io::DecodeLimits;
use vitrine_index::{AnnConfig, AnnIndex, Filter, Index, Searcher, Store, StoreConfig};
use vitrine_infer::search::{search as search_index, Embedders, Query, SearchResult};

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
    fn to_config(&self, limits: &DecodeLimits) -> Option<CatalogConfig> {
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
            limits: limits.clone(),
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnnKind {
    /// Exact search only.
    None,
    /// An HNSW graph (USearch).
    Hnsw,
}

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Embed a catalogue with a run's image encoder, a text model, or both, and write an
    /// index file.
    Build {
        /// A search run, or a pretrained ViT / CLIP image encoder: a Hugging Face folder or
        /// hf:<repo>[@revision] (CLIP indexes also answer `vitrine search --text`).
        #[arg(long, required_unless_present = "text_model")]
        run: Option<PathBuf>,
        /// A BERT-family sentence encoder (a folder such as models/all-MiniLM-L6-v2, or
        /// hf:<repo>) that embeds each item's --text-column too: text and hybrid queries.
        #[arg(long)]
        text_model: Option<String>,
        /// The column the text model embeds (an item without it uses its title).
        #[arg(long, default_value = "title", requires = "text_model")]
        text_column: String,
        #[arg(long)]
        out: PathBuf,
        /// Also build an HNSW graph (saved as OUT.hnsw) for approximate search; exact
        /// search is the default and stays in use below ann.exact_below items.
        #[arg(long, value_enum, default_value_t = AnnKind::None)]
        ann: AnnKind,
        /// TOML file with the graph's parameters (fields of `AnnConfig`: connectivity,
        /// expansion_add, expansion_search, exact_below, filter_exact_below, build_threads).
        #[arg(long, requires = "ann")]
        ann_config: Option<PathBuf>,
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
    /// Fold the index's log of adds and removes into the index file.
    Compact {
        #[arg(long)]
        index: PathBuf,
    },
}

pub fn index(cmd: IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build {
            run,
            text_model,
            text_column,
            out,
            ann,
            ann_config,
            embed,
        } => {
            let config = match (ann, ann_config) {
                (AnnKind::None, _) => None,
                (AnnKind::Hnsw, None) => Some(AnnConfig::default()),
                (AnnKind::Hnsw, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let c: AnnConfig =
                        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
                    c.validate()
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    Some(c)
                }
            };
            let device = embed.device.clone();
            let (mut index, skipped) = device.run(Embed {
                run,
                text: text_model.map(|m| (m, text_column)),
                index: None,
                args: embed,
            })?;
            index.ann = config;
            index.save(&out)?;
            if let Some(config) = &index.ann {
                let start = std::time::Instant::now();
                let graph = AnnIndex::for_index(&index, config)?;
                vitrine_index::searcher::save_graph(&graph, &index, &out)?;
                eprintln!(
                    "built the HNSW graph in {:.1} s ({} MB in memory)",
                    start.elapsed().as_secs_f64(),
                    graph.memory_bytes() >> 20
                );
            }
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
            let (mut store, mut index) = Store::open(&path, StoreConfig::default())?;
            let device = embed.device.clone();
            // The new items are embedded apart and appended to the index's log in one
            // synced write: all of them or, on any error (a duplicate id), none.
            let (fresh, _) = device.run(Embed {
                run,
                text: None,
                index: Some(Index::new(index.dim, index.model.clone())),
                args: embed,
            })?;
            let items = fresh
                .items()
                .iter()
                .enumerate()
                .map(|(row, it)| {
                    (
                        it.clone(),
                        fresh.embedding(row).unwrap_or_default().to_vec(),
                    )
                })
                .collect();
            let mut changed = store.replayed_adds().clone();
            changed.extend(fresh.items().iter().map(|it| it.id.clone()));
            store.add(&mut index, items)?;
            let compacted = store.wants_compaction();
            if compacted {
                compact(&mut store, &mut index, &changed)?;
            }
            eprintln!(
                "added {} items; {} now holds {}{}",
                fresh.len(),
                path.display(),
                index.len(),
                if compacted { " (log compacted)" } else { "" }
            );
        }
        IndexCommand::Remove { index: path, ids } => {
            let (mut store, mut index) = Store::open(&path, StoreConfig::default())?;
            store.remove(&mut index, &ids)?;
            if store.wants_compaction() {
                let replayed = store.replayed_adds().clone();
                compact(&mut store, &mut index, &replayed)?;
            }
            eprintln!(
                "removed {} items; {} now holds {}",
                ids.len(),
                path.display(),
                index.len()
            );
        }
        IndexCommand::Compact { index: path } => {
            let (mut store, mut index) = Store::open(&path, StoreConfig::default())?;
            let log = store.log_bytes();
            let replayed = store.replayed_adds().clone();
            compact(&mut store, &mut index, &replayed)?;
            eprintln!(
                "compacted {}: {} items, {log} log bytes folded in",
                path.display(),
                index.len()
            );
        }
    }
    Ok(())
}

/// Folds the log into a new base; an HNSW graph is first brought up to date (`changed`:
/// ids added since the base was written) and then saved for the new base.
fn compact(store: &mut Store, index: &mut Index, changed: &HashSet<String>) -> Result<()> {
    let graph = match index.ann {
        Some(_) => Some(Searcher::<burn::backend::Flex>::open(
            index,
            store.path(),
            changed,
            &Default::default(),
        )?),
        None => None,
    };
    store.compact(index)?;
    if let Some(g) = graph {
        g.saved(index, store.path())?;
    }
    Ok(())
}

/// Embeds a catalogue into a new index (`index` None) or into `index`: (index, skipped).
struct Embed {
    /// The image encoder: of a new index, or in place of the one an index records.
    run: Option<PathBuf>,
    /// A new index's text model and column.
    text: Option<(String, String)>,
    index: Option<Index>,
    args: EmbedArgs,
}

impl OnBackend for Embed {
    type Output = (Index, usize);
    fn run<B: PickDevice>(self, d: B::Device) -> Result<(Index, usize)> {
        let a = &self.args;
        let embedders = match &self.index {
            None => Embedders::<B>::new(
                self.run.as_deref(),
                self.text.as_ref().map(|(m, c)| (m.as_str(), c.as_str())),
                &d,
            )?,
            Some(index) => Embedders::<B>::for_index(index, self.run.as_deref(), &d)?,
        };
        let limits = embedders
            .image
            .as_ref()
            .map(|e| e.config.data.limits.clone())
            .unwrap_or_default();
        let catalog = a.catalog.to_config(&limits);
        match self.index {
            None => {
                let (index, report) =
                    embedders.build_index(catalog.as_ref(), a.skip_bad, a.quiet)?;
                Ok((index, report.data.skipped))
            }
            Some(mut index) => {
                let catalog = catalog.context(
                    "give the items to add: --csv/--images, --image-folder or --idx-images",
                )?;
                let report = embedders.add_catalog(&mut index, &catalog, a.skip_bad, a.quiet)?;
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
    #[arg(long, required_unless_present_any = ["id", "text"], conflicts_with = "id")]
    image: Vec<PathBuf>,
    /// Query by an item already in the index.
    #[arg(long)]
    id: Option<String>,
    /// Query by words ("red summer dress"; repeatable, one ranking each): needs an index
    /// built with --text-model, or with a CLIP model. With --image or --id, the ranking
    /// mixes both ("this photo, but in red").
    #[arg(long)]
    text: Vec<String>,
    /// Share of the text's similarity when a query has an image (or --id) and a text:
    /// score = (1 - w) * image similarity + w * text similarity.
    #[arg(long, default_value_t = vitrine_infer::search::DEFAULT_TEXT_WEIGHT)]
    text_weight: f32,
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
    /// HNSW search breadth (efSearch) for an index built with --ann hnsw (default: the
    /// index's ann.expansion_search).
    #[arg(long)]
    ef: Option<usize>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceOpt,
}

impl SearchArgs {
    fn query(&self) -> Query<'_> {
        Query {
            images: &self.image,
            id: self.id.as_deref(),
            texts: &self.text,
            text_weight: self.text_weight,
        }
    }

    /// How query `qi` is named in the printed rankings.
    fn label(&self, qi: usize) -> String {
        let pick = |len: usize| if len == 1 { 0 } else { qi };
        let what = match &self.id {
            Some(id) => Some(format!("item {id}")),
            None if !self.image.is_empty() => {
                Some(self.image[pick(self.image.len())].display().to_string())
            }
            None => None,
        };
        let words =
            (!self.text.is_empty()).then(|| format!("{:?}", self.text[pick(self.text.len())]));
        match (what, words) {
            (Some(w), Some(t)) => format!("{w} + {t} (text weight {})", self.text_weight),
            (Some(w), None) => w,
            (None, Some(t)) => t,
            (None, None) => String::new(),
        }
    }
}

/// A query against a loaded index.
struct Ask<'a> {
    args: &'a SearchArgs,
    index: Index,
    /// Ids the index's log added (the graph catches up on them).
    replayed: HashSet<String>,
    filter: Filter,
}

impl OnBackend for Ask<'_> {
    type Output = Vec<Vec<SearchResult>>;
    fn run<B: PickDevice>(self, d: B::Device) -> Result<Vec<Vec<SearchResult>>> {
        let a = self.args;
        let embedders = Embedders::<B>::for_index(&self.index, a.run.as_deref(), &d)?;
        let mut searcher = Searcher::open(&self.index, &a.index, &self.replayed, &d)?;
        if let (Some(ef), Some(ann)) = (a.ef, searcher.ann.as_mut()) {
            ann.set_expansion_search(ef);
        }
        let hits = search_index(
            &self.index,
            &searcher,
            &embedders,
            &a.query(),
            a.k,
            a.max_k,
            &self.filter,
        )?;
        Ok(hits)
    }
}

pub fn search(a: SearchArgs) -> Result<()> {
    let (index, replayed) = Index::load_replayed(&a.index)?;
    a.query().rankings()?;
    let filter = Filter::parse(&a.filters)?;
    if a.ef == Some(0) {
        anyhow::bail!("--ef 0: the graph's search breadth must be at least 1");
    }
    let results = a.device.run(Ask {
        args: &a,
        index,
        replayed,
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
