//! Reading and parsing JSON request bodies without ever holding the async runtime's threads.
//!
//! The body is read with a size limit (413) and a time limit (408). A small body is parsed and
//! validated in place (microseconds). A large one (up to server.body_limit_bytes, e.g. a batch of
//! 64 long histories) is parsed and validated on a small, bounded pool of blocking threads
//! (server.parse_threads, `parse_pool`), with at most server.max_parse_waiting requests waiting
//! for it (429 beyond): two clients looping 1 MB bodies once froze every route, /health/live
//! included.
//!
//! Bodies being buffered count against one server-wide budget (server.max_buffered_body_bytes,
//! `body_budget`): a thousand uploads stalled just short of their end once held 1.7 GB. A body
//! that would go beyond the budget is refused with 503 before more of it is read.
use super::body_budget::Hold;
use super::error::ApiError;
use super::listener::ConnHandle;
use super::state::AppState;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A request body read into memory, holding its share of the budget until it is dropped (after
/// parsing).
pub struct Buffered {
    pub bytes: Bytes,
    _hold: Hold,
}

impl std::ops::Deref for Buffered {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads the body of a JSON request: 415 unless the content type is JSON in UTF-8 (and not
/// compressed), 501 for a transfer coding other than chunked, 413 above the body limit (at once
/// when the declared length says so: no `100 Continue` invites an upload that will be refused),
/// 503 when the server-wide body budget is spent, 408 when it does not arrive within
/// server.body_read_timeout_ms.
pub async fn read_json_body(st: &AppState, req: Request) -> Result<Buffered, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_content_type);
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let coded = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|c| !c.trim().eq_ignore_ascii_case("chunked"));
    let unsupported = match (json, encoded, coded) {
        (false, _, _) => Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected request with `Content-Type: application/json` (UTF-8)",
        )),
        (_, true, _) => Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "compressed request bodies (Content-Encoding) are not supported; send plain JSON",
        )),
        (_, _, true) => Some((
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_coding",
            "only the chunked transfer coding is supported",
        )),
        _ => None,
    };
    if let Some((status, code, message)) = unsupported {
        st.metrics.refuse("content_type");
        return Err(ApiError::new(status, code, message));
    }
    let limit = st.cfg.server.body_limit_bytes;
    let too_large = || {
        st.metrics.refuse("too_large");
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes (server.body_limit_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // An over-limit body is read and discarded up to this much, so that the client, which is
    // busy sending it, reads our 413 instead of a reset; beyond it the connection is just closed.
    let drain_cap = limit.saturating_mul(4) as u64;
    if declared.is_some_and(|n| n > limit as u64 && (expects_continue || n > drain_cap)) {
        // Refused before a byte is read: no `100 Continue` invites an upload we would refuse.
        return Err(too_large());
    }
    let budget_spent = || {
        st.metrics.refuse("body_budget");
        ApiError {
            retry_after: Some(1),
            close: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "body_budget",
                "the server is buffering as many request bodies as it may \
                 (server.max_buffered_body_bytes); retry later",
            )
        }
    };
    // Refused before a byte is read when the declared length cannot fit now.
    if declared.is_some_and(|n| n <= limit as u64 && !st.body_budget.fits(n as usize)) {
        return Err(budget_spent());
    }
    // Or when it could not be parsed in time (see parse_pool): reading it would be wasted.
    if declared.is_some_and(|n| n <= limit as u64 && !st.parse_pool.can_take(n as usize)) {
        st.metrics.refuse("parse_busy");
        return Err(ApiError {
            close: true,
            message: "the server cannot parse this request before its deadline; retry later".into(),
            ..ApiError::overloaded()
        });
    }
    let timeout = Duration::from_millis(st.cfg.server.body_read_timeout_ms);
    // While the body trickles in, the connection counts as stalled (evictable at the cap).
    let conn = parts.extensions.get::<ConnHandle>();
    if let Some(c) = conn {
        c.body_reading(true);
    }
    let mut body = body;
    // The chunks as they arrive (no buffer sized by a declared length: thousands of connections
    // each declaring the limit and sending nothing must not reserve memory), each counted
    // against the budget before it is kept; joined once complete.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut hold = st.body_budget.hold();
    let mut seen = 0u64;
    let mut over_budget = false;
    let read = tokio::time::timeout(timeout, async {
        while let Some(frame) = body.frame().await {
            if let Ok(chunk) = frame?.into_data() {
                seen += chunk.len() as u64;
                if seen <= limit as u64 {
                    if !hold.grow(chunk.len()) {
                        over_budget = true;
                        break;
                    }
                    chunks.push(chunk);
                } else if seen > drain_cap {
                    break;
                }
            }
        }
        Ok::<(), axum::Error>(())
    })
    .await;
    if let Some(c) = conn {
        c.body_reading(false);
    }
    if over_budget {
        return Err(budget_spent());
    }
    match read {
        Err(_) => {
            st.metrics.refuse("body_timeout");
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms (server.body_read_timeout_ms)",
                    st.cfg.server.body_read_timeout_ms
                ),
            ))
        }
        Ok(_) if seen > limit as u64 => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(())) => {
            let bytes = match chunks.len() {
                0 => Bytes::new(),
                1 => chunks.pop().expect("one chunk"),
                _ => Bytes::from(chunks.concat()),
            };
            Ok(Buffered { bytes, _hold: hold })
        }
    }
}

/// Parses JSON; errors carry the path of the offending field.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::model::watch_float_zero_ids();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v: crate::model::ObjectOnly<T> =
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            json_error(e.into_inner(), &path)
        })?;
    de.end().map_err(|e| json_error(e, "."))?;
    if let Some(refusal) = crate::model::underflowed_zero_id(bytes) {
        return Err(ApiError::validation(format!("invalid request: {refusal}")));
    }
    Ok(v.0)
}

/// Maps serde_json errors: malformed JSON is 400, well-formed JSON of the wrong shape is 422.
fn json_error(e: serde_json::Error, path: &str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data if path == "." => ApiError::validation(format!("invalid request: {e}")),
        Category::Data => ApiError::validation(format!("invalid request: {path}: {e}")),
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("malformed JSON: {e}"),
        ),
    }
}

/// Parses a body as `T` (off the async threads when it is large; see `ParsePool::run`).
pub async fn parse<T>(st: &AppState, body: Buffered) -> Result<T, ApiError>
where
    T: DeserializeOwned + Send + 'static,
{
    st.parse_pool
        .run(&st.metrics, body.len(), move || from_json(&body))
        .await
}

/// axum's rule for JSON bodies, `application/json` or `application/*+json`, and a charset, if
/// one is named, of UTF-8 (JSON's only encoding, RFC 8259; a UTF-16 body must not be read as
/// UTF-8).
fn is_json_content_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let m = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"));
    let utf8 = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"').to_ascii_lowercase();
            v == "utf-8" || v == "utf8"
        }
        _ => true,
    });
    json && utf8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_in_utf8_only() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/json; charset=\"UTF-8\"; foo=bar",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/json; charset=utf-16",
            "application/json;charset=latin1",
            "application/jsonx",
        ] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
    }
}
