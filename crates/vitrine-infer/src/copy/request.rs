//! Validation: a raw [`GenerateParams`] becomes a [`CheckedRequest`] for one copy run, or a
//! one-line error naming the field and its limit.

use std::collections::HashSet;

use burn::tensor::backend::Backend;
use vitrine_data::copy::{Brief, Constraints};

use super::lexicon::{KeywordTrie, LexiconMode};
use super::params::{CheckedRequest, GenerateLimits, GenerateParams, Sampling};
use super::run::LmRun;
use crate::error::{InferError, Result};

fn invalid(
    field: &str,
    value: impl std::fmt::Display,
    allowed: impl std::fmt::Display,
) -> InferError {
    InferError::Invalid(format!("{field} = {value}: allowed {allowed}"))
}

/// Turns a raw request into a checked one; each error names the field and its limit.
pub fn check_request<B: Backend>(
    req: &GenerateParams,
    run: &LmRun<B>,
    limits: &GenerateLimits,
) -> Result<CheckedRequest> {
    if !run.config.is_copy() {
        return Err(InferError::Invalid(format!(
            "{} is a plain language-model run (task \"lm\"); generate needs a copy run (task \"copy\")",
            run.dir.path.display()
        )));
    }
    let sampling = check_sampling(req)?;
    let counts = check_counts(req, limits)?;
    let (brief, prompt_ids, keyword_tokens) = encode_brief(req, run, limits)?;
    let lexicon = match req.lexicon.unwrap_or(limits.lexicon) {
        LexiconMode::Off => None,
        LexiconMode::Corpus => match &run.lexicon_index {
            Ok(_) => Some(KeywordTrie::new(brief.keywords.iter().map(String::as_str))),
            Err(why) => {
                return Err(InferError::Invalid(format!(
                    "lexicon = corpus: {why}; use lexicon = off (generate.lexicon in the run's config.toml, or --lexicon off)"
                )))
            }
        },
    };
    let n_ctx = run.config.model.n_ctx;
    let banned = req
        .banned
        .iter()
        .map(|b| b.trim().to_lowercase())
        .filter(|b| !b.is_empty())
        .collect();
    Ok(CheckedRequest {
        brief,
        max_new_tokens: counts.max_tokens.min(n_ctx - prompt_ids.len()),
        prompt_ids,
        n: counts.n,
        sampling,
        stop: req.stop.clone(),
        constraints: Constraints {
            max_chars: req.max_chars,
            banned,
            no_copy_of: if req.no_copy {
                run.train_lines.clone()
            } else {
                HashSet::new()
            },
        },
        seed: req.seed,
        keyword_tokens,
        keyword_boost: counts.keyword_boost as f32,
        lexicon,
    })
}

/// Temperature, top-k, top-p and repetition penalty, each in its range.
fn check_sampling(req: &GenerateParams) -> Result<Sampling> {
    if !(req.temperature.is_finite() && req.temperature > 0.0) {
        return Err(invalid(
            "temperature",
            req.temperature,
            "a finite number > 0",
        ));
    }
    if req.top_k == 0 {
        return Err(invalid("top_k", req.top_k, "an integer >= 1"));
    }
    if !(req.top_p > 0.0 && req.top_p <= 1.0) {
        return Err(invalid("top_p", req.top_p, "0 < top_p <= 1"));
    }
    if !(req.repetition_penalty.is_finite() && req.repetition_penalty > 0.0) {
        return Err(invalid(
            "repetition_penalty",
            req.repetition_penalty,
            "a finite number > 0 (1 = off)",
        ));
    }
    Ok(Sampling {
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        repetition_penalty: req.repetition_penalty,
    })
}

/// What the run's limits bound: candidates, line length, stops, brief, tokens and boost.
struct Counts {
    n: usize,
    max_tokens: usize,
    keyword_boost: f64,
}

fn check_counts(req: &GenerateParams, limits: &GenerateLimits) -> Result<Counts> {
    let n = req.n_within(limits.max_n);
    if n == 0 || n > limits.max_n {
        return Err(invalid(
            "n",
            n,
            format!("1..={} (generate.max_n)", limits.max_n),
        ));
    }
    if req.max_chars == 0 || req.max_chars > limits.max_chars {
        return Err(invalid(
            "max_chars",
            req.max_chars,
            format!("1..={} (generate.max_chars)", limits.max_chars),
        ));
    }
    let (stop, max_stop) = (&req.stop, limits.max_stop);
    if stop.len() > max_stop || stop.iter().any(|s| s.is_empty()) {
        let allowed = format!("at most {max_stop} non-empty strings (generate.max_stop)");
        return Err(invalid("stop", format!("{stop:?}"), allowed));
    }
    let brief_chars =
        req.keywords.chars().count() + req.tone.as_deref().map_or(0, |t| t.chars().count());
    if brief_chars > limits.max_brief_chars {
        return Err(invalid(
            "keywords",
            format!("{brief_chars} characters"),
            format!(
                "at most {} (generate.max_brief_chars)",
                limits.max_brief_chars
            ),
        ));
    }
    let max_tokens = req.max_tokens.unwrap_or(limits.max_new_tokens);
    if max_tokens == 0 || max_tokens > limits.max_new_tokens {
        return Err(invalid(
            "max_tokens",
            max_tokens,
            format!("1..={} (generate.max_new_tokens)", limits.max_new_tokens),
        ));
    }
    let keyword_boost = req.keyword_boost.unwrap_or(limits.keyword_boost);
    if !(keyword_boost.is_finite() && (0.0..=limits.max_keyword_boost).contains(&keyword_boost)) {
        return Err(invalid(
            "keyword_boost",
            keyword_boost,
            format!(
                "0..={} (generate.max_keyword_boost)",
                limits.max_keyword_boost
            ),
        ));
    }
    Ok(Counts {
        n,
        max_tokens,
        keyword_boost,
    })
}

/// The brief (keywords cased as the corpus is), its prompt's token ids, and each keyword's
/// tokens inside a line (after a space) and at the line's start.
#[allow(clippy::type_complexity)]
fn encode_brief<B: Backend>(
    req: &GenerateParams,
    run: &LmRun<B>,
    limits: &GenerateLimits,
) -> Result<(Brief, Vec<u32>, Vec<[Vec<u32>; 2]>)> {
    let mut brief = Brief::parse(&req.keywords, req.tone.as_deref());
    for k in &mut brief.keywords {
        *k = limits.keyword_case.apply(k);
    }
    if brief.tone.is_some() && !run.config.has_tone() {
        return Err(InferError::Invalid(
            "tone: this model was trained without a tone column (data.train.tone_column), so it cannot follow one; leave out --tone".into(),
        ));
    }
    let prompt_ids = run.tokenizer.encode(&brief.prompt())?;
    let n_ctx = run.config.model.n_ctx;
    if prompt_ids.len() >= n_ctx {
        return Err(invalid(
            "keywords",
            format!("a brief of {} tokens", prompt_ids.len()),
            format!(
                "briefs of at most {} tokens: the model's context is {n_ctx} tokens (model.n_ctx) and the line needs room",
                n_ctx - 1
            ),
        ));
    }
    let keyword_tokens = brief
        .keywords
        .iter()
        .map(|k| {
            Ok([
                run.tokenizer.encode(&format!(" {k}"))?,
                run.tokenizer.encode(k)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((brief, prompt_ids, keyword_tokens))
}
