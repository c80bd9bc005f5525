//! `items.txt`: the catalogue. Line n (1-based) holds the external id of item index n; index 0 is padding.
//!
//! Stored compactly because catalogues reach 10^7 items: every id lives once in one text buffer
//! (with an offset per item), and the id → index map holds a 64-bit hash of each id, not the id
//! itself. A lookup compares the id found under its hash, so a hash collision can never resolve an id
//! to the wrong item; the (astronomically rare) ids whose hashes collide are kept in a small map of
//! their own. 10M ids took 1.4 GB as a `Vec<String>` plus a `HashMap<String, usize>`; this takes
//! about 0.3 GB.
use crate::error::ModelError;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Every id, back to back.
    text: String,
    /// ends[i] = end of the id of item index i + 1 in `text` (its start is ends[i - 1], or 0).
    ends: Vec<u64>,
    /// hash(id) → item index, for ids whose hash is unique.
    by_hash: HashMap<u64, u32>,
    /// Ids whose hash collides with another id's.
    collided: HashMap<String, u32>,
}

impl PartialEq for Catalogue {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.ends == other.ends
    }
}

/// A fixed (unkeyed) hash: the map's own hasher is randomly keyed, so request ids cannot aim at
/// its buckets; this one only has to spread distinct ids.
fn id_hash(id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Catalogue {
    /// Builds a catalogue; the ids' order fixes their indices. Duplicates are an error.
    pub fn new(ids: Vec<String>) -> Result<Catalogue, String> {
        let mut c = Catalogue::with_capacity(ids.len(), ids.iter().map(String::len).sum());
        for id in &ids {
            if let Err(first) = c.push(id) {
                return Err(format!("item {id:?} appears twice (first as item {first})"));
            }
        }
        Ok(c)
    }

    fn with_capacity(n: usize, bytes: usize) -> Catalogue {
        Catalogue {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            by_hash: HashMap::with_capacity(n),
            collided: HashMap::new(),
        }
    }

    /// Appends an id as the next item index; Err(index of the earlier same id) for a duplicate.
    fn push(&mut self, id: &str) -> Result<(), usize> {
        let h = id_hash(id);
        if let Some(i) = self.lookup(h, id) {
            return Err(i);
        }
        let idx = self.ends.len() as u32 + 1;
        self.text.push_str(id);
        self.ends.push(self.text.len() as u64);
        match self.by_hash.entry(h) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(idx);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(id.to_string(), idx);
            }
        }
        Ok(())
    }

    /// The index of `id`, whose hash is `h`.
    fn lookup(&self, h: u64, id: &str) -> Option<usize> {
        if let Some(&i) = self.by_hash.get(&h) {
            if self.id_of(i as usize) == id {
                return Some(i as usize);
            }
        }
        self.collided.get(id).map(|&i| i as usize)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Item index (1-based) of an external id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.lookup(id_hash(id), id)
    }

    /// External id of an item index (1..=len).
    pub fn id_of(&self, index: usize) -> &str {
        let end = self.ends[index - 1] as usize;
        let start = if index == 1 {
            0
        } else {
            self.ends[index - 2] as usize
        };
        &self.text[start..end]
    }

    pub fn read(path: &Path) -> Result<Catalogue, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::BadFile {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let lines = text.lines().count();
        let mut c = Catalogue::with_capacity(lines, text.len());
        for (i, line) in text.lines().enumerate() {
            let id = line.trim();
            let at = |message: String| ModelError::BadFile {
                path: path.to_path_buf(),
                message: format!("line {}: {message}", i + 1),
            };
            if id.is_empty() {
                return Err(at("empty item id".into()));
            }
            if let Err(first) = c.push(id) {
                return Err(at(format!("item {id:?} already on line {first}")));
            }
        }
        Ok(c)
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        let mut text = String::with_capacity(self.text.len() + self.len());
        for i in 1..=self.len() {
            text.push_str(self.id_of(i));
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|source| ModelError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_ids_and_refuses_duplicates() {
        let c = Catalogue::new(vec!["a".into(), "bb".into(), "".into(), "ccc".into()]).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(
            (1..=4).map(|i| c.id_of(i)).collect::<Vec<_>>(),
            ["a", "bb", "", "ccc"]
        );
        assert_eq!(c.index_of("ccc"), Some(4));
        assert_eq!(c.index_of(""), Some(3));
        assert_eq!(c.index_of("b"), None);
        let e = Catalogue::new(vec!["x".into(), "y".into(), "x".into()]).unwrap_err();
        assert!(e.contains("appears twice") && e.contains("item 1"), "{e}");
    }

    #[test]
    fn colliding_hashes_still_resolve_exactly() {
        // Force a collision: put another id under an existing id's hash.
        let mut c = Catalogue::new(vec!["p".into(), "q".into()]).unwrap();
        let h = id_hash("p");
        c.by_hash.remove(&id_hash("q"));
        c.by_hash.insert(h, 1);
        c.collided.insert("q".into(), 2);
        assert_eq!(c.index_of("p"), Some(1));
        assert_eq!(c.index_of("q"), Some(2));
        assert_eq!(c.index_of("r"), None);
        c.push("r").unwrap();
        assert_eq!(c.index_of("r"), Some(3));
        assert_eq!(c.push("q"), Err(2));
    }
}
