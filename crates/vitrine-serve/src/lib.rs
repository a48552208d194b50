//! `vitrine serve`: one process serving visual search, copy generation and captioning from
//! run directories, on any Burn backend, with a visual-search page at `/`.
//!
//! Request handlers never touch a model: they validate, decode images, and hand checked
//! jobs to the model workers in [`engine`], whose bounded queues and the
//! `limits.max_concurrent` admission gate turn overload into fast 429/503 answers.

pub mod config;
pub mod conn;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod validate;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc as tmpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use utoipa::OpenApi;
use vitrine_data::catalog::ImageRef;

pub use config::{BatchConfig, ServeConfig, ServeLimits};
use engine::{CaptionJob, Engine, GenJob, GenSink, SearchJob, StreamEvent};
pub use error::{ApiError, ErrorBody, ServeError};
use validate::*;

const PAGE: &str = include_str!("../assets/index.html");

struct AppState {
    engine: Engine,
    limits: ServeLimits,
    api_key: Option<String>,
    require_key_for_reads: bool,
    permits: Arc<Semaphore>,
    scorer: bool,
}

type St = State<Arc<AppState>>;

impl AppState {
    /// Admits a model request: ready, and under `limits.max_concurrent`.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let shared = &self.engine.shared;
        if shared.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        // Not `ready()`: while draining, requests are still served.
        if shared.loaded.load(Ordering::SeqCst) < shared.workers {
            return Err(ApiError::Unavailable {
                message: "models are still loading: retry shortly (GET /readyz says when)".into(),
                retry_after: 2,
            });
        }
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable(format!(
                "busy: {} model requests in flight (limits.max_concurrent); retry shortly",
                self.limits.max_concurrent
            ))
        })
    }

    /// What a request may really ask: the tighter of the server's and the copy run's limits.
    fn effective_limits(&self) -> ServeLimits {
        let mut limits = self.limits.clone();
        if let Some(g) = self.engine.shared.generate.get() {
            limits.max_n = limits.max_n.min(g.max_n);
            limits.max_tokens = limits.max_tokens.min(g.max_new_tokens);
        }
        limits
    }

    /// A model request let in: its key checked (`write`: a catalogue write), its task's
    /// queue found, a place under the concurrency limit taken (held by the permit) and its
    /// body read.
    async fn accept<'s, Q>(
        &'s self,
        req: Request,
        write: bool,
        multipart: bool,
        queue: impl FnOnce(&'s Self) -> Result<Q, ApiError>,
    ) -> Result<(Q, OwnedSemaphorePermit, Body), ApiError> {
        self.authorize(req.headers(), write)?;
        let queue = queue(self)?;
        let permit = self.admit()?;
        let body = self.body(req, multipart).await?;
        Ok((queue, permit, body))
    }

    /// The catalogue view (a poisoned lock still holds a consistent view: writers replace it
    /// whole).
    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, engine::CatalogView> {
        let view = &self.engine.shared.catalog;
        view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn search_queue(&self) -> Result<&engine::Queue<SearchJob>, ApiError> {
        served(&self.engine.search, "search and the catalogue", "--search")
    }

    fn generate_queue(&self) -> Result<&engine::Queue<engine::GenJob>, ApiError> {
        served(&self.engine.generate, "generation", "--copy")
    }

    fn caption_queue(&self) -> Result<&engine::Queue<engine::CaptionJob>, ApiError> {
        served(&self.engine.caption, "captioning", "--caption")
    }

    fn search_meta(&self) -> Result<&engine::SearchMeta, ApiError> {
        self.engine
            .shared
            .search
            .get()
            .ok_or_else(|| ApiError::unavailable("the search model is loading"))
    }

    /// Checks the API key where one is configured (`write`: catalogue changes).
    fn authorize(&self, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        if !write && !self.require_key_for_reads {
            return Ok(());
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        match given {
            None => Err(ApiError::Unauthorized(
                "this route needs the API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`".into(),
            )),
            // Constant time in the key's content; only its length can leak.
            Some(g) if bool::from(g.trim().as_bytes().ct_eq(key.as_bytes())) => Ok(()),
            Some(_) => Err(ApiError::Forbidden("wrong API key".into())),
        }
    }

    /// Reads the body within `limits.body_timeout_ms` (a slow upload must not hold its
    /// slot for long).
    async fn body(&self, req: Request, multipart: bool) -> Result<Body, ApiError> {
        tokio::time::timeout(
            Duration::from_millis(self.limits.body_timeout_ms),
            read_body(req, multipart, self.limits.max_body_bytes),
        )
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within limits.body_timeout_ms = {} ms",
                self.limits.body_timeout_ms
            ))
        })?
    }

    /// Waits for a worker's answer within `limits.request_timeout_ms`.
    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, ApiError>>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.limits.request_timeout(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(worker_failed()),
            Err(_) => Err(timed_out(self.limits.request_timeout_ms)),
        }
    }
}

