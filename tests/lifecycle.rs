//! Model lifecycle over real HTTP: a repository of models and versions, routing, A/B splits,
//! failed loads, swaps under concurrent traffic, polling, and evaluation by name with the leakage
//! guard.
mod common;
use common::server::{holdout_lines, metrics_text, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret";

/// A repository `<name>/<version>/` of random test models (different seeds rank differently).
fn repository(versions: &[(&str, &str, i64)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, version, seed) in versions {
        common::random_model(60, 1, *seed)
            .save(&d.path().join(name).join(version))
            .unwrap();
    }
    d
}

fn start(repo: tempfile::TempDir, extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let path = repo.path().to_str().unwrap().to_string();
    let mut args = vec!["--repository", path.as_str()];
    args.extend_from_slice(extra);
    let mut env = vec![("SEQSERVE__ADMIN__TOKEN", TOKEN)];
    env.extend_from_slice(envs);
    Server::start_env(repo, &args, &env)
}

struct Client {
    c: reqwest::Client,
    base: String,
}

impl Client {
    fn new(s: &Server) -> Client {
        Client {
            c: reqwest::Client::new(),
            base: s.base.clone(),
        }
    }

    async fn send(&self, rq: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rq.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.c.get(format!("{}{path}", self.base))).await
    }

    async fn recommend(&self, body: Value) -> (u16, Value) {
        self.send(self.c.post(format!("{}/recommend", self.base)).json(&body))
            .await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rq = self
            .c
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        self.send(rq).await
    }
}

fn answered_by(v: &Value) -> (String, String) {
    (
        v["model"].as_str().unwrap_or("?").to_string(),
        v["version"].as_str().unwrap_or("?").to_string(),
    )
}

