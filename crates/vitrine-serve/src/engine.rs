//! Model workers. Each served task runs on its own thread, which loads and owns its models
//! (Burn modules are not shared across threads) and takes jobs from a bounded queue. The
//! search and caption workers batch jobs dynamically: the first job waits up to
//! `batching.max_wait_ms` for others, then all images go through one forward pass. Jobs
//! whose client has gone (reply channel closed) are dropped before any work is done.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use tokio::sync::{mpsc as tmpsc, oneshot};
use vitrine_data::catalog::{Catalog, ImageRef};
use vitrine_data::transform::Preprocess;
use vitrine_index::{Filter, Index, IndexItem, Searcher, Store, StoreConfig};
use vitrine_infer::caption::{CaptionRun, DecodeConfig, DecodeOverrides};
use vitrine_infer::copy::{
    check_request, generate_observed, GenEvent, GenerateLimits, GenerateOutput, GenerateParams,
    LmRun,
};
use vitrine_infer::run::files;
use vitrine_infer::score::ScoreRun;
use vitrine_infer::search::{embed_pixels, results, Embedders, Encoder, SearchResult};
use vitrine_infer::InferError;

use crate::config::{BatchConfig, ServeConfig};
use crate::error::{ApiError, ServeError};
use crate::metrics::Metrics;

/// A bounded job queue in front of one worker.
pub struct Queue<J> {
    tx: SyncSender<J>,
    depth: Arc<AtomicUsize>,
    name: &'static str,
    capacity: usize,
}

impl<J> Queue<J> {
    /// Enqueues without waiting: a full queue is a 429 at once.
    pub fn submit(&self, job: J) -> Result<(), ApiError> {
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => ApiError::Overloaded {
                        message: format!(
                            "the {} queue is full ({} waiting, limits.max_queue = {}): retry later",
                            self.name, self.capacity, self.capacity
                        ),
                        retry_after: 1,
                    },
                    TrySendError::Disconnected(_) => {
                        ApiError::unavailable(format!("the {} worker has stopped", self.name))
                    }
                })
            }
        }
    }
}

/// The receiving end, which keeps the depth gauge honest.
struct Inbox<J> {
    rx: Receiver<J>,
    depth: Arc<AtomicUsize>,
}

impl<J> Inbox<J> {
    fn recv(&self) -> Option<J> {
        let j = self.rx.recv().ok()?;
        self.depth.fetch_sub(1, Ordering::SeqCst);
        Some(j)
    }

    /// `first` plus whatever arrives within `wait`, up to `max` units of `size`.
    fn batch(&self, first: J, b: &BatchConfig, size: impl Fn(&J) -> usize) -> Vec<J> {
        let mut total = size(&first);
        let mut jobs = vec![first];
        let deadline = Instant::now() + Duration::from_millis(b.max_wait_ms);
        while total < b.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(j) => {
                    self.depth.fetch_sub(1, Ordering::SeqCst);
                    total += size(&j);
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        jobs
    }
}

fn queue<J>(name: &'static str, capacity: usize, metrics: &Metrics) -> (Queue<J>, Inbox<J>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    metrics.register_queue(name, depth.clone());
    (
        Queue {
            tx,
            depth: depth.clone(),
            name,
            capacity,
        },
        Inbox { rx, depth },
    )
}

/// What the search worker tells the request handlers once loaded.
pub struct SearchMeta {
    pub preprocess: Preprocess,
    /// The index has a text model, or its image model a text tower (CLIP): text queries
    /// work.
    pub text_queries: bool,
}

/// The catalogue as the handlers see it (the worker owns the index itself).
#[derive(Default)]
pub struct CatalogView {
    pub count: usize,
    /// Filterable metadata columns with their distinct values.
    pub columns: BTreeMap<String, Vec<String>>,
    /// Where each item's image is.
    pub images: HashMap<String, ImageRef>,
}

/// State shared by handlers and workers.
pub struct Shared {
    pub metrics: Metrics,
    pub catalog: RwLock<CatalogView>,
    pub search: OnceLock<SearchMeta>,
    pub caption: OnceLock<Preprocess>,
    /// The copy run's own generation limits (a request must pass both its and the server's).
    pub generate: OnceLock<GenerateLimits>,
    /// Workers loaded so far, of `workers`.
    pub loaded: AtomicUsize,
    pub workers: usize,
    /// SIGTERM seen: `/readyz` says 503 so traffic moves away, requests are still served.
    pub draining: AtomicBool,
    /// The listener is closing: new model requests get 503.
    pub shutting_down: AtomicBool,
}

impl Shared {
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::SeqCst) == self.workers
            && !self.draining.load(Ordering::SeqCst)
            && !self.shutting_down.load(Ordering::SeqCst)
    }
}

