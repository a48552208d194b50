//! Okapi BM25 over short documents (product titles): the lexical baseline text search is
//! measured against. Lucene's formula: idf = ln(1 + (N - n + 0.5) / (n + 0.5)),
//! tf part = f (k1 + 1) / (f + k1 (1 - b + b |d| / avgdl)). Words are lower-cased runs of
//! letters and digits; no stemming and no stop words.

use std::collections::HashMap;

pub struct Bm25 {
    k1: f32,
    b: f32,
    /// Per document: term -> count.
    docs: Vec<HashMap<String, u32>>,
    lengths: Vec<f32>,
    avg_len: f32,
    /// Term -> documents holding it.
    df: HashMap<String, u32>,
}

/// Lower-cased runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Bm25 {
    /// With the usual parameters, k1 = 1.2 and b = 0.75.
    pub fn new<S: AsRef<str>>(docs: &[S]) -> Self {
        Self::with_params(docs, 1.2, 0.75)
    }

    pub fn with_params<S: AsRef<str>>(docs: &[S], k1: f32, b: f32) -> Self {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut counts = Vec::with_capacity(docs.len());
        let mut lengths = Vec::with_capacity(docs.len());
        for d in docs {
            let ws = words(d.as_ref());
            lengths.push(ws.len() as f32);
            let mut tf: HashMap<String, u32> = HashMap::new();
            for w in ws {
                *tf.entry(w).or_default() += 1;
            }
            for w in tf.keys() {
                *df.entry(w.clone()).or_default() += 1;
            }
            counts.push(tf);
        }
        let avg_len = lengths.iter().sum::<f32>() / lengths.len().max(1) as f32;
        Self {
            k1,
            b,
            docs: counts,
            lengths,
            avg_len: avg_len.max(f32::MIN_POSITIVE),
            df,
        }
    }

    /// The query's score against every document (0 where no query word occurs).
    pub fn scores(&self, query: &str) -> Vec<f32> {
        let n = self.docs.len() as f32;
        let mut out = vec![0.0f32; self.docs.len()];
        for w in words(query) {
            let Some(&df) = self.df.get(&w) else {
                continue;
            };
            let idf = (1.0 + (n - df as f32 + 0.5) / (df as f32 + 0.5)).ln();
            for (i, doc) in self.docs.iter().enumerate() {
                if let Some(&f) = doc.get(&w) {
                    let f = f as f32;
                    let norm = 1.0 - self.b + self.b * self.lengths[i] / self.avg_len;
                    out[i] += idf * f * (self.k1 + 1.0) / (f + self.k1 * norm);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: 3 documents, avgdl = 8/3, query "red shirt".
    #[test]
    fn known_scores() {
        let docs = ["Red Shirt", "red red dress", "Blue T-shirt"];
        let bm = Bm25::new(&docs);
        let s = bm.scores("red shirt");
        let (k1, b, avg) = (1.2f32, 0.75f32, 8.0f32 / 3.0);
        // "red" is in 2 documents, "shirt" in 2 ("t-shirt" splits into "t" and "shirt").
        let idf = (1.0f32 + (3.0 - 2.0 + 0.5) / (2.0 + 0.5)).ln();
        let part = |f: f32, len: f32| f * (k1 + 1.0) / (f + k1 * (1.0 - b + b * len / avg));
        let want = [
            idf * part(1.0, 2.0) * 2.0,
            idf * part(2.0, 3.0),
            idf * part(1.0, 3.0),
        ];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{s:?} vs {want:?}");
        }
        assert_eq!(bm.scores("green"), vec![0.0; 3]);
        assert_eq!(words("T-shirt, Men's"), ["t", "shirt", "men", "s"]);
    }
}
