//! POST /v2/models/{name}/infer (KServe v2 / Triton HTTP) over real HTTP: the same rankings as
//! /recommend/batch, every malformed tensor refused with a 4xx naming it, and NVIDIA's
//! tritonclient (tests/python/triton_client.py) as a client nobody here wrote.
mod common;

use common::server::{post, Server};
use serde_json::{json, Value};

/// A v2 body: `history` BYTES [B, L] padded with "", a context per request, k as a parameter.
fn v2_body(histories: &[Vec<&str>], contexts: &[Value], k: usize) -> Value {
    let width = histories.iter().map(Vec::len).max().unwrap_or(0);
    let data: Vec<&str> = histories
        .iter()
        .flat_map(|h| {
            h.iter()
                .copied()
                .chain(std::iter::repeat_n("", width - h.len()))
        })
        .collect();
    json!({
        "id": "req-7",
        "parameters": {"k": k},
        "inputs": [
            {"name": "history", "shape": [histories.len(), width], "datatype": "BYTES", "data": data},
            {"name": "context", "shape": [contexts.len()], "datatype": "BYTES",
             "data": contexts.iter().map(Value::to_string).collect::<Vec<_>>()},
        ],
    })
}

fn output<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name}: {v}"))
}

/// The rows of a v2 answer as (item, score) lists, padding included.
fn v2_rows(v: &Value) -> Vec<Vec<(String, f64)>> {
    let (items, scores) = (output(v, "items"), output(v, "scores"));
    assert_eq!(items["datatype"], "BYTES");
    assert_eq!(scores["datatype"], "FP32");
    assert_eq!(items["shape"], scores["shape"]);
    let width = items["shape"][1].as_u64().unwrap() as usize;
    let (i, s) = (
        items["data"].as_array().unwrap(),
        scores["data"].as_array().unwrap(),
    );
    assert_eq!(i.len(), s.len());
    i.chunks(width.max(1))
        .zip(s.chunks(width.max(1)))
        .map(|(i, s)| {
            i.iter()
                .zip(s)
                .map(|(i, s)| (i.as_str().unwrap().to_string(), s.as_f64().unwrap()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_batch_ranks_exactly_as_recommend_batch() {
    // Scores depend in their last bits on the model batch's shape, so both calls must form the
    // same batch: a 200 ms batching window keeps each call's four requests together even on a
    // busy machine (the default 500 µs could split them).
    let s = Server::start(&["--max-delay-us", "200000"]);
    let histories = vec![
        vec!["i3", "i9", "i4"],
        vec!["i12"],
        vec![],
        vec!["i7", "zz", "i21", "i30", "i2", "i40"],
    ];
    let contexts = vec![
        json!({"gender": "F", "device": "web", "hour": 20}),
        json!({}),
        json!({"device": "ios"}),
        json!({"hour": 7.5, "gender": "M"}),
    ];
    let (st, v2, _) = post(
        &s.url("/v2/models/test/infer"),
        v2_body(&histories, &contexts, 7),
    )
    .await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(
        (&v2["model_name"], &v2["model_version"], &v2["id"]),
        (&json!("test"), &json!("0"), &json!("req-7"))
    );
    assert_eq!(output(&v2, "items")["shape"], json!([4, 7]));
    let requests: Vec<Value> = histories
        .iter()
        .zip(&contexts)
        .map(|(h, c)| json!({"history": h, "context": c, "k": 7}))
        .collect();
    let (st, batch, _) = post(&s.url("/recommend/batch"), json!({ "requests": requests })).await;
    assert_eq!(st, 200, "{batch}");
    let want: Vec<Vec<(String, f64)>> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(common::ranked_items)
        .collect();
    // Both answers are the same f32s written by the same serializer: equal, not merely close.
    assert_eq!(v2_rows(&v2), want);
    // The version route, and `outputs` honoured (only scores, only once).
    let mut body = v2_body(&histories, &contexts, 7);
    body["outputs"] = json!([{"name": "scores", "parameters": {"binary_data": false}}]);
    let (st, v, _) = post(&s.url("/v2/models/test/versions/0/infer"), body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1, "{v}");
    let scores: Vec<f64> = want.iter().flatten().map(|(_, s)| *s).collect();
    assert_eq!(output(&v, "scores")["data"], json!(scores));
    // One request as shape [L], k as an INT32 input: /recommend's answer.
    let (_, one, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i5", "i6"], "k": 4}),
    )
    .await;
    let (st, v, _) = post(
        &s.url("/v2/models/test/infer"),
        json!({"inputs": [
            {"name": "history", "shape": [2], "datatype": "BYTES", "data": ["i5", "i6"]},
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [4]}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("id").is_none(), "{v}");
    // Both batches of one (the only traffic): equal.
    assert_eq!(v2_rows(&v), vec![common::ranked_items(&one)]);
}

/// Rows shorter than k (the catalogue ran out after leaving out the seen items) are padded to the
/// longest row with "" and the lowest f32: a tensor is rectangular.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_rows_are_padded_to_the_longest() {
    let s = Server::start(&[]);
    let histories = vec![vec!["i1", "i2", "i3"], vec![]];
    let (st, v, _) = post(
        &s.url("/v2/models/test/infer"),
        v2_body(&histories, &[json!({}), json!({})], 60),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(output(&v, "items")["shape"], json!([2, 60]));
    let rows = v2_rows(&v);
    for (row, history) in rows.iter().zip(&histories) {
        let (_, want, _) = post(&s.url("/recommend"), json!({"history": history, "k": 60})).await;
        let want = common::ranked_items(&want);
        assert_eq!(want.len(), 60 - history.len());
        // A /recommend alone is a batch of one: the same items, scores equal but for the last bits
        // (the kernels' summation order depends on the batch's shape; tests/serve.rs allows the
        // same between /recommend and the offline CLI).
        for ((item, score), (want_item, want_score)) in row.iter().zip(&want) {
            assert_eq!(item, want_item);
            assert!((score - want_score).abs() < 1e-5, "{score} vs {want_score}");
        }
        for (item, score) in &row[want.len()..] {
            assert_eq!((item.as_str(), *score as f32), ("", f32::MIN));
        }
    }
}

/// Every malformed tensor gets a 4xx JSON error naming what is wrong; never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tensors_get_a_4xx_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    common::random_model(60, 1, 5).save(dir.path()).unwrap();
    let s = Server::start_env(
        dir,
        &[],
        &[
            ("SEQSERVE__LIMITS__MAX_HISTORY", "4"),
            ("SEQSERVE__LIMITS__MAX_BATCH_REQUESTS", "3"),
            ("SEQSERVE__LIMITS__MAX_K", "20"),
        ],
    );
    let h = |shape: Value, data: Value| json!({"inputs": [{"name": "history", "shape": shape, "datatype": "BYTES", "data": data}]});
    let with = |extra: Value| {
        let mut b = h(json!([1, 1]), json!(["i1"]));
        b["inputs"].as_array_mut().unwrap().push(extra);
        b
    };
    let k = |k: Value| {
        let mut b = h(json!([1]), json!(["i1"]));
        b["parameters"] = json!({ "k": k });
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (h(json!([2, 2]), json!(["i1", "i2", "i3"])), 422, "input history: shape [2, 2] holds 4 elements, but data has 3"),
        (h(json!([1, -3]), json!([])), 422, "input history: shape [1, -3] has a negative dimension"),
        (h(json!([4294967296u64, 4294967296u64]), json!(["i1"])), 422, "input history: shape [4294967296, 4294967296] holds more than 2^64 elements"),
        (h(json!([1e300, 1]), json!(["i1"])), 422, "input history: shape"),
        (h(json!([1, 1, 1]), json!(["i1"])), 422, "input history: shape must be [batch, length] or [length]"),
        (h(json!([1]), json!([17])), 422, "input history: element 0 is 17, not a string"),
        (json!({"inputs": [{"name": "history", "shape": [1], "datatype": "INT64", "data": [1]}]}), 422, "input history: datatype must be BYTES, got INT64"),
        (json!({"inputs": [{"name": "history", "shape": [1], "datatype": "TEXT", "data": ["i1"]}]}), 422, "input history: unknown datatype \"TEXT\""),
        (json!({"inputs": [{"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{}"]}]}), 422, "missing input history"),
        (json!({"inputs": []}), 422, "missing input history"),
        (json!({"parameters": {"k": 3}}), 422, "missing field `inputs`"),
        (with(json!({"name": "user", "shape": [1], "datatype": "BYTES", "data": ["u"]})), 422, "unknown input \"user\""),
        (with(json!({"name": "context", "shape": [2], "datatype": "BYTES", "data": ["{}", "{}"]})), 422, "input context: shape must be [1] or [1, 1]"),
        (with(json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{\"hour\": NaN}"]})), 422, "input context: element 0"),
        (with(json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{\"hour\": \"late\"}"]})), 422, "request 0 (row 0 of history): context feature \"hour\""),
        (with(json!({"name": "context", "shape": [1], "datatype": "BYTES", "data": ["{\"mood\": 1}"]})), 422, "unknown context feature \"mood\""),
        (with(json!({"name": "k", "shape": [1], "datatype": "FP32", "data": [3.5]})), 422, "input k: datatype must be"),
        (with(json!({"name": "k", "shape": [1], "datatype": "INT64", "data": [-1]})), 422, "input k: -1 is not a non-negative integer"),
        (h(json!([4, 1]), json!(["i1", "i2", "i3", "i4"])), 422, "input history (its first dimension) must hold 1 to 3 requests (limits.max_batch_requests), got 4"),
        (h(json!([1, 5]), json!(["i1", "i2", "i3", "i4", "i5"])), 422, "request 0 (row 0 of history): history has 5 items; the limit is 4"),
        (h(json!([1]), json!(["x".repeat(129)])), 422, "history: item ids must be 1 to 128 characters"),
        (k(json!(0)), 422, "k must be between 1 and 20, got 0"),
        (k(json!(21)), 422, "k must be between 1 and 20, got 21"),
        (k(json!(2.5)), 422, "parameters.k"),
        (k(json!(-4)), 422, "parameters.k"),
        (json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["i1"]}], "outputs": [{"name": "embedding"}]}), 422, "unknown output \"embedding\""),
        (json!({"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["i1"], "parameters": {"shared_memory_region": "r"}}]}), 422, "input history: binary and shared-memory tensor data are not supported"),
    ];
    let c = reqwest::Client::new();
    for (body, status, message) in cases {
        let (st, v, _) = post(&s.url("/v2/models/test/infer"), body.clone()).await;
        assert_eq!(st, status, "{body} -> {v}");
        assert_eq!(v["code"], "validation", "{body} -> {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(message),
            "{body}\n  -> {error}\n  expected {message:?}"
        );
    }
    // Not a model, not a version.
    let ok = h(json!([1]), json!(["i1"]));
    let (st, v, _) = post(&s.url("/v2/models/nope/infer"), ok.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("model_not_found")),
        "{v}"
    );
    let (st, v, _) = post(&s.url("/v2/models/test/versions/9/infer"), ok.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("model_not_found")),
        "{v}"
    );
    // Raw bodies: NaN and an overflowing number are not JSON (400); binary tensors (415) and a
    // declared non-JSON type (415) are refused; no Content-Type at all is read as JSON (as
    // Triton does, and tritonclient sends none).
    let raw = |body: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let mut r = c.post(s.url("/v2/models/test/infer")).body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r
    };
    let json_type: &[(&str, &str)] = &[("content-type", "application/json")];
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            raw(r#"{"parameters": {"k": NaN}, "inputs": []}"#, json_type),
            400,
            "malformed JSON",
        ),
        (
            raw(
                r#"{"inputs": [{"name": "k", "shape": [1], "datatype": "INT64", "data": [1e999]}]}"#,
                json_type,
            ),
            400,
            "malformed JSON",
        ),
        (
            raw(
                r#"{"inputs": [{"name": "history", "shape": [Infinity], "datatype": "BYTES", "data": []}]}"#,
                json_type,
            ),
            400,
            "malformed JSON",
        ),
        (
            raw(
                "{\"inputs\": []}\u{0}\u{0}\u{0}\u{1}",
                &[("inference-header-content-length", "14")],
            ),
            415,
            "binary_data=False",
        ),
        (
            raw(r#"{"inputs": []}"#, &[("content-type", "text/plain")]),
            415,
            "application/json",
        ),
        (
            raw(
                r#"{"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["i1"]}]}"#,
                &[],
            ),
            200,
            "",
        ),
    ];
    for (req, status, message) in cases {
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(st, status, "{v}");
        if status != 200 {
            assert!(v["error"].as_str().unwrap().contains(message), "{v}");
        }
    }
}

/// tritonclient[http] from PyPI, installed by scripts/ops-tools.sh into its own cached venv:
/// liveness, readiness, metadata, and a batch whose items and scores must equal /recommend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_ranks_as_recommend_does() {
    let root = env!("CARGO_MANIFEST_DIR");
    let tools = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(format!("{root}/scripts/ops-tools.sh"))
            .arg("triton")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    if !tools.status.success() {
        eprintln!(
            "SKIP: the tritonclient venv could not be created (scripts/ops-tools.sh triton): {}",
            String::from_utf8_lossy(&tools.stderr)
        );
        return;
    }
    let python = format!("{}/python", String::from_utf8_lossy(&tools.stdout).trim());
    let s = Server::start(&[]);
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(format!("{root}/tests/python/triton_client.py"))
            .args([base.as_str(), "test", "0"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    common::assert_ran(&out);
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["compared"], 24, "{seen}");
    assert_eq!(seen["binary_refusal"]["status"], "415", "{seen}");
    assert_eq!(seen["shape_refusal"]["status"], "422", "{seen}");
}
