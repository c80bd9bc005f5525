//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! Operations come from the `#[utoipa::path]` attribute on each handler (`http/handlers/`) and
//! bodies from the request and response types themselves (`ToSchema`), so the
//! document moves with the code. Three things are added here, where the derive cannot see them:
//! - schemas of the types with hand-written deserializers (item ids, history entries, context
//!   values), written to accept exactly what those deserializers accept;
//! - the answers every operation of a kind can give (a body that is not JSON, too large, too slow;
//!   admin without a token; the server starting or stopping), added once instead of per route;
//! - this deployment's facts, read at each request: the configured limits (max_k, max_history...)
//!   and the default model's behaviours and context features. A request the document allows is
//!   then one the server accepts, which `scripts/check-openapi.sh` holds it to (schemathesis).
use super::error::ErrorBody;
use super::handlers::{evaluate, events, health, models, recommend, v2_infer};
use super::state::AppState;
use crate::model::{ContextFeature, ContextValue, HistoryEntry, ItemId};
use serde_json::{json, Value};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seqserve",
        description = "Recommendations from a Transformer user-behaviour-sequence encoder, and their evaluation. \
Admin operations (bearer token) and /metrics are served on admin.port when it is set, else on the public port. \
Limits and the default model's behaviours and context features in this document are this server's own.",
    ),
    paths(
        recommend::recommend,
        recommend::recommend_batch,
        v2_infer::infer,
        v2_infer::infer_version,
        events::post_events,
        events::get_history,
        events::erase_user,
        models::list,
        models::one,
        models::v2_metadata,
        models::v2_ready,
        models::v2_version,
        models::v2_version_ready,
        models::load,
        models::unload,
        models::set_default_version,
        models::set_default_model,
        models::set_split,
        models::remove_split,
        evaluate::start,
        evaluate::status,
        evaluate::cancel,
        evaluate::delete,
        health::metrics,
        health::live,
        health::ready,
        health::v2_live,
        health::v2_ready,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonAnswers),
    tags(
        (name = "inference", description = "Ranked recommendations"),
        (name = "models", description = "Which models and versions serve, and managing them"),
        (name = "evaluation", description = "Offline quality on labelled holdouts"),
        (name = "history", description = "Users' event histories kept by the service"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// This server's OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
pub async fn openapi_json(
    axum::extract::State(st): axum::extract::State<std::sync::Arc<AppState>>,
) -> axum::Json<Value> {
    axum::Json(document(&st))
}

/// The document with this deployment's limits and default model filled in.
pub fn document(st: &AppState) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let default = st.registry.exact(&st.registry.default_model(), None).ok();
    let manifest = default.as_ref().map(|s| &*s.manifest);
    refine(
        &mut doc,
        &st.cfg.limits,
        &st.cfg.admin,
        &st.cfg.history,
        manifest,
    )
    .expect("every schema refine() patches exists (unit-tested)");
    doc
}

/// Sets `value` at `pointer` (a JSON pointer into the document), failing when its parent is
/// missing: a renamed field must break the unit test, not silently leave a limit out.
fn set(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(format!("no object at {parent} in the OpenAPI document")),
    }
}

