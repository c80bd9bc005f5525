//! The in-memory form of a behaviour log: per-user, time-ordered events with external ids.
use crate::error::{DataError, LineError};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// External item id, as written in the log.
    pub item: String,
    /// Behaviour type (pv, cart, fav, buy...) where the log has one.
    pub behaviour: Option<String>,
    /// Unix seconds where the log has them.
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserLog {
    pub user: String,
    /// Oldest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Skip malformed lines (and count them) instead of failing on the first one.
    pub skip_malformed: bool,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub users: Vec<UserLog>,
    /// Malformed lines that were skipped (only with `skip_malformed`), in file order.
    pub skipped: Vec<LineError>,
}

impl Dataset {
    pub fn n_events(&self) -> usize {
        self.users.iter().map(|u| u.events.len()).sum()
    }

    pub fn has_behaviours(&self) -> bool {
        self.users
            .iter()
            .flat_map(|u| &u.events)
            .any(|e| e.behaviour.is_some())
    }

    pub fn has_timestamps(&self) -> bool {
        self.users
            .iter()
            .flat_map(|u| &u.events)
            .any(|e| e.timestamp.is_some())
    }
}

/// Collects line errors: fails on the first one, or skips and counts them, as the caller asked.
pub(crate) struct LineSink<'a> {
    path: &'a Path,
    opts: &'a ReadOptions,
    pub skipped: Vec<LineError>,
}

impl<'a> LineSink<'a> {
    pub fn new(path: &'a Path, opts: &'a ReadOptions) -> Self {
        LineSink {
            path,
            opts,
            skipped: Vec::new(),
        }
    }

    /// Records a malformed line; returns Err unless skipping was asked for.
    pub fn malformed(&mut self, line: usize, message: impl Into<String>) -> Result<(), DataError> {
        let err = LineError {
            path: self.path.to_path_buf(),
            line,
            message: message.into(),
        };
        if self.opts.skip_malformed {
            self.skipped.push(err);
            Ok(())
        } else {
            Err(err.into())
        }
    }

    pub fn io(&self, source: std::io::Error) -> DataError {
        DataError::Io {
            path: self.path.to_path_buf(),
            cause: source,
        }
    }
}

/// Opens a log file for buffered reading, naming it in the error.
pub(crate) fn open(
    path: &Path,
) -> Result<std::io::BufReader<std::fs::File>, crate::error::DataError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| crate::error::DataError::Io {
            path: path.to_path_buf(),
            cause: source,
        })
}
