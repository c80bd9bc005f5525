//! What can go wrong with an evaluation (the HTTP edge maps each to a status).
use crate::serve::registry::RegistryError;

/// Why an evaluation was refused or failed.
#[derive(Debug)]
pub enum EvalError {
    /// A malformed request or holdout (the message names the field or line).
    Invalid(String),
    /// A named model or version is not loaded.
    Model(RegistryError),
    HoldoutNotFound(String),
    /// The holdout name resolves outside admin.holdout_dir (a symlink).
    HoldoutOutside,
    HoldoutTooLarge(String),
    /// admin.max_running_evaluations are running.
    Busy(String),
    /// No such job (or it expired, or was deleted).
    JobNotFound(String),
    /// The holdout overlaps a model's training data and leakage was not allowed.
    Leakage(String),
    /// Cancelled while its cases were read (its client went away, or shutdown).
    Cancelled,
    /// An inline evaluation stopped by shutdown before it could answer.
    ShuttingDown,
    /// The server's own fault (an unusable holdout_dir, a task that died).
    Internal(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Invalid(m)
            | EvalError::HoldoutNotFound(m)
            | EvalError::HoldoutTooLarge(m)
            | EvalError::Busy(m)
            | EvalError::JobNotFound(m)
            | EvalError::Leakage(m)
            | EvalError::Internal(m) => f.write_str(m),
            EvalError::Model(e) => write!(f, "{e}"),
            EvalError::HoldoutOutside => f.write_str("holdout resolves outside admin.holdout_dir"),
            EvalError::Cancelled => f.write_str("evaluation cancelled"),
            EvalError::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

impl From<RegistryError> for EvalError {
    fn from(e: RegistryError) -> Self {
        EvalError::Model(e)
    }
}