/// The worker dropped the request's channel without answering (it panicked on the batch).
fn worker_failed() -> ApiError {
    ApiError::Internal("the model worker failed on this request (see the server log)".into())
}

fn timed_out(timeout_ms: u64) -> ApiError {
    ApiError::unavailable(format!(
        "no answer within limits.request_timeout_ms = {timeout_ms} ms"
    ))
}

/// The queue of a task, or 404 when the server was not started with it (`flag`).
fn served<'a, J>(
    queue: &'a Option<engine::Queue<J>>,
    task: &str,
    flag: &str,
) -> Result<&'a engine::Queue<J>, ApiError> {
    queue.as_ref().ok_or_else(|| {
        ApiError::NotFound(format!(
            "this server does not serve {task}: start it with {flag}"
        ))
    })
}

/// Runs CPU-bound request work (image decoding) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("image decoding failed: {e}")))?
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Models loaded, accepting requests"),
    (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
async fn readyz(State(s): St) -> Response {
    let shared = &s.engine.shared;
    if shared.ready() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else if shared.shutting_down.load(Ordering::SeqCst) || shared.draining.load(Ordering::SeqCst)
    {
        ApiError::unavailable("shutting down").into_response()
    } else {
        ApiError::unavailable(format!(
            "loading: {} of {} model workers ready",
            shared.loaded.load(Ordering::SeqCst),
            shared.workers
        ))
        .into_response()
    }
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): St) -> Response {
    let in_flight = s.limits.max_concurrent - s.permits.available_permits();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.engine.shared.metrics.render(in_flight),
    )
        .into_response()
}

#[derive(Serialize, utoipa::ToSchema)]
struct Info {
    tasks: Tasks,
    /// Null when search is not served.
    catalog: Option<CatalogInfo>,
    /// The server's limits; `max_n` and `max_tokens` lowered to the copy run's own.
    #[schema(value_type = Object)]
    limits: ServeLimits,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Tasks {
    search: bool,
    /// Text queries work (a CLIP model).
    text_search: bool,
    generate: bool,
    scorer: bool,
    caption: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CatalogInfo {
    count: usize,
    /// Filterable metadata columns and their values.
    columns: std::collections::BTreeMap<String, Vec<String>>,
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = Info)))]
async fn info(State(s): St, headers: HeaderMap) -> Result<Json<Info>, ApiError> {
    s.authorize(&headers, false)?;
    let e = &s.engine;
    let catalog = e.search.as_ref().map(|_| {
        let v = s.catalog();
        CatalogInfo {
            count: v.count,
            columns: v.columns.clone(),
        }
    });
    let limits = s.effective_limits();
    Ok(Json(Info {
        tasks: Tasks {
            search: e.search.is_some(),
            text_search: e.shared.search.get().is_some_and(|m| m.text_queries),
            generate: e.generate.is_some(),
            scorer: s.scorer,
            caption: e.caption.is_some(),
        },
        catalog,
        limits,
    }))
}