fn refine(
    doc: &mut Value,
    l: &crate::serve::config::LimitsSection,
    a: &crate::serve::config::AdminSection,
    h: &crate::serve::config::HistorySection,
    manifest: Option<&crate::model::Manifest>,
) -> Result<(), String> {
    let given =
        |field: &str, ty: &str| json!({"required": [field], "properties": {field: {"type": ty}}});
    let name = json!(crate::model::repository::NAME_PATTERN);
    let user_key = json!({"oneOf": [
        {"type": "integer", "minimum": 0, "maximum": crate::model::MAX_INTEGER_ITEM_ID},
        {"type": "string", "minLength": 1, "maxLength": crate::serve::config::MAX_USER_KEY},
    ]});
    // Pointers below /components/schemas/.
    let facts = [
        ("RecommendRequest/properties/k/maximum", json!(l.max_k)),
        (
            "RecommendRequest/properties/history/maxItems",
            json!(l.max_history),
        ),
        ("RecommendRequest/properties/candidates/minItems", json!(1)),
        (
            "RecommendRequest/properties/candidates/maxItems",
            json!(l.max_candidates),
        ),
        (
            "RecommendRequest/properties/exclude/maxItems",
            json!(l.max_exclude),
        ),
        (
            "RecommendRequest/properties/timeout_ms/maximum",
            json!(crate::serve::config::MAX_TIMEOUT_MS),
        ),
        ("BatchRequest/properties/requests/minItems", json!(1)),
        // Users and event ids: an integer as item ids take them, or a string of up to
        // MAX_USER_KEY characters (longer than an item id may be).
        ("EventIn/properties/user", user_key.clone()),
        (
            "EventIn/properties/event_id",
            json!({"oneOf": [user_key["oneOf"][0], user_key["oneOf"][1], {"type": "null"}]}),
        ),
        (
            "EventsRequest/properties/events/maxItems",
            json!(h.max_events_per_request),
        ),
        (
            "BatchRequest/properties/requests/maxItems",
            json!(l.max_batch_requests),
        ),
        (
            "EvaluateRequest/properties/k/items",
            json!({"type": "integer", "minimum": 1, "maximum": l.max_k}),
        ),
        (
            "EvaluateRequest/properties/cases/maxItems",
            json!(a.max_evaluation_cases),
        ),
        // The same model twice is refused (JSON Schema can only say: not the same object twice).
        ("EvaluateRequest/properties/models/uniqueItems", json!(true)),
        (
            "EvaluateRequest/properties/holdout/pattern",
            json!(crate::serve::evaluation::cases::HOLDOUT_NAME_PATTERN),
        ),
        // Rules across fields, which the derive cannot state: exactly one of holdout and cases;
        // not both model and models; version only with model (null counts as absent, as serde
        // reads it).
        (
            "EvaluateRequest/oneOf",
            json!([given("holdout", "string"), given("cases", "array")]),
        ),
        (
            "EvaluateRequest/allOf",
            json!([
                {"if": given("version", "string"), "then": given("model", "string")},
                {"not": {"allOf": [given("model", "string"), given("models", "array")]}},
            ]),
        ),
        (
            "Split/properties/arms/contains",
            json!({"type": "object", "properties": {"weight": {"minimum": 1}}, "required": ["weight"]}),
        ),
        // Split arms name models and versions as repository::check_name has them.
        ("Arm/properties/model/pattern", name.clone()),
        ("Arm/properties/version/pattern", name),
        // The KServe v2 tensors: the names and datatypes the handler knows, shapes of at most two
        // non-negative dimensions (what every input takes). That a shape's product is the
        // number of elements in `data` is beyond JSON Schema (see scripts/schemathesis.toml).
        ("V2InferParameters/properties/k/maximum", json!(l.max_k)),
        ("V2InferRequest/properties/inputs/minItems", json!(1)),
        (
            "V2InferRequest/properties/inputs/maxItems",
            json!(v2_infer::INPUTS.len()),
        ),
        ("V2InferRequest/properties/outputs/minItems", json!(1)),
        (
            "V2InferRequest/properties/outputs/maxItems",
            json!(v2_infer::OUTPUTS.len()),
        ),
        ("V2InferInput/properties/name/enum", json!(v2_infer::INPUTS)),
        (
            "V2InferInput/properties/datatype/enum",
            json!(v2_infer::DATATYPES),
        ),
        ("V2InferInput/properties/shape/maxItems", json!(2)),
        ("V2InferInput/properties/shape/items/minimum", json!(0)),
        (
            "V2RequestedOutput/properties/name/enum",
            json!(v2_infer::OUTPUTS),
        ),
        (
            "LoadOptions/allOf",
            json!([{
                "if": {"required": ["retire_previous"], "properties": {"retire_previous": {"const": true}}},
                "then": {"required": ["default"], "properties": {"default": {"const": true}}},
            }]),
        ),
    ];
    for (pointer, value) in facts {
        set(doc, &format!("/components/schemas/{pointer}"), value)?;
    }
    // The load options may be left out altogether (no body: load without switching).
    set(
        doc,
        "/paths/~1models~1{name}~1versions~1{version}/post/requestBody/required",
        json!(false),
    )?;
    links(doc)?;
    // A user in a path: 1 to MAX_USER_KEY characters.
    for (path, item) in doc["paths"].as_object_mut().expect("paths").iter_mut() {
        if !path.starts_with("/users/") {
            continue;
        }
        for op in item.as_object_mut().expect("path item").values_mut() {
            for p in op["parameters"].as_array_mut().into_iter().flatten() {
                if p["in"] == "path" {
                    p["schema"]["minLength"] = json!(1);
                    p["schema"]["maxLength"] = json!(crate::serve::config::MAX_USER_KEY);
                }
            }
        }
    }
    // Path parameters that name models, versions and splits follow repository::check_name.
    for (path, item) in doc["paths"].as_object_mut().expect("paths").iter_mut() {
        if !(path.starts_with("/models/")
            || path.starts_with("/splits/")
            || path.starts_with("/v2/models/"))
        {
            continue;
        }
        for op in item.as_object_mut().expect("path item").values_mut() {
            for p in op["parameters"].as_array_mut().into_iter().flatten() {
                if p["in"] == "path" {
                    p["schema"]["pattern"] = json!(crate::model::repository::NAME_PATTERN);
                }
            }
        }
    }
    if let Some(m) = manifest {
        // Behaviours: the default model's names, or none at all (null) for a model without them.
        let mut names: Vec<Value> = m.behaviours.iter().map(|b| json!(b)).collect();
        names.push(Value::Null);
        set(
            doc,
            "/components/schemas/HistoryEvent/properties/behavior",
            json!({"enum": names, "description": "A behaviour of the model (null: none)"}),
        )?;
        let context = context_schema(&m.context);
        for schema in ["RecommendRequest", "HoldoutCase"] {
            set(
                doc,
                &format!("/components/schemas/{schema}/properties/context"),
                context.clone(),
            )?;
        }
    }
    Ok(())
}

