//! User histories kept by the service, over real HTTP: POST /events, /recommend by user, the admin
//! history and erasure routes, bad events; with the embedded store, and with a real Redis
//! (Debian's redis-server, installed by scripts/setup.sh, started here on a free port): shared
//! between two replicas, concurrent writers, Redis killed and restarted under load.
mod common;

use common::server::{metric_value, post, Server};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "history-token";

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::random_model(60, 2, 17).save(dir.path()).unwrap();
    dir
}

fn start(dir: tempfile::TempDir, envs: &[(&str, &str)]) -> Server {
    let mut env = vec![("SEQSERVE__ADMIN__TOKEN", TOKEN)];
    env.extend_from_slice(envs);
    Server::start_env(dir, &[], &env)
}

fn items(v: &Value) -> Vec<(String, f64)> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {v}"))
        .iter()
        .map(|i| {
            (
                i["item"].as_str().unwrap().to_string(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

async fn admin(s: &Server, method: reqwest::Method, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, s.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn event(user: &str, item: &str) -> Value {
    json!({"user": user, "item": item})
}

/// The embedded store: events posted for a user make `{"user"}` alone rank exactly as the same
/// history sent inline; a request's own history comes after the stored one; a repeated event_id
/// counts once; the admin can read and erase a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_make_a_user_history_that_ranks_as_the_same_history_inline() {
    let s = start(model_dir(), &[]);
    let (st, v, _) = post(
        &s.url("/events"),
        json!({"events": [
            {"user": "u1", "item": "i3", "event_id": "e1"},
            {"user": "u1", "item": "i7", "timestamp": 1_700_000_000, "event_id": "e2"},
            {"user": "u1", "item": "i7", "event_id": "e2"},
            {"user": 42, "item": 9},
            event("u1", "i12"),
        ]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(4), Some(1))
    );
    let (st, by_user, _) = post(&s.url("/recommend"), json!({"user": "u1", "k": 10})).await;
    assert_eq!(st, 200, "{by_user}");
    assert_eq!(by_user["stored_events"], 3);
    let (_, inline, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i3", "i7", "i12"], "k": 10}),
    )
    .await;
    assert_eq!(items(&by_user), items(&inline));
    // The request's own events come after the stored ones.
    let (_, both, _) = post(
        &s.url("/recommend"),
        json!({"user": "u1", "history": ["i20"], "k": 10}),
    )
    .await;
    let (_, inline2, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i3", "i7", "i12", "i20"], "k": 10}),
    )
    .await;
    assert_eq!(items(&both), items(&inline2));
    // A batch reads its users together.
    let (st, batch, _) = post(
        &s.url("/recommend/batch"),
        json!({"requests": [{"user": "u1"}, {"user": "42"}, {"history": ["i3"]}]}),
    )
    .await;
    assert_eq!(st, 200, "{batch}");
    assert_eq!(batch["results"][0]["stored_events"], 3);
    assert_eq!(batch["results"][1]["stored_events"], 1);
    assert!(batch["results"][2].get("stored_events").is_none());
    // Admin: read and erase.
    let (st, h) = admin(&s, reqwest::Method::GET, "/users/u1/history").await;
    assert_eq!(st, 200);
    let listed: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["item"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["i3", "i7", "i12"]);
    assert_eq!(h["events"][1]["timestamp"], 1_700_000_000);
    let (st, _) = reqwest::Client::new()
        .get(s.url("/users/u1/history"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(st, 401, "the history is personal data: admin only");
    let (st, e) = admin(&s, reqwest::Method::DELETE, "/users/u1").await;
    assert_eq!((st, e["erased"].as_bool()), (200, Some(true)));
    let (_, after, _) = post(&s.url("/recommend"), json!({"user": "u1", "k": 10})).await;
    assert_eq!(after["stored_events"], 0);
    // User ids appear in no metric label and no log line.
    let metrics = common::server::metrics_text(&s).await;
    assert!(!metrics.contains("u1"), "a user id in the metrics");
    let logs = s.logs.lock().unwrap().join("\n");
    assert!(!logs.contains("\"u1\""), "a user id in the logs");
}

/// One bad event refuses the batch, naming its index, and nothing of it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_refuses_its_batch_and_nothing_is_written() {
    let s = start(
        model_dir(),
        &[("SEQSERVE__HISTORY__MAX_EVENTS_PER_REQUEST", "100")],
    );
    for (bad, needle) in [
        (
            json!({"user": "v", "item": "i1", "colour": "red"}),
            "unknown field",
        ),
        (json!({"user": "v", "item": [1]}), "item"),
        (json!({"user": {"id": 1}, "item": "i1"}), "user"),
        (
            json!({"user": "v", "item": "i1", "timestamp": -5}),
            "timestamp",
        ),
        (
            json!({"user": "v", "item": "i1", "timestamp": 1e12}),
            "timestamp",
        ),
        (json!({"user": "", "item": "i1"}), "user"),
        (
            json!({"user": "v", "item": "i1", "behaviour": ""}),
            "behaviour",
        ),
    ] {
        let (st, v, _) = post(
            &s.url("/events"),
            json!({"events": [event("v", "i1"), event("v", "i2"), bad]}),
        )
        .await;
        assert_eq!(st, 422, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("events[2]") && msg.contains(needle), "{msg}");
    }
    let (st, _, _) = post(&s.url("/events"), json!({"events": []})).await;
    assert_eq!(st, 422);
    let many: Vec<Value> = (0..101)
        .map(|i| event("v", &format!("i{}", 1 + i % 50)))
        .collect();
    let (st, _, _) = post(&s.url("/events"), json!({"events": many})).await;
    assert_eq!(st, 422, "over history.max_events_per_request");
    // A 3 MB batch is refused by the body limit (1 MiB); kept under the drain cap (4 × the
    // limit) so that the client, busy sending, reads the 413 rather than a closed socket.
    let big = format!(
        "{{\"events\": [{}]}}",
        vec![r#"{"user": "v", "item": "i1"}"#; 100_000].join(",")
    );
    let r = reqwest::Client::new()
        .post(s.url("/events"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // A 10 MB batch (past the drain cap) is refused from its declared length before its body is
    // read: the 413 is answered after the first bytes, and the connection closed.
    let answer = tokio::task::spawn_blocking({
        let addr = s.addr().to_string();
        move || {
            use std::io::{Read, Write};
            let body = format!(
                "{{\"events\": [{}]}}",
                vec![r#"{"user": "v", "item": "i1"}"#; 360_000].join(",")
            );
            assert!(body.len() > 10_000_000);
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            let head = format!(
                "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            );
            c.write_all(head.as_bytes()).unwrap();
            let _ = c.write_all(&body.as_bytes()[..65_536]);
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    let (_, v, _) = post(&s.url("/recommend"), json!({"user": "v"})).await;
    assert_eq!(
        v["stored_events"], 0,
        "nothing of a refused batch was written"
    );
}

/// A redis-server of the test's own on a free port (no persistence), stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: Option<u16>) -> Redis {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/setup.sh) must be on the PATH");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_on_redis(redis: &Redis) -> Server {
    let url = redis.url();
    start(
        model_dir(),
        &[
            ("SEQSERVE__HISTORY__STORE", "redis"),
            ("SEQSERVE__HISTORY__URL", url.as_str()),
            ("SEQSERVE__HISTORY__TIMEOUT_MS", "200"),
        ],
    )
}

/// Two replicas on one Redis: an event posted to one changes the other's next recommendation for
/// that user, exactly as the same history inline; 50 concurrent writers to one user lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_histories_through_redis_and_concurrent_writers_lose_nothing() {
    let redis = Redis::start(None);
    let (a, b) = (start_on_redis(&redis), start_on_redis(&redis));
    let (st, v, _) = post(
        &a.url("/events"),
        json!({"events": [event("shared", "i4"), event("shared", "i9"), event("shared", "i33")]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, from_b, _) = post(&b.url("/recommend"), json!({"user": "shared", "k": 10})).await;
    assert_eq!(st, 200, "{from_b}");
    assert_eq!(from_b["stored_events"], 3);
    let (_, inline, _) = post(
        &b.url("/recommend"),
        json!({"history": ["i4", "i9", "i33"], "k": 10}),
    )
    .await;
    assert_eq!(items(&from_b), items(&inline));
    // 50 writers, 4 events each, to one user, half through each replica: every acknowledged
    // event is stored (the limit of 200 is not reached).
    let writers: Vec<_> = (0..50)
        .map(|w| {
            let url = if w % 2 == 0 { a.url("/events") } else { b.url("/events") };
            tokio::spawn(async move {
                let evs: Vec<Value> = (0..4)
                    .map(|j| json!({"user": "busy", "item": format!("i{}", 1 + (w * 4 + j) % 50), "event_id": format!("{w}-{j}")}))
                    .collect();
                let (st, v, _) = post(&url, json!({"events": evs})).await;
                assert_eq!(st, 200, "{v}");
                v["accepted"].as_u64().unwrap()
            })
        })
        .collect();
    let mut acknowledged = 0;
    for w in writers {
        acknowledged += w.await.unwrap();
    }
    let (st, h) = admin(&a, reqwest::Method::GET, "/users/busy/history").await;
    assert_eq!(st, 200);
    assert_eq!(h["events"].as_array().unwrap().len() as u64, acknowledged);
    assert_eq!(acknowledged, 200);
    // Erased on one replica: gone for both.
    admin(&b, reqwest::Method::DELETE, "/users/shared").await;
    let (_, after, _) = post(&a.url("/recommend"), json!({"user": "shared"})).await;
    assert_eq!(after["stored_events"], 0);
}

/// Redis killed under load: requests with their own history are still answered (marked), none
/// gets a 5xx; user-only requests get 503 within their deadline; the store is reported down;
/// after Redis restarts, requests by user are served again without restarting seqserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_degrades_to_request_histories_and_recovers_by_itself() {
    let redis = Redis::start(None);
    let port = redis.port;
    let s = start_on_redis(&redis);
    let (st, _, _) = post(&s.url("/events"), json!({"events": [event("p", "i5")]})).await;
    assert_eq!(st, 200);
    drop(redis);
    let mut statuses = std::collections::BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let t0 = Instant::now();
        let (st, v, _) = post(
            &s.url("/recommend"),
            json!({"user": format!("p{i}"), "history": ["i1", "i2"], "k": 5}),
        )
        .await;
        slowest = slowest.max(t0.elapsed());
        *statuses.entry(st).or_insert(0) += 1;
        if st == 200 {
            assert_eq!(v["history_store_unavailable"], true, "{v}");
        }
    }
    assert_eq!(statuses.get(&200), Some(&40), "{statuses:?}");
    let t0 = Instant::now();
    let (st, v, _) = post(
        &s.url("/recommend"),
        json!({"user": "p", "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["code"], "history_unavailable");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "503 within the deadline"
    );
    let (st, _, _) = post(&s.url("/events"), json!({"events": [event("p", "i6")]})).await;
    assert_eq!(st, 503, "an event is answered 200 only once stored");
    assert!(
        slowest < Duration::from_secs(1),
        "no request waited on the dead store"
    );
    let fallbacks = metric_value(&s, "seqserve_history_fallbacks_total").await;
    assert!(fallbacks >= 40.0, "{fallbacks}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric_value(&s, "seqserve_history_store_up").await, 0.0);
    // Redis back (empty: no persistence): seqserve reconnects by itself.
    let _redis = Redis::start(Some(port));
    let t0 = Instant::now();
    loop {
        let (st, _, _) = post(&s.url("/events"), json!({"events": [event("p", "i8")]})).await;
        if st == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "never reconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, v, _) = post(&s.url("/recommend"), json!({"user": "p"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stored_events"], 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric_value(&s, "seqserve_history_store_up").await, 1.0);
}
