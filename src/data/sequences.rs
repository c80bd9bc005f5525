//! Sequence lines: `user item item ...`, items oldest first, separated by whitespace.
use super::log::{Dataset, Event, LineSink, ReadOptions, UserLog};
use crate::error::DataError;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

pub fn read_sequences(path: &Path, opts: &ReadOptions) -> Result<Dataset, DataError> {
    let reader = super::log::open(path)?;
    let mut sink = LineSink::new(path, opts);
    let mut users = Vec::new();
    let mut seen_users = HashSet::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| sink.io(e))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let user = fields.next().unwrap_or_default().to_string();
        let items: Vec<&str> = fields.collect();
        if items.is_empty() {
            sink.malformed(line_no, format!("user {user} has no items"))?;
            continue;
        }
        if let Some(bad) = items.iter().find(|t| !valid_id(t)) {
            sink.malformed(line_no, format!("bad item id {bad:?}"))?;
            continue;
        }
        if !seen_users.insert(user.clone()) {
            sink.malformed(
                line_no,
                format!("user {user} appears on more than one line"),
            )?;
            continue;
        }
        users.push(UserLog {
            user,
            events: items
                .into_iter()
                .map(|item| Event {
                    item: item.to_string(),
                    behaviour: None,
                    timestamp: None,
                })
                .collect(),
        });
    }
    if users.is_empty() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "no user sequences found".into(),
        });
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        users,
        skipped: sink.skipped,
    })
}

/// Item ids are opaque, but must be printable tokens without separators.
pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}