/// OpenAPI links: which answer's fields name what another operation takes (a client, or
/// schemathesis' stateful phase, follows them: start an evaluation, then poll or cancel it).
fn links(doc: &mut Value) -> Result<(), String> {
    let job = json!({"id": "$response.body#/id"});
    let version = json!({"name": "$response.body#/name", "version": "$response.body#/version"});
    let split = json!({"name": "$response.body#/split"});
    let model = json!({"name": "$response.body#/model"});
    let table = [
        (
            "/evaluate",
            "post",
            "202",
            vec![
                ("get_evaluation", &job),
                ("cancel_evaluation", &job),
                ("delete_evaluation", &job),
            ],
        ),
        (
            "/models/{name}/versions/{version}",
            "post",
            "201",
            vec![
                ("v2_version_metadata", &version),
                ("v2_version_ready", &version),
                ("unload_version", &version),
            ],
        ),
        (
            "/models/{name}/versions/{version}",
            "post",
            "200",
            vec![
                ("v2_version_metadata", &version),
                ("unload_version", &version),
            ],
        ),
        (
            "/splits/{name}",
            "put",
            "200",
            vec![("get_model", &split), ("remove_split", &split)],
        ),
        (
            "/models/{name}/default",
            "put",
            "200",
            vec![("get_model", &model), ("v2_model_ready", &model)],
        ),
    ];
    for (path, method, status, targets) in table {
        let mut out = serde_json::Map::new();
        for (op, params) in targets {
            out.insert(
                op.to_string(),
                json!({"operationId": op, "parameters": params}),
            );
        }
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}/links",
            path.replace('/', "~1")
        );
        set(doc, &pointer, Value::Object(out))?;
    }
    Ok(())
}

