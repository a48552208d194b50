//! Raw requests (JSON or multipart) → checked values. Every refusal names the field and,
//! for limits, the config field that sets it.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use vitrine_data::image_io::decode_image;
use vitrine_data::transform::{to_pixels, Augment, Preprocess};
use vitrine_index::Filter;
use vitrine_infer::caption::DecodeOverrides;
use vitrine_infer::copy::{GenerateOutput, GenerateParams};

use crate::config::ServeLimits;
use crate::engine::Query;
use crate::error::ApiError;

/// `POST /v1/search` as JSON: `image`, `id` or `text`, or `text` with one of the others
/// (a mixed query: "this photo, but in red").
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SearchRequest {
    /// The query photo, base64 (standard alphabet) of the encoded file.
    pub image: Option<String>,
    /// Search with a catalogue item's own embedding.
    pub id: Option<String>,
    /// Words (an index built with a text model, or a CLIP model).
    pub text: Option<String>,
    /// With `text` and `image` (or `id`): the text's share of the score, in [0, 1]
    /// (default 0.5): score = (1 - w) · image similarity + w · text similarity.
    pub text_weight: Option<f32>,
    /// Results wanted (default 10, at most `limits.max_k`).
    pub k: Option<usize>,
    /// Metadata filters: column → value, or column → [values] (any of them).
    #[schema(value_type = Object)]
    pub filters: BTreeMap<String, FilterValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FilterValue {
    One(String),
    Any(Vec<String>),
}

/// `POST /v1/catalog/items` as JSON.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AddItemRequest {
    pub id: String,
    /// The product photo, base64 of the encoded file.
    pub image: String,
    pub title: Option<String>,
    /// Metadata (filterable columns).
    pub attrs: BTreeMap<String, String>,
}

/// `POST /v1/generate`: the parameters of `vitrine generate`, plus `stream` (the schema of
/// the body; [`generate_request`] reads it).
#[derive(Debug, Clone, Default)]
pub struct GenerateBody {
    pub params: GenerateParams,
    /// Stream tokens and candidates as server-sent events.
    pub stream: bool,
}

/// `POST /v1/caption` as JSON (the schema of the body; [`caption_request`] reads it).
#[derive(Debug, Default)]
pub struct CaptionRequest {
    /// Photos, base64 of the encoded files (at most `limits.max_images`).
    pub images: Vec<String>,
    pub decode: DecodeOverrides,
}

/// The schema of a body made of a shared parameters type `T` and the server's own fields,
/// as one flat object (utoipa would document `#[serde(flatten)]` as `allOf`).
fn flat_schema<T: PartialSchema>(own: [(&str, Schema); 1]) -> RefOr<Schema> {
    let mut object = match T::schema() {
        RefOr::T(Schema::Object(o)) => o,
        other => return other,
    };
    for (name, schema) in own {
        object.properties.insert(name.into(), schema.into());
    }
    RefOr::T(Schema::Object(object))
}

impl PartialSchema for GenerateBody {
    fn schema() -> RefOr<Schema> {
        flat_schema::<GenerateParams>([(
            "stream",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some("Stream tokens and candidates as server-sent events."))
                .into(),
        )])
    }
}

impl ToSchema for GenerateBody {}

impl PartialSchema for CaptionRequest {
    fn schema() -> RefOr<Schema> {
        flat_schema::<DecodeOverrides>([(
            "images",
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(
                    "Photos, base64 of the encoded files (at most `limits.max_images`).",
                ))
                .into(),
        )])
    }
}

impl ToSchema for CaptionRequest {}

/// The body of a request that may be JSON or multipart.
pub enum Body {
    Json(Bytes),
    Multipart(Vec<Part>),
}

pub struct Part {
    pub name: String,
    pub data: Bytes,
}

impl Part {
    fn text(&self) -> Result<String, ApiError> {
        String::from_utf8(self.data.to_vec())
            .map_err(|_| ApiError::invalid(&self.name, format!("{}: not UTF-8 text", self.name)))
    }
}

