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
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Every id, back to back.
    text: String,
    /// ends[i] = end of the id of item index i + 1 in `text` (its start is ends[i - 1], or 0).
    ends: Vec<u64>,
    /// hash(id) → item index, for ids whose hash is unique.
    by_hash: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    /// Ids whose hash collides with another id's.
    collided: HashMap<String, u32>,
}

impl PartialEq for Catalogue {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.ends == other.ends
    }
}

/// A fixed (unkeyed) hash that only has to spread distinct ids: 8 bytes a step, each step a
/// bijection of the state for a given word, the length mixed in, then the splitmix64 finaliser
/// so that every input bit reaches the bits the map's buckets and tags use. SipHash (the
/// standard one) took 16% of a 10M-item model's load. Only the model's own ids are ever
/// inserted, so a crafted request id cannot crowd a bucket; colliding ids still resolve exactly.
fn id_hash(id: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let bytes = id.as_bytes();
    let mut h = (bytes.len() as u64 ^ 0x5EED).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(w));
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The `by_hash` map's hasher: its keys are already [`id_hash`]es, so hashing them again (SipHash,
/// the default) only costs time. Safe against crafted keys because only the model's own ids are
/// ever inserted; a request's id is only looked up.
#[derive(Default)]
struct Prehashed(u64);
impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys reach this map (`write_u64`); any other input still hashes consistently.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
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
            by_hash: HashMap::with_capacity_and_hasher(n, Default::default()),
            collided: HashMap::new(),
        }
    }

    /// Appends an id as the next item index; Err(index of the earlier same id) for a duplicate.
    /// One probe of the map per id (a lookup and then an insert were two cache misses each, most
    /// of the time a 10M-item catalogue took to read).
    fn push(&mut self, id: &str) -> Result<(), usize> {
        use std::collections::hash_map::Entry;
        let idx = self.ends.len() as u32 + 1;
        match self.by_hash.entry(id_hash(id)) {
            Entry::Vacant(v) => {
                v.insert(idx);
            }
            Entry::Occupied(o) => {
                let first = *o.get() as usize;
                if self.id_of(first) == id {
                    return Err(first);
                }
                match self.collided.entry(id.to_string()) {
                    Entry::Occupied(c) => return Err(*c.get() as usize),
                    Entry::Vacant(c) => {
                        c.insert(idx);
                    }
                }
            }
        }
        self.text.push_str(id);
        self.ends.push(self.text.len() as u64);
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

    /// Item indices of the ids it knows, in order, and the ids it does not know.
    pub fn split_known(&self, ids: impl IntoIterator<Item = String>) -> (Vec<usize>, Vec<String>) {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for id in ids {
            match self.index_of(&id) {
                Some(i) => known.push(i),
                None => unknown.push(id),
            }
        }
        (known, unknown)
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
            cause: source,
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
    fn the_id_hash_spreads_sequential_ids() {
        // Catalogues are full of ids that differ in one digit: no two may share a hash, and the
        // bits the map reads (low bits: the bucket; top 7: the tag) must be evenly used.
        for fmt in [
            |n: u32| format!("i{n}"),
            |n: u32| format!("B00{n:07}"),
            |n: u32| n.to_string(),
        ] {
            let hashes: Vec<u64> = (0..200_000).map(|n| id_hash(&fmt(n))).collect();
            let distinct: std::collections::HashSet<u64> = hashes.iter().copied().collect();
            assert_eq!(distinct.len(), hashes.len(), "{}", fmt(0));
            for bits in [|h: u64| (h & 127) as usize, |h: u64| (h >> 57) as usize] {
                let mut count = [0usize; 128];
                for &h in &hashes {
                    count[bits(h)] += 1;
                }
                let mean = hashes.len() as f64 / 128.0;
                assert!(
                    count.iter().all(|&c| (c as f64 - mean).abs() < 0.1 * mean),
                    "{}: {count:?}",
                    fmt(0)
                );
            }
        }
        assert_ne!(id_hash("a"), id_hash("a\0"));
        assert_ne!(id_hash(""), id_hash("\0"));
    }

    #[test]
    fn colliding_hashes_still_resolve_exactly() {
        // Force a collision: q's hash now finds p's item, as if the two hashes were equal, and q
        // lives in the collision map (the state a real collision leaves).
        let mut c = Catalogue::new(vec!["p".into(), "q".into()]).unwrap();
        c.by_hash.insert(id_hash("q"), 1);
        c.collided.insert("q".into(), 2);
        assert_eq!(c.index_of("p"), Some(1));
        assert_eq!(c.index_of("q"), Some(2));
        assert_eq!(c.index_of("r"), None);
        c.push("r").unwrap();
        assert_eq!(c.index_of("r"), Some(3));
        assert_eq!(c.push("q"), Err(2));
        assert_eq!(c.push("p"), Err(1));
        // A new id under a taken hash goes to the collision map and resolves there.
        c.by_hash.insert(id_hash("s"), 3);
        c.push("s").unwrap();
        assert_eq!((c.index_of("s"), c.index_of("r")), (Some(4), Some(3)));
        assert_eq!(c.collided.get("s"), Some(&4));
        assert_eq!(c.id_of(4), "s");
    }
}