/// A checked query: a photo (preprocessed pixels) or an item, a text, or one of the first
/// two with a text mixed by `text_weight`.
pub struct Query {
    pub pixels: Option<Vec<u8>>,
    pub id: Option<String>,
    pub text: Option<String>,
    pub text_weight: f32,
}

pub enum SearchJob {
    Query {
        query: Query,
        k: usize,
        filter: Filter,
        reply: oneshot::Sender<Result<Vec<SearchResult>, ApiError>>,
    },
    Add {
        id: String,
        attrs: BTreeMap<String, String>,
        pixels: Vec<u8>,
        /// The encoded upload and its file extension, kept to serve the image.
        image: Vec<u8>,
        ext: &'static str,
        reply: oneshot::Sender<Result<usize, ApiError>>,
    },
    Delete {
        id: String,
        reply: oneshot::Sender<Result<usize, ApiError>>,
    },
}

impl SearchJob {
    fn images(&self) -> usize {
        match self {
            Self::Query {
                query: Query {
                    pixels: Some(_), ..
                },
                ..
            }
            | Self::Add { .. } => 1,
            _ => 0,
        }
    }

    fn abandoned(&self) -> bool {
        match self {
            Self::Query { reply, .. } => reply.is_closed(),
            Self::Add { reply, .. } | Self::Delete { reply, .. } => reply.is_closed(),
        }
    }
}

/// What a streamed generation sends.
#[derive(Debug)]
pub enum StreamEvent {
    /// The request passed the run's validation; generation begins.
    Started,
    Token {
        sample: usize,
        text: String,
    },
    Candidate {
        index: usize,
        sample: usize,
        text: String,
        keyword_coverage: f64,
    },
    Done(GenerateOutput),
    Error(ApiError),
}

pub enum GenSink {
    Once(oneshot::Sender<Result<GenerateOutput, ApiError>>),
    Stream(tmpsc::UnboundedSender<StreamEvent>),
}

impl GenSink {
    fn closed(&self) -> bool {
        match self {
            Self::Once(tx) => tx.is_closed(),
            Self::Stream(tx) => tx.is_closed(),
        }
    }

    /// Forwards an event; false once the client is gone.
    fn event(&self, ev: GenEvent<'_>) -> bool {
        match (self, ev) {
            (Self::Stream(tx), GenEvent::Token { sample, text }) => tx
                .send(StreamEvent::Token {
                    sample,
                    text: text.to_string(),
                })
                .is_ok(),
            (
                Self::Stream(tx),
                GenEvent::Candidate {
                    index,
                    sample,
                    candidate,
                },
            ) => tx
                .send(StreamEvent::Candidate {
                    index,
                    sample,
                    text: candidate.text.clone(),
                    keyword_coverage: candidate.keyword_coverage,
                })
                .is_ok(),
            _ => !self.closed(),
        }
    }

    /// Tells a streaming client its request was accepted (its answer head can go out).
    fn started(&self) -> bool {
        match self {
            Self::Stream(tx) => tx.send(StreamEvent::Started).is_ok(),
            Self::Once(tx) => !tx.is_closed(),
        }
    }

    fn finish(self, result: Result<GenerateOutput, ApiError>) {
        // A client that has gone cannot be told; nothing else to do.
        match self {
            Self::Once(tx) => {
                let _ = tx.send(result);
            }
            Self::Stream(tx) => {
                let _ = tx.send(match result {
                    Ok(out) => StreamEvent::Done(out),
                    Err(e) => StreamEvent::Error(e),
                });
            }
        }
    }
}