/// The context object one model accepts: its features, each optional, nothing else.
fn context_schema(features: &[ContextFeature]) -> Value {
    let mut props = serde_json::Map::new();
    for f in features {
        let schema = match f {
            // `25` and `"25"` name the same category (see model::context).
            ContextFeature::Categorical { values, .. } => {
                let mut allowed: Vec<Value> = values.iter().map(|v| json!(v)).collect();
                allowed.extend(
                    values
                        .iter()
                        .filter_map(|v| v.parse::<i64>().ok().filter(|n| n.to_string() == *v))
                        .map(|n| json!(n)),
                );
                json!({"enum": allowed})
            }
            ContextFeature::Numeric { .. } => json!({"type": "number"}),
        };
        props.insert(f.name().to_string(), schema);
    }
    json!({
        "type": "object",
        "description": "Context features of the default model (absent ones count as missing)",
        "properties": props,
        "additionalProperties": false,
    })
}

/// Answers shared by operations of a kind, added to each once.
struct CommonAnswers;

fn error_answer(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
}

impl Modify for CommonAnswers {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in api.paths.paths.iter_mut() {
            let health = path.contains("/health/") || path == "/openapi.json";
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let mut add = |status: &str, what: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(error_answer(what)));
                };
                if op.request_body.is_some() {
                    add("400", "The body is not well-formed JSON");
                    add(
                        "408",
                        "The body did not arrive in time (server.body_read_timeout_ms)",
                    );
                    add("413", "The body is larger than server.body_limit_bytes");
                    add(
                        "415",
                        "The body is not `Content-Type: application/json`, or is compressed",
                    );
                    add(
                        "422",
                        "The body is JSON but not a valid request (the message names the field)",
                    );
                }
                if op.security.is_some() {
                    add("401", "Missing or wrong bearer token");
                    add("403", "Admin operations are disabled (no admin.token)");
                }
                if !health && path != "/metrics" {
                    add("503", "The server is starting or shutting down");
                }
            }
        }
    }
}

fn item_id_schema() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(crate::model::MAX_INTEGER_ITEM_ID as usize)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(crate::model::MAX_ITEM_ID_CHARS)),
        )
        .description(Some(
            "An item id: an integer from 0 to 2^53 - 1, or a string of 1 to 128 characters",
        ))
        .into()
}

impl PartialSchema for ItemId {
    fn schema() -> RefOr<Schema> {
        item_id_schema().into()
    }
}

impl ToSchema for ItemId {}

/// `{item, behavior}`; `behavior` is refined per deployment to the default model's names.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HistoryEvent)]
#[allow(dead_code)] // a schema only: HistoryEntry's deserializer reads this shape
struct HistoryEventShape {
    item: ItemId,
    #[schema(required = false)]
    behavior: Option<String>,
}

impl PartialSchema for HistoryEntry {
    fn schema() -> RefOr<Schema> {
        Schema::OneOf(
            OneOfBuilder::new()
                .item(ItemId::schema())
                .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "HistoryEvent",
                )))
                .description(Some(
                    "A history entry: an item id, or {\"item\": id, \"behavior\": name}",
                ))
                .build(),
        )
        .into()
    }
}

impl ToSchema for HistoryEntry {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("HistoryEvent".into(), HistoryEventShape::schema()));
    }
}

impl PartialSchema for ContextValue {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Number, Type::String]))
            .description(Some("A context value: a number or a string"))
            .into()
    }
}

impl ToSchema for ContextValue {}

impl PartialSchema for crate::data::Split {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("A split, e.g. leave-last-1 or temporal:1700000000"))
            .into()
    }
}

impl ToSchema for crate::data::Split {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refined_schema_exists_in_the_generated_document() {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let cfg = crate::serve::config::Config::default();
        let manifest =
            crate::model::Manifest::read(std::path::Path::new("models/ml1m-ctx/model.json"))
                .unwrap();
        refine(
            &mut doc,
            &cfg.limits,
            &cfg.admin,
            &cfg.history,
            Some(&manifest),
        )
        .unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let req = &doc["components"]["schemas"]["RecommendRequest"]["properties"];
        assert_eq!(req["k"]["maximum"], json!(cfg.limits.max_k));
        assert_eq!(
            req["context"]["properties"]["gender"]["enum"],
            json!(["F", "M"])
        );
        // Numeric-looking categories accept the number too.
        assert!(req["context"]["properties"]["age"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!(25)));
    }
}
