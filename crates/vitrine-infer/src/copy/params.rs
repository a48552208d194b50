//! The parameters of a generation request: one type, with its defaults written once, for
//! `vitrine generate` (flags), `POST /v1/generate` (JSON, plus `stream`) and
//! `vitrine eval copy` (`[eval]`); and the limits a copy run puts on them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vitrine_data::copy::{Brief, Constraints, KeywordCase};

use super::lexicon::{KeywordTrie, LexiconMode};
use crate::error::{InferError, Result};

/// Candidates returned when a request does not say (or the limit, if lower).
pub const DEFAULT_N: usize = 10;

/// What a request asks of the generator. Absent fields take [`DEFAULTS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerateParams {
    /// Comma-separated keywords or phrases the lines should use.
    #[cfg_attr(feature = "clap", arg(long, default_value = ""))]
    pub keywords: String,
    /// Tone, for models trained with a tone column.
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tone: Option<String>,
    /// Candidates to return (default 10, or the run's or server's `max_n` if lower).
    #[cfg_attr(feature = "clap", arg(short))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Longest line, in characters.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULTS.max_chars))]
    pub max_chars: usize,
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = DEFAULTS.temperature, allow_negative_numbers = true)
    )]
    pub temperature: f64,
    /// Sample among the k most likely tokens (>= 1; the vocabulary size or more = no cut).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULTS.top_k))]
    pub top_k: usize,
    /// Nucleus sampling mass, 0 < p <= 1.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = DEFAULTS.top_p, allow_negative_numbers = true)
    )]
    pub top_p: f64,
    /// > 1 discourages tokens the line already used (1 = off).
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = DEFAULTS.repetition_penalty, allow_negative_numbers = true)
    )]
    pub repetition_penalty: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULTS.seed))]
    pub seed: u64,
    /// End a line at this string (repeatable).
    #[cfg_attr(feature = "clap", arg(long))]
    pub stop: Vec<String>,
    /// Words or phrases no candidate may contain (whole words; the CLI reads them from
    /// `--banned-words FILE`).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub banned: Vec<String>,
    /// Refuse lines that repeat a training line.
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_copy: bool,
    /// Logit bonus for keywords not used yet (default: the run's `generate.keyword_boost`).
    #[cfg_attr(feature = "clap", arg(long, allow_negative_numbers = true))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword_boost: Option<f64>,
    /// Tokens generated per candidate at most (default: the run's
    /// `generate.max_new_tokens`).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Write only words of the training corpus, keywords and numbers (`corpus`), or any
    /// (`off`) (default: the run's `generate.lexicon`).
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lexicon: Option<LexiconMode>,
}

/// The defaults of every entry point.
pub const DEFAULTS: GenerateParams = GenerateParams {
    keywords: String::new(),
    tone: None,
    n: None,
    max_chars: 60,
    temperature: 0.8,
    top_k: 50,
    top_p: 0.95,
    repetition_penalty: 1.1,
    seed: 7,
    stop: Vec::new(),
    banned: Vec::new(),
    no_copy: false,
    keyword_boost: None,
    max_tokens: None,
    lexicon: None,
};

impl Default for GenerateParams {
    fn default() -> Self {
        DEFAULTS
    }
}

impl GenerateParams {
    /// The candidates asked for: `n`, or [`DEFAULT_N`] capped at `max_n`.
    pub fn n_within(&self, max_n: usize) -> usize {
        self.n.unwrap_or(DEFAULT_N.min(max_n))
    }
}

/// Every limit of `vitrine generate` (and of the server's generate endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateLimits {
    /// Largest `n` (candidates returned) a request may ask for.
    pub max_n: usize,
    /// Largest `max_chars` a request may ask for.
    pub max_chars: usize,
    /// Most characters of keywords + tone in a brief.
    pub max_brief_chars: usize,
    /// Candidates sampled per batch.
    pub batch_size: usize,
    /// At most this many candidates are sampled per requested one before giving up.
    pub budget_factor: usize,
    /// Tokens generated per candidate at most (also bounded by the context).
    pub max_new_tokens: usize,
    /// Most `--stop` strings.
    pub max_stop: usize,
    /// How user keywords are cased in the prompt (`auto`: decided from the corpus at
    /// training time and saved resolved).
    pub keyword_case: KeywordCase,
    /// Default logit bonus for the first token of a keyword the line has not used yet
    /// (0 = off); once a keyword is started, its remaining tokens are forced.
    pub keyword_boost: f64,
    /// Largest keyword boost a request may ask for.
    pub max_keyword_boost: f64,
    /// Default for requests that do not say: hold lines to the run's lexicon (`corpus`) or
    /// not (`off`).
    pub lexicon: LexiconMode,
    /// More allowed words, one per line (read when the run is loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lexicon_extra: Option<PathBuf>,
}

impl Default for GenerateLimits {
    fn default() -> Self {
        Self {
            max_n: 64,
            max_chars: 1000,
            max_brief_chars: 2000,
            batch_size: 16,
            budget_factor: 8,
            max_new_tokens: 64,
            max_stop: 8,
            keyword_case: KeywordCase::Auto,
            keyword_boost: 8.0,
            max_keyword_boost: 20.0,
            lexicon: LexiconMode::Corpus,
            lexicon_extra: None,
        }
    }
}

impl GenerateLimits {
    /// Checks the limits themselves (`[generate]` of a copy run).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(InferError::Invalid(m));
        let g = self;
        for (name, v, hi) in [
            ("generate.max_n", g.max_n, 10_000),
            ("generate.max_chars", g.max_chars, 100_000),
            ("generate.max_brief_chars", g.max_brief_chars, 1_000_000),
            ("generate.batch_size", g.batch_size, 4096),
            ("generate.budget_factor", g.budget_factor, 1000),
            ("generate.max_new_tokens", g.max_new_tokens, 1 << 16),
        ] {
            if v == 0 || v > hi {
                return bad(format!("{name} = {v} (allowed 1..={hi})"));
            }
        }
        if !(g.max_keyword_boost.is_finite() && g.max_keyword_boost >= 0.0)
            || !(0.0..=g.max_keyword_boost).contains(&g.keyword_boost)
        {
            return bad(format!(
                "generate.keyword_boost = {}, max_keyword_boost = {} (0 <= keyword_boost <= max_keyword_boost, finite)",
                g.keyword_boost, g.max_keyword_boost
            ));
        }
        Ok(())
    }
}

/// Sampling settings of a checked request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
}

/// A request that passed validation against a run ([`crate::copy::check_request`]).
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    pub brief: Brief,
    pub prompt_ids: Vec<u32>,
    pub n: usize,
    pub sampling: Sampling,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    pub constraints: Constraints,
    pub seed: u64,
    /// Per keyword: its tokens inside a line (after a space) and at the line's start.
    pub keyword_tokens: Vec<[Vec<u32>; 2]>,
    pub keyword_boost: f32,
    /// Set when lines are held to the run's lexicon: the keywords' words, also allowed.
    pub lexicon: Option<KeywordTrie>,
}