/// Reads the body by content type: JSON, or multipart/form-data where `multipart` is
/// allowed. Over `limits.max_body_bytes` is 413.
pub async fn read_body(req: Request, multipart: bool, limit: usize) -> Result<Body, ApiError> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than limits.max_body_bytes = {limit} bytes"
        ))
    };
    if ct.starts_with("application/json") {
        let bytes = Bytes::from_request(req, &()).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::BadRequest(format!("reading the body: {e}"))
            }
        })?;
        return Ok(Body::Json(bytes));
    }
    if multipart && ct.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(format!("multipart body: {e}")))?;
        let mut parts = Vec::new();
        loop {
            let field = mp
                .next_field()
                .await
                .map_err(|e| multipart_error(e, "multipart body", too_large))?;
            let Some(field) = field else { break };
            let name = field.name().unwrap_or_default().to_string();
            let what = format!("multipart part {name:?}");
            let data = field
                .bytes()
                .await
                .map_err(|e| multipart_error(e, &what, too_large))?;
            parts.push(Part { name, data });
        }
        return Ok(Body::Multipart(parts));
    }
    let accepted = if multipart {
        "application/json or multipart/form-data"
    } else {
        "application/json"
    };
    Err(ApiError::UnsupportedMediaType(format!(
        "content type {:?} is not accepted here: send {accepted}",
        if ct.is_empty() { "(none)" } else { ct.as_str() }
    )))
}

/// Parses JSON: malformed JSON is 400, well-formed JSON of the wrong shape 422 naming the
/// field (its path, e.g. `filters.colour`).
/// A multipart read that failed: too large (413) or malformed (400).
fn multipart_error(
    e: axum::extract::multipart::MultipartError,
    what: &str,
    too_large: impl Fn() -> ApiError,
) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::BadRequest(format!("{what}: {e}"))
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        // Trailing characters after the value are malformed JSON too.
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(json_error(".".to_string(), e)),
        },
        Err(e) => Err(json_error(e.path().to_string(), e.into_inner())),
    }
}

/// A JSON object made of a shared parameters type `P` and the server's own fields (named
/// in `own`, returned as they are): `P` is read on its own, so that a bad value still names
/// its field (serde cannot track the path into a `#[serde(flatten)]` field).
fn parse_json_parts<P: DeserializeOwned>(
    bytes: &[u8],
    own: &[&str],
) -> Result<(P, serde_json::Map<String, serde_json::Value>), ApiError> {
    let mut object: serde_json::Map<String, serde_json::Value> = parse_json(bytes)?;
    let own = own.iter().filter_map(|k| object.remove_entry(*k)).collect();
    let params = serde_path_to_error::deserialize(serde_json::Value::Object(object))
        .map_err(|e| json_error(e.path().to_string(), e.into_inner()))?;
    Ok((params, own))
}

/// One of the server's own fields from [`parse_json_parts`], or its default when absent.
fn own_field<T: DeserializeOwned + Default>(
    own: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<T, ApiError> {
    match own.remove(name) {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v).map_err(|e| json_error(name.to_string(), e)),
    }
}

/// A JSON error as the status it maps to, naming the field at `path`.
fn json_error(path: String, inner: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::BadRequest(format!("invalid JSON: {inner}"))
        }
        Category::Data => {
            let message = inner.to_string();
            // A missing field is named in backquotes; the path ends at its parent.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next());
            let field = match missing {
                Some(f) if path == "." => f.to_string(),
                Some(f) => format!("{path}.{f}"),
                None => path,
            };
            ApiError::Invalid {
                message: format!("{field}: {message}"),
                field: Some(field),
            }
        }
    }
}

fn base64_image(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| ApiError::invalid(field, format!("{field}: not base64 ({e})")))
}

fn parse_usize(p: &Part) -> Result<usize, ApiError> {
    let t = p.text()?;
    t.trim().parse().map_err(|_| {
        ApiError::invalid(
            &p.name,
            format!("{} = {t:?}: expected a whole number", p.name),
        )
    })
}

