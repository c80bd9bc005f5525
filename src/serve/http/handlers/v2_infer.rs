//! POST /v2/models/{name}/infer and /v2/models/{name}/versions/{version}/infer: the KServe v2
//! inference protocol's JSON form (Triton's HTTP/REST), its wire types, and the step from tensors
//! to requests and back (the route table is in `http::router`).
//!
//! Tensors in: `history` BYTES `[B, L]` (one row of item ids per request, most recent last, `""`
//! padding the shorter rows) or `[L]` (one request); optional `context` BYTES `[B]` or `[B, 1]` (a
//! JSON object per request, as /recommend's `context`); `k` from the request's parameters or an
//! integer input. Each row becomes a `RecommendRequest` that is routed (once per call: the answer
//! names one model version), validated by `recommend::validate` and ranked through the same queue
//! as /recommend/batch. Tensors out: `items` BYTES `[B, k]` and `scores` FP32 `[B, k]`, best first.
//!
//! Not implemented: the binary tensor extension (refused with 415, so that a client sending it is
//! told how to send JSON), shared memory and classification outputs (422).
use crate::model::{unique_context, ContextValue, HistoryEntry, ItemId, ObjectOnly};
use crate::serve::config::LimitsSection;
use crate::serve::http::body;
use crate::serve::http::error::{ApiError, ErrorBody};
use crate::serve::http::handlers::recommend::{self, Validated};
use crate::serve::http::middleware::{Serving, UrlPath};
use crate::serve::http::state::AppState;
use crate::serve::http::types::RecommendRequest;
use crate::serve::infer::queue::JobOutput;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::Json;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// The protocol's tensor datatypes (and Triton's BF16): any other name is refused as unknown.
pub const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BF16", "BYTES",
];
/// The inputs this server reads, and the outputs it answers.
pub const INPUTS: [&str; 3] = ["history", "context", "k"];
pub const OUTPUTS: [&str; 2] = ["items", "scores"];
const INTEGER_TYPES: [&str; 8] = [
    "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
];

/// Fills the end of a row that is shorter than the longest one (fewer items were left to rank
/// after the exclusions), with the item id `""`: a tensor is rectangular, and JSON has no -inf.
pub const PAD_SCORE: f32 = f32::MIN;

/// A KServe v2 inference request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "id": "42",
    "parameters": {"k": 3},
    "inputs": [{"name": "history", "shape": [2, 2], "datatype": "BYTES", "data": ["1", "2", "", "3"]}],
    "outputs": [{"name": "items"}, {"name": "scores"}]
}))]
pub struct V2InferRequest {
    /// Echoed in the answer.
    pub id: Option<String>,
    #[schema(value_type = Option<V2InferParameters>)]
    pub parameters: Option<ObjectOnly<V2InferParameters>>,
    /// `history` (required), `context`, `k`; each at most once.
    #[schema(value_type = Vec<V2InferInput>)]
    pub inputs: Vec<ObjectOnly<V2InferInput>>,
    /// The outputs to answer, in this order (absent: `items` then `scores`).
    #[schema(value_type = Option<Vec<V2RequestedOutput>>)]
    pub outputs: Option<Vec<ObjectOnly<V2RequestedOutput>>>,
}

/// Request parameters. Others (Triton's `sequence_id`, `priority`, `timeout`...) are ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct V2InferParameters {
    /// Items per request (default 10, at most limits.max_k); or the `k` input, not both.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::model::optional_integer")]
    pub k: Option<usize>,
    /// As /recommend's `exclude_seen` (default true): never return an item of the history.
    pub exclude_seen: Option<bool>,
    /// What tritonclient sends when no outputs are named. Accepted; the answer is JSON all the
    /// same, which such clients read (it carries no Inference-Header-Content-Length).
    pub binary_data_output: Option<bool>,
}

