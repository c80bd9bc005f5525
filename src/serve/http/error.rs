//! The JSON error body `{error, code}`, and the one place where a domain error becomes an HTTP
//! status (TEI's `From<&ErrorType> for StatusCode`): the registry, the queues, the lifecycle,
//! evaluations and model input each have their own error enum, mapped here.
use crate::error::InputError;
use crate::serve::evaluation::EvalError;
use crate::serve::history::StoreError;
use crate::serve::infer::InferError;
use crate::serve::lifecycle::NotServing;
use crate::serve::registry::loader::LoadError;
use crate::serve::registry::RegistryError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every error answer's body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person: names the field or limit at fault.
    pub error: String,
    /// A stable machine-readable code, e.g. `validation`, `overloaded`, `model_not_found`.
    pub code: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// Answer with `Connection: close`: the request's body was left unread.
    pub close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// 422: the body is JSON but not a valid request.
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    /// 429 with Retry-After: too much work already waiting.
    pub fn overloaded() -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the request queue is full; retry later",
            )
        }
    }

    /// 503: starting or shutting down.
    pub fn not_ready(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    /// 500: the server's own fault (logged by whoever builds it).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Whether a client sent something malformed or invalid (400 or 422).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self.status,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::validation(e.to_string())
    }
}

impl From<NotServing> for ApiError {
    fn from(e: NotServing) -> Self {
        ApiError::not_ready(e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => ApiError::not_found("model_not_found", m),
            RegistryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            RegistryError::Invalid(m) => ApiError::validation(m),
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> ApiError {
        let message = e.to_string();
        match e {
            LoadError::NotFound(_) => ApiError::not_found("model_not_found", message),
            LoadError::Failed(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "load_failed", message)
            }
            LoadError::NoRepository => {
                ApiError::new(StatusCode::CONFLICT, "no_repository", message)
            }
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::QueueFull => ApiError::overloaded(),
            InferError::WontFinish => ApiError {
                message: e.to_string(),
                ..ApiError::overloaded()
            },
            InferError::Stopped | InferError::WorkerGone => ApiError::not_ready(e.to_string()),
            InferError::Deadline => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                e.to_string(),
            ),
        }
    }
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        let message = e.to_string();
        match e {
            EvalError::Invalid(_) => ApiError::validation(message),
            EvalError::Model(e) => e.into(),
            EvalError::HoldoutNotFound(_) => ApiError::not_found("holdout_not_found", message),
            EvalError::HoldoutOutside => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            EvalError::HoldoutTooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "holdout_too_large", message)
            }
            EvalError::Busy(_) => ApiError {
                retry_after: Some(5),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "evaluations_full", message)
            },
            EvalError::JobNotFound(_) => ApiError::not_found("evaluation_not_found", message),
            EvalError::Leakage(_) => ApiError::new(StatusCode::CONFLICT, "leakage", message),
            EvalError::Cancelled | EvalError::ShuttingDown => ApiError::not_ready(message),
            EvalError::Internal(_) => ApiError::internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "history_unavailable",
                e.to_string(),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The last guard against echoing a caller's input back in bulk: messages name what is
        // wrong in a line, never kilobytes.
        const MAX: usize = 1024;
        let mut message = self.message;
        let n = message.chars().count();
        if n > MAX {
            message = message.chars().take(MAX).collect::<String>()
                + &format!("… (message cut: {} more characters)", n - MAX);
        }
        let body = ErrorBody {
            error: message,
            code: self.code.to_string(),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_their_statuses() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                RegistryError::NotFound("x".into()).into(),
                404,
                "model_not_found",
            ),
            (RegistryError::Conflict("x".into()).into(), 409, "conflict"),
            (RegistryError::Invalid("x".into()).into(), 422, "validation"),
            (LoadError::Failed("bad".into()).into(), 422, "load_failed"),
            (LoadError::NoRepository.into(), 409, "no_repository"),
            (InferError::QueueFull.into(), 429, "overloaded"),
            (InferError::Deadline.into(), 504, "deadline_exceeded"),
            (InferError::WorkerGone.into(), 503, "not_ready"),
            (NotServing::Starting.into(), 503, "not_ready"),
            (EvalError::Busy("x".into()).into(), 429, "evaluations_full"),
            (EvalError::HoldoutOutside.into(), 403, "forbidden"),
            (EvalError::Leakage("x".into()).into(), 409, "leakage"),
            (EvalError::Internal("x".into()).into(), 500, "internal"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{e}");
        }
        let e: ApiError = LoadError::Failed("bad".into()).into();
        assert!(e
            .message
            .ends_with("the versions already loaded keep serving"));
        let e: ApiError = EvalError::Busy("x".into()).into();
        assert_eq!(e.retry_after, Some(5));
    }
}
