//! Regression tests for the holes found when the service was attacked (issue 7): each reproduces one
//! and checks it is closed, over real HTTP against the real binary.
mod common;

use common::server::{blocking_get, holdout_lines, metric_value, metrics_text, post, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn small_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::random_model(60, 2, 17).save(dir.path()).unwrap();
    dir
}

async fn raw_post(s: &Server, path: &str, body: String) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// Seconds until the server closes `c` (reads EOF or an error), up to `limit`.
fn closed_within(c: &mut TcpStream, limit: Duration) -> Option<f64> {
    let t0 = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while t0.elapsed() < limit {
        match c.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed().as_secs_f64()),
            Ok(_) => continue, // an error response (408/400) before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(t0.elapsed().as_secs_f64()),
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Item 1: request preparation is linear, large bodies are parsed off the async threads, and
/// /health/live keeps answering while clients loop ~1 MB batch bodies of unknown ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_bodies_do_not_freeze_health_and_are_answered_correctly() {
    let s = Server::start(&[]);
    // Unknown ids are reported once each, in order of first appearance (a set, not a scan).
    let mut history: Vec<Value> = (0..9_998).map(|i| json!(format!("u{i}"))).collect();
    history.push(json!("u5"));
    history.push(json!("i1"));
    let (st, v, _) = post(&s.url("/recommend"), json!({"history": history, "k": 3})).await;
    assert_eq!(st, 200, "{v}");
    let unknown = v["unknown_items"].as_array().unwrap();
    assert_eq!(unknown.len(), 9_998);
    assert_eq!(unknown[0], "u0");
    assert_eq!(unknown[9_997], "u9997");

    let one: Vec<u64> = (0..10_000).map(|i| 20_000 + i).collect();
    let body =
        serde_json::to_string(&json!({"requests": vec![json!({"history": one}); 16]})).unwrap();
    assert!(body.len() < 1 << 20);
    let end = Instant::now() + Duration::from_secs(3);
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let (url, body) = (s.url("/recommend/batch"), body.clone());
        attackers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut ok = 0;
            while Instant::now() < end {
                let r = c
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut worst = Duration::ZERO;
    let c = reqwest::Client::new();
    while Instant::now() < end {
        let t0 = Instant::now();
        let r = c
            .get(s.url("/health/live"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut answered = 0;
    for a in attackers {
        answered += a.await.unwrap();
    }
    assert!(answered >= 2, "the heavy bodies themselves are served");
    // Kubernetes' liveness probe gives up at 1 s; before the fix this took 4.7 s.
    assert!(
        worst < Duration::from_secs(1),
        "/health/live took {worst:?} under attack"
    );
}

/// Item 2: evaluations are capped, finished jobs expire, DELETE on a finished job says what it is,
/// and an inline evaluation whose client has gone is cancelled (freeing its slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_are_bounded_and_expire() {
    let holdouts = tempfile::tempdir().unwrap();
    std::fs::write(holdouts.path().join("big.jsonl"), holdout_lines(100_000)).unwrap();
    let hd = holdouts.path().to_str().unwrap().to_string();
    let s = Server::start_env(
        small_model_dir(),
        &["--max-batch-size", "1"],
        &[
            ("SEQSERVE__ADMIN__TOKEN", "t"),
            ("SEQSERVE__ADMIN__HOLDOUT_DIR", &hd),
            ("SEQSERVE__ADMIN__MAX_RUNNING_EVALUATIONS", "1"),
            ("SEQSERVE__ADMIN__EVALUATION_TTL_SECS", "1"),
            ("SEQSERVE__ADMIN__MAX_INLINE_CASES", "50000"),
            ("SEQSERVE__SERVER__BODY_LIMIT_BYTES", "8388608"),
        ],
    );
    let c = reqwest::Client::new();
    let start = |body: Value| {
        c.post(s.url("/evaluate"))
            .bearer_auth("t")
            .json(&body)
            .send()
    };
    let get = |id: String| {
        c.get(s.url(&format!("/evaluate/{id}")))
            .bearer_auth("t")
            .send()
    };
    let cancel = |id: String| {
        c.post(s.url(&format!("/evaluate/{id}/cancel")))
            .bearer_auth("t")
            .send()
    };
    // An inline evaluation (50k cases answered on the connection) whose client gives up.
    let cases: Vec<Value> = holdout_lines(50_000)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let r = reqwest::Client::builder()
        .timeout(Duration::from_millis(1000))
        .build()
        .unwrap()
        .post(s.url("/evaluate"))
        .bearer_auth("t")
        .json(&json!({"cases": cases}))
        .send()
        .await;
    assert!(
        r.is_err(),
        "the inline evaluation should outlast the client"
    );
    // Its slot comes back once it is cancelled: a job is admitted.
    let t0 = Instant::now();
    let id = loop {
        let r = start(json!({"holdout": "big.jsonl"})).await.unwrap();
        if r.status() == 202 {
            break r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        assert_eq!(r.status(), 429, "{:?}", r.text().await);
        // 50k one-case batches take far longer than this uncancelled.
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the abandoned inline evaluation was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The cap: one runs, the next is refused with 429 + Retry-After.
    let r = start(json!({"holdout": "big.jsonl"})).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "evaluations_full");
    assert!(
        metric_value(
            &s,
            "seqserve_rejected_requests_total{reason=\"evaluations_full\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(cancel(id.clone()).await.unwrap().status(), 202);
    let t0 = Instant::now();
    loop {
        let v: Value = get(id.clone()).await.unwrap().json().await.unwrap();
        if v["status"] == "cancelled" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = cancel(id.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    // Forgotten after admin.evaluation_ttl_secs.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(get(id).await.unwrap().status(), 404);
}

/// Item 3: holdouts are streamed with size and case limits, and a FIFO is refused at once instead
/// of hanging the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holdout_files_are_bounded_and_must_be_regular() {
    let holdouts = tempfile::tempdir().unwrap();
    std::fs::write(holdouts.path().join("small.jsonl"), holdout_lines(200)).unwrap();
    std::fs::write(holdouts.path().join("big.jsonl"), holdout_lines(5_000)).unwrap();
    let fifo = holdouts.path().join("pipe.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let hd = holdouts.path().to_str().unwrap().to_string();
    let s = Server::start_env(
        small_model_dir(),
        &[],
        &[
            ("SEQSERVE__ADMIN__TOKEN", "t"),
            ("SEQSERVE__ADMIN__HOLDOUT_DIR", &hd),
            ("SEQSERVE__ADMIN__MAX_HOLDOUT_BYTES", "150000"),
            ("SEQSERVE__ADMIN__MAX_EVALUATION_CASES", "1000"),
        ],
    );
    let c = reqwest::Client::new();
    let start = |name: &str| {
        c.post(s.url("/evaluate"))
            .bearer_auth("t")
            .json(&json!({"holdout": name}))
            .timeout(Duration::from_secs(10))
            .send()
    };
    let r = start("pipe.jsonl").await.expect("a FIFO must not hang");
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("not a regular file"),
        "{v}"
    );
    let r = start("big.jsonl").await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("admin.max_holdout_bytes"),
        "{v}"
    );
    // Under the byte limit but over the case limit.
    let many = holdout_lines(1_200);
    assert!(many.len() < 150_000);
    std::fs::write(holdouts.path().join("many.jsonl"), many).unwrap();
    let r = start("many.jsonl").await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("1000 cases"), "{v}");
    let r = start("small.jsonl").await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

/// Item 4: slow headers and idle connections are closed, descriptors running out does not stop
/// the service, and half-open connections do not delay shutdown.
#[test]
fn connections_time_out_and_descriptor_exhaustion_is_survived() {
    let s = Server::start_env(
        small_model_dir(),
        &[],
        &[
            ("SEQSERVE__SERVER__HEADER_READ_TIMEOUT_MS", "500"),
            ("SEQSERVE__SERVER__KEEP_ALIVE_TIMEOUT_MS", "1500"),
            ("SEQSERVE__SERVER__DRAIN_ANNOUNCE_MS", "200"),
            // 150 connections at most: half-open clients exhaust them quickly.
            ("SEQSERVE__SERVER__MAX_CONNECTIONS", "150"),
        ],
    );
    // A request head that never finishes: closed after the header timeout.
    let mut slow = TcpStream::connect(s.addr()).unwrap();
    slow.write_all(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-")
        .unwrap();
    let t = closed_within(&mut slow, Duration::from_secs(5)).expect("slow header closed");
    assert!(t < 1.5, "closed after {t:.2} s");
    // An idle keep-alive connection after a complete request: closed after the idle timeout.
    let mut idle = TcpStream::connect(s.addr()).unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);
    let t = closed_within(&mut idle, Duration::from_secs(6)).expect("idle connection closed");
    assert!((1.0..3.0).contains(&t), "idle closed after {t:.2} s");
    // A connection that never sends a byte is an idle one too.
    let mut silent = TcpStream::connect(s.addr()).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(6)).is_some());

    // 300 half-open connections against 150 slots: new clients are still served (after the
    // header timeout frees slots), never refused for good.
    let mut hogs: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            let mut c = TcpStream::connect(s.addr()).ok()?;
            c.write_all(b"GET /health/live HTTP/1.1\r\nHo").ok()?;
            Some(c)
        })
        .collect();
    assert!(hogs.len() >= 150);
    let t0 = Instant::now();
    assert_eq!(blocking_get(&s.url("/health/live")), Ok(200));
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Shutdown is not held up by half-open connections.
    for c in hogs.iter_mut().take(20) {
        let _ = c.write_all(b"st: x\r\n");
    }
    let mut s = s;
    let t0 = Instant::now();
    s.sigterm();
    let status = s.terminate_wait();
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        t0.elapsed()
    );
}

/// Item 4 (descriptors): with a 256-descriptor limit and 400 connections opened against it, the
/// server keeps serving new clients and does not spin on accept errors.
#[test]
fn a_low_descriptor_limit_caps_connections_instead_of_failing() {
    let s = Server::start_limited(
        small_model_dir(),
        &[],
        &[("SEQSERVE__SERVER__HEADER_READ_TIMEOUT_MS", "500")],
        Some(256),
    );
    assert_eq!(
        s.listening["max_connections"], 192,
        "256 descriptors leave 192 connections"
    );
    let addr = s.addr().to_string();
    let hogs: Vec<TcpStream> = (0..400)
        .filter_map(|_| {
            let mut c = TcpStream::connect(&addr).ok()?;
            c.write_all(b"GET /health/live HTTP/1.1\r\nHo").ok()?;
            Some(c)
        })
        .collect();
    assert!(hogs.len() > 256, "the backlog holds the rest");
    let t0 = Instant::now();
    let url = format!("http://{addr}/health/live");
    let got = loop {
        let r = blocking_get(&url);
        if r == Ok(200) || t0.elapsed() > Duration::from_secs(10) {
            break r;
        }
    };
    assert_eq!(got, Ok(200));
    drop(hogs);
    let text = s.logs.lock().unwrap().join("\n");
    assert!(
        !text.contains("Too many open files"),
        "the cap keeps the process below its descriptor limit"
    );
}

/// Item 5: shutdown finishes within the drain timeout (+1 s) with evaluations running.
#[test]
fn shutdown_meets_the_drain_timeout_with_evaluations_running() {
    let holdouts = tempfile::tempdir().unwrap();
    std::fs::write(holdouts.path().join("big.jsonl"), holdout_lines(30_000)).unwrap();
    let hd = holdouts.path().to_str().unwrap().to_string();
    let mut s = Server::start_env(
        small_model_dir(),
        &["--max-batch-size", "1"],
        &[
            ("SEQSERVE__ADMIN__TOKEN", "t"),
            ("SEQSERVE__ADMIN__HOLDOUT_DIR", &hd),
            ("SEQSERVE__SERVER__DRAIN_TIMEOUT_SECS", "2"),
        ],
    );
    let url = s.url("/evaluate");
    let started = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let c = reqwest::Client::new();
                let mut n = 0;
                for _ in 0..2 {
                    let r = c
                        .post(&url)
                        .bearer_auth("t")
                        .json(&json!({"holdout": "big.jsonl"}))
                        .send()
                        .await
                        .unwrap();
                    n += (r.status() == 202) as usize;
                }
                n
            })
    })
    .join()
    .unwrap();
    assert_eq!(started, 2);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    s.sigterm();
    let status = s.terminate_wait();
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "exit took {:?} with drain_timeout_secs = 2",
        t0.elapsed()
    );
}