/// One input tensor.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V2InferInput {
    /// `history`, `context` or `k`.
    pub name: String,
    /// Dimensions; `data` holds their product of elements. history: `[B, L]` or `[L]`;
    /// context: `[B]` or `[B, 1]`; k: `[1]` or `[]`.
    #[schema(value_type = Vec<i64>)]
    pub shape: Vec<Dim>,
    /// BYTES for history and context; an integer type (INT32, INT64...) for k.
    pub datatype: String,
    /// The elements in row-major order, flat or nested. BYTES elements are JSON strings.
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<Value>,
    /// Binary (`binary_data_size`) and shared-memory (`shared_memory_*`) data are not supported;
    /// other parameters are ignored.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// One requested output.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V2RequestedOutput {
    /// `items` or `scores`.
    pub name: String,
    /// `binary_data` is accepted (the answer is JSON all the same); a non-zero `classification`
    /// is not supported.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// A KServe v2 inference answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2InferResponse {
    /// The model and version that answered (an A/B split's arm when the name is a split).
    pub model_name: String,
    pub model_version: String,
    /// The request's `id`, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<V2OutputTensor>,
}

/// One output tensor: `items` BYTES `[B, k]` (external item ids) or `scores` FP32 `[B, k]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2OutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    /// Row-major: strings for `items`, numbers for `scores`.
    #[schema(value_type = Vec<Value>)]
    pub data: V2Data,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum V2Data {
    Bytes(Vec<String>),
    Fp32(Vec<f32>),
}

/// A shape dimension as sent, negative and huge ones included, so that the refusal can name the
/// input and the dimension (serde's unsigned types would only say "invalid value").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dim(i128);

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dim, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dim;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a dimension (an integer)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dim, E> {
                Ok(Dim(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dim, E> {
                Ok(Dim(v.into()))
            }
            // `3.0` is the integer 3, as JSON Schema (and so the OpenAPI document) counts it;
            // anything beyond i128 is just "too large", which the shape check says.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dim, E> {
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(Dim(v.clamp(i128::MIN as f64, i128::MAX as f64) as i128))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Which outputs to answer, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    Items,
    Scores,
}

/// What a v2 body asks, before routing: one request per row of `history`.
#[derive(Debug)]
struct Rows {
    histories: Vec<Vec<String>>,
    /// One per row (empty without a `context` input).
    contexts: Vec<BTreeMap<String, ContextValue>>,
    k: Option<usize>,
    exclude_seen: bool,
    outputs: Vec<Output>,
}

fn invalid(input: &str, message: impl fmt::Display) -> ApiError {
    ApiError::validation(format!("input {input}: {message}"))
}

/// The elements of `data`, nested arrays flattened in row-major order (the protocol allows
/// both forms). serde_json's depth limit bounds the recursion.
fn flatten<'a>(data: &'a [Value], out: &mut Vec<&'a Value>) {
    for v in data {
        match v {
            Value::Array(inner) => flatten(inner, out),
            other => out.push(other),
        }
    }
}

/// An input checked against its own shape and datatype: its dimensions and flat elements.
struct Tensor<'a> {
    name: &'a str,
    dims: Vec<usize>,
    data: Vec<&'a Value>,
}