fn check_k(k: Option<usize>, limits: &ServeLimits) -> Result<usize, ApiError> {
    let k = k.unwrap_or(10.min(limits.max_k));
    if k == 0 || k > limits.max_k {
        return Err(ApiError::invalid(
            "k",
            format!("k = {k}: allowed 1..={} (limits.max_k)", limits.max_k),
        ));
    }
    Ok(k)
}

/// A search request before its image is decoded.
pub struct RawSearch {
    pub image: Option<Vec<u8>>,
    pub id: Option<String>,
    pub text: Option<String>,
    pub text_weight: f32,
    pub k: usize,
    pub filter: Filter,
}

pub fn search_request(body: Body, limits: &ServeLimits) -> Result<RawSearch, ApiError> {
    let (image, id, text, text_weight, k, filters) = match body {
        Body::Json(bytes) => {
            let r: SearchRequest = parse_json(&bytes)?;
            let image = r.image.map(|t| base64_image("image", &t)).transpose()?;
            (image, r.id, r.text, r.text_weight, r.k, r.filters)
        }
        Body::Multipart(parts) => {
            let (mut image, mut id, mut text, mut k) = (None, None, None, None);
            let mut text_weight = None;
            let mut filters = BTreeMap::new();
            for p in parts {
                match p.name.as_str() {
                    "image" => image = Some(p.data.to_vec()),
                    "id" => id = Some(p.text()?),
                    "text" => text = Some(p.text()?),
                    "text_weight" => {
                        text_weight = Some(p.text()?.trim().parse::<f32>().map_err(|_| {
                            ApiError::invalid("text_weight", "text_weight: not a number")
                        })?)
                    }
                    "k" => k = Some(parse_usize(&p)?),
                    "filters" => filters = parse_json(p.text()?.as_bytes())?,
                    other => {
                        return Err(ApiError::invalid(
                            other,
                            format!("unknown part {other:?}: expected image, id, text, text_weight, k, filters"),
                        ))
                    }
                }
            }
            (image, id, text, text_weight, k, filters)
        }
    };
    if image.is_some() && id.is_some() {
        return Err(ApiError::invalid(
            "image",
            "give an image or an id, not both (either may come with a text)",
        ));
    }
    if image.is_none() && id.is_none() && text.is_none() {
        return Err(ApiError::invalid(
            "image",
            "give an image, an id or a text (or a text with one of the others)",
        ));
    }
    let text_weight = text_weight.unwrap_or(vitrine_infer::search::DEFAULT_TEXT_WEIGHT);
    if !(0.0..=1.0).contains(&text_weight) {
        return Err(ApiError::invalid(
            "text_weight",
            format!("text_weight = {text_weight}: allowed 0..=1"),
        ));
    }
    if let Some(t) = &text {
        check_text(
            "text",
            t,
            limits.max_prompt_chars,
            "limits.max_prompt_chars",
        )?;
    }
    if let Some(i) = &id {
        check_text("id", i, limits.max_id_chars, "limits.max_id_chars")?;
    }
    let k = check_k(k, limits)?;
    let values = |v: &FilterValue| match v {
        FilterValue::One(_) => 1,
        FilterValue::Any(v) => v.len(),
    };
    let clauses: usize = filters.values().map(values).sum();
    if clauses > limits.max_filters {
        return Err(ApiError::invalid(
            "filters",
            format!(
                "{clauses} filter values: at most {} (limits.max_filters)",
                limits.max_filters
            ),
        ));
    }
    let mut filter = Filter::default();
    for (column, value) in &filters {
        match value {
            FilterValue::One(v) => filter.add(column, v),
            FilterValue::Any(vs) => vs.iter().for_each(|v| filter.add(column, v)),
        }
    }
    Ok(RawSearch {
        image,
        id,
        text,
        text_weight,
        k,
        filter,
    })
}

/// Non-empty, no control characters, at most `max` characters.
fn check_text(field: &str, text: &str, max: usize, limit: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(field, format!("{field} is empty")));
    }
    let chars = text.chars().count();
    if chars > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} has {chars} characters: at most {max} ({limit})"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