/// Items 7 and 8: refusals are logged at most logging.max_refusal_logs_per_sec per second with a
/// summary of the rest; every refusal reason is exported from the start and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_once_and_their_logs_are_capped() {
    let s = Server::start_env(
        small_model_dir(),
        &["--max-delay-us", "300000"],
        &[("SEQSERVE__LOGGING__MAX_REFUSAL_LOGS_PER_SEC", "2")],
    );
    let text = metrics_text(&s).await;
    for reason in [
        "queue_full",
        "deadline",
        "client_gone",
        "invalid",
        "not_ready",
    ] {
        assert!(
            text.contains(&format!(
                "seqserve_rejected_requests_total{{reason=\"{reason}\"}} 0"
            )),
            "{reason} pre-initialised"
        );
    }
    // A 504 is one refusal: counted as a deadline by the handler, not again by the worker.
    let (st, _, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i1"], "timeout_ms": 5}),
    )
    .await;
    assert_eq!(st, 504);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = metric_value(&s, "seqserve_rejected_requests_total{reason=\"deadline\"}").await;
    let gone = metric_value(
        &s,
        "seqserve_rejected_requests_total{reason=\"client_gone\"}",
    )
    .await;
    assert_eq!((deadline, gone), (1.0, 0.0));
    // 50 refusals in well under a second: 2 lines, then one summary of the rest.
    for _ in 0..50 {
        let (st, _, _) = post(&s.url("/recommend"), json!({"k": 0})).await;
        assert_eq!(st, 422);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, _) = post(&s.url("/recommend"), json!({"k": 0})).await;
    assert_eq!(st, 422);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = s.logs.lock().unwrap().clone();
    let refused = logs
        .iter()
        .filter(|l| l.contains("request refused"))
        .count();
    assert!(refused <= 5, "{refused} refusal lines for 52 refusals");
    assert!(
        logs.iter().any(|l| l.contains("suppressed")),
        "a summary of the suppressed lines"
    );
    assert_eq!(
        metric_value(&s, "seqserve_rejected_requests_total{reason=\"invalid\"}").await,
        51.0
    );
}