impl<'a> Tensor<'a> {
    fn read(input: &'a V2InferInput, datatypes: &[&str]) -> Result<Tensor<'a>, ApiError> {
        let name = input.name.as_str();
        if let Some(p) = &input.parameters {
            if p.keys()
                .any(|k| k == "binary_data_size" || k.starts_with("shared_memory"))
            {
                return Err(invalid(
                    name,
                    "binary and shared-memory tensor data are not supported: send the elements \
                     in `data` (tritonclient: set_data_from_numpy(..., binary_data=False))",
                ));
            }
        }
        if !DATATYPES.contains(&input.datatype.as_str()) {
            return Err(invalid(
                name,
                format!(
                    "unknown datatype {:?}; the KServe v2 datatypes are {}",
                    input.datatype,
                    DATATYPES.join(", ")
                ),
            ));
        }
        if !datatypes.contains(&input.datatype.as_str()) {
            return Err(invalid(
                name,
                format!(
                    "datatype must be {}, got {}",
                    datatypes.join(" or "),
                    input.datatype
                ),
            ));
        }
        let shown = || {
            let d: Vec<String> = input.shape.iter().map(|d| d.0.to_string()).collect();
            format!("[{}]", d.join(", "))
        };
        let mut dims = Vec::with_capacity(input.shape.len());
        for d in &input.shape {
            if d.0 < 0 {
                return Err(invalid(
                    name,
                    format!("shape {} has a negative dimension", shown()),
                ));
            }
            dims.push(usize::try_from(d.0).map_err(|_| {
                invalid(name, format!("shape {} has a dimension too large", shown()))
            })?);
        }
        let mut data = Vec::with_capacity(input.data.len());
        flatten(&input.data, &mut data);
        // Checked: [2^40, 2^40] must not wrap around to a small product.
        let product = dims.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
        if product != Some(data.len()) {
            let holds = product.map_or("more than 2^64".to_string(), |p| p.to_string());
            return Err(invalid(
                name,
                format!(
                    "shape {} holds {holds} elements, but data has {}",
                    shown(),
                    data.len()
                ),
            ));
        }
        Ok(Tensor { name, dims, data })
    }

    fn strings(&self) -> Result<Vec<&'a str>, ApiError> {
        self.data
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    invalid(
                        self.name,
                        format!(
                            "element {i} is {v}, not a string (BYTES elements are JSON strings)"
                        ),
                    )
                })
            })
            .collect()
    }
}

