//! What a row of an index holds: an image embedding, a text embedding (a sentence encoder's,
//! of one metadata column), or both side by side.
//!
//! Both parts are unit vectors. A row holding both is `[image; text] / √2`, itself a unit
//! vector, so exact search, the HNSW graph and filters work on it unchanged. A hybrid query
//! `√2 · [(1 - w) · image; w · text]` then scores an item by
//! `(1 - w) · cos(image) + w · cos(text)`, and a query with one part scores by that part's
//! cosine alone (its other half is zero). CLIP indexes have no text part: their text
//! queries live in the image space and are mixed there with the same weight.

use serde::{Deserialize, Serialize};

use crate::{Index, IndexError, Result};

/// A text embedding per item, stored after the image embedding (if any) in every row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpace {
    /// The sentence encoder (a model folder or `hf:` name) that embeds items and queries.
    pub model: String,
    /// The metadata column embedded, e.g. `productDisplayName`.
    pub column: String,
    /// Its embedding width.
    pub dim: usize,
}

/// A text query's embedding and the space it lives in.
#[derive(Debug, Clone, Copy)]
pub enum TextQuery<'a> {
    /// The index's text part (a sentence encoder's embedding).
    TextSpace(&'a [f32]),
    /// The image space (CLIP's text tower).
    ImageSpace(&'a [f32]),
}

/// Widths of a row's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub image: usize,
    pub text: usize,
}

impl Layout {
    pub fn of(index: &Index) -> Self {
        let text = index.model.text.as_ref().map_or(0, |t| t.dim);
        Self {
            image: index.dim.saturating_sub(text),
            text,
        }
    }

    pub fn dim(&self) -> usize {
        self.image + self.text
    }

    /// √2 when a row holds both parts, so that the row stays a unit vector.
    fn scale(&self) -> f32 {
        if self.image > 0 && self.text > 0 {
            std::f32::consts::SQRT_2
        } else {
            1.0
        }
    }

    /// A row from its unit parts (each present exactly when the layout has it).
    pub fn row(&self, image: Option<&[f32]>, text: Option<&[f32]>) -> Result<Vec<f32>> {
        let s = self.scale();
        let mut row = Vec::with_capacity(self.dim());
        for (part, width, name) in [(image, self.image, "image"), (text, self.text, "text")] {
            match part {
                Some(v) if width > 0 => {
                    check_dim(v, width)?;
                    row.extend(v.iter().map(|x| x / s));
                }
                None if width == 0 => {}
                Some(_) => {
                    return Err(IndexError::Query(format!(
                        "this index holds no {name} embeddings"
                    )))
                }
                None => {
                    return Err(IndexError::Query(format!(
                        "this index needs a {name} embedding for every item"
                    )))
                }
            }
        }
        Ok(row)
    }

    /// The unit image embedding stored in `row` (None: the index has none).
    pub fn image_part(&self, row: &[f32]) -> Option<Vec<f32>> {
        (self.image > 0).then(|| row[..self.image].iter().map(|x| x * self.scale()).collect())
    }

    /// A query vector: an image part, a text part or both, mixed with `text_weight` (in
    /// [0, 1]) when both are given.
    pub fn query(
        &self,
        image: Option<&[f32]>,
        text: Option<TextQuery<'_>>,
        text_weight: f32,
    ) -> Result<Vec<f32>> {
        if !(0.0..=1.0).contains(&text_weight) {
            return Err(IndexError::Query(format!(
                "text weight {text_weight} is outside [0, 1]"
            )));
        }
        let (wi, wt) = match (image.is_some(), text.is_some()) {
            (true, true) => (1.0 - text_weight, text_weight),
            (true, false) | (false, true) => (1.0, 1.0),
            (false, false) => {
                return Err(IndexError::Query("a query needs an image or a text".into()))
            }
        };
        let s = self.scale();
        let mut q = vec![0.0f32; self.dim()];
        let mut add = |from: usize, v: &[f32], width: usize, w: f32, name: &str| {
            if width == 0 {
                return Err(IndexError::Query(format!(
                    "this index holds no {name} embeddings"
                )));
            }
            check_dim(v, width)?;
            for (o, x) in q[from..from + width].iter_mut().zip(v) {
                *o += s * w * x;
            }
            Ok(())
        };
        if let Some(v) = image {
            add(0, v, self.image, wi, "image")?;
        }
        match text {
            Some(TextQuery::TextSpace(v)) => add(self.image, v, self.text, wt, "text")?,
            Some(TextQuery::ImageSpace(v)) => add(0, v, self.image, wt, "image")?,
            None => {}
        }
        Ok(q)
    }
}