/// Item 9: an absurd configuration value fails at start naming the key and its range (it used to
/// abort with a failed 208 TB allocation).
#[test]
fn absurd_configuration_values_fail_at_start() {
    for (key, value) in [
        ("SEQSERVE__BATCHING__MAX_QUEUE_SIZE", "1000000000000"),
        ("SEQSERVE__MODEL__INTRA_OP_THREADS", "1000000"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
            .args(["serve", "--port", "0"])
            .env(key, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {err}");
        let name = key
            .trim_start_matches("SEQSERVE__")
            .replacen("__", ".", 1)
            .to_lowercase();
        assert!(err.contains(&name) && err.contains("between"), "{err}");
    }
    // One model directory or a repository: given both, the repository used to win in silence.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(["serve", "--port", "0", "--model", "m", "--repository", "r"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

/// Item 10: history events and contexts are as strict as the top level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_fields_are_strict() {
    let s = Server::start(&[]);
    for (body, needle) in [
        (
            r#"{"history": [{"item": "i1", "foo": 2}]}"#,
            "unknown field `foo`",
        ),
        (
            r#"{"history": [{"item": "i1", "behavor": "pv"}]}"#,
            "`behavor`",
        ),
        (
            r#"{"history": ["i1"], "context": {"gender": "F", "gender": "M"}}"#,
            "duplicate context feature `gender`",
        ),
        (r#"{"history": [1.5]}"#, "history entry"),
        (
            r#"{"history": ["i1"], "context": {"age": [1]}}"#,
            "number or a string",
        ),
        (
            r#"{"history": ["i1"], "k": 3, "k": 4}"#,
            "duplicate field `k`",
        ),
    ] {
        let (st, v) = raw_post(&s, "/recommend", body.to_string()).await;
        assert_eq!(st, 422, "{body} -> {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{body} -> {msg}");
        assert!(!msg.contains("variant"), "{body} -> {msg}");
    }
}

/// Item 13: with admin.port set, /evaluate and /metrics live only on the admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_metrics_move_to_their_own_listener() {
    let port = free_port();
    let s = Server::start_env(
        small_model_dir(),
        &[],
        &[
            ("SEQSERVE__ADMIN__PORT", &port.to_string()),
            ("SEQSERVE__ADMIN__TOKEN", "t"),
        ],
    );
    let c = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{port}");
    assert_eq!(c.get(s.url("/metrics")).send().await.unwrap().status(), 404);
    let r = c
        .post(s.url("/evaluate"))
        .bearer_auth("t")
        .json(&json!({"cases": [{"history": ["i1"], "relevant": ["i2"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("seqserve_requests_total"));
    let r = c
        .post(format!("{admin}/evaluate"))
        .bearer_auth("t")
        .json(&json!({"cases": [{"history": ["i1"], "relevant": ["i2"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(format!("{admin}/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(format!("{admin}/recommend"))
        .json(&json!({"history": ["i1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "inference stays on the public port");
    let (st, _, _) = post(&s.url("/recommend"), json!({"history": ["i1"]})).await;
    assert_eq!(st, 200);
}

/// Sends raw bytes on a new connection and returns what comes back within `wait`.
fn raw_exchange(s: &Server, request: &[u8], wait: Duration) -> String {
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.write_all(request).unwrap();
    c.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Red-team findings on connections: at the cap only a connection that has stalled (idle head,
/// trickling body) for a while is evicted, never a fresh well-behaved one; a client that stops
/// reading is cut off after server.send_timeout_ms.
#[test]
fn eviction_spares_fresh_clients_and_stalled_writers_are_cut_off() {
    let s = Server::start_env(
        small_model_dir(),
        &[],
        &[
            ("SEQSERVE__SERVER__MAX_CONNECTIONS", "4"),
            ("SEQSERVE__SERVER__HEADER_READ_TIMEOUT_MS", "20000"),
            ("SEQSERVE__SERVER__BODY_READ_TIMEOUT_MS", "20000"),
            ("SEQSERVE__SERVER__SEND_TIMEOUT_MS", "1000"),
        ],
    );
    // Two stuck heads and one trickling body hold three of the four slots.
    let mut stuck: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr()).unwrap();
            c.write_all(b"GET /health/live HTTP/1.1\r\nHo").unwrap();
            c
        })
        .collect();
    let mut body = TcpStream::connect(s.addr()).unwrap();
    body.write_all(
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"hist",
    )
    .unwrap();
    stuck.push(body);
    // A fresh client takes the last slot and waits a moment before it speaks: nobody else is
    // waiting, so nobody is evicted.
    let mut fresh = TcpStream::connect(s.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fresh
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = fresh.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Once the stuck ones are stale (> 1 s), newcomers that keep their connections get in by
    // evicting them, stalest first, one each.
    std::thread::sleep(Duration::from_millis(1200));
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = c.read(&mut buf).expect("a newcomer is served within 2 s");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        newcomers.push(c);
    }
    let closed = stuck
        .iter_mut()
        .map(|c| closed_within(c, Duration::from_millis(500)).is_some())
        .filter(|&c| c)
        .count();
    assert_eq!(closed, 3, "the stalled connections were evicted");
    // The fresh client's keep-alive connection survived all of that.
    fresh
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let n = fresh.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(fresh);
    drop(newcomers);

    // A client that pipelines requests and never reads: cut off after the send timeout.
    let mut greedy = TcpStream::connect(s.addr()).unwrap();
    let many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = greedy.write_all(&many);
    std::thread::sleep(Duration::from_millis(2500));
    // Drain what the kernel buffered: a connection still open would keep delivering responses
    // until the read times out; a closed one ends (EOF or reset) first.
    greedy
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut big = vec![0u8; 1 << 16];
    let ended = loop {
        match greedy.read(&mut big) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    assert!(ended, "a client that never reads must be cut off");
}

/// Red-team findings on bodies: an over-limit Content-Length is refused at once (no
/// `100 Continue`), errors that end the connection say so, compressed bodies and unknown transfer
/// codings are refused, structs must be objects, and a refused batch counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_checked_before_they_are_read() {
    let s = Server::start_env(
        small_model_dir(),
        &[
            "--max-batch-size",
            "1",
            "--max-queue-size",
            "1",
            "--max-delay-us",
            "300000",
        ],
        &[],
    );
    let huge = raw_exchange(
        &s,
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    assert!(!huge.contains("100 Continue"), "{huge}");
    assert!(huge.to_lowercase().contains("connection: close"), "{huge}");
    // A client already sending an over-limit body (no Expect) reads the 413, not a reset: the
    // server discards the body (up to 4 × the limit) before it answers and closes.
    for _ in 0..5 {
        let r = reqwest::Client::new()
            .post(s.url("/recommend"))
            .header("content-type", "application/json")
            .body(vec![b' '; 2 << 20])
            .send()
            .await
            .expect("the 413 is readable");
        assert_eq!(r.status(), 413);
    }
    let gz = raw_exchange(
        &s,
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
        Duration::from_secs(3),
    );
    assert!(gz.starts_with("HTTP/1.1 415"), "{gz}");
    let te = raw_exchange(
        &s,
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(te.starts_with("HTTP/1.1 501"), "{te}");
    for (path, body) in [
        ("/recommend", r#"[["i1"], {}, 3]"#),
        ("/recommend/batch", r#"{"requests": [[["i1"]]]}"#),
    ] {
        let (st, v) = raw_post(&s, path, body.to_string()).await;
        assert_eq!(st, 422, "{body} -> {v}");
        assert!(
            v["error"].as_str().unwrap().contains("a JSON object"),
            "{v}"
        );
    }
    // Queue of one, one-request batches: a batch of 64 cannot all be queued (the handler queues
    // them in microseconds; the worker needs a forward pass for each, so it cannot keep the queue
    // empty; five requests were not enough on a loaded machine). It is refused once, and the jobs
    // it did queue are withdrawn without being counted again.
    let before = metric_value(
        &s,
        "seqserve_rejected_requests_total{reason=\"queue_full\"}",
    )
    .await;
    let reqs: Vec<Value> = (1..=64)
        .map(|i| json!({"history": [format!("i{}", 1 + i % 50)]}))
        .collect();
    let (st, v, _) = post(&s.url("/recommend/batch"), json!({"requests": reqs})).await;
    assert_eq!(st, 429, "{v}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let full = metric_value(
        &s,
        "seqserve_rejected_requests_total{reason=\"queue_full\"}",
    )
    .await;
    let gone = metric_value(
        &s,
        "seqserve_rejected_requests_total{reason=\"client_gone\"}",
    )
    .await;
    assert_eq!((full - before, gone), (1.0, 0.0));
}

/// Hardening round 2, finding 3: buffered bodies share one budget. With 1 MiB of it, an upload
/// stalled at 700 KB leaves no room for a second one declaring 600 KB: that one is refused at once
/// (503 `body_budget`, Retry-After, Connection: close) before its body is read. A request head over
/// server.max_header_bytes is refused (431), not buffered.
#[test]
fn stalled_uploads_share_one_body_budget_and_heads_are_bounded() {
    let s = Server::start_env(
        small_model_dir(),
        &[],
        &[("SEQSERVE__SERVER__MAX_BUFFERED_BODY_BYTES", "1048576")],
    );
    let mut stalled = TcpStream::connect(s.addr()).unwrap();
    stalled
        .write_all(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
        )
        .unwrap();
    stalled.write_all(&vec![b' '; 700_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let second = raw_exchange(
        &s,
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 600000\r\n\r\n[",
        Duration::from_secs(3),
    );
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(second.contains("body_budget"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("retry-after: 1"),
        "{second}"
    );
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refused before reading"
    );
    // The stalled upload's budget comes back when it ends (here: its client goes away).
    drop(stalled);
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let history: Vec<String> = (0..30_000).map(|i| format!("unknown-{i}")).collect();
    let (st, v, _) = rt.block_on(post(&s.url("/recommend"), json!({"history": history})));
    assert_eq!(
        st, 422,
        "a 600 KB body is read again (and refused for its length): {v}"
    );
    let head = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let big = raw_exchange(&s, head.as_bytes(), Duration::from_secs(3));
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "{}",
        &big[..big.len().min(80)]
    );
}

/// Hardening round 2, finding 6: the smaller ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_paths_missing_hosts_other_charsets_and_tiny_floats_are_refused_clearly() {
    let s = Server::start(&[]);
    let r = reqwest::get(s.url("/models/%ff%fe")).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_path", "{v}");
    let hostless = raw_exchange(
        &s,
        b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(hostless.starts_with("HTTP/1.1 400"), "{hostless}");
    assert!(hostless.contains("missing_host"), "{hostless}");
    // HTTP/1.0 has no Host requirement.
    let old = raw_exchange(
        &s,
        b"GET /health/live HTTP/1.0\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    let r = reqwest::Client::new()
        .post(s.url("/recommend"))
        .header("content-type", "application/json; charset=utf-16")
        .body(r#"{"history": ["i1"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (st, v) = raw_post(&s, "/recommend", r#"{"history": [1e-400]}"#.into()).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("1e-400"), "{v}");
    // Echoed input is cut: a 5,000-character model name comes back as 64 characters and a count.
    let (st, v, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i1"], "model": "m".repeat(5000)}),
    )
    .await;
    assert_eq!(st, 404);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.len() < 400 && msg.contains("4936 more characters"),
        "{msg}"
    );
    let (st, v, _) = post(
        &s.url("/recommend"),
        json!({"history": ["i1"], "context": {"gender": "x".repeat(100_000)}}),
    )
    .await;
    assert_eq!(st, 422);
    assert!(v["error"].as_str().unwrap().len() < 500, "{v}");
}

/// A CLI error prints its cause once: the message names the file and the OS error, and the
/// error chain must not repeat the OS error after it.
#[test]
fn a_missing_file_is_named_with_its_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .arg("train")
        .arg("--data")
        .arg(&missing)
        .arg("--out")
        .arg(dir.path().join("model"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("cannot read {}", missing.display())),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `--threads` past what the machine could run is refused with a message; it used to panic when
/// the threads failed to spawn.
#[test]
fn absurd_thread_counts_are_refused_by_the_offline_commands() {
    let model = small_model_dir();
    let m = model.path().to_str().unwrap();
    for args in [
        vec!["recommend", "--model", m, "--history", "i1"],
        vec!["index", "--model", m],
        vec!["train", "--data", "missing.txt", "--out", "never"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
            .args(&args)
            .args(["--threads", "100000"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("--threads must be at most"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
