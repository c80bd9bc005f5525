//! The server over real HTTP: the real binary on an ephemeral port, with a small random model.
mod common;

use common::server::{blocking_get, holdout_lines, metric_value, metrics_text, post, Server};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_match_the_offline_cli() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::random_model(60, 2, 17);
    model.save(dir.path()).unwrap();
    let model_dir = dir.path().to_path_buf();
    let s = Server::start_with_model(dir, &[]);
    let (status, v, headers) = post(
        &s.url("/recommend"),
        json!({"history": [{"item": "i3", "behavior": "pv"}, {"item": "i9", "behaviour": "cart"}, {"item": "zz", "behavior": "pv"}, {"item": "i4", "behavior": "buy"}],
               "context": {"gender": "F", "device": "web", "hour": 20}, "k": 7}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["unknown_items"], json!(["zz"]));
    assert!(headers.contains_key("x-request-id") && headers.contains_key("x-inference-time"));
    let out = Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(["recommend", "--json", "--device", "cpu", "--k", "7"])
        .arg("--model")
        .arg(&model_dir)
        .args(["--history", "i3,i9,zz,i4", "--behaviours", "pv,cart,pv,buy"])
        .args(["--context", "gender=F,device=web,hour=20"])
        .output()
        .unwrap();
    common::assert_ran(&out);
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (common::ranked_items(&v), common::ranked_items(&cli));
    assert_eq!(a.len(), 7);
    for ((ia, sa), (ib, sb)) in a.iter().zip(&b) {
        assert_eq!(ia, ib);
        assert!((sa - sb).abs() < 1e-5, "{sa} vs {sb}");
    }
    // Seen items are excluded by default and allowed on request.
    assert!(a
        .iter()
        .all(|(i, _)| !["i3", "i9", "i4"].contains(&i.as_str())));

    // Candidates outside the catalogue are reported, not silently dropped; an empty candidate
    // list or a context feature given twice is refused.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_seqserve"))
            .args(["recommend", "--json", "--device", "cpu", "--history", "i3"])
            .arg("--model")
            .arg(&model_dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["--candidates", "i5,zz"]);
    common::assert_ran(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unknown_candidates"], json!(["zz"]));
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    for (args, needle) in [
        (
            &["--candidates", " , "][..],
            "--candidates names no item ids",
        ),
        (
            &["--context", "gender=F,gender=M"][..],
            "--context names \"gender\" twice",
        ),
    ] {
        let out = cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_load_is_batched_and_queue_overflow_gives_429() {
    let s = Server::start(&["--max-batch-size", "16", "--max-delay-us", "20000"]);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (c, url) = (client.clone(), s.url("/recommend"));
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .json(&json!({"history": [format!("i{}", 1 + i % 50)], "k": 5}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let count = metric_value(&s, "seqserve_batch_size_count").await;
    let sum = metric_value(&s, "seqserve_batch_size_sum").await;
    assert!(
        count >= 1.0 && sum / count > 1.0,
        "mean batch size {} over {count} batches",
        sum / count
    );
    drop(s);

    // A queue of 2 with one-request batches that each wait 50 ms: a burst must overflow.
    let s = Server::start(&[
        "--max-batch-size",
        "1",
        "--max-queue-size",
        "2",
        "--max-delay-us",
        "50000",
    ]);
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (c, url) = (client.clone(), s.url("/recommend"));
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&json!({"history": ["i1"], "timeout_ms": 10000}))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry)
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let ok = codes.iter().filter(|c| c.0 == 200).count();
    let busy: Vec<_> = codes.iter().filter(|c| c.0 == 429).collect();
    assert!(ok >= 1, "accepted requests must still succeed: {codes:?}");
    assert!(!busy.is_empty(), "expected 429s: {codes:?}");
    assert!(busy.iter().all(|c| c.1), "429 must carry Retry-After");
    assert_eq!(ok + busy.len(), codes.len(), "{codes:?}");
    assert!(
        metric_value(
            &s,
            "seqserve_rejected_requests_total{reason=\"queue_full\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_deadline_gives_504_without_using_the_model() {
    // Batches wait 300 ms for company, so a 5 ms deadline cannot be met.
    let s = Server::start(&["--max-delay-us", "300000"]);
    let before = metric_value(&s, "seqserve_batch_size_count").await;
    let t0 = Instant::now();
    let (status, v, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i1"], "timeout_ms": 5}),
    )
    .await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["code"], "deadline_exceeded");
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "504 must come at the deadline, not after the batch"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        metric_value(&s, "seqserve_batch_size_count").await,
        before,
        "the model must not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_is_dropped_before_compute() {
    // Batches wait 300 ms; the client gives up after 50 ms and closes its connection.
    let s = Server::start(&["--max-delay-us", "300000"]);
    let before = metric_value(&s, "seqserve_batch_size_count").await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let r = c
        .post(s.url("/recommend"))
        .json(&json!({"history": ["i1"], "timeout_ms": 5000}))
        .send()
        .await;
    assert!(r.is_err(), "the client should have timed out");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        metric_value(
            &s,
            "seqserve_rejected_requests_total{reason=\"client_gone\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric_value(&s, "seqserve_batch_size_count").await,
        before,
        "the model must not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_the_right_status_and_message() {
    let s = Server::start(&[]);
    let c = reqwest::Client::new();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/recommend",
            json!({"history": ["i1"], "k": 0}),
            422,
            "k must be between 1 and 100",
        ),
        (
            "/recommend",
            json!({"history": ["i1"], "k": 101}),
            422,
            "k must be between",
        ),
        (
            "/recommend",
            json!({"histroy": ["i1"]}),
            422,
            "unknown field `histroy`",
        ),
        ("/recommend", json!({"history": [-3]}), 422, "history"),
        ("/recommend", json!({"history": "i1"}), 422, "history"),
        (
            "/recommend",
            json!({"history": ["i1"], "context": {"colour": "red"}}),
            422,
            "unknown context feature \"colour\"",
        ),
        (
            "/recommend",
            json!({"history": ["i1"], "context": {"hour": "noon"}}),
            422,
            "hour",
        ),
        (
            "/recommend",
            json!({"history": ["i1"], "context": {"gender": "X"}}),
            422,
            "unknown value \"X\"",
        ),
        (
            "/recommend",
            json!({"history": [{"item": "i1", "behavior": "like"}]}),
            422,
            "unknown behaviour \"like\"",
        ),
        (
            "/recommend",
            json!({"history": ["i1"], "candidates": []}),
            422,
            "candidates must hold",
        ),
        (
            "/recommend",
            json!({"history": [""]}),
            422,
            "item ids must be 1 to 128",
        ),
        (
            "/recommend",
            json!({"history": ["i1"], "timeout_ms": 0}),
            422,
            "timeout_ms",
        ),
        (
            "/recommend/batch",
            json!({"requests": []}),
            422,
            "requests must hold 1 to 64",
        ),
        (
            "/recommend/batch",
            json!({"requests": [{"history": ["i1"]}, {"k": 0}]}),
            422,
            "requests[1]: k must be",
        ),
    ];
    for (path, body, status, needle) in cases {
        let r = c.post(s.url(path)).json(&body).send().await.unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(got, status, "{body} -> {v}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{body} -> {v}"
        );
        assert!(v["code"].is_string());
    }
    let raw = |body: &'static str, ct: &'static str| {
        c.post(s.url("/recommend"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_eq!(
        raw("{\"history\": [1", "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        raw("{\"history\": [1]}", "text/plain")
            .await
            .unwrap()
            .status(),
        415
    );
    let big = format!("{{\"history\": [{}1]}}", "1,".repeat(600_000));
    let r = c
        .post(s.url("/recommend"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );
    let r = c.get(s.url("/recommend")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
    assert_eq!(c.get(s.url("/nowhere")).send().await.unwrap().status(), 404);
    // Valid edge cases: cold start, all-unknown history, candidates re-ranking, exclusions, batch form.
    let (st, v, _) = post(&s.url("/recommend"), json!({"history": [], "k": 3})).await;
    assert_eq!((st, v["items"].as_array().unwrap().len()), (200, 3));
    let (st, v, _) = post(&s.url("/recommend"), json!({"history": ["nope", 12345678]})).await;
    assert_eq!(st, 200);
    assert_eq!(v["unknown_items"], json!(["nope", "12345678"]));
    let (st, v, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i1"], "candidates": ["i5", "i7", "i1", "zz"], "k": 10}),
    )
    .await;
    assert_eq!(st, 200);
    let got: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"].as_str().unwrap())
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["i5", "i7"], "candidates only, seen i1 excluded");
    assert_eq!(v["unknown_candidates"], json!(["zz"]));
    let (st, v, _) = post(&s.url("/recommend"), json!({"history": ["i1"], "candidates": ["i5", "i1"], "exclude_seen": false, "exclude": ["i5"]})).await;
    assert_eq!(st, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["item"], "i1");
    let (st, v, _) = post(
        &s.url("/recommend/batch"),
        json!({"requests": [{"history": ["i1"], "k": 2}, {"history": ["i2"], "k": 4}]}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["results"][1]["items"].as_array().unwrap().len(), 4);
    // Health routes and request ids.
    for p in [
        "/health/live",
        "/health/ready",
        "/v2/health/live",
        "/v2/health/ready",
    ] {
        assert_eq!(c.get(s.url(p)).send().await.unwrap().status(), 200, "{p}");
    }
    let r = c
        .get(s.url("/health/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

#[test]
fn shutdown_drains_in_flight_requests_and_exits_zero() {
    // Batches wait 400 ms, so the request is still queued when SIGTERM arrives.
    let mut s = Server::start(&["--max-delay-us", "400000"]);
    let url = s.url("/recommend");
    let ready = s.url("/health/ready");
    let inflight = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            post(&url, json!({"history": ["i1"], "timeout_ms": 5000}))
                .await
                .0
        })
    });
    std::thread::sleep(Duration::from_millis(100));
    s.sigterm();
    std::thread::sleep(Duration::from_millis(50));
    // The listener stays open while the queued request drains: readiness answers 503 (load
    // balancers must see it, not a refused connection), and new work is turned away with 503.
    assert_eq!(blocking_get(&ready), Ok(503), "readiness during drain");
    let url2 = s.url("/recommend");
    let (st, v, h) = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(post(&url2, json!({"history": ["i1"]})))
    })
    .join()
    .unwrap();
    assert_eq!(st, 503, "{v}");
    assert_eq!(h["connection"], "close");
    assert_eq!(
        inflight.join().unwrap(),
        200,
        "in-flight request must complete"
    );
    let status = s.terminate_wait();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(["serve", "--port", "0"])
        .env("SEQSERVE__BATCHING__MAX_BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batching.max_batch_size"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args([
            "serve",
            "--port",
            "0",
            "--model",
            "/no/such/model",
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/model"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_route_is_guarded_and_runs_jobs() {
    let c = reqwest::Client::new();
    let inline: Vec<Value> = holdout_lines(10)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // No token configured: refused, never open.
    let s = Server::start(&[]);
    let r = c
        .post(s.url("/evaluate"))
        .json(&json!({"cases": inline}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "admin_disabled");
    drop(s);

    let model_dir = tempfile::tempdir().unwrap();
    common::random_model(60, 2, 17)
        .save(model_dir.path())
        .unwrap();
    let holdouts = tempfile::tempdir().unwrap();
    std::fs::write(holdouts.path().join("small.jsonl"), holdout_lines(200)).unwrap();
    std::fs::write(holdouts.path().join("big.jsonl"), holdout_lines(30000)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jsonl"), holdout_lines(3)).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.jsonl"),
        holdouts.path().join("link.jsonl"),
    )
    .unwrap();
    let hd = holdouts.path().to_str().unwrap().to_string();
    let s = Server::start_env(
        model_dir,
        &["--max-batch-size", "1"],
        &[
            ("SEQSERVE__ADMIN__TOKEN", "s3cret"),
            ("SEQSERVE__ADMIN__HOLDOUT_DIR", &hd),
            ("SEQSERVE__ADMIN__MAX_INLINE_CASES", "50"),
        ],
    );
    let post = |body: Value, token: Option<&str>| {
        let mut rq = c.post(s.url("/evaluate")).json(&body);
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send()
    };
    // An admin call on a job: GET (status), POST …/cancel, DELETE.
    let job =
        |m: reqwest::Method, path: String| c.request(m, s.url(&path)).bearer_auth("s3cret").send();
    assert_eq!(
        post(json!({"cases": inline}), None).await.unwrap().status(),
        401
    );
    assert_eq!(
        post(json!({"cases": inline}), Some("s3cre"))
            .await
            .unwrap()
            .status(),
        401
    );
    // Small: answered directly.
    let r = post(json!({"cases": inline, "k": [5, 10]}), Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["cases"], 10);
    assert!(
        v["models"][0]["metrics"]["f1@10"]["mean"].is_number(),
        "{v}"
    );
    // Paths must stay inside the holdout directory.
    for (name, status) in [
        ("../x.jsonl", 422),
        ("/etc/passwd", 422),
        ("link.jsonl", 403),
        ("a//b.jsonl", 422),
        ("missing.jsonl", 404),
    ] {
        let r = post(json!({"holdout": name}), Some("s3cret"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}");
    }
    assert_eq!(
        post(
            json!({"holdout": "small.jsonl", "cases": inline}),
            Some("s3cret")
        )
        .await
        .unwrap()
        .status(),
        422
    );
    // Larger: a job with progress and a result.
    let r = post(json!({"holdout": "small.jsonl"}), Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    let done = loop {
        let v: Value = job(reqwest::Method::GET, format!("/evaluate/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "done" {
            break v;
        }
        assert_eq!(v["status"], "running", "{v}");
        assert!(t0.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["progress"]["done"], 200);
    assert_eq!(done["result"]["cases"], 200);
    let text = metrics_text(&s).await;
    // The file holdout has no provenance line: leakage could not be checked, and the gauges say so.
    assert!(
        text.contains(
            "seqserve_evaluation_metric{holdout=\"small.jsonl\",k=\"10\",leakage=\"unchecked\",metric=\"ndcg\""
        ),
        "gauges exported: {text}"
    );
    assert_eq!(
        job(reqwest::Method::GET, "/evaluate/eval-999".to_string())
            .await
            .unwrap()
            .status(),
        404
    );
    // Cancellable: a 30k-case job in one-case batches is stopped long before the end.
    let r = post(json!({"holdout": "big.jsonl"}), Some("s3cret"))
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = job(reqwest::Method::POST, format!("/evaluate/{id}/cancel"))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelling");
    let t0 = Instant::now();
    loop {
        let v: Value = job(reqwest::Method::GET, format!("/evaluate/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] != "running" {
            assert_eq!(v["status"], "cancelled", "{v}");
            assert!(v["progress"]["done"].as_u64().unwrap() < 30000);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Cancelling a finished job says what it is and changes nothing.
    let r = job(reqwest::Method::POST, format!("/evaluate/{id}/cancel"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["message"].as_str().unwrap().contains("nothing to cancel"));
    // DELETE removes it: GET and DELETE then answer 404.
    let r = job(reqwest::Method::DELETE, format!("/evaluate/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["status"].as_str(), v["previous_status"].as_str()),
        (Some("deleted"), Some("cancelled")),
        "{v}"
    );
    for m in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = job(m, format!("/evaluate/{id}")).await.unwrap();
        assert_eq!(r.status(), 404);
    }
    // DELETE on a running job: cancelled and gone at once; its slot comes back once it stops.
    let r = post(json!({"holdout": "big.jsonl"}), Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = job(reqwest::Method::DELETE, format!("/evaluate/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["previous_status"],
        "running"
    );
    let r = job(reqwest::Method::GET, format!("/evaluate/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let t0 = Instant::now();
    loop {
        let r = post(json!({"holdout": "big.jsonl"}), Some("s3cret"))
            .await
            .unwrap();
        if r.status() == 202 {
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            job(reqwest::Method::DELETE, format!("/evaluate/{id}"))
                .await
                .unwrap();
            break;
        }
        assert_eq!(
            r.status(),
            429,
            "the deleted job's slot is held only until it stops"
        );
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Live traffic is still served while and after evaluating.
    let (st, _, _) = post_json(&s.url("/recommend"), json!({"history": ["i1"]})).await;
    assert_eq!(st, 200);
}

async fn post_json(url: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    post(url, body).await
}

/// The document is this server's: its limits, and a route behind every operation it lists
/// (scripts/check-openapi.sh then holds every operation to it with schemathesis).
#[tokio::test]
async fn the_openapi_document_describes_this_server() {
    let dir = tempfile::tempdir().unwrap();
    common::random_model(60, 1, 3).save(dir.path()).unwrap();
    let s = Server::start_env(
        dir,
        &[],
        &[
            ("SEQSERVE__LIMITS__MAX_K", "7"),
            ("SEQSERVE__ADMIN__TOKEN", "t"),
        ],
    );
    let c = reqwest::Client::new();
    let doc: Value = c
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let req = &doc["components"]["schemas"]["RecommendRequest"]["properties"];
    assert_eq!(req["k"]["maximum"], 7, "{req}");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "nosuchmodel")
            .replace("{version}", "1")
            .replace("{id}", "eval-0");
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = c
                .request(m, s.url(&concrete))
                .bearer_auth("t")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["code"] != "not_found",
                "{method} {path}: no such route ({status} {body})"
            );
        }
    }
    assert!(operations >= 20, "{operations} operations");
}