fn check_dim(v: &[f32], expected: usize) -> Result<()> {
    if v.len() != expected {
        return Err(IndexError::Dim {
            got: v.len(),
            expected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = dot(v, v).sqrt();
        v.iter().map(|x| x / n).collect()
    }

    const BOTH: Layout = Layout { image: 2, text: 3 };

    #[test]
    fn hybrid_score_is_the_weighted_sum_of_both_cosines() {
        let (xi, xt) = (unit(&[1.0, 2.0]), unit(&[0.5, -1.0, 2.0]));
        let row = BOTH.row(Some(&xi), Some(&xt)).unwrap();
        assert!(
            (dot(&row, &row) - 1.0).abs() < 1e-6,
            "rows stay unit vectors"
        );
        let (qi, qt) = (unit(&[2.0, -1.0]), unit(&[1.0, 1.0, 1.0]));
        for w in [0.0f32, 0.3, 0.5, 1.0] {
            let q = BOTH
                .query(Some(&qi), Some(TextQuery::TextSpace(&qt)), w)
                .unwrap();
            let want = (1.0 - w) * dot(&qi, &xi) + w * dot(&qt, &xt);
            assert!((dot(&q, &row) - want).abs() < 1e-6, "w = {w}");
        }
        // One part alone: that part's cosine.
        let q = BOTH
            .query(None, Some(TextQuery::TextSpace(&qt)), 0.3)
            .unwrap();
        assert!((dot(&q, &row) - dot(&qt, &xt)).abs() < 1e-6);
        let q = BOTH.query(Some(&qi), None, 0.3).unwrap();
        assert!((dot(&q, &row) - dot(&qi, &xi)).abs() < 1e-6);
        let back = BOTH.image_part(&row).unwrap();
        assert!(back.iter().zip(&xi).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn clip_text_mixes_in_the_image_space() {
        let image_only = Layout { image: 2, text: 0 };
        let x = unit(&[1.0, 1.0]);
        let row = image_only.row(Some(&x), None).unwrap();
        assert_eq!(row, x);
        let (qi, qt) = (unit(&[1.0, 0.0]), unit(&[0.0, 1.0]));
        let q = image_only
            .query(Some(&qi), Some(TextQuery::ImageSpace(&qt)), 0.25)
            .unwrap();
        let want = 0.75 * dot(&qi, &x) + 0.25 * dot(&qt, &x);
        assert!((dot(&q, &row) - want).abs() < 1e-6);
    }

    #[test]
    fn missing_parts_and_bad_weights_are_errors() {
        let text_only = Layout { image: 0, text: 3 };
        let e = text_only.query(Some(&[1.0, 0.0]), None, 0.5).unwrap_err();
        assert!(e.to_string().contains("no image embeddings"), "{e}");
        let e = text_only.row(None, None).unwrap_err();
        assert!(e.to_string().contains("needs a text embedding"), "{e}");
        assert!(BOTH.query(None, None, 0.5).is_err());
        let t = [1.0, 0.0, 0.0];
        // At the limits, then just past them.
        for w in [0.0, 1.0] {
            assert!(BOTH
                .query(Some(&[1.0, 0.0]), Some(TextQuery::TextSpace(&t)), w)
                .is_ok());
        }
        for w in [-0.01, 1.01, f32::NAN] {
            let e = BOTH
                .query(Some(&[1.0, 0.0]), Some(TextQuery::TextSpace(&t)), w)
                .unwrap_err();
            assert!(e.to_string().contains("outside [0, 1]"), "{e}");
        }
        let e = BOTH
            .query(None, Some(TextQuery::TextSpace(&[1.0])), 0.5)
            .unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::Dim {
                    got: 1,
                    expected: 3
                }
            ),
            "{e}"
        );
    }
}