fn versions_of(models: &Value, name: &str) -> Vec<String> {
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| {
            m["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["version"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_repository_routes_by_model_and_version_and_lists_what_it_serves() {
    let s = start(
        repository(&[("a", "1", 1), ("a", "2", 2), ("b", "1", 3)]),
        &["--default-model", "a"],
        &[],
    );
    let c = Client::new(&s);
    let q = json!({"history": ["i1", "i2"], "k": 5});
    // No model named: the default model at its newest version (the only one loaded at start).
    let (st, v) = c.recommend(q.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(answered_by(&v), ("a".into(), "2".into()));
    let mut body = q.clone();
    body["model"] = json!("b");
    assert_eq!(
        answered_by(&c.recommend(body).await.1),
        ("b".into(), "1".into())
    );
    // Unknown model or unloaded version: 404 with a message naming what exists.
    for (m, ver) in [("zzz", None), ("a", Some("1"))] {
        let mut body = q.clone();
        body["model"] = json!(m);
        if let Some(ver) = ver {
            body["version"] = json!(ver);
        }
        let (st, v) = c.recommend(body).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["code"], "model_not_found");
        assert!(v["error"].as_str().unwrap().contains('a'), "{v}");
    }
    // Load version 1 beside 2 (admin): it answers when named, the default stays 2.
    assert_eq!(
        c.admin(reqwest::Method::POST, "/models/a/versions/1", None)
            .await
            .0,
        201
    );
    let mut v1 = q.clone();
    v1["model"] = json!("a");
    v1["version"] = json!("1");
    let (st, r1) = c.recommend(v1.clone()).await;
    assert_eq!((st, answered_by(&r1)), (200, ("a".into(), "1".into())));
    let (_, r2) = c.recommend(q.clone()).await;
    assert_eq!(answered_by(&r2).1, "2");
    assert_ne!(
        common::ranked_items(&r1),
        common::ranked_items(&r2),
        "two versions with different weights rank differently"
    );
    // Loading again is idempotent (200, not 201).
    let (st, _) = c
        .admin(reqwest::Method::POST, "/models/a/versions/1", None)
        .await;
    assert_eq!(st, 200);
    // Discovery.
    let (st, models) = c.get("/models").await;
    assert_eq!(st, 200);
    assert_eq!(models["default_model"], "a");
    assert_eq!(versions_of(&models, "a"), ["1", "2"]);
    assert_eq!(versions_of(&models, "b"), ["1"]);
    let a = &models["models"][0];
    assert_eq!(a["default_version"], "2");
    assert_eq!(a["repository_versions"], json!(["1", "2"]));
    let ver = &a["versions"][1];
    assert_eq!(ver["n_items"], 60);
    assert_eq!(ver["max_len"], 8);
    assert_eq!(ver["device"], "cpu");
    assert_eq!(ver["state"], "ready");
    assert_eq!(ver["behaviours"], json!(["pv", "cart", "fav", "buy"]));
    assert_eq!(ver["context"].as_array().unwrap().len(), 3);
    assert_eq!(c.get("/models/a").await.1["default_version"], "2");
    assert_eq!(c.get("/models/nope").await.0, 404);
    // KServe v2 model routes.
    let (st, meta) = c.get("/v2/models/a").await;
    assert_eq!(st, 200);
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(c.get("/v2/models/a/ready").await.1["ready"], true);
    assert_eq!(c.get("/v2/models/a/versions/1/ready").await.0, 200);
    assert_eq!(c.get("/v2/models/a/versions/9/ready").await.0, 404);
    assert_eq!(c.get("/v2/models/nope/ready").await.0, 404);
    assert_eq!(
        c.get("/v2/models/a/versions/1").await.1["versions"],
        json!(["1"])
    );
    // Admin routes need the token.
    let (st, _) = c
        .send(c.c.post(format!("{}/models/a/versions/1", c.base)))
        .await;
    assert_eq!(st, 401);
    // Bad names never reach the file system.
    let (st, v) = c
        .admin(
            reqwest::Method::POST,
            "/models/a/versions/..%2F..%2Fetc",
            None,
        )
        .await;
    assert!(st == 404 || st == 422, "{st} {v}");
    // Unload: the default version is refused while another is loaded; after a switch it goes.
    let (st, v) = c
        .admin(reqwest::Method::DELETE, "/models/a/versions/2", None)
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, _) = c
        .admin(
            reqwest::Method::PUT,
            "/models/a/default",
            Some(json!({"version": "1"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(answered_by(&c.recommend(q.clone()).await.1).1, "1");
    let (st, _) = c
        .admin(reqwest::Method::DELETE, "/models/a/versions/2", None)
        .await;
    assert_eq!(st, 200);
    let mut v2 = q.clone();
    v2["model"] = json!("a");
    v2["version"] = json!("2");
    assert_eq!(c.recommend(v2).await.0, 404);
    // Its worker exits and its series leave /metrics (labels stay bounded to loaded versions).
    wait_until("version 2 drained", || async {
        let m = c.get("/models").await.1;
        m["models"][0]["draining_versions"] == json!([])
            && !metrics_text(&s).await.contains("model=\"a\",version=\"2\"")
    })
    .await;
    let text = metrics_text(&s).await;
    assert!(
        text.contains("seqserve_recommendations_total{model=\"a\",version=\"1\"}"),
        "{text}"
    );
    assert!(text.contains("seqserve_queue_depth{model=\"b\",version=\"1\"} 0"));
    // The default model's last version cannot go.
    let (st, _) = c
        .admin(reqwest::Method::DELETE, "/models/a/versions/1", None)
        .await;
    assert_eq!(st, 409);
    // The default model can change.
    let (st, _) = c
        .admin(
            reqwest::Method::PUT,
            "/default",
            Some(json!({"model": "b"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(answered_by(&c.recommend(q.clone()).await.1).0, "b");
}

#[tokio::test]
async fn ab_splits_are_sticky_by_user_and_change_at_run_time() {
    let s = start(
        repository(&[("one", "1", 1), ("two", "1", 2)]),
        &["--default-model", "one"],
        &[("SEQSERVE__SPLITS__mix", "one=50,two=50")],
    );
    let c = Client::new(&s);
    let ask = |user: Option<String>| {
        let mut b = json!({"model": "mix", "history": ["i3"], "k": 3});
        if let Some(u) = user {
            b["user"] = json!(u);
        }
        b
    };
    let mut arms = std::collections::HashMap::new();
    for i in 0..60 {
        let u = format!("user-{i}");
        let (st, v) = c.recommend(ask(Some(u.clone()))).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["split"], "mix");
        arms.insert(u, v["model"].as_str().unwrap().to_string());
    }
    let ones = arms.values().filter(|m| *m == "one").count();
    assert!(
        ones > 12 && ones < 48,
        "a 50/50 split sent {ones} of 60 to one"
    );
    // Sticky: every user sees the same arm again.
    for (u, m) in &arms {
        assert_eq!(&c.recommend(ask(Some(u.clone()))).await.1["model"], m);
    }
    // Without a key: random, so both arms turn up.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        seen.insert(c.recommend(ask(None)).await.1["model"].to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Changed at run time: all traffic to two. Arms must be loaded; arms in use cannot be unloaded.
    let (st, v) = c
        .admin(
            reqwest::Method::PUT,
            "/splits/mix",
            Some(json!({"arms": [{"model": "nope", "weight": 1}]})),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, _) = c
        .admin(
            reqwest::Method::PUT,
            "/splits/mix",
            Some(json!({"arms": [{"model": "one", "weight": 0}, {"model": "two", "version": "1", "weight": 100}]})),
        )
        .await;
    assert_eq!(st, 200);
    for u in arms.keys().take(20) {
        assert_eq!(c.recommend(ask(Some(u.clone()))).await.1["model"], "two");
    }
    let (st, v) = c
        .admin(reqwest::Method::DELETE, "/models/two/versions/1", None)
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("split"), "{v}");
    assert_eq!(
        c.get("/models").await.1["splits"]["mix"]["arms"][1]["weight"],
        100
    );
    // An explicit version bypasses the split; removing the split makes the name unknown.
    let (st, _) = c.admin(reqwest::Method::DELETE, "/splits/mix", None).await;
    assert_eq!(st, 200);
    assert_eq!(c.recommend(ask(Some("user-1".into()))).await.0, 404);
    // Per-arm traffic is in /metrics, by model and version.
    let text = metrics_text(&s).await;
    assert!(text.contains("seqserve_recommendations_total{model=\"two\",version=\"1\"}"));
}

/// Writes a model directory whose weights are not a safetensors file, and one with a NaN weight.
fn broken_versions(repo: &Path) {
    let bad = repo.join("a").join("2");
    common::random_model(60, 1, 5).save(&bad).unwrap();
    std::fs::write(bad.join("model.safetensors"), b"not a safetensors file").unwrap();
    let nan = repo.join("a").join("3");
    let m = common::random_model(60, 1, 6);
    tch::no_grad(|| {
        let (_, mut v) = m.vs.variables().into_iter().next().unwrap();
        let _ = v.fill_(f64::NAN);
    });
    m.save(&nan).unwrap();
}

#[tokio::test]
async fn a_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving() {
    let repo = repository(&[("a", "1", 1)]);
    broken_versions(repo.path());
    // At start the newest versions (3: NaN weights, 2: bad file) fail; 1 serves.
    let s = start(repo, &[], &[]);
    let c = Client::new(&s);
    let q = json!({"history": ["i1"], "k": 3});
    assert_eq!(answered_by(&c.recommend(q.clone()).await.1).1, "1");
    let (_, models) = c.get("/models").await;
    let events = models["models"][0]["load_events"]
        .as_array()
        .unwrap()
        .clone();
    let failed: Vec<&str> = events
        .iter()
        .filter(|e| e["state"] == "failed")
        .map(|e| e["version"].as_str().unwrap())
        .collect();
    assert_eq!(failed.len(), 2, "{events:?}");
    // Loading it at run time: 422 with the reason; traffic stays on version 1.
    let (st, v) = c
        .admin(
            reqwest::Method::POST,
            "/models/a/versions/3",
            Some(json!({"default": true, "retire_previous": true})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["code"], "load_failed");
    let msg = v["error"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("finite") || msg.contains("nan"), "{msg}");
    let (st, v) = c
        .admin(reqwest::Method::POST, "/models/a/versions/2", None)
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(
        c.admin(reqwest::Method::POST, "/models/a/versions/7", None)
            .await
            .0,
        404
    );
    let (st, v) = c.recommend(q).await;
    assert_eq!((st, answered_by(&v).1.as_str()), (200, "1"));
    assert!(
        metrics_text(&s)
            .await
            .contains("seqserve_model_loads_total{result=\"failed\"} 4"),
        "two at start (3, then 2), two at run time (3, 2)"
    );
}

#[tokio::test]
async fn swaps_under_concurrent_requests_answer_every_request() {
    let s = start(repository(&[("a", "1", 1), ("a", "2", 2)]), &[], &[]);
    let c = Client::new(&s);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (base, stop) = (s.base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            let mut bad = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = c
                    .post(format!("{base}/recommend"))
                    .json(&json!({"history": [format!("i{}", 1 + i)], "k": 5}))
                    .send()
                    .await
                    .unwrap();
                let st = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if st == 200 && v["items"].as_array().is_some_and(|a| a.len() == 5) {
                    *seen.entry(answered_by(&v).1).or_default() += 1;
                } else {
                    bad.push((st, v));
                }
            }
            (seen, bad)
        }));
    }
    // Six swaps: load the other version beside, switch, unload the previous one after it drains.
    for swap in 0..6 {
        let next = if swap % 2 == 0 { "1" } else { "2" };
        let (st, v) = c
            .admin(
                reqwest::Method::POST,
                &format!("/models/a/versions/{next}"),
                Some(json!({"default": true, "retire_previous": true})),
            )
            .await;
        assert!(st == 201 || st == 200, "{st} {v}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(versions_of(&c.get("/models").await.1, "a"), [next]);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = std::collections::BTreeMap::<String, usize>::new();
    for h in clients {
        let (seen, bad) = h.await.unwrap();
        assert!(bad.is_empty(), "failed during swaps: {bad:?}");
        for (k, n) in seen {
            *total.entry(k).or_default() += n;
        }
    }
    assert_eq!(total.len(), 2, "both versions answered: {total:?}");
    wait_until("old workers exited", || async {
        c.get("/models").await.1["models"][0]["draining_versions"] == json!([])
    })
    .await;
    // The serving version's series survive the exit of its earlier, drained worker (the same
    // version was unloaded and loaded again); the retired version's are gone.
    let text = metrics_text(&s).await;
    assert!(
        text.contains("seqserve_queue_depth{model=\"a\",version=\"2\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("seqserve_queue_depth{model=\"a\",version=\"1\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn polling_loads_a_new_version_and_retires_the_old_one() {
    let repo = repository(&[("a", "1", 1)]);
    let root = repo.path().to_path_buf();
    let s = start(repo, &["--poll-interval-secs", "1"], &[]);
    let c = Client::new(&s);
    let q = json!({"history": ["i1"], "k": 3});
    assert_eq!(answered_by(&c.recommend(q.clone()).await.1).1, "1");
    // Copied in under a hidden name (ignored while incomplete), then renamed into place.
    common::random_model(60, 1, 9)
        .save(&root.join("a").join(".incoming"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(answered_by(&c.recommend(q.clone()).await.1).1, "1");
    std::fs::rename(root.join("a").join(".incoming"), root.join("a").join("2")).unwrap();
    wait_until("version 2 serves", || async {
        answered_by(&c.recommend(q.clone()).await.1).1 == "2"
    })
    .await;
    wait_until("version 1 unloaded", || async {
        versions_of(&c.get("/models").await.1, "a") == ["2"]
    })
    .await;
    // A broken newer version is reported once, and 2 keeps serving.
    let bad = root.join("a").join("3");
    common::random_model(60, 1, 5).save(&bad).unwrap();
    std::fs::write(bad.join("model.safetensors"), b"truncated").unwrap();
    wait_until("version 3 failure reported", || async {
        c.get("/models").await.1["models"][0]["load_events"]
            .as_array()
            .is_some_and(|e| {
                e.iter()
                    .any(|e| e["version"] == "3" && e["state"] == "failed")
            })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(answered_by(&c.recommend(q).await.1).1, "2");
    let text = metrics_text(&s).await;
    assert!(
        text.contains("seqserve_model_loads_total{result=\"failed\"} 1"),
        "a failed version is not retried until its files change: {text}"
    );
}

/// A model whose manifest says it was trained on `log` with `split` (the leakage guard's inputs).
fn trained_on(seed: i64, log_sha: &str, split: &str) -> seqserve::model::Model {
    let mut m = common::random_model(60, 1, seed);
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/beauty-1l/model.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut t = shipped["training"].clone();
    t["log_sha256"] = json!(log_sha);
    t["split"] = json!(split);
    m.manifest.training = Some(serde_json::from_value(t).unwrap());
    m
}

#[tokio::test]
async fn evaluation_by_name_compares_models_and_guards_against_leakage() {
    let repo = tempfile::tempdir().unwrap();
    let sha = "ab".repeat(32);
    trained_on(1, &sha, "leave-one-out")
        .save(&repo.path().join("loo").join("1"))
        .unwrap();
    trained_on(2, &sha, "leave-last-3")
        .save(&repo.path().join("ll3").join("1"))
        .unwrap();
    let holdouts = tempfile::tempdir().unwrap();
    let provenance = |split: &str| {
        format!("{{\"provenance\": {{\"log\": \"x.txt\", \"log_sha256\": \"{sha}\", \"split\": \"{split}\"}}}}\n")
    };
    std::fs::write(
        holdouts.path().join("ll3.jsonl"),
        provenance("leave-last-3") + &holdout_lines(40),
    )
    .unwrap();
    std::fs::write(holdouts.path().join("big.jsonl"), holdout_lines(100_000)).unwrap();
    let hd = holdouts.path().to_str().unwrap().to_string();
    let s = start(
        repo,
        &["--default-model", "loo"],
        &[("SEQSERVE__ADMIN__HOLDOUT_DIR", &hd)],
    );
    let c = Client::new(&s);
    let eval = |body: Value| c.admin(reqwest::Method::POST, "/evaluate", Some(body));
    // The leave-last-3 model on its own split's holdout: clean.
    let (st, v) = eval(json!({"model": "ll3", "holdout": "ll3.jsonl", "k": [10]})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["models"][0]["leakage"]["verdict"], "clean");
    // The leave-one-out model on it: refused, naming the splits...
    let (st, v) = eval(json!({"model": "loo", "holdout": "ll3.jsonl", "k": [10]})).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["code"], "leakage");
    assert!(
        v["error"].as_str().unwrap().contains("leave-one-out"),
        "{v}"
    );
    // ...unless allowed; then marked, in the answer and in the gauges.
    let (st, v) = eval(json!({
        "models": [{"model": "loo"}, {"model": "ll3", "version": "1"}],
        "holdout": "ll3.jsonl", "k": [5, 10], "allow_leakage": true
    }))
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["models"][0]["model"], "loo");
    assert_eq!(v["models"][0]["leakage"]["verdict"], "leakage");
    assert_eq!(v["models"][0]["leakage"]["allowed"], true);
    assert_eq!(v["models"][1]["leakage"]["verdict"], "clean");
    // Two models: the paired comparison on the same cases.
    let comps = v["comparisons"].as_array().unwrap();
    assert!(!comps.is_empty());
    assert!(comps
        .iter()
        .any(|c| c["a"] == "loo" && c["b"] == "ll3" && c["metric"] == "ndcg@10"));
    let text = metrics_text(&s).await;
    assert!(text.contains(
        "seqserve_evaluation_metric{holdout=\"ll3.jsonl\",k=\"10\",leakage=\"true\",metric=\"hr\",model=\"loo\",version=\"1\"}"
    ), "{text}");
    assert!(text.contains(
        "seqserve_evaluation_metric{holdout=\"ll3.jsonl\",k=\"10\",leakage=\"false\",metric=\"hr\",model=\"ll3\",version=\"1\"}"
    ));
    // Naming errors.
    assert_eq!(
        eval(json!({"model": "nope", "holdout": "ll3.jsonl"}))
            .await
            .0,
        404
    );
    assert_eq!(
        eval(json!({"models": [{"model": "loo"}, {"model": "loo"}], "holdout": "ll3.jsonl"}))
            .await
            .0,
        422
    );
    assert_eq!(
        eval(json!({"model": "loo", "models": [], "holdout": "ll3.jsonl"}))
            .await
            .0,
        422
    );
    // A cancelled job publishes nothing: a large holdout without provenance (unchecked) becomes a
    // job; cancelled, it leaves no series for its holdout.
    let (st, v) = eval(json!({"model": "loo", "holdout": "big.jsonl", "k": [10]})).await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (st, _) = c
        .admin(
            reqwest::Method::POST,
            &format!("/evaluate/{id}/cancel"),
            None,
        )
        .await;
    assert!(st == 202 || st == 200);
    wait_until("cancelled", || async {
        c.admin(reqwest::Method::GET, &format!("/evaluate/{id}"), None)
            .await
            .1["status"]
            != "running"
    })
    .await;
    let status = c
        .admin(reqwest::Method::GET, &format!("/evaluate/{id}"), None)
        .await
        .1;
    assert_eq!(status["status"], "cancelled", "{status}");
    assert!(!metrics_text(&s).await.contains("holdout=\"big.jsonl\""));
}

#[tokio::test]
async fn a_single_model_directory_is_listed_and_cannot_be_managed_without_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    common::random_model(60, 1, 4).save(dir.path()).unwrap();
    let s = Server::start_env(dir, &[], &[("SEQSERVE__ADMIN__TOKEN", TOKEN)]);
    let c = Client::new(&s);
    // Served under its manifest's name and version.
    let (st, models) = c.get("/models").await;
    assert_eq!(st, 200);
    assert_eq!(models["default_model"], "test");
    assert_eq!(versions_of(&models, "test"), ["0"]);
    let (_, v) = c
        .recommend(json!({"history": ["i1"], "model": "test"}))
        .await;
    assert_eq!(answered_by(&v), ("test".into(), "0".into()));
    let (st, v) = c
        .admin(reqwest::Method::POST, "/models/test/versions/1", None)
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["code"], "no_repository");
    // The only version of the default model cannot be unloaded.
    let (st, _) = c
        .admin(reqwest::Method::DELETE, "/models/test/versions/0", None)
        .await;
    assert_eq!(st, 409);
    let (st, v) = c
        .admin(
            reqwest::Method::POST,
            "/models/test/versions/0",
            Some(json!({"retire_previous": true})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
}

/// Edits one architecture field of a saved version's manifest: the manifest now lies about the
/// weights beside it.
fn lie(dir: &Path, key: &str, value: Value) {
    let p = dir.join("model.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    m["architecture"][key] = value;
    std::fs::write(&p, m.to_string()).unwrap();
}

/// Hardening round 2, finding 1: a manifest whose sizes lie can take nothing down. At start the
/// newest good version serves; an admin load answers 422 at once and lists the version failed;
/// the failed-load counter counts it; polling does not retry it while its files are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_that_lie_about_their_sizes_are_failed_loads_not_crashes() {
    let repo = repository(&[("a", "1", 1), ("a", "2", 2)]);
    lie(
        &repo.path().join("a/2"),
        "max_len",
        json!(1_000_000_000_000u64),
    );
    let root = repo.path().to_path_buf();
    let s = start(repo, &["--poll-interval-secs", "1"], &[]);
    let c = Client::new(&s);
    let (_, models) = c.get("/models").await;
    assert_eq!(models["models"][0]["default_version"], "1", "{models}");
    for (v, key, value) in [
        ("3", "ffn_dim", json!(1_000_000_000u64)),
        ("4", "d_model", json!(1u64 << 22)),
        ("5", "n_layers", json!(2000)),
        ("6", "max_len", json!(60_000)),
    ] {
        common::random_model(60, 1, 1)
            .save(&root.join("a").join(v))
            .unwrap();
        lie(&root.join("a").join(v), key, value);
        let t0 = Instant::now();
        let (st, body) = c
            .admin(
                reqwest::Method::POST,
                &format!("/models/a/versions/{v}"),
                None,
            )
            .await;
        assert_eq!(st, 422, "{key}: {body}");
        assert_eq!(body["code"], "load_failed");
        assert!(
            body["error"].as_str().unwrap().contains(key) || key == "max_len",
            "{body}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{key} took {:?}",
            t0.elapsed()
        );
    }
    let (_, models) = c.get("/models").await;
    let events = models["models"][0]["load_events"].as_array().unwrap();
    for v in ["2", "3", "4", "5", "6"] {
        assert!(
            events
                .iter()
                .any(|e| e["version"] == v && e["state"] == "failed"),
            "version {v} listed as failed: {events:?}"
        );
    }
    let failed = metric_value_of(&s, "seqserve_model_loads_total{result=\"failed\"}").await;
    assert!(failed >= 5.0, "failed loads counted: {failed}");
    // Polling every second for 3 s: the failed newest version is not tried again.
    let before = failed;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = metric_value_of(&s, "seqserve_model_loads_total{result=\"failed\"}").await;
    assert_eq!(
        after, before,
        "a failed version is retried only when its files change"
    );
    assert_eq!(c.recommend(json!({"history": ["i1"]})).await.0, 200);
}

async fn metric_value_of(s: &Server, name: &str) -> f64 {
    common::server::metric_value(s, name).await
}

/// Hardening round 2, finding 2: loading and unloading a version again and again leaves no
/// thread (and no thread stack) behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_unload_cycles_leave_no_threads_behind() {
    let s = start(repository(&[("a", "1", 1), ("a", "2", 2)]), &[], &[]);
    let c = Client::new(&s);
    let pid = s.child.id();
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count()
    };
    let maps = || {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .count()
    };
    let cycle = || async {
        let (st, _) = c
            .admin(reqwest::Method::POST, "/models/a/versions/1", None)
            .await;
        assert_eq!(st, 201);
        let (st, _) = c
            .admin(reqwest::Method::DELETE, "/models/a/versions/1", None)
            .await;
        assert_eq!(st, 200);
    };
    cycle().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.get("/models").await;
    let (t1, m1) = (threads(), maps());
    for _ in 0..40 {
        cycle().await;
    }
    // A leaked worker is one thread per cycle, for good; tokio's blocking pool may hold one more
    // for a while (its idle threads live 10 s), so wait up to 15 s for the count to come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while threads() != t1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.get("/models").await;
    assert_eq!(threads(), t1, "threads after 41 cycles");
    // Each leaked thread stack was two mappings (+80 over 40 cycles); allow the allocator some of
    // its own (arenas come and go: +8 was seen once on a loaded machine).
    assert!(maps() <= m1 + 20, "mappings {} -> {}", m1, maps());
}
