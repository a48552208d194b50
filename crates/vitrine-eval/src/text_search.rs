//! `vitrine eval text-search`: text and mixed (image + text) queries on an index built with
//! a text model, against a BM25 baseline over the same texts.
//!
//! - **Attribute queries**: one query per distinct combination of `attrs` values, its text
//!   the values joined by spaces ("Men Blue Tshirts"); relevant = the items with exactly
//!   those values. Ranked by BM25 over each item's embedded text (its text column) and by
//!   the index's text model.
//! - **Mixed queries** ("this photo, but in red", when the index has image embeddings too):
//!   the query is an item's stored image embedding plus the text of another value of
//!   `hybrid_attr` (the commonest one among items that share the item's other attributes);
//!   relevant = items with the item's other attributes and that value; the item itself is
//!   left out. Ranked by the image alone, the text alone, and both at each text weight.
//!
//! Relevance comes from catalogue metadata, so a title that names a colour the metadata
//! does not (or the reverse) counts against every method alike.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_index::{Index, Layout, TextQuery};
use vitrine_infer::search::TextSide;
use vitrine_infer::{InferError, Result};

use crate::bm25::Bm25;
use crate::retrieval::{Accumulator, RetrievalMetrics};

/// Recall@K cut-offs reported.
const KS: [usize; 3] = [1, 5, 10];