impl RawSearch {
    /// The query, with its image decoded within the limits and preprocessed for `p`.
    pub fn into_query(self, p: &Preprocess, limits: &ServeLimits) -> Result<Query, ApiError> {
        Ok(Query {
            pixels: self.image.map(|b| pixels(&b, p, limits)).transpose()?,
            id: self.id,
            text: self.text,
            text_weight: self.text_weight,
        })
    }
}

/// Decodes within the limits and preprocesses (no augmentation) for the model.
pub fn pixels(bytes: &[u8], p: &Preprocess, limits: &ServeLimits) -> Result<Vec<u8>, ApiError> {
    use vitrine_data::DataError;
    // The decoder's messages name its own limits; name the server's config keys instead.
    let img = decode_image(bytes, &limits.decode_limits()).map_err(|e| match e {
        DataError::ImageTooLarge { width, height, .. } => ApiError::invalid(
            "image",
            format!(
                "the image is {width}x{height} pixels: at most {} per side (limits.max_image_side)",
                limits.max_image_side
            ),
        ),
        DataError::TooManyPixels { width, height, .. } => ApiError::invalid(
            "image",
            format!(
                "the image is {width}x{height} pixels: at most {} in all (limits.max_image_pixels)",
                limits.max_image_pixels
            ),
        ),
        DataError::FileTooLarge { bytes, .. } => ApiError::invalid(
            "image",
            format!(
                "the image is {bytes} bytes: at most {} (limits.max_image_bytes)",
                limits.max_image_bytes
            ),
        ),
        other => other.into(),
    })?;
    Ok(to_pixels(&img, p, &Augment::default(), None))
}

/// The file extension of an encoded image (after it decoded fine).
pub fn image_ext(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => "jpg",
        Ok(image::ImageFormat::Gif) => "gif",
        Ok(image::ImageFormat::Bmp) => "bmp",
        Ok(image::ImageFormat::WebP) => "webp",
        _ => "png",
    }
}

pub struct RawItem {
    pub id: String,
    pub image: Vec<u8>,
    pub attrs: BTreeMap<String, String>,
}

pub fn add_item_request(body: Body, limits: &ServeLimits) -> Result<RawItem, ApiError> {
    let r = match body {
        Body::Json(bytes) => {
            let r: AddItemRequest = parse_json(&bytes)?;
            let image = if r.image.is_empty() {
                Vec::new()
            } else {
                base64_image("image", &r.image)?
            };
            let mut attrs = r.attrs;
            if let Some(t) = r.title {
                attrs.insert("title".into(), t);
            }
            RawItem {
                id: r.id,
                image,
                attrs,
            }
        }
        Body::Multipart(parts) => {
            // Every text part other than id and image is a metadata column (HTML forms).
            let mut item = RawItem {
                id: String::new(),
                image: Vec::new(),
                attrs: BTreeMap::new(),
            };
            for p in parts {
                match p.name.as_str() {
                    "image" => item.image = p.data.to_vec(),
                    "id" => item.id = p.text()?,
                    "attrs" => item.attrs.extend(parse_json::<BTreeMap<String, String>>(
                        p.text()?.as_bytes(),
                    )?),
                    _ => {
                        let v = p.text()?;
                        item.attrs.insert(p.name, v);
                    }
                }
            }
            item
        }
    };
    check_text("id", &r.id, limits.max_id_chars, "limits.max_id_chars")?;
    if r.id.trim() != r.id {
        return Err(ApiError::invalid("id", "id has leading or trailing spaces"));
    }
    if r.image.is_empty() {
        return Err(ApiError::invalid("image", "image is missing"));
    }
    if r.attrs.len() > limits.max_attrs {
        return Err(ApiError::invalid(
            "attrs",
            format!(
                "{} metadata fields: at most {} (limits.max_attrs)",
                r.attrs.len(),
                limits.max_attrs
            ),
        ));
    }
    for (k, v) in &r.attrs {
        check_text("attrs", k, limits.max_attr_chars, "limits.max_attr_chars")?;
        if v.chars().count() > limits.max_attr_chars || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "attrs",
                format!(
                    "attrs.{k}: at most {} characters, no control characters (limits.max_attr_chars)",
                    limits.max_attr_chars
                ),
            ));
        }
    }
    Ok(r)
}

