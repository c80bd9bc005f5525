//! Typed errors of the library. The CLI and the HTTP layer turn them into messages and statuses at the edge.
use std::path::PathBuf;

/// A problem in an input file, located precisely enough for a person to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct LineError {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message already says it, and a chain printer would say it twice.
        cause: std::io::Error,
    },
    #[error(transparent)]
    Malformed(#[from] LineError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Split(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {path}: missing file {file}")]
    MissingFile { path: PathBuf, file: String },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("{path}: unsupported format version {found} (this build reads version {supported})")]
    FormatVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: tensor {name}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("bad device {0:?}: expected auto, cpu or cuda:N")]
    BadDevice(String),
    #[error("device {0} is not available on this machine")]
    DeviceUnavailable(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        // Not `#[source]`: the message already says it, and a chain printer would say it twice.
        cause: std::io::Error,
    },
}

/// A request that the model cannot answer as given: always the caller's mistake (HTTP 422).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("history has {items} items but {behaviours} behaviours")]
    BehaviourLength { items: usize, behaviours: usize },
    #[error("unknown behaviour {}; this model knows {:?}", excerpt(.0), .1)]
    UnknownBehaviour(String, Vec<String>),
    #[error("this model has no behaviour vocabulary; behaviour {} cannot be used", excerpt(.0))]
    NoBehaviours(String),
    #[error("unknown context feature {}; this model's context features are {:?}", excerpt(.0), .1)]
    UnknownFeature(String, Vec<String>),
    #[error("context feature {name:?}: {message}")]
    BadFeature { name: String, message: String },
    #[error("k must be between 1 and {max}, got {got}")]
    BadK { got: usize, max: usize },
    #[error("{0}")]
    Other(String),
}

/// A caller's value as an error message quotes it: Debug-quoted, at most 64 characters, with how
/// much was cut. Error bodies once echoed whole 100 KB context values and 5,000-character names.
pub fn excerpt(value: &str) -> String {
    const MAX: usize = 64;
    let n = value.chars().count();
    if n <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}… ({} more characters)", n - MAX)
    }
}