#[derive(Debug, Clone)]
pub struct TextSearchOptions {
    /// Metadata columns whose values make a query.
    pub attrs: Vec<String>,
    /// The column a mixed query changes (one of `attrs`); None: no mixed queries.
    pub hybrid_attr: Option<String>,
    /// Text weights of the mixed queries.
    pub text_weights: Vec<f32>,
    /// At most this many mixed queries (items taken evenly through the index).
    pub max_hybrid_queries: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodMetrics {
    pub method: String,
    pub metrics: RetrievalMetrics,
}

#[derive(Debug, Clone, Serialize)]
pub struct HybridReport {
    pub attr: String,
    pub methods: Vec<MethodMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextSearchReport {
    pub index: String,
    pub text_model: String,
    pub text_column: String,
    pub items: usize,
    pub attrs: Vec<String>,
    /// Items lacking one of `attrs` (not queried, still ranked).
    pub items_without_attrs: usize,
    pub attribute_queries: Vec<MethodMetrics>,
    pub hybrid: Option<HybridReport>,
    pub secs: f64,
}

impl TextSearchReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} items; text model {} over `{}`\n",
            self.items, self.text_model, self.text_column
        );
        let rows = |s: &mut String, title: String, methods: &[MethodMetrics]| {
            s.push_str(&format!("{title}\n| method | queries | R@1 | R@5 | R@10 | mAP@R |\n|---|---|---|---|---|---|\n"));
            for m in methods {
                let r = |k| m.metrics.recall_at(k).unwrap_or(f64::NAN);
                s.push_str(&format!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
                    m.method,
                    m.metrics.queries - m.metrics.queries_without_relevant,
                    r(1),
                    r(5),
                    r(10),
                    m.metrics.map_at_r
                ));
            }
        };
        rows(
            &mut s,
            format!(
                "attribute queries \"{}\" (relevant = same values)",
                self.attrs
                    .iter()
                    .map(|a| format!("<{a}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            &self.attribute_queries,
        );
        if let Some(h) = &self.hybrid {
            rows(
                &mut s,
                format!(
                    "mixed queries: an item's photo + another <{}> (relevant = its other attributes with that value)",
                    h.attr
                ),
                &h.methods,
            );
        }
        s
    }
}

/// Where the report is saved: beside the index.
pub fn report_path(index: &Path) -> std::path::PathBuf {
    let mut name = index.file_name().unwrap_or_default().to_os_string();
    name.push(".text-eval.json");
    index.with_file_name(name)
}

pub fn eval_text_search<B: Backend>(
    index_path: &Path,
    opts: &TextSearchOptions,
    device: &B::Device,
) -> Result<TextSearchReport> {
    let start = Instant::now();
    if opts.attrs.is_empty() {
        return Err(InferError::Invalid(
            "name the query attributes (--attrs)".into(),
        ));
    }
    if let Some(h) = &opts.hybrid_attr {
        if !opts.attrs.contains(h) {
            return Err(InferError::Invalid(format!(
                "--hybrid-attr {h} must be one of --attrs"
            )));
        }
    }
    if let Some(w) = opts.text_weights.iter().find(|w| !(0.0..=1.0).contains(*w)) {
        return Err(InferError::Invalid(format!(
            "text weight {w} is outside [0, 1]"
        )));
    }
    if opts.max_hybrid_queries == 0 {
        return Err(InferError::Invalid(
            "max_hybrid_queries = 0: at least 1 (or skip the mixed queries)".into(),
        ));
    }
    let index = Index::load(index_path)?;
    if index.is_empty() {
        return Err(vitrine_index::IndexError::Empty.into());
    }
    let text = TextSide::<B>::for_index(&index, device)?.ok_or_else(|| {
        InferError::Invalid(format!(
            "{} has no text embeddings: build it with --text-model and --text-column",
            index_path.display()
        ))
    })?;
    for a in &opts.attrs {
        if !index.columns.contains(a) {
            return Err(InferError::Invalid(format!(
                "the index has no column {a:?}; its columns are {}",
                index.columns.join(", ")
            )));
        }
    }
    let layout = Layout::of(&index);
    let n = index.len();
    let rows = index.embeddings();
    let dot_all = |q: &[f32]| -> Vec<f32> {
        rows.chunks_exact(index.dim)
            .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect()
    };

    // Each item's attribute values (None: one is missing or empty).
    let values: Vec<Option<Vec<&str>>> = index
        .items()
        .iter()
        .map(|it| {
            opts.attrs
                .iter()
                .map(|a| it.attrs.get(a).map(|v| v.trim()).filter(|v| !v.is_empty()))
                .collect()
        })
        .collect();
    let mut groups: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
    for (row, v) in values.iter().enumerate() {
        if let Some(v) = v {
            groups.entry(v.clone()).or_default().push(row);
        }
    }
    let label: Vec<Option<usize>> = {
        let ids: HashMap<&Vec<&str>, usize> =
            groups.keys().enumerate().map(|(i, k)| (k, i)).collect();
        values.iter().map(|v| v.as_ref().map(|v| ids[v])).collect()
    };

    // Attribute queries.
    let docs: Vec<String> = index
        .items()
        .iter()
        .map(|it| text.item_text(it).map(str::to_string).unwrap_or_default())
        .collect();
    let bm25 = Bm25::new(&docs);
    let queries: Vec<String> = groups.keys().map(|k| k.join(" ")).collect();
    let embedded = text.embed(&queries)?;
    let mut lexical = Accumulator::new(&KS);
    let mut dense = Accumulator::new(&KS);
    for (gi, (q, members)) in queries.iter().zip(groups.values()).enumerate() {
        let relevant = |row: usize| label[row] == Some(gi);
        lexical.add(&bm25.scores(q), relevant, members.len(), None);
        let tq = &embedded[gi * layout.text..(gi + 1) * layout.text];
        let qv = layout.query(None, Some(TextQuery::TextSpace(tq)), 1.0)?;
        dense.add(&dot_all(&qv), relevant, members.len(), None);
    }
    let model_name = Path::new(&text.space.model)
        .file_name()
        .map_or(text.space.model.clone(), |f| {
            f.to_string_lossy().to_string()
        });
    let attribute_queries = vec![
        MethodMetrics {
            method: format!("BM25 over {}", text.space.column),
            metrics: lexical.finish(queries.len(), n),
        },
        MethodMetrics {
            method: model_name.clone(),
            metrics: dense.finish(queries.len(), n),
        },
    ];

    let hybrid = match (&opts.hybrid_attr, layout.image > 0) {
        (Some(attr), true) => Some(hybrid_eval(
            &index,
            &layout,
            &text,
            opts,
            attr,
            &values,
            &groups,
            &label,
            &dot_all,
            &model_name,
        )?),
        _ => None,
    };

    Ok(TextSearchReport {
        index: index_path.display().to_string(),
        text_model: text.space.model.clone(),
        text_column: text.space.column.clone(),
        items: n,
        attrs: opts.attrs.clone(),
        items_without_attrs: values.iter().filter(|v| v.is_none()).count(),
        attribute_queries,
        hybrid,
        secs: start.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn hybrid_eval<B: Backend>(
    index: &Index,
    layout: &Layout,
    text: &TextSide<B>,
    opts: &TextSearchOptions,
    attr: &str,
    values: &[Option<Vec<&str>>],
    groups: &BTreeMap<Vec<&str>, Vec<usize>>,
    label: &[Option<usize>],
    dot_all: &dyn Fn(&[f32]) -> Vec<f32>,
    model_name: &str,
) -> Result<HybridReport> {
    let ai = opts.attrs.iter().position(|a| a == attr).expect("checked");
    let group_id: HashMap<&Vec<&str>, usize> =
        groups.keys().enumerate().map(|(i, k)| (k, i)).collect();
    // Per "the other attributes": the values of `attr` with their counts.
    let mut variants: HashMap<Vec<&str>, BTreeMap<&str, usize>> = HashMap::new();
    for v in values.iter().flatten() {
        let mut rest = v.clone();
        let x = rest.remove(ai);
        *variants.entry(rest).or_default().entry(x).or_default() += 1;
    }
    // (query row, target group, target text).
    let mut cases: Vec<(usize, usize, String)> = Vec::new();
    for (row, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        let mut rest = v.clone();
        let own = rest.remove(ai);
        let best = variants[&rest]
            .iter()
            .filter(|(x, _)| **x != own)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        if let Some((x, _)) = best {
            let mut target = v.clone();
            target[ai] = x;
            cases.push((row, group_id[&target], x.to_string()));
        }
    }
    if cases.len() > opts.max_hybrid_queries {
        let step = cases.len() as f64 / opts.max_hybrid_queries as f64;
        cases = (0..opts.max_hybrid_queries)
            .map(|i| cases[(i as f64 * step) as usize].clone())
            .collect();
    }
    let mut words: Vec<String> = cases.iter().map(|c| c.2.clone()).collect();
    words.sort();
    words.dedup();
    let embedded = text.embed(&words)?;
    let word_emb = |w: &str| {
        let i = words
            .binary_search_by(|x| x.as_str().cmp(w))
            .expect("embedded");
        &embedded[i * layout.text..(i + 1) * layout.text]
    };
    let sizes: Vec<usize> = groups.values().map(Vec::len).collect();
    let mut names = vec![
        "photo alone".to_string(),
        format!("<{attr}> text alone ({model_name})"),
    ];
    let mut accs = vec![Accumulator::new(&KS), Accumulator::new(&KS)];
    for w in &opts.text_weights {
        names.push(format!("photo + text, text weight {w}"));
        accs.push(Accumulator::new(&KS));
    }
    for (row, target, word) in &cases {
        let image = layout
            .image_part(index.embedding(*row).expect("a row"))
            .expect("the index has image embeddings");
        let t = TextQuery::TextSpace(word_emb(word));
        let r = sizes[*target];
        let relevant = |g: usize| label[g] == Some(*target);
        let mut qs = vec![
            layout.query(Some(&image), None, 0.0)?,
            layout.query(None, Some(t), 1.0)?,
        ];
        for &w in &opts.text_weights {
            qs.push(layout.query(Some(&image), Some(t), w)?);
        }
        for (acc, q) in accs.iter_mut().zip(&qs) {
            acc.add(&dot_all(q), relevant, r, Some(*row));
        }
    }
    let n = index.len();
    Ok(HybridReport {
        attr: attr.to_string(),
        methods: names
            .into_iter()
            .zip(accs)
            .map(|(method, acc)| MethodMetrics {
                method,
                metrics: acc.finish(cases.len(), n),
            })
            .collect(),
    })
}
