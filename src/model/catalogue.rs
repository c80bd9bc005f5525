//! `items.txt`: the catalogue. Line n (1-based) holds the external id of item index n; index 0 is padding.
use crate::error::ModelError;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    /// ids[i] is the external id of item index i + 1.
    ids: Vec<String>,
    index: HashMap<String, usize>,
}

impl Catalogue {
    /// Builds a catalogue; the ids' order fixes their indices. Duplicates are an error.
    pub fn new(ids: Vec<String>) -> Result<Catalogue, String> {
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), i + 1).is_some() {
                return Err(format!("item {id:?} appears twice"));
            }
        }
        Ok(Catalogue { ids, index })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Item index (1-based) of an external id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// External id of an item index (1..=len).
    pub fn id_of(&self, index: usize) -> &str {
        &self.ids[index - 1]
    }

    pub fn read(path: &Path) -> Result<Catalogue, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::BadFile {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let mut ids = Vec::new();
        let mut index = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let id = line.trim();
            let at = |message: String| ModelError::BadFile {
                path: path.to_path_buf(),
                message: format!("line {}: {message}", i + 1),
            };
            if id.is_empty() {
                return Err(at("empty item id".into()));
            }
            if let Some(first) = index.insert(id.to_string(), i + 1) {
                return Err(at(format!("item {id:?} already on line {first}")));
            }
            ids.push(id.to_string());
        }
        Ok(Catalogue { ids, index })
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        let mut text = self.ids.join("\n");
        text.push('\n');
        std::fs::write(path, text).map_err(|source| ModelError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}