pub struct GenJob {
    pub request: GenerateParams,
    pub sink: GenSink,
}

pub struct CaptionJob {
    /// Preprocessed CHW u8 images, concatenated.
    pub pixels: Vec<u8>,
    pub images: usize,
    pub decode: DecodeOverrides,
    pub reply: oneshot::Sender<Result<Vec<String>, ApiError>>,
}

/// The queues the handlers submit to (None: the task is not served).
pub struct Engine {
    pub search: Option<Queue<SearchJob>>,
    pub generate: Option<Queue<GenJob>>,
    pub caption: Option<Queue<CaptionJob>>,
    pub shared: Arc<Shared>,
}

/// Starts one thread per served task. Each loads its models and reports `Ok(task)` or the
/// load error on `loaded`.
pub fn start<B: Backend>(
    config: &ServeConfig,
    device: B::Device,
    loaded: tmpsc::UnboundedSender<Result<&'static str, ServeError>>,
) -> Result<Engine, ServeError> {
    let workers = [
        config.search.is_some(),
        config.copy.is_some(),
        config.caption.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let shared = Arc::new(Shared {
        metrics: Metrics::default(),
        catalog: RwLock::new(CatalogView::default()),
        search: OnceLock::new(),
        caption: OnceLock::new(),
        generate: OnceLock::new(),
        loaded: AtomicUsize::new(0),
        workers,
        draining: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
    });
    let cap = config.limits.max_queue;
    let mut engine = Engine {
        search: None,
        generate: None,
        caption: None,
        shared: shared.clone(),
    };
    let report = move |shared: &Shared,
                       loaded: &tmpsc::UnboundedSender<Result<&'static str, ServeError>>,
                       task: &'static str,
                       r: Result<(), ServeError>| {
        if r.is_ok() {
            shared.loaded.fetch_add(1, Ordering::SeqCst);
        }
        let _ = loaded.send(r.map(|_| task));
    };
    if let Some(spec) = config.search.clone() {
        let (q, inbox) = queue("search", cap, &shared.metrics);
        engine.search = Some(q);
        let (shared, loaded, device) = (shared.clone(), loaded.clone(), device.clone());
        let (batching, limits) = (config.batching.clone(), config.limits.clone());
        let writes = config.index.clone();
        spawn("vitrine-search", move || {
            match SearchWorker::<B>::load(&spec, &device, &shared, limits.max_filter_values, writes)
            {
                Ok(mut w) => {
                    report(&shared, &loaded, "search", Ok(()));
                    w.run(&inbox, &batching, limits.max_k, &shared);
                }
                Err(e) => report(&shared, &loaded, "search", Err(e)),
            }
        })?;
    }
    if let Some(copy) = config.copy.clone() {
        let (q, inbox) = queue("generate", cap, &shared.metrics);
        engine.generate = Some(q);
        let scorer = config.scorer.clone();
        let (shared, loaded, device) = (shared.clone(), loaded.clone(), device.clone());
        spawn("vitrine-generate", move || {
            match load_generate::<B>(&copy, scorer.as_deref(), &device) {
                Ok((run, scorer)) => {
                    let _ = shared.generate.set(run.config.generate.clone());
                    report(&shared, &loaded, "generate", Ok(()));
                    generate_loop(&run, scorer.as_ref(), &inbox, &device);
                }
                Err(e) => report(&shared, &loaded, "generate", Err(e)),
            }
        })?;
    }
    if let Some(path) = config.caption.clone() {
        let (q, inbox) = queue("caption", cap, &shared.metrics);
        engine.caption = Some(q);
        let (shared, loaded, device) = (shared.clone(), loaded.clone(), device.clone());
        let batching = config.batching.clone();
        spawn("vitrine-caption", move || {
            match CaptionRun::<B>::load(&path, &device) {
                Ok(run) => {
                    let _ = shared.caption.set(run.config.preprocess.clone());
                    report(&shared, &loaded, "caption", Ok(()));
                    caption_loop(&run, &inbox, &batching, &shared);
                }
                Err(e) => report(
                    &shared,
                    &loaded,
                    "caption",
                    Err(load_err(format!("caption run {}", path.display()), e)),
                ),
            }
        })?;
    }
    Ok(engine)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ServeError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(ServeError::Io)
}

fn load_err(what: String, source: InferError) -> ServeError {
    ServeError::Load {
        what,
        source: Box::new(source),
    }
}

const UPLOAD_EXTS: [&str; 5] = ["png", "jpg", "gif", "bmp", "webp"];

/// Uploaded images live beside the index: `index.vtridx` → `index.images/<digest>.<ext>`,
/// named by a SHA-256 of the id so any id gives a short, safe file name.
fn upload_stem(id: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn upload_path(dir: &Path, id: &str, ext: &str) -> PathBuf {
    dir.join(format!("{}.{ext}", upload_stem(id)))
}

struct SearchWorker<B: Backend> {
    /// The image encoder (always there: checked at load) and the index's text model.
    embedders: Embedders<B>,
    index: Index,
    /// Exact search on the device, or the index's HNSW graph.
    searcher: Searcher<B>,
    /// The index on disk: writes append to its log.
    store: Store,
    writes: StoreConfig,
    /// Per metadata column, how many items hold each value (kept as writes happen, so the
    /// handlers' view is updated in O(1) per write).
    values: BTreeMap<String, BTreeMap<String, usize>>,
    index_path: PathBuf,
    uploads: PathBuf,
    /// Images of the run's own catalogue, by id.
    catalog_images: HashMap<String, ImageRef>,
    /// Images uploaded with `POST /v1/catalog/items`, by id.
    uploaded: HashMap<String, PathBuf>,
    /// The device copy is being rebuilt (or its rebuild failed): do not search it.
    device_stale: bool,
    max_filter_values: usize,
}

impl<B: Backend> SearchWorker<B> {
    fn load(
        spec: &Path,
        device: &B::Device,
        shared: &Shared,
        max_filter_values: usize,
        writes: StoreConfig,
    ) -> Result<Self, ServeError> {
        let what = |w: &str| format!("{w} {}", spec.display());
        let open = |path: &Path| {
            Store::open(path, writes.clone()).map_err(|e| load_err(what("index"), e.into()))
        };
        let (embedders, (store, index), index_path) = if spec.is_dir() {
            let encoder =
                Encoder::<B>::load(spec, device).map_err(|e| load_err(what("search run"), e))?;
            let embedders = Embedders {
                image: Some(encoder),
                text: None,
            };
            let index_path = spec.join(files::INDEX);
            let opened = if index_path.exists() {
                open(&index_path)?
            } else {
                eprintln!(
                    "serve: building {} from the run's catalogue",
                    index_path.display()
                );
                let (mut index, report) = embedders
                    .build_index(None, true, true)
                    .map_err(|e| load_err(what("catalogue of"), e))?;
                if report.data.skipped > 0 {
                    eprintln!("serve: {}", report.data.summary());
                }
                let store = Store::create(&index_path, &mut index, writes.clone())
                    .map_err(|e| load_err(what("index of"), e.into()))?;
                (store, index)
            };
            (embedders, opened, index_path)
        } else {
            let (store, index) = open(spec)?;
            let embedders = Embedders::<B>::for_index(&index, None, device)
                .map_err(|e| load_err(format!("the models of index {}", spec.display()), e))?;
            (embedders, (store, index), spec.to_path_buf())
        };
        let Some(encoder) = embedders.image.as_ref() else {
            return Err(ServeError::Config(format!(
                "{} holds only text embeddings: serving needs an index with an image model (index build --run)",
                index_path.display()
            )));
        };
        if vitrine_index::Layout::of(&index).image != encoder.config.model.embed_dim() {
            return Err(ServeError::Config(format!(
                "{} holds {}-d embeddings but its run's encoder makes {}-d ones: rebuild the index",
                index_path.display(),
                index.dim,
                encoder.config.model.embed_dim()
            )));
        }
        let mut catalog_images = HashMap::new();
        if encoder.pretrained.is_none() {
            // Product images come from the run's catalogue; a missing catalogue only costs
            // the pictures.
            match Catalog::open(&encoder.config.data, true) {
                Ok((cat, _)) => {
                    for item in cat.items {
                        catalog_images.insert(item.id, item.image);
                    }
                }
                Err(e) => eprintln!("serve: no catalogue images ({e})"),
            }
        }
        let _ = shared.search.set(SearchMeta {
            preprocess: encoder.config.preprocess.clone(),
            text_queries: encoder.text.is_some() || embedders.text.is_some(),
        });
        let uploads = index_path.with_extension("images");
        let mut uploaded = HashMap::new();
        if let Ok(dir) = std::fs::read_dir(&uploads) {
            let by_stem: HashMap<String, &str> = index
                .items()
                .iter()
                .map(|it| (upload_stem(&it.id), it.id.as_str()))
                .collect();
            for path in dir.filter_map(|e| e.ok().map(|e| e.path())) {
                // Temp files of an interrupted save and images of removed items match no id.
                let id = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| by_stem.get(s));
                if let Some(id) = id {
                    uploaded.insert(id.to_string(), path);
                }
            }
        }
        let searcher = Searcher::open(&index, &index_path, store.replayed_adds(), device)
            .map_err(|e| load_err(what("index"), e.into()))?;
        let mut w = Self {
            searcher,
            store,
            writes,
            values: BTreeMap::new(),
            uploads,
            uploaded,
            device_stale: false,
            embedders,
            index,
            index_path,
            catalog_images,
            max_filter_values,
        };
        w.publish(shared);
        Ok(w)
    }

    /// Rebuilds the handlers' view from the whole index (at load and after a reload).
    fn publish(&mut self, shared: &Shared) {
        self.values.clear();
        let mut images = HashMap::new();
        for item in self.index.items() {
            for (k, v) in &item.attrs {
                *self
                    .values
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += 1;
            }
            if let Some(r) = self.image_of(&item.id) {
                images.insert(item.id.clone(), r);
            }
        }
        let columns = self
            .values
            .keys()
            .filter_map(|k| Some((k.clone(), self.filter_values(k)?)))
            .collect();
        let mut view = shared.catalog.write().unwrap_or_else(|e| e.into_inner());
        *view = CatalogView {
            count: self.index.len(),
            columns,
            images,
        };
    }

    fn image_of(&self, id: &str) -> Option<ImageRef> {
        match self.uploaded.get(id) {
            Some(p) => Some(ImageRef::File(p.clone())),
            None => self.catalog_images.get(id).cloned(),
        }
    }

    /// A column's values for the page's dropdown, or None when it gets none.
    fn filter_values(&self, column: &str) -> Option<Vec<String>> {
        let values = self.values.get(column)?;
        (column != "title" && values.len() <= self.max_filter_values)
            .then(|| values.keys().cloned().collect())
    }

    /// Updates the handlers' view for one item added or removed: O(its attributes).
    fn publish_one(&mut self, shared: &Shared, item: &IndexItem, added: bool) {
        for (k, v) in &item.attrs {
            let column = self.values.entry(k.clone()).or_default();
            if added {
                *column.entry(v.clone()).or_default() += 1;
            } else if let Some(n) = column.get_mut(v) {
                *n -= 1;
                if *n == 0 {
                    column.remove(v);
                }
            }
        }
        let image = if added { self.image_of(&item.id) } else { None };
        let mut view = shared.catalog.write().unwrap_or_else(|e| e.into_inner());
        view.count = self.index.len();
        for k in item.attrs.keys() {
            match self.filter_values(k) {
                Some(values) => view.columns.insert(k.clone(), values),
                None => view.columns.remove(k),
            };
        }
        match image {
            Some(r) => view.images.insert(item.id.clone(), r),
            None => view.images.remove(&item.id),
        };
    }

    fn run(&mut self, inbox: &Inbox<SearchJob>, b: &BatchConfig, max_k: usize, shared: &Shared) {
        while let Some(first) = inbox.recv() {
            let jobs: Vec<SearchJob> = inbox
                .batch(first, b, SearchJob::images)
                .into_iter()
                .filter(|j| !j.abandoned())
                .collect();
            let writes = jobs.iter().any(|j| !matches!(j, SearchJob::Query { .. }));
            if !guarded("search", || self.process(jobs, max_k, shared))
                && (writes || self.device_stale)
            {
                // A write may have stopped between the file, memory and the device copy:
                // the file is the truth.
                let _ = guarded("search", || self.reload(shared));
            }
        }
    }

    fn encoder(&self) -> &Encoder<B> {
        self.embedders.image.as_ref().expect("checked at load")
    }

    fn process(&mut self, jobs: Vec<SearchJob>, max_k: usize, shared: &Shared) {
        // One forward pass for every image in the batch.
        let encoder = self.encoder();
        let p = &encoder.config.preprocess;
        let mut pixels = Vec::new();
        for j in &jobs {
            match j {
                SearchJob::Query {
                    query:
                        Query {
                            pixels: Some(px), ..
                        },
                    ..
                }
                | SearchJob::Add { pixels: px, .. } => pixels.extend_from_slice(px),
                _ => {}
            }
        }
        let images = pixels.len() / p.pixel_len().max(1);
        let embeddings = if images > 0 {
            shared.metrics.record_batch("search", images);
            embed_pixels(&encoder.model, &pixels, p, images, &encoder.device, None)
        } else {
            Vec::new()
        };
        let dim = encoder.config.model.embed_dim();
        let mut rows = embeddings.chunks(dim);
        for job in jobs {
            let emb = if job.images() > 0 { rows.next() } else { None };
            match job {
                SearchJob::Query {
                    query,
                    k,
                    filter,
                    reply,
                } => {
                    let r = self.query(query, emb, k, max_k, &filter);
                    let _ = reply.send(r);
                }
                SearchJob::Add {
                    id,
                    attrs,
                    image,
                    ext,
                    reply,
                    ..
                } => {
                    // A client that gave up (timeout) was told to retry: do not write.
                    if reply.is_closed() {
                        continue;
                    }
                    let r = match emb {
                        Some(e) => self.add(id, attrs, e, &image, ext, shared),
                        None => Err(ApiError::Internal("missing embedding".into())),
                    };
                    let _ = reply.send(r);
                }
                SearchJob::Delete { id, reply } => {
                    if !reply.is_closed() {
                        let _ = reply.send(self.delete(&id, shared));
                    }
                }
            }
        }
    }

    fn query(
        &self,
        query: Query,
        emb: Option<&[f32]>,
        k: usize,
        max_k: usize,
        filter: &Filter,
    ) -> Result<Vec<SearchResult>, ApiError> {
        if self.device_stale {
            return Err(ApiError::unavailable(
                "the index's device copy is being rebuilt after a failure",
            ));
        }
        if query.pixels.is_some() && emb.is_none() {
            return Err(ApiError::Internal("missing embedding".into()));
        }
        if let Some(id) = &query.id {
            if self.index.row_of(id).is_none() {
                return Err(ApiError::NotFound(format!(
                    "item id {id:?} is not in the catalogue"
                )));
            }
        }
        let q = self.embedders.query(
            &self.index,
            emb,
            query.id.as_deref(),
            query.text.as_deref(),
            query.text_weight,
        )?;
        let hits = self.searcher.search(&self.index, &q, k, max_k, filter)?;
        Ok(results(&self.index, hits).pop().unwrap_or_default())
    }

    /// Adds an item: the image file is written atomically, then the index's log record is
    /// synced; memory changes only once both are on disk.
    fn add(
        &mut self,
        id: String,
        attrs: BTreeMap<String, String>,
        emb: &[f32],
        image: &[u8],
        ext: &str,
        shared: &Shared,
    ) -> Result<usize, ApiError> {
        let item = IndexItem {
            id: id.clone(),
            attrs,
        };
        // The row: the photo's embedding, and the text part from the item's text column.
        let row = self.embedders.item_row(&self.index, &item, Some(emb))?;
        let emb = row.as_slice();
        self.index.check_adds([(&item, emb)])?;
        // A file left by an earlier item of this id (a failed removal) must not shadow this one.
        for other in UPLOAD_EXTS.iter().filter(|e| **e != ext) {
            let _ = std::fs::remove_file(upload_path(&self.uploads, &id, other));
        }
        let path = upload_path(&self.uploads, &id, ext);
        vitrine_data::fsio::atomic_save(&path, image)
            .map_err(|e| ApiError::Internal(format!("saving the image: {e}")))?;
        if let Err(e) = self
            .store
            .add(&mut self.index, vec![(item.clone(), emb.to_vec())])
        {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::Internal(format!("saving the index: {e}")));
        }
        self.uploaded.insert(id, path);
        self.publish_one(shared, &item, true);
        if let Err(e) = self.searcher.added(&self.index, self.index.len() - 1) {
            // The write is on disk; the graph is rebuilt from there.
            eprintln!("serve: updating the search graph failed: {e}");
            self.reload(shared);
        }
        self.after_write(shared);
        Ok(self.index.len())
    }

    fn delete(&mut self, id: &str, shared: &Shared) -> Result<usize, ApiError> {
        self.index.check_removes(&[id.to_string()])?;
        let row = self.index.row_of(id).expect("checked above");
        let item = self.index.item(row).expect("a row of the index").clone();
        let changed = self
            .store
            .remove(&mut self.index, &[id.to_string()])
            .map_err(|e| ApiError::Internal(format!("saving the index: {e}")))?;
        let len = self.index.len();
        if let Err(e) = self.searcher.removed(&[id.to_string()], &changed, len) {
            eprintln!("serve: updating the search graph failed: {e}");
            self.reload(shared);
        }
        if let Some(path) = self.uploaded.remove(id) {
            // The index no longer names it; a leftover file is only disk space.
            let _ = std::fs::remove_file(path);
        }
        self.publish_one(shared, &item, false);
        self.after_write(shared);
        Ok(self.index.len())
    }

    /// The O(catalogue) work a write defers, done once enough writes have piled up: a fresh
    /// device copy, and folding the log into the index file. The write itself is already
    /// durable, so a failed compaction is reported and the index reopened from disk.
    fn after_write(&mut self, shared: &Shared) {
        self.device_stale = true;
        self.searcher.maybe_refresh(&self.index, &self.writes);
        self.device_stale = false;
        match self.store.maybe_compact(&mut self.index) {
            Ok(false) => {}
            Ok(true) => {
                // A graph left behind only costs a rebuild at the next start.
                if let Err(e) = self.searcher.saved(&self.index, &self.index_path) {
                    eprintln!("serve: saving the search graph failed: {e}");
                }
            }
            Err(e) => {
                eprintln!(
                    "serve: compacting {} failed: {e}",
                    self.index_path.display()
                );
                self.reload(shared);
            }
        }
    }

    /// Re-reads the index from disk (base + log), the truth after a failure mid-write.
    fn reload(&mut self, shared: &Shared) {
        match Store::open(&self.index_path, self.writes.clone()) {
            Ok((store, index)) => {
                self.device_stale = true;
                self.store = store;
                self.index = index;
                self.publish(shared);
                let replayed = self.store.replayed_adds();
                match Searcher::open(
                    &self.index,
                    &self.index_path,
                    replayed,
                    &self.encoder().device,
                ) {
                    Ok(s) => {
                        self.searcher = s;
                        self.device_stale = false;
                    }
                    Err(e) => eprintln!("serve: cannot reload the search graph: {e}"),
                }
            }
            Err(e) => eprintln!("serve: cannot reload {}: {e}", self.index_path.display()),
        }
    }
}