/// A context element: a JSON object of features, a repeated key refused as in /recommend.
#[derive(Deserialize)]
struct Context(#[serde(deserialize_with = "unique_context")] BTreeMap<String, ContextValue>);

/// Reads the tensors: names, datatypes, shapes against data, the batch dimension, the elements.
/// Limits that concern one request (history length, k) are left to `recommend::validate`.
fn read_tensors(req: V2InferRequest, limits: &LimitsSection) -> Result<Rows, ApiError> {
    let outputs = match req.outputs {
        None => vec![Output::Items, Output::Scores],
        Some(list) => {
            if list.is_empty() || list.len() > OUTPUTS.len() {
                return Err(ApiError::validation(format!(
                    "outputs, when given, must name 1 to {} of {}",
                    OUTPUTS.len(),
                    OUTPUTS.join(", ")
                )));
            }
            let mut out = Vec::new();
            for o in list {
                let o = o.0;
                let which = match o.name.as_str() {
                    "items" => Output::Items,
                    "scores" => Output::Scores,
                    other => {
                        return Err(ApiError::validation(format!(
                            "unknown output {other:?}; this model answers {}",
                            OUTPUTS.join(", ")
                        )))
                    }
                };
                if out.contains(&which) {
                    return Err(ApiError::validation(format!(
                        "output {:?} is requested twice",
                        o.name
                    )));
                }
                let classification = o.parameters.as_ref().and_then(|p| p.get("classification"));
                if classification.is_some_and(|c| !c.is_null() && c.as_f64() != Some(0.0)) {
                    return Err(ApiError::validation(format!(
                        "output {:?}: the classification extension is not supported",
                        o.name
                    )));
                }
                out.push(which);
            }
            out
        }
    };
    let mut by_name: BTreeMap<&str, &V2InferInput> = BTreeMap::new();
    for input in &req.inputs {
        let input = &input.0;
        if !INPUTS.contains(&input.name.as_str()) {
            return Err(ApiError::validation(format!(
                "unknown input {:?}; this model reads {}",
                input.name,
                INPUTS.join(", ")
            )));
        }
        if by_name.insert(&input.name, input).is_some() {
            return Err(invalid(&input.name, "given twice"));
        }
    }
    let history = by_name.get("history").ok_or_else(|| {
        ApiError::validation(
            "missing input history (BYTES [batch, length] of item ids, or [length] for one request)",
        )
    })?;
    let history = Tensor::read(history, &["BYTES"])?;
    let (batch, len) = match history.dims[..] {
        [len] => (1, len),
        [batch, len] => (batch, len),
        _ => {
            return Err(invalid(
                "history",
                format!(
                    "shape must be [batch, length] or [length], got {} dimensions",
                    history.dims.len()
                ),
            ))
        }
    };
    recommend::check_batch_len(batch, limits, "input history (its first dimension)")?;
    let ids = history.strings()?;
    // Row by row, "" (padding) left out; not `chunks(len)`, which panics when len is 0.
    let histories = (0..batch)
        .map(|r| {
            ids[r * len..(r + 1) * len]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
                .collect()
        })
        .collect();
    let contexts = match by_name.get("context") {
        None => vec![BTreeMap::new(); batch],
        Some(input) => {
            let t = Tensor::read(input, &["BYTES"])?;
            if !matches!(t.dims[..], [b] | [b, 1] if b == batch) {
                return Err(invalid(
                    "context",
                    format!(
                        "shape must be [{batch}] or [{batch}, 1] (one JSON object per request of history), got {:?}",
                        t.dims
                    ),
                ));
            }
            t.strings()?
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    serde_json::from_str::<Context>(s)
                        .map(|c| c.0)
                        .map_err(|e| invalid("context", format!("element {i}: {e}")))
                })
                .collect::<Result<_, _>>()?
        }
    };
    let params = req.parameters.map(|p| p.0).unwrap_or_default();
    let k = match by_name.get("k") {
        None => params.k,
        Some(_) if params.k.is_some() => {
            return Err(invalid(
                "k",
                "k is given both as a parameter and as an input; give it once",
            ))
        }
        Some(input) => {
            let t = Tensor::read(input, &INTEGER_TYPES)?;
            if !matches!(t.dims[..], [] | [1]) {
                return Err(invalid(
                    "k",
                    format!("shape must be [1] or [], got {:?}", t.dims),
                ));
            }
            let v = t.data[0];
            // Integral numbers only (`5.0` counts); the range is validate's, as for /recommend.
            let k = v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            });
            Some(
                k.and_then(|k| usize::try_from(k).ok())
                    .ok_or_else(|| invalid("k", format!("{v} is not a non-negative integer")))?,
            )
        }
    };
    Ok(Rows {
        histories,
        contexts,
        k,
        exclude_seen: params.exclude_seen.unwrap_or(true),
        outputs,
    })
}

