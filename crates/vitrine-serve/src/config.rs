//! `vitrine serve` configuration: a TOML file (every field optional) overridden by flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitrine_data::image_io::DecodeLimits;
use vitrine_index::StoreConfig;

use crate::error::ServeError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the chosen one is printed).
    pub bind: String,
    /// Visual search: an index file (catalogue changes are written back to it), or a search
    /// run directory (its `index.vtridx` is used, built from the run's catalogue if absent).
    pub search: Option<PathBuf>,
    /// Copy generation: a copy run directory.
    pub copy: Option<PathBuf>,
    /// Click-through scorer run that ranks generated candidates (needs `copy`).
    pub scorer: Option<PathBuf>,
    /// Captioning: a caption run directory.
    pub caption: Option<PathBuf>,
    /// File holding the API key (surrounding whitespace ignored). When set, catalogue
    /// writes need it (`Authorization: Bearer KEY` or `X-Api-Key: KEY`).
    pub api_key_file: Option<PathBuf>,
    /// With an API key: every `/v1` route needs it, not only catalogue writes.
    pub require_key_for_reads: bool,
    /// After SIGTERM/SIGINT the server keeps listening this long with `/readyz` at 503 and
    /// new model requests refused, so a load balancer can move traffic away.
    pub shutdown_drain_ms: u64,
    /// Then it stops listening; in-flight requests get this long to finish.
    pub shutdown_grace_ms: u64,
    pub limits: ServeLimits,
    pub batching: BatchConfig,
    /// How catalogue writes reach the index file and the device copy (`[index]`).
    pub index: StoreConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            search: None,
            copy: None,
            scorer: None,
            caption: None,
            api_key_file: None,
            require_key_for_reads: false,
            shutdown_drain_ms: 0,
            shutdown_grace_ms: 30_000,
            limits: ServeLimits::default(),
            batching: BatchConfig::default(),
            index: StoreConfig::default(),
        }
    }
}

/// The largest `limits.max_connections` accepted.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// What one request may ask for and how much the server takes on at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeLimits {
    /// Largest request body (JSON or multipart), bytes; more is refused with 413.
    pub max_body_bytes: usize,
    /// Largest encoded image, bytes.
    pub max_image_bytes: u64,
    /// Largest image width or height, pixels (checked from the header, before decoding).
    pub max_image_side: u32,
    /// Largest width × height.
    pub max_image_pixels: u64,
    /// Most characters of keywords + tone in a generate request.
    pub max_prompt_chars: usize,
    /// Most candidates a generate request may ask for.
    pub max_n: usize,
    /// Most tokens per generated candidate or caption.
    pub max_tokens: usize,
    /// Most results a search may ask for.
    pub max_k: usize,
    /// Most images in one caption request.
    pub max_images: usize,
    /// Most metadata filter clauses in one search.
    pub max_filters: usize,
    /// Longest catalogue item id, characters.
    pub max_id_chars: usize,
    /// Most metadata fields of a new catalogue item.
    pub max_attrs: usize,
    /// Longest metadata name or value, characters.
    pub max_attr_chars: usize,
    /// Model requests (search, catalogue writes, generate, caption) handled at once;
    /// more get 503 with Retry-After.
    pub max_concurrent: usize,
    /// Jobs waiting per model worker; more get 429 with Retry-After. Below
    /// `max_concurrent`, so one slow task cannot take every admitted slot.
    pub max_queue: usize,
    /// A request whose body has not arrived after this long gets 408 (its slot is taken
    /// while the body arrives).
    pub body_timeout_ms: u64,
    /// A request still unanswered after this long gets 503 (a queued job is then dropped, a
    /// running generation stopped; a started forward pass or catalogue write completes).
    pub request_timeout_ms: u64,
    /// Metadata columns with more distinct values than this get no filter dropdown.
    pub max_filter_values: usize,
    /// A connection must deliver a complete request head within this long of connecting
    /// (or of its previous response); otherwise it is closed.
    pub header_timeout_ms: u64,
    /// A keep-alive connection that has not started its next request this long after its
    /// previous response is closed. At most `header_timeout_ms`, which also runs then.
    pub idle_timeout_ms: u64,
    /// Open connections at most. At the cap a new connection replaces the oldest one with
    /// no request in progress; when every one is busy it gets 503 and is closed. Keep it
    /// well under the open-file limit (checked, and raised if allowed, at start).
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_image_bytes: 10 * 1024 * 1024,
            max_image_side: 4096,
            max_image_pixels: 4096 * 4096,
            max_prompt_chars: 500,
            max_n: 16,
            max_tokens: 64,
            max_k: 100,
            max_images: 16,
            max_filters: 16,
            max_id_chars: 128,
            max_attrs: 32,
            max_attr_chars: 500,
            max_concurrent: 32,
            max_queue: 16,
            body_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_filter_values: 50,
            header_timeout_ms: 5_000,
            idle_timeout_ms: 5_000,
            max_connections: 512,
        }
    }
}

impl ServeLimits {
    /// The image decoder's limits. The allocation budget allows 8 bytes per pixel (RGBA,
    /// 16 bits per channel), so a decompression bomb stops at the pixel limit.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_width: self.max_image_side,
            max_height: self.max_image_side,
            max_pixels: self.max_image_pixels,
            max_alloc_bytes: self.max_image_pixels.saturating_mul(8).max(1 << 20),
            max_file_bytes: self.max_image_bytes,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Dynamic batching of image embedding and captioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most images embedded or captioned in one forward pass.
    pub max_batch: usize,
    /// How long the first job of a batch waits for company.
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_wait_ms: 5,
        }
    }
}