fn load_generate<B: Backend>(
    copy: &Path,
    scorer: Option<&Path>,
    device: &B::Device,
) -> Result<(LmRun<B>, Option<ScoreRun<B>>), ServeError> {
    let run = LmRun::<B>::load(copy, device)
        .map_err(|e| load_err(format!("copy run {}", copy.display()), e))?;
    if !run.config.is_copy() {
        return Err(ServeError::Config(format!(
            "{} is a plain language-model run; --copy needs a copy run (task \"copy\")",
            copy.display()
        )));
    }
    let scorer = scorer
        .map(|p| {
            ScoreRun::<B>::load(p, device)
                .map_err(|e| load_err(format!("scorer run {}", p.display()), e))
        })
        .transpose()?;
    Ok((run, scorer))
}

fn generate_loop<B: Backend>(
    run: &LmRun<B>,
    scorer: Option<&ScoreRun<B>>,
    inbox: &Inbox<GenJob>,
    device: &B::Device,
) {
    let limits = &run.config.generate;
    while let Some(job) = inbox.recv() {
        if job.sink.closed() {
            continue;
        }
        let _ = guarded("generate", || {
            let sink = &job.sink;
            let result = (|| -> Result<GenerateOutput, ApiError> {
                let checked = check_request(&job.request, run, limits)?;
                if !sink.started() {
                    return Err(ApiError::unavailable("the client went away"));
                }
                let mut out =
                    generate_observed(run, &checked, limits, device, &mut |ev| sink.event(ev))?;
                if let Some(s) = scorer {
                    s.rank_candidates(&mut out.candidates, device)?;
                }
                Ok(out)
            })();
            job.sink.finish(result);
        });
    }
}