/// Checks what the server limits before the run's own validation; `n` and `max_tokens`
/// come back resolved against the server's limits when the request leaves them out.
pub fn generate_request(
    bytes: &[u8],
    limits: &ServeLimits,
) -> Result<(GenerateParams, bool), ApiError> {
    let (mut params, mut own) = parse_json_parts::<GenerateParams>(bytes, &["stream"])?;
    let stream: bool = own_field(&mut own, "stream")?;
    let p = &params;
    let prompt = p.keywords.chars().count() + p.tone.as_deref().map_or(0, |t| t.chars().count());
    if p.keywords.trim().is_empty() {
        return Err(ApiError::invalid("keywords", "keywords is empty"));
    }
    if prompt > limits.max_prompt_chars {
        return Err(ApiError::invalid(
            "keywords",
            format!(
                "keywords and tone have {prompt} characters: at most {} (limits.max_prompt_chars)",
                limits.max_prompt_chars
            ),
        ));
    }
    let n = p.n_within(limits.max_n);
    if n == 0 || n > limits.max_n {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n = {n}: allowed 1..={} (limits.max_n, or the copy run's generate.max_n if lower)",
                limits.max_n
            ),
        ));
    }
    let max_tokens = p.max_tokens.unwrap_or(limits.max_tokens);
    if max_tokens == 0 || max_tokens > limits.max_tokens {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "max_tokens = {max_tokens}: allowed 1..={} (limits.max_tokens, or the copy run's generate.max_new_tokens if lower)",
                limits.max_tokens
            ),
        ));
    }
    // The run's own `max_new_tokens` applies when the request names none.
    params.n = Some(n);
    Ok((params, stream))
}

/// Images (encoded) and decoding overrides of a caption request.
pub fn caption_request(
    body: Body,
    limits: &ServeLimits,
) -> Result<(Vec<Vec<u8>>, DecodeOverrides), ApiError> {
    let (images, o) = match body {
        Body::Json(bytes) => {
            let (decode, mut own) = parse_json_parts::<DecodeOverrides>(&bytes, &["images"])?;
            let images: Vec<String> = own_field(&mut own, "images")?;
            let images = images
                .iter()
                .enumerate()
                .map(|(i, t)| base64_image(&format!("images[{i}]"), t))
                .collect::<Result<Vec<_>, _>>()?;
            (images, decode)
        }
        Body::Multipart(parts) => {
            let mut images = Vec::new();
            let mut o = DecodeOverrides::default();
            for p in parts {
                match p.name.as_str() {
                    "image" | "images" => images.push(p.data.to_vec()),
                    "beam" => o.beam = Some(parse_usize(&p)?),
                    "min_tokens" => o.min_tokens = Some(parse_usize(&p)?),
                    "max_tokens" => o.max_tokens = Some(parse_usize(&p)?),
                    "no_repeat_ngram" => o.no_repeat_ngram = Some(parse_usize(&p)?),
                    "length_penalty" => {
                        let t = p.text()?;
                        o.length_penalty = Some(t.trim().parse().map_err(|_| {
                            ApiError::invalid("length_penalty", format!("length_penalty = {t:?}: expected a number"))
                        })?)
                    }
                    other => {
                        return Err(ApiError::invalid(
                            other,
                            format!("unknown part {other:?}: expected image, beam, length_penalty, min_tokens, max_tokens, no_repeat_ngram"),
                        ))
                    }
                }
            }
            (images, o)
        }
    };
    if images.is_empty() || images.len() > limits.max_images {
        return Err(ApiError::invalid(
            "images",
            format!(
                "{} images: allowed 1..={} (limits.max_images)",
                images.len(),
                limits.max_images
            ),
        ));
    }
    if let Some(t) = o.max_tokens {
        if t > limits.max_tokens {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens = {t}: at most {} (limits.max_tokens)",
                    limits.max_tokens
                ),
            ));
        }
    }
    Ok((images, o))
}