impl ServeConfig {
    /// Reads a config file (every field optional).
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<(), ServeError> {
        if self.search.is_none() && self.copy.is_none() && self.caption.is_none() {
            return Err(ServeError::Config(
                "nothing to serve: give at least one of --search, --copy, --caption".into(),
            ));
        }
        if self.scorer.is_some() && self.copy.is_none() {
            return Err(ServeError::Config(
                "--scorer ranks generated copy: it needs --copy".into(),
            ));
        }
        let l = &self.limits;
        let counts = [
            ("limits.max_body_bytes", l.max_body_bytes as u64),
            ("limits.max_image_bytes", l.max_image_bytes),
            ("limits.max_image_side", u64::from(l.max_image_side)),
            ("limits.max_image_pixels", l.max_image_pixels),
            ("limits.max_prompt_chars", l.max_prompt_chars as u64),
            ("limits.max_n", l.max_n as u64),
            ("limits.max_tokens", l.max_tokens as u64),
            ("limits.max_k", l.max_k as u64),
            ("limits.max_images", l.max_images as u64),
            ("limits.max_id_chars", l.max_id_chars as u64),
            ("limits.max_attr_chars", l.max_attr_chars as u64),
            ("limits.max_concurrent", l.max_concurrent as u64),
            ("limits.max_queue", l.max_queue as u64),
            ("limits.body_timeout_ms", l.body_timeout_ms),
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.header_timeout_ms", l.header_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.max_connections", l.max_connections as u64),
            ("batching.max_batch", self.batching.max_batch as u64),
        ];
        for (name, v) in counts {
            if v == 0 {
                return Err(ServeError::Config(format!(
                    "{name} = 0: it must be at least 1"
                )));
            }
        }
        let ceilings = [
            // tokio's semaphore holds at most usize::MAX >> 3 permits.
            ("limits.max_concurrent", l.max_concurrent, 1 << 20),
            // Past this the descriptor table, not the cap, is what stops new connections.
            ("limits.max_connections", l.max_connections, MAX_CONNECTIONS),
        ];
        for (name, v, max) in ceilings {
            if v > max {
                return Err(ServeError::Config(format!("{name} = {v}: at most {max}")));
            }
        }
        if l.idle_timeout_ms > l.header_timeout_ms {
            return Err(ServeError::Config(format!(
                "limits.idle_timeout_ms = {} is longer than limits.header_timeout_ms = {}: the \
                 head timeout also runs between requests, so it would close idle connections first",
                l.idle_timeout_ms, l.header_timeout_ms
            )));
        }
        self.index
            .validate()
            .map_err(|e| ServeError::Config(format!("index.{e}")))?;
        self.bind.parse::<std::net::SocketAddr>().map_err(|e| {
            ServeError::Config(format!("bind = {:?}: {e} (expected IP:PORT)", self.bind))
        })?;
        Ok(())
    }

    /// The API key, read from `api_key_file` (None when no file is configured).
    pub fn api_key(&self) -> Result<Option<String>, ServeError> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let key = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("api key file {}: {e}", path.display())))?;
        let key = key.trim().to_string();
        if key.len() < 16 {
            return Err(ServeError::Config(format!(
                "api key file {}: the key has {} characters; use at least 16",
                path.display(),
                key.len()
            )));
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> ServeConfig {
        ServeConfig {
            copy: Some("runs/copy".into()),
            ..ServeConfig::default()
        }
    }

    #[test]
    fn zero_limits_and_bad_bind_are_refused() {
        assert!(served().validate().is_ok());
        assert!(
            ServeConfig::default().validate().is_err(),
            "nothing to serve"
        );
        let mut c = served();
        c.limits.max_queue = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("limits.max_queue"), "{e}");
        let mut c = served();
        c.bind = "localhost".into();
        assert!(c.validate().unwrap_err().to_string().contains("bind"));
        let c = ServeConfig {
            scorer: Some("s".into()),
            caption: Some("c".into()),
            ..ServeConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("--copy"));
    }

    #[test]
    fn connection_limits_at_and_past_their_bounds() {
        let mut c = served();
        c.limits.idle_timeout_ms = c.limits.header_timeout_ms;
        assert!(c.validate().is_ok());
        c.limits.idle_timeout_ms += 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("limits.idle_timeout_ms"), "{e}");
        let mut c = served();
        c.limits.max_connections = MAX_CONNECTIONS;
        assert!(c.validate().is_ok());
        c.limits.max_connections += 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_connections"));
        for field in ["header_timeout_ms", "idle_timeout_ms", "max_connections"] {
            let c: ServeConfig =
                toml::from_str(&format!("copy = \"r\"\n[limits]\n{field} = 0\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn file_fields_are_optional_and_unknown_ones_refused() {
        let c: ServeConfig = toml::from_str("copy = \"r\"\n[limits]\nmax_k = 7\n").unwrap();
        assert_eq!(c.limits.max_k, 7);
        assert_eq!(c.limits.max_n, ServeLimits::default().max_n);
        assert!(toml::from_str::<ServeConfig>("[limits]\nmax_kk = 7\n").is_err());
    }

    #[test]
    fn the_shipped_config_states_the_defaults() {
        let shipped: ServeConfig =
            toml::from_str(include_str!("../../../configs/serve.toml")).unwrap();
        assert_eq!(shipped, ServeConfig::default());
    }

    #[test]
    fn short_api_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").unwrap();
        let c = ServeConfig {
            api_key_file: Some(path.clone()),
            ..served()
        };
        assert!(c.api_key().is_err());
        std::fs::write(&path, "  0123456789abcdef\n").unwrap();
        assert_eq!(c.api_key().unwrap().as_deref(), Some("0123456789abcdef"));
    }
}
