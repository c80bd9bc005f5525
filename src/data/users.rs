//! User attribute tables joined to sequences as context features.
use super::log::{LineSink, ReadOptions};
use crate::error::DataError;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

/// user id → feature name → raw value.
#[derive(Debug, Clone, Default)]
pub struct UserTable {
    pub features: Vec<String>,
    pub rows: HashMap<String, BTreeMap<String, String>>,
}

/// MovieLens `users.dat`: `UserID::Gender::Age::Occupation::Zip`. Zip is not used as a feature
/// (3,400 distinct values for 6,040 users would only memorise users).
pub fn read_movielens_users(path: &Path, opts: &ReadOptions) -> Result<UserTable, DataError> {
    let reader = super::log::open(path)?;
    let mut sink = LineSink::new(path, opts);
    let mut rows = HashMap::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line.map_err(|e| sink.io(e))?;
        // users.dat is latin-1; every field we use is ASCII, so a lossy decode loses nothing we need.
        let line = String::from_utf8_lossy(&bytes);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split("::").collect();
        if f.len() != 5 {
            sink.malformed(
                line_no,
                format!(
                    "expected UserID::Gender::Age::Occupation::Zip, found {} fields",
                    f.len()
                ),
            )?;
            continue;
        }
        if !matches!(f[1], "F" | "M") {
            sink.malformed(line_no, format!("gender must be F or M, found {:?}", f[1]))?;
            continue;
        }
        if f[2].parse::<u32>().is_err() || f[3].parse::<u32>().is_err() {
            sink.malformed(line_no, "age and occupation must be integers")?;
            continue;
        }
        let mut row = BTreeMap::new();
        row.insert("gender".to_string(), f[1].to_string());
        row.insert("age".to_string(), f[2].to_string());
        row.insert("occupation".to_string(), f[3].to_string());
        if rows.insert(f[0].to_string(), row).is_some() {
            sink.malformed(line_no, format!("user {} appears twice", f[0]))?;
        }
    }
    Ok(UserTable {
        features: vec!["gender".into(), "age".into(), "occupation".into()],
        rows,
    })
}