#[utoipa::path(post, path = "/v1/search",
    request_body(content = SearchRequest, description = "JSON, or multipart/form-data with parts image (file), id, text, k, filters (JSON text)"),
    responses((status = 200, body = SearchResponse), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn search(State(s): St, req: Request) -> Result<Json<SearchResponse>, ApiError> {
    let t = Instant::now();
    let (queue, _permit, body) = s.accept(req, false, true, AppState::search_queue).await?;
    let raw = search_request(body, &s.limits)?;
    let meta = s.search_meta()?;
    if raw.text.is_some() && !meta.text_queries {
        return Err(ApiError::invalid(
            "text",
            "text queries need an index built with a text model (index build --text-model) or a CLIP model; this catalogue's encoder reads images only",
        ));
    }
    let (k, filter) = (raw.k, raw.filter.clone());
    let (p, limits) = (meta.preprocess.clone(), s.limits.clone());
    let query = blocking(move || raw.into_query(&p, &limits)).await?;
    let (tx, rx) = oneshot::channel();
    queue.submit(SearchJob::Query {
        query,
        k,
        filter,
        reply: tx,
    })?;
    let hits = s.wait(rx).await?;
    let view = s.catalog();
    let results = hits
        .into_iter()
        .map(|h| SearchHit {
            image_url: view.images.contains_key(&h.id).then(|| image_url(&h.id)),
            rank: h.rank,
            id: h.id,
            score: h.score,
            title: h.title,
            attrs: h.attrs,
        })
        .collect();
    Ok(Json(SearchResponse {
        results,
        took_ms: t.elapsed().as_secs_f64() * 1e3,
    }))
}

/// Percent-encodes an id for a URL path segment.
fn image_url(id: &str) -> String {
    let mut out = String::from("/v1/catalog/items/");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("/image");
    out
}

#[utoipa::path(post, path = "/v1/catalog/items",
    request_body(content = AddItemRequest, description = "JSON, or multipart/form-data with parts id, image (file), attrs (JSON text) and any other text parts as metadata"),
    responses((status = 201, body = ItemResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn add_item(
    State(s): St,
    req: Request,
) -> Result<(StatusCode, Json<ItemResponse>), ApiError> {
    let (queue, _permit, body) = s.accept(req, true, true, AppState::search_queue).await?;
    let item = add_item_request(body, &s.limits)?;
    let meta = s.search_meta()?;
    let (p, limits) = (meta.preprocess.clone(), s.limits.clone());
    let (item, pixels) = blocking(move || {
        let px = pixels(&item.image, &p, &limits)?;
        Ok((item, px))
    })
    .await?;
    let (tx, rx) = oneshot::channel();
    let id = item.id.clone();
    queue.submit(SearchJob::Add {
        id: item.id,
        attrs: item.attrs,
        pixels,
        ext: image_ext(&item.image),
        image: item.image,
        reply: tx,
    })?;
    let count = s.wait(rx).await?;
    Ok((StatusCode::CREATED, Json(ItemResponse { id, count })))
}

#[utoipa::path(delete, path = "/v1/catalog/items/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ItemResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn delete_item(
    State(s): St,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Json<ItemResponse>, ApiError> {
    s.authorize(&headers, true)?;
    let queue = s.search_queue()?;
    let _permit = s.admit()?;
    let (tx, rx) = oneshot::channel();
    queue.submit(SearchJob::Delete {
        id: id.clone(),
        reply: tx,
    })?;
    let count = s.wait(rx).await?;
    Ok(Json(ItemResponse { id, count }))
}

#[utoipa::path(get, path = "/v1/catalog/items/{id}/image", params(("id" = String, Path)),
    responses((status = 200, description = "The product image", content_type = "image/*"), (status = 404, body = ErrorBody)))]
async fn item_image(
    State(s): St,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.authorize(&headers, false)?;
    let source = {
        let v = s.catalog();
        v.images.get(&id).cloned()
    };
    let source =
        source.ok_or_else(|| ApiError::NotFound(format!("no image for item id {id:?}")))?;
    let limit = s.limits.max_image_bytes;
    let (bytes, mime) = blocking(move || image_bytes(&source, limit)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// An item's image as served: the file's own bytes, or a PNG of in-memory (idx) pixels.
fn image_bytes(source: &ImageRef, limit: u64) -> Result<(Vec<u8>, &'static str), ApiError> {
    match source {
        ImageRef::File(path) => {
            let size = std::fs::metadata(path)
                .map_err(|e| ApiError::NotFound(format!("the image file cannot be read: {e}")))?
                .len();
            if size > limit {
                return Err(ApiError::NotFound(format!(
                    "the image is over limits.max_image_bytes = {limit}"
                )));
            }
            let bytes = std::fs::read(path)
                .map_err(|e| ApiError::NotFound(format!("the image cannot be read: {e}")))?;
            let mime = match image_ext(&bytes) {
                "jpg" => "image/jpeg",
                "gif" => "image/gif",
                "bmp" => "image/bmp",
                "webp" => "image/webp",
                _ => "image/png",
            };
            Ok((bytes, mime))
        }
        ImageRef::Gray {
            data,
            offset,
            rows,
            cols,
        } => {
            let n = (*rows * *cols) as usize;
            let px = data
                .get(*offset..*offset + n)
                .ok_or_else(|| ApiError::Internal("image data out of range".into()))?;
            let img = image::GrayImage::from_raw(*cols, *rows, px.to_vec())
                .ok_or_else(|| ApiError::Internal("image data out of range".into()))?;
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| ApiError::Internal(format!("encoding PNG: {e}")))?;
            Ok((out.into_inner(), "image/png"))
        }
    }
}

#[utoipa::path(post, path = "/v1/generate", request_body = GenerateBody,
    responses((status = 200, body = GenerateResponse, description = "JSON; with stream: true, text/event-stream of token, candidate, done and error events"),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn generate(State(s): St, req: Request) -> Result<Response, ApiError> {
    let (queue, permit, body) = s
        .accept(req, false, false, AppState::generate_queue)
        .await?;
    let Body::Json(bytes) = body else {
        unreachable!("multipart is not accepted here")
    };
    let (request, stream) = generate_request(&bytes, &s.effective_limits())?;
    if !stream {
        let (tx, rx) = oneshot::channel();
        queue.submit(GenJob {
            request,
            sink: GenSink::Once(tx),
        })?;
        let out = s.wait(rx).await?;
        return Ok(Json(GenerateResponse::from(out)).into_response());
    }
    let (tx, mut rx) = tmpsc::unbounded_channel();
    queue.submit(GenJob {
        request,
        sink: GenSink::Stream(tx),
    })?;
    let deadline = tokio::time::Instant::now() + s.limits.request_timeout();
    let timeout_ms = s.limits.request_timeout_ms;
    // The run validates the request first: a refusal is a plain 422, not a 200 stream.
    match tokio::time::timeout_at(deadline, rx.recv()).await {
        Ok(Some(StreamEvent::Started)) => {}
        Ok(Some(StreamEvent::Error(e))) => return Err(e),
        Ok(_) => return Err(worker_failed()),
        Err(_) => return Err(timed_out(timeout_ms)),
    }
    // The permit lives as long as the stream: a client that disconnects drops both, and
    // the worker sees the closed channel and stops.
    let events = futures_util::stream::unfold(
        (rx, Some(permit), false),
        move |(mut rx, permit, ended)| async move {
            if ended {
                return None;
            }
            let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => StreamEvent::Error(worker_failed()),
                Err(_) => StreamEvent::Error(timed_out(timeout_ms)),
            };
            let (event, end) = sse_event(ev);
            Some((Ok::<_, Infallible>(event), (rx, permit, end)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An SSE event, and whether it ends the stream.
fn sse_event(ev: StreamEvent) -> (Event, bool) {
    let json = |name: &str, v: serde_json::Value| Event::default().event(name).data(v.to_string());
    match ev {
        // Sent once, before the stream starts; never seen here.
        StreamEvent::Started => (Event::default().comment("started"), false),
        StreamEvent::Token { sample, text } => (
            json("token", serde_json::json!({"sample": sample, "text": text})),
            false,
        ),
        StreamEvent::Candidate {
            index,
            sample,
            text,
            keyword_coverage,
        } => (
            json(
                "candidate",
                serde_json::json!({"index": index, "sample": sample, "text": text, "keyword_coverage": keyword_coverage}),
            ),
            false,
        ),
        StreamEvent::Done(out) => {
            let v = serde_json::to_value(GenerateResponse::from(out)).unwrap_or_default();
            (json("done", v), true)
        }
        StreamEvent::Error(e) => (
            json("error", serde_json::to_value(e.body()).unwrap_or_default()),
            true,
        ),
    }
}

#[utoipa::path(post, path = "/v1/caption",
    request_body(content = CaptionRequest, description = "JSON, or multipart/form-data with one or more image parts and the decoding fields"),
    responses((status = 200, body = CaptionResponse), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn caption(State(s): St, req: Request) -> Result<Json<CaptionResponse>, ApiError> {
    let (queue, _permit, body) = s.accept(req, false, true, AppState::caption_queue).await?;
    let (images, overrides) = caption_request(body, &s.limits)?;
    let p = s
        .engine
        .shared
        .caption
        .get()
        .ok_or_else(|| ApiError::unavailable("loading"))?
        .clone();
    let limits = s.limits.clone();
    // Images that do not decode are reported one by one; the rest are captioned.
    let decoded: Vec<Result<Vec<u8>, ApiError>> =
        blocking(move || Ok(images.iter().map(|b| pixels(b, &p, &limits)).collect())).await?;
    let good: Vec<usize> = (0..decoded.len()).filter(|&i| decoded[i].is_ok()).collect();
    if good.is_empty() {
        let reasons: Vec<String> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("image {i}: {e}")))
            .collect();
        return Err(ApiError::invalid("images", reasons.join("; ")));
    }
    let mut pixels_all = Vec::new();
    for r in decoded.iter().flatten() {
        pixels_all.extend_from_slice(r);
    }
    let (tx, rx) = oneshot::channel();
    queue.submit(CaptionJob {
        pixels: pixels_all,
        images: good.len(),
        decode: overrides,
        reply: tx,
    })?;
    let mut captions = s.wait(rx).await?.into_iter();
    let captions = decoded
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            Ok(_) => CaptionOut {
                index,
                caption: captions.next(),
                error: None,
            },
            Err(e) => CaptionOut {
                index,
                caption: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    Ok(Json(CaptionResponse { captions }))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn fallback() -> ApiError {
    ApiError::NotFound("no such route: see /openapi.json".into())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vitrine",
        description = "Visual search, copy generation and captioning"
    ),
    paths(
        healthz,
        readyz,
        metrics,
        info,
        search,
        add_item,
        delete_item,
        item_image,
        generate,
        caption
    ),
    components(schemas(
        ErrorBody,
        SearchRequest,
        SearchResponse,
        SearchHit,
        AddItemRequest,
        ItemResponse,
        GenerateBody,
        GenerateResponse,
        CandidateOut,
        CaptionRequest,
        CaptionResponse,
        CaptionOut,
        Info
    ))
)]
struct ApiDoc;

/// Records every routed request's status and latency (to the response head).
async fn track(State(s): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let t = Instant::now();
    let res = next.run(req).await;
    s.engine
        .shared
        .metrics
        .record_request(&route, res.status().as_u16(), t.elapsed());
    res
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/info", get(info))
        .route("/v1/search", post(search))
        .route("/v1/catalog/items", post(add_item))
        .route("/v1/catalog/items/{id}", axum::routing::delete(delete_item))
        .route("/v1/catalog/items/{id}/image", get(item_image))
        .route("/v1/generate", post(generate))
        .route("/v1/caption", post(caption))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

/// Serves until SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish
/// (for up to `shutdown_grace_ms`) and returns. A model that fails to load is an error.
pub fn serve<B: Backend>(config: ServeConfig, device: B::Device) -> Result<(), ServeError> {
    config.validate()?;
    let api_key = config.api_key()?;
    let addr: SocketAddr = config
        .bind
        .parse()
        .map_err(|e| ServeError::Config(format!("bind: {e}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vitrine-http")
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            ServeError::Config(format!("cannot listen on {addr}: {e}"))
        })?;
        let (loaded_tx, loaded_rx) = tmpsc::unbounded_channel();
        let engine = engine::start::<B>(&config, device, loaded_tx)?;
        let shared = engine.shared.clone();
        let state = Arc::new(AppState {
            engine,
            permits: Arc::new(Semaphore::new(config.limits.max_concurrent)),
            limits: config.limits.clone(),
            api_key,
            require_key_for_reads: config.require_key_for_reads,
            scorer: config.scorer.is_some(),
        });
        let local = listener.local_addr()?;
        // Tests and scripts read this line to find the port.
        // Not println!: a closed stdout must not take the server down.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "vitrine serve: listening on http://{local}");
            let _ = out.flush();
        }
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(None::<String>);
        watch_loading(loaded_rx, shared.workers, stop_tx.clone());
        watch_signals(shared.clone(), Duration::from_millis(config.shutdown_drain_ms), stop_tx.clone());
        if config.search.is_some() && config.api_key_file.is_none() {
            eprintln!("vitrine serve: warning: no --api-key-file: anyone who can reach {local} can change the catalogue");
        }
        let mut graceful_rx = stop_rx.clone();
        let graceful_shared = shared.clone();
        conn::check_descriptor_limit(config.limits.max_connections);
        let server = conn::accept_loop(
            listener,
            router(state),
            &config.limits,
            shared.metrics.connections.clone(),
            async move {
                let _ = graceful_rx.wait_for(|s| s.is_some()).await;
                graceful_shared.shutting_down.store(true, Ordering::SeqCst);
                eprintln!("vitrine serve: closing the listener, finishing in-flight requests");
            },
        );
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        tokio::select! {
            () = server => {}
            _ = async {
                let _ = stop_rx.wait_for(|s| s.is_some()).await;
                tokio::time::sleep(grace).await;
            } => {
                eprintln!("vitrine serve: requests still running after shutdown_grace_ms = {} ms: exiting", config.shutdown_grace_ms);
            }
        }
        let reason = stop_tx.borrow().clone();
        match reason {
            Some(e) if !e.is_empty() => Err(ServeError::Config(e)),
            _ => {
                eprintln!("vitrine serve: stopped");
                Ok(())
            }
        }
    })
}

/// Reports each model as it loads; a model that fails to load stops the server with its
/// error.
fn watch_loading(
    mut loaded: tmpsc::UnboundedReceiver<Result<&'static str, ServeError>>,
    workers: usize,
    stop: tokio::sync::watch::Sender<Option<String>>,
) {
    tokio::spawn(async move {
        let mut ok = 0;
        while let Some(r) = loaded.recv().await {
            match r {
                Ok(task) => {
                    ok += 1;
                    eprintln!("vitrine serve: {task} model loaded");
                    if ok == workers {
                        eprintln!("vitrine serve: ready");
                    }
                }
                Err(e) => {
                    let _ = stop.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
}

/// On SIGTERM/SIGINT: not ready, but still listening and serving for `drain` (load
/// balancers see /readyz turn 503 and move traffic away), then the stop. A second signal
/// exits at once.
fn watch_signals(
    shared: Arc<engine::Shared>,
    drain: Duration,
    stop: tokio::sync::watch::Sender<Option<String>>,
) {
    tokio::spawn(async move {
        shutdown_signal().await;
        shared.draining.store(true, Ordering::SeqCst);
        tokio::spawn(async {
            shutdown_signal().await;
            eprintln!("vitrine serve: second signal: exiting now");
            std::process::exit(130);
        });
        eprintln!(
            "vitrine serve: shutting down: draining for shutdown_drain_ms = {} ms",
            drain.as_millis()
        );
        tokio::time::sleep(drain).await;
        let _ = stop.send(Some(String::new()));
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_escape_ids() {
        assert_eq!(image_url("100"), "/v1/catalog/items/100/image");
        assert_eq!(image_url("a/b c"), "/v1/catalog/items/a%2Fb%20c/image");
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/search",
            "/v1/catalog/items",
            "/v1/catalog/items/{id}",
            "/v1/catalog/items/{id}/image",
            "/v1/generate",
            "/v1/caption",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/info",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(doc["components"]["schemas"]["GenerateBody"]["properties"]["stream"].is_object());
    }
}