/// Every row routed to the one version that answers and validated as a /recommend request.
fn prepare(
    st: &AppState,
    name: &str,
    version: Option<&str>,
    req: V2InferRequest,
) -> Result<(Vec<Validated>, Vec<Output>), ApiError> {
    let rows = read_tensors(req, &st.cfg.limits)?;
    // Once for the whole call: the answer names one model version (a split picks at random,
    // there being no user key here).
    let route = st.registry.route(Some(name), version, None)?;
    let validated = rows
        .histories
        .into_iter()
        .zip(rows.contexts)
        .enumerate()
        .map(|(i, (history, context))| {
            let r = RecommendRequest {
                model: Some(name.to_string()),
                version: version.map(str::to_string),
                user: None,
                history: history
                    .into_iter()
                    .map(|s| HistoryEntry::Id(ItemId::Str(s)))
                    .collect(),
                context,
                k: rows.k,
                exclude_seen: rows.exclude_seen,
                candidates: None,
                exclude: Vec::new(),
                timeout_ms: None,
            };
            recommend::validate(
                r,
                route.clone(),
                &st.cfg.limits,
                recommend::Stored::NotAsked,
            )
            .map_err(|mut e| {
                e.message = format!("request {i} (row {i} of history): {}", e.message);
                e
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((validated, rows.outputs))
}

/// The ranked rows as `[B, k]` tensors, k being the longest row's length (see [`PAD_SCORE`]).
fn response(
    validated: &[Validated],
    outs: Vec<JobOutput>,
    id: Option<String>,
    outputs: &[Output],
) -> V2InferResponse {
    let served = &validated[0].served;
    let width = outs.iter().map(|o| o.ranked.len()).max().unwrap_or(0);
    let shape = vec![outs.len(), width];
    let mut items = Vec::with_capacity(outs.len() * width);
    let mut scores = Vec::with_capacity(outs.len() * width);
    for (v, o) in validated.iter().zip(outs) {
        let n = o.ranked.len();
        for (i, s) in o.ranked {
            items.push(v.served.catalogue.id_of(i).to_string());
            scores.push(s);
        }
        items.resize(items.len() + width - n, String::new());
        scores.resize(scores.len() + width - n, PAD_SCORE);
    }
    let (mut items, mut scores) = (Some(items), Some(scores));
    V2InferResponse {
        model_name: served.name.clone(),
        model_version: served.version.clone(),
        id,
        outputs: outputs
            .iter()
            .map(|o| match o {
                Output::Items => V2OutputTensor {
                    name: "items",
                    datatype: "BYTES",
                    shape: shape.clone(),
                    data: V2Data::Bytes(items.take().unwrap_or_default()),
                },
                Output::Scores => V2OutputTensor {
                    name: "scores",
                    datatype: "FP32",
                    shape: shape.clone(),
                    data: V2Data::Fp32(scores.take().unwrap_or_default()),
                },
            })
            .collect(),
    }
}

/// Ranks a batch of histories given as KServe v2 tensors, on the model's default version (or an
/// A/B split of that name).
#[utoipa::path(post, path = "/v2/models/{name}/infer", operation_id = "v2_infer", tag = "inference",
    params(("name" = String, Path, description = "A model (or A/B split) name")),
    request_body = V2InferRequest,
    responses(
        (status = 200, description = "items and scores, one row per request, best first", body = V2InferResponse),
        (status = 404, description = "No such model or split", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after Retry-After seconds", body = ErrorBody),
        (status = 504, description = "A request could not start before its deadline", body = ErrorBody),
    ))]
pub async fn infer(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    _: Serving,
    req: Request,
) -> Result<Json<V2InferResponse>, ApiError> {
    run(st, name, None, req).await
}

/// As `v2_infer`, on one loaded version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", operation_id = "v2_version_infer", tag = "inference",
    params(("name" = String, Path, description = "A model name"),
           ("version" = String, Path, description = "A loaded version")),
    request_body = V2InferRequest,
    responses(
        (status = 200, description = "items and scores, one row per request, best first", body = V2InferResponse),
        (status = 404, description = "No such model or version", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after Retry-After seconds", body = ErrorBody),
        (status = 504, description = "A request could not start before its deadline", body = ErrorBody),
    ))]
pub async fn infer_version(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    _: Serving,
    req: Request,
) -> Result<Json<V2InferResponse>, ApiError> {
    run(st, name, Some(version), req).await
}

async fn run(
    st: Arc<AppState>,
    name: String,
    version: Option<String>,
    mut req: Request,
) -> Result<Json<V2InferResponse>, ApiError> {
    let received = Instant::now();
    let headers = req.headers_mut();
    // tritonclient sends binary tensors with this header (its default, binary_data=True): say
    // how to send JSON instead of failing on the body.
    if headers.contains_key("inference-header-content-length") {
        st.metrics.refuse("content_type");
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "binary tensor data (Inference-Header-Content-Length) is not supported: send JSON \
             (tritonclient: set_data_from_numpy(..., binary_data=False))",
        ));
    }
    // Triton reads the body as JSON whatever its type, and tritonclient sends none: a body
    // without a Content-Type is taken as JSON here; a different declared type is still 415.
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let bytes = body::read_json_body(&st, req).await?;
    let st2 = st.clone();
    let (validated, outputs, id) = st
        .parse_pool
        .run(&st.metrics, bytes.len(), move || {
            let req: V2InferRequest = body::from_json(&bytes)?;
            st2.serving()?;
            let id = req.id.clone();
            let (validated, outputs) = prepare(&st2, &name, version.as_deref(), req)?;
            Ok((validated, outputs, id))
        })
        .await
        .inspect_err(|e| recommend::count_invalid(&st, e))?;
    for v in &validated {
        recommend::count_unknown(&st, v);
    }
    let outs = st
        .infer
        .run(
            validated
                .iter()
                .map(|v| recommend::work(&st, v, received))
                .collect(),
        )
        .await?;
    Ok(Json(response(&validated, outs, id, &outputs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(body: Value) -> Result<Rows, String> {
        let req: V2InferRequest =
            body::from_json(body.to_string().as_bytes()).map_err(|e| e.message)?;
        read_tensors(req, &LimitsSection::default()).map_err(|e| e.message)
    }

    fn history(shape: Value, data: Value) -> Value {
        json!({"inputs": [{"name": "history", "shape": shape, "datatype": "BYTES", "data": data}]})
    }

    #[test]
    fn rows_are_read_padding_left_out() {
        let r = rows(history(json!([2, 3]), json!(["a", "b", "c", "", "d", ""]))).unwrap();
        assert_eq!(r.histories, vec![vec!["a", "b", "c"], vec!["d"]]);
        assert_eq!(r.contexts.len(), 2);
        assert_eq!((r.k, r.exclude_seen), (None, true));
        assert_eq!(r.outputs, vec![Output::Items, Output::Scores]);
        // Nested data, [L] for one request, [B, 0] for cold starts, 3.0 as a dimension.
        let r = rows(history(json!([2.0, 1]), json!([["a"], ["b"]]))).unwrap();
        assert_eq!(r.histories, vec![vec!["a"], vec!["b"]]);
        assert_eq!(
            rows(history(json!([2]), json!(["a", "b"])))
                .unwrap()
                .histories
                .len(),
            1
        );
        assert_eq!(
            rows(history(json!([3, 0]), json!([]))).unwrap().histories,
            vec![Vec::<String>::new(); 3]
        );
    }

    #[test]
    fn context_k_and_outputs() {
        let mut b = history(json!([2, 1]), json!(["a", "b"]));
        b["inputs"].as_array_mut().unwrap().push(
            json!({"name": "context", "shape": [2, 1], "datatype": "BYTES",
            "data": ["{\"gender\": \"F\"}", "{}"]}),
        );
        b["inputs"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "k", "shape": [1], "datatype": "INT64", "data": [4.0]}));
        b["outputs"] = json!([{"name": "scores", "parameters": {"binary_data": true}}]);
        b["parameters"] = json!({"exclude_seen": false, "binary_data_output": true, "priority": 2});
        let r = rows(b).unwrap();
        assert_eq!(r.contexts[0]["gender"], ContextValue::Text("F".into()));
        assert!(r.contexts[1].is_empty());
        assert_eq!((r.k, r.exclude_seen), (Some(4), false));
        assert_eq!(r.outputs, vec![Output::Scores]);
    }

    #[test]
    fn malformed_tensors_are_refused_naming_the_input() {
        let h = |extra: Value| {
            let mut b = history(json!([1, 1]), json!(["a"]));
            b["inputs"].as_array_mut().unwrap().push(extra);
            b
        };
        let cases = [
            (
                history(json!([2, 2]), json!(["a", "b", "c"])),
                "input history: shape [2, 2] holds 4 elements, but data has 3",
            ),
            (
                history(json!([-1, 2]), json!(["a", "b"])),
                "input history: shape [-1, 2] has a negative dimension",
            ),
            (
                history(json!([4294967296u64, 4294967296u64, 2]), json!(["a"])),
                "holds more than 2^64 elements",
            ),
            (history(json!([1e30, 1]), json!(["a"])), "too large"),
            (
                history(json!([1, 1, 1]), json!(["a"])),
                "input history: shape must be",
            ),
            (
                history(json!([]), json!(["a"])),
                "input history: shape must be",
            ),
            (
                history(json!([1, 1]), json!([3])),
                "input history: element 0 is 3, not a string",
            ),
            (
                history(json!([65, 0]), json!([])),
                "input history (its first dimension) must hold 1 to 64 requests",
            ),
            (
                history(json!([0, 2]), json!([])),
                "must hold 1 to 64 requests",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "FP32", "data": [1.5]}]}),
                "input history: datatype must be BYTES, got FP32",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "STRING", "data": ["a"]}]}),
                "unknown datatype \"STRING\"",
            ),
            (json!({"inputs": []}), "missing input history"),
            (
                h(json!({"name": "hist", "shape": [1], "datatype": "BYTES", "data": ["a"]})),
                "unknown input \"hist\"",
            ),
            (
                h(json!({"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"]})),
                "input history: given twice",
            ),
            (
                h(
                    json!({"name": "context", "shape": [2], "datatype": "BYTES", "data": ["{}", "{}"]}),
                ),
                "input context: shape must be [1] or [1, 1]",
            ),
            (
                h(
                    json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{\"hour\": NaN}"]}),
                ),
                "input context: element 0:",
            ),
            (
                h(json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["[1]"]})),
                "input context: element 0:",
            ),
            (
                h(
                    json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{\"a\": 1, \"a\": 2}"]}),
                ),
                "duplicate context feature `a`",
            ),
            (
                h(json!({"name": "k", "shape": [1], "datatype": "FP32", "data": [2.5]})),
                "input k: datatype must be INT8 or",
            ),
            (
                h(json!({"name": "k", "shape": [1], "datatype": "INT32", "data": [-2]})),
                "input k: -2 is not a non-negative integer",
            ),
            (
                h(json!({"name": "k", "shape": [1], "datatype": "INT32", "data": [2.5]})),
                "input k: 2.5 is not",
            ),
            (
                h(json!({"name": "k", "shape": [1, 1], "datatype": "INT32", "data": [2]})),
                "input k: shape must be [1] or []",
            ),
            (
                h(json!({"name": "k", "shape": [2], "datatype": "INT32", "data": [2]})),
                "input k: shape [2] holds 2 elements, but data has 1",
            ),
            (
                h(json!({"name": "k", "shape": [0], "datatype": "INT32", "data": []})),
                "input k: shape must be [1] or []",
            ),
            (
                h(
                    json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{}"], "parameters": {"binary_data_size": 8}}),
                ),
                "input context: binary and shared-memory",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "logits"}]}),
                "unknown output \"logits\"",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "items"}, {"name": "items"}]}),
                "requested twice",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": []}),
                "outputs, when given",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "items", "parameters": {"classification": 3}}]}),
                "classification",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1.5], "datatype": "BYTES", "data": ["a"]}]}),
                "inputs[0].shape[0]",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"], "extra": 1}]}),
                "unknown field `extra`",
            ),
            (
                json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "parameters": {"k": "3"}}),
                "parameters.k",
            ),
        ];
        for (body, expected) in cases {
            let e = rows(body.clone()).unwrap_err();
            assert!(
                e.contains(expected),
                "{body}\n  gave {e:?}\n  expected {expected:?}"
            );
        }
        let mut both = history(json!([1]), json!(["a"]));
        both["parameters"] = json!({"k": 3});
        both["inputs"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "k", "shape": [], "datatype": "INT32", "data": [3]}));
        assert!(rows(both).unwrap_err().contains("give it once"));
    }
}