/// `{"error": ...}` and friends are in [`crate::error::ErrorBody`]; these are the answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchHit>,
    pub took_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub rank: usize,
    pub id: String,
    /// Cosine similarity.
    pub score: f32,
    pub title: Option<String>,
    pub attrs: BTreeMap<String, String>,
    /// Where the product image is served (absent when the server has none).
    pub image_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemResponse {
    pub id: String,
    /// Items in the catalogue afterwards.
    pub count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateResponse {
    /// Best first when a scorer is loaded.
    pub candidates: Vec<CandidateOut>,
    pub requested: usize,
    pub sampled: usize,
    /// Rejected samples by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Fewer than `requested` passed within the sampling budget.
    pub budget_exhausted: bool,
    /// Tokens generated over all samples.
    pub tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateOut {
    pub text: String,
    pub keyword_coverage: f64,
    /// Click-through score (with a scorer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

impl From<GenerateOutput> for GenerateResponse {
    fn from(o: GenerateOutput) -> Self {
        Self {
            candidates: o
                .candidates
                .into_iter()
                .map(|c| CandidateOut {
                    text: c.text,
                    keyword_coverage: c.keyword_coverage,
                    score: c.score,
                })
                .collect(),
            requested: o.requested,
            sampled: o.sampled,
            rejected: o.rejected,
            budget_exhausted: o.budget_exhausted,
            tokens: o.tokens,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaptionResponse {
    /// One per image, in request order.
    pub captions: Vec<CaptionOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaptionOut {
    pub index: usize,
    pub caption: Option<String>,
    /// Why this image has no caption (it could not be decoded).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServeLimits {
        ServeLimits {
            max_k: 5,
            max_filters: 2,
            max_n: 3,
            max_tokens: 10,
            max_prompt_chars: 12,
            ..ServeLimits::default()
        }
    }

    fn json(v: serde_json::Value) -> Body {
        Body::Json(Bytes::from(v.to_string()))
    }

    #[test]
    fn search_k_and_filters_at_and_past_their_limits() {
        let l = limits();
        let ok = search_request(json(serde_json::json!({"id": "1", "k": 5})), &l).unwrap();
        assert_eq!(ok.k, 5);
        let e = search_request(json(serde_json::json!({"id": "1", "k": 6})), &l)
            .err()
            .unwrap();
        assert!(e.to_string().contains("limits.max_k"), "{e}");
        let e = search_request(json(serde_json::json!({"id": "1", "k": 0})), &l)
            .err()
            .unwrap();
        assert_eq!(e.body().field.as_deref(), Some("k"));
        let two = serde_json::json!({"id": "1", "filters": {"a": ["x", "y"]}});
        assert!(search_request(json(two), &l).is_ok());
        let three = serde_json::json!({"id": "1", "filters": {"a": ["x", "y"], "b": "z"}});
        let e = search_request(json(three), &l).err().unwrap();
        assert!(e.to_string().contains("limits.max_filters"), "{e}");
    }

    #[test]
    fn search_needs_a_query_and_valid_json() {
        let l = limits();
        let e = search_request(json(serde_json::json!({"k": 1})), &l)
            .err()
            .unwrap();
        assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let both = serde_json::json!({"id": "1", "image": "aGk="});
        let e = search_request(json(both), &l).err().unwrap();
        assert!(e.to_string().contains("not both"), "{e}");
        // A text mixes with an id; its weight defaults, and is checked at and past [0, 1].
        let mixed =
            search_request(json(serde_json::json!({"id": "1", "text": "red"})), &l).unwrap();
        assert_eq!(
            mixed.text_weight,
            vitrine_infer::search::DEFAULT_TEXT_WEIGHT
        );
        for w in [0.0, 1.0] {
            let r = serde_json::json!({"id": "1", "text": "red", "text_weight": w});
            assert_eq!(search_request(json(r), &l).unwrap().text_weight, w);
        }
        for w in [-0.01, 1.01] {
            let r = serde_json::json!({"id": "1", "text": "red", "text_weight": w});
            let e = search_request(json(r), &l).err().unwrap();
            assert_eq!(e.body().field.as_deref(), Some("text_weight"), "{e}");
        }
        let e = search_request(Body::Json(Bytes::from("{\"id\": ")), &l)
            .err()
            .unwrap();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        let e = search_request(json(serde_json::json!({"id": "1", "k": -1})), &l)
            .err()
            .unwrap();
        assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let e = search_request(json(serde_json::json!({"id": "1", "kk": 1})), &l)
            .err()
            .unwrap();
        assert_eq!(e.body().field.as_deref(), Some("kk"), "{e}");
        let e = search_request(json(serde_json::json!({"image": "%%%"})), &l)
            .err()
            .unwrap();
        assert_eq!(e.body().field.as_deref(), Some("image"));
    }

    #[test]
    fn generate_limits_at_and_past() {
        let l = limits();
        let ok = |v: serde_json::Value| generate_request(v.to_string().as_bytes(), &l);
        assert!(
            ok(serde_json::json!({"keywords": "abcdefghijkl", "n": 3, "max_tokens": 10})).is_ok()
        );
        let e = ok(serde_json::json!({"keywords": "abcdefghijklm", "n": 1}))
            .err()
            .unwrap();
        assert!(e.to_string().contains("limits.max_prompt_chars"), "{e}");
        let e = ok(serde_json::json!({"keywords": "a", "n": 4}))
            .err()
            .unwrap();
        assert!(e.to_string().contains("limits.max_n"), "{e}");
        let e = ok(serde_json::json!({"keywords": "a", "n": 1, "max_tokens": 11}))
            .err()
            .unwrap();
        assert_eq!(e.body().field.as_deref(), Some("max_tokens"));
        let e = ok(serde_json::json!({"keywords": "  ", "n": 1}))
            .err()
            .unwrap();
        assert_eq!(e.body().field.as_deref(), Some("keywords"));
        let e = ok(serde_json::json!({"keywords": "a", "n": 1e30}))
            .err()
            .unwrap();
        assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let (req, stream) =
            ok(serde_json::json!({"keywords": "a", "n": 1, "stream": true})).unwrap();
        assert!(stream);
        assert_eq!(req.max_tokens, None, "the run's own default applies");
    }

    #[test]
    fn item_ids_and_attrs_are_checked() {
        let l = ServeLimits {
            max_id_chars: 4,
            max_attrs: 1,
            ..limits()
        };
        let item = |v| add_item_request(json(v), &l);
        assert!(item(serde_json::json!({"id": "abcd", "image": "iVBO"})).is_ok());
        assert!(item(serde_json::json!({"id": "abcde", "image": "iVBO"})).is_err());
        assert!(item(serde_json::json!({"id": "", "image": "iVBO"})).is_err());
        assert!(item(serde_json::json!({"id": " a", "image": "iVBO"})).is_err());
        assert!(item(serde_json::json!({"id": "a\u{7}", "image": "iVBO"})).is_err());
        assert!(
            item(serde_json::json!({"id": "a"})).is_err(),
            "image is required"
        );
        let two =
            serde_json::json!({"id": "a", "image": "iVBO", "title": "t", "attrs": {"c": "d"}});
        let e = item(two).err().unwrap();
        assert!(e.to_string().contains("limits.max_attrs"), "{e}");
    }

    #[test]
    fn caption_image_count_at_and_past() {
        let l = ServeLimits {
            max_images: 2,
            ..limits()
        };
        let b64 = "iVBO";
        assert!(caption_request(json(serde_json::json!({"images": [b64, b64]})), &l).is_ok());
        let e = caption_request(json(serde_json::json!({"images": [b64, b64, b64]})), &l)
            .err()
            .unwrap();
        assert!(e.to_string().contains("limits.max_images"), "{e}");
        assert!(caption_request(json(serde_json::json!({"images": []})), &l).is_err());
        let e = caption_request(
            json(serde_json::json!({"images": [b64], "max_tokens": 11})),
            &l,
        )
        .err()
        .unwrap();
        assert_eq!(e.body().field.as_deref(), Some("max_tokens"));
    }
}
