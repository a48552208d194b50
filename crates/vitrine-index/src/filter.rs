//! Exact metadata filters: `column=value` clauses. Clauses on the same column are
//! alternatives (OR), clauses on different columns must all hold (AND).

use std::collections::{BTreeMap, BTreeSet};

use crate::{Index, IndexError, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// column -> accepted values (a set: a filter may list hundreds)
    clauses: BTreeMap<String, BTreeSet<String>>,
}

impl Filter {
    /// Parses `column=value` strings (the value may itself contain `=`).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self> {
        let mut filter = Self::default();
        for spec in specs {
            let spec = spec.as_ref();
            let (column, value) = spec
                .split_once('=')
                .ok_or_else(|| IndexError::BadFilter(spec.to_string()))?;
            let column = column.trim();
            if column.is_empty() {
                return Err(IndexError::BadFilter(spec.to_string()));
            }
            filter.add(column, value.trim());
        }
        Ok(filter)
    }

    pub fn add(&mut self, column: &str, value: &str) {
        self.clauses
            .entry(column.to_string())
            .or_default()
            .insert(value.to_string());
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Rows that pass, or `None` when the filter is empty (every row passes).
    pub fn allowed_rows(&self, index: &Index) -> Result<Option<Vec<usize>>> {
        if self.clauses.is_empty() {
            return Ok(None);
        }
        for column in self.clauses.keys() {
            if !index.columns.contains(column) {
                return Err(IndexError::UnknownColumn {
                    column: column.clone(),
                    available: index.columns.join(", "),
                });
            }
        }
        let rows = index
            .items()
            .iter()
            .enumerate()
            .filter(|(_, item)| {
                self.clauses.iter().all(|(column, values)| {
                    item.attrs.get(column).is_some_and(|v| values.contains(v))
                })
            })
            .map(|(row, _)| row)
            .collect();
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{item, small};
    use crate::ModelInfo;

    #[test]
    fn parse_and_match() {
        let ix = small();
        assert_eq!(
            Filter::parse::<&str>(&[])
                .unwrap()
                .allowed_rows(&ix)
                .unwrap(),
            None
        );
        let red = Filter::parse(&["colour=red"]).unwrap();
        assert_eq!(red.allowed_rows(&ix).unwrap(), Some(vec![0, 2]));
        let either = Filter::parse(&["colour=red", "colour=blue"]).unwrap();
        assert_eq!(either.allowed_rows(&ix).unwrap(), Some(vec![0, 1, 2]));
        let none = Filter::parse(&["colour=green"]).unwrap();
        assert_eq!(none.allowed_rows(&ix).unwrap(), Some(vec![]));
    }

    #[test]
    fn different_columns_are_anded() {
        let mut ix = Index::new(1, ModelInfo::default());
        let mut a = item("a", "red");
        a.attrs.insert("size".into(), "M".into());
        let mut b = item("b", "red");
        b.attrs.insert("size".into(), "L".into());
        ix.add(a, &[1.0]).unwrap();
        ix.add(b, &[1.0]).unwrap();
        let f = Filter::parse(&["colour=red", "size=L"]).unwrap();
        assert_eq!(f.allowed_rows(&ix).unwrap(), Some(vec![1]));
    }

    #[test]
    fn bad_filters_are_errors() {
        assert!(matches!(
            Filter::parse(&["colour"]),
            Err(IndexError::BadFilter(_))
        ));
        assert!(matches!(
            Filter::parse(&["=red"]),
            Err(IndexError::BadFilter(_))
        ));
        let err = Filter::parse(&["size=M"])
            .unwrap()
            .allowed_rows(&small())
            .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
