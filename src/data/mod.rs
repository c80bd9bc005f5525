//! Reading behaviour logs and user attributes, and the one definition of how a log is split.
mod events;
pub mod fingerprint;
mod log;
mod sequences;
pub mod split;
mod users;

pub use events::read_events;
pub use log::{Dataset, Event, ReadOptions, UserLog};
pub use sequences::read_sequences;
pub use split::Split;
pub use users::{read_movielens_users, UserTable};

use crate::error::DataError;
use std::path::Path;

/// How a log file is laid out.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// `user item item ...`, oldest first (Amazon S3-Rec, MovieLens sequence files).
    Sequences,
    /// CSV `user,item,category,behaviour,timestamp` (Taobao UserBehavior).
    Events,
}

impl LogFormat {
    /// `.csv` files are event logs; anything else is read as sequence lines.
    pub fn detect(path: &Path) -> LogFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => LogFormat::Events,
            _ => LogFormat::Sequences,
        }
    }
}

/// Reads a log in the given (or detected) format.
pub fn read_log(
    path: &Path,
    format: Option<LogFormat>,
    opts: &ReadOptions,
) -> Result<Dataset, DataError> {
    match format.unwrap_or_else(|| LogFormat::detect(path)) {
        LogFormat::Sequences => read_sequences(path, opts),
        LogFormat::Events => read_events(path, opts),
    }
}

/// A log (its first `limit_users` users when given) and the optional user-attribute table: what
/// `train` and `holdout` both read, so the two always see the same users.
pub fn read_inputs(
    log: &Path,
    format: Option<LogFormat>,
    users: Option<&Path>,
    limit_users: Option<usize>,
    opts: &ReadOptions,
) -> Result<(Dataset, Option<UserTable>), DataError> {
    if limit_users == Some(0) {
        return Err(DataError::Invalid {
            path: log.to_path_buf(),
            message: "--limit-users 0 keeps no user: give at least 1 (or leave it out for all)"
                .into(),
        });
    }
    let mut data = read_log(log, format, opts)?;
    if let Some(n) = limit_users {
        data.users.truncate(n);
    }
    let users = users.map(|p| read_movielens_users(p, opts)).transpose()?;
    Ok((data, users))
}