/// Runs one batch; a panic inside a backend is logged and costs only that batch (its
/// clients get 500 when their reply channels drop), not the worker.
fn guarded(worker: &str, f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            eprintln!("serve: the {worker} worker failed on a batch: {msg}");
            false
        }
    }
}

fn caption_loop<B: Backend>(
    run: &CaptionRun<B>,
    inbox: &Inbox<CaptionJob>,
    b: &BatchConfig,
    shared: &Shared,
) {
    while let Some(first) = inbox.recv() {
        let jobs = inbox.batch(first, b, |j| j.images);
        let _ = guarded("caption", || caption_batch(run, jobs, shared));
    }
}

fn caption_batch<B: Backend>(run: &CaptionRun<B>, jobs: Vec<CaptionJob>, shared: &Shared) {
    // Jobs batch together only with the same decoding settings.
    let mut groups: Vec<(DecodeConfig, Vec<CaptionJob>)> = Vec::new();
    for job in jobs {
        if job.reply.is_closed() {
            continue;
        }
        let cfg = run.decode_config(|c| job.decode.apply(c));
        match cfg {
            Err(e) => {
                let _ = job.reply.send(Err(e.into()));
            }
            Ok(cfg) => match groups.iter_mut().find(|(c, _)| *c == cfg) {
                Some((_, g)) => g.push(job),
                None => groups.push((cfg, vec![job])),
            },
        }
    }
    for (cfg, jobs) in groups {
        let pixels: Vec<u8> = jobs.iter().flat_map(|j| j.pixels.iter().copied()).collect();
        let images: usize = jobs.iter().map(|j| j.images).sum();
        shared.metrics.record_batch("caption", images);
        match run.caption_pixels(&pixels, &cfg) {
            Ok(captions) => {
                let mut captions = captions.into_iter();
                for job in jobs {
                    let mine: Vec<String> = captions.by_ref().take(job.images).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_are_short_and_distinct_for_any_id() {
        let ids = ["100", "a/b\\c", "..", "üñí cødé", "x.png", &"é".repeat(500)];
        let paths: std::collections::HashSet<PathBuf> = ids
            .iter()
            .map(|id| {
                let p = upload_path(Path::new("imgs"), id, "png");
                assert_eq!(
                    p.parent(),
                    Some(Path::new("imgs")),
                    "{id}: stays in the folder"
                );
                assert_eq!(p.file_name().unwrap().len(), 64 + 4);
                p
            })
            .collect();
        assert_eq!(paths.len(), ids.len());
    }

    #[test]
    fn full_queue_is_429_and_depth_is_restored() {
        let m = Metrics::default();
        let (q, inbox) = queue::<u32>("test", 2, &m);
        q.submit(1).unwrap();
        q.submit(2).unwrap();
        let e = q.submit(3).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(q.depth.load(Ordering::SeqCst), 2);
        assert_eq!(inbox.recv(), Some(1));
        assert_eq!(q.depth.load(Ordering::SeqCst), 1);
        // Batching takes what is queued, up to the size limit.
        q.submit(3).unwrap();
        let b = BatchConfig {
            max_batch: 2,
            max_wait_ms: 0,
        };
        assert_eq!(inbox.batch(9, &b, |_| 1), vec![9, 2]);
        assert_eq!(q.depth.load(Ordering::SeqCst), 1);
    }
}
