//! Hardening round 2's probes: each finding of that round, measured on whatever binary it is given
//! (so the build before the fixes and the build after print the same lines side by side).
use super::{health_probe, pct, say, Rng, Server, MODEL, TOKEN};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A version directory beside `models/beauty-2l` whose manifest's architecture is edited: the
/// weights and items are links to the real ones, so only the manifest lies.
fn lying_version(dir: &Path, key: &str, value: Value) {
    std::fs::create_dir_all(dir).unwrap();
    let model = std::fs::canonicalize(MODEL).unwrap();
    for f in ["model.safetensors", "items.txt"] {
        std::os::unix::fs::symlink(model.join(f), dir.join(f)).unwrap();
    }
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    m["architecture"][key] = value;
    std::fs::write(dir.join("model.json"), m.to_string()).unwrap();
}

fn good_version(dir: &Path) {
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(std::fs::canonicalize(MODEL).unwrap(), dir).unwrap();
}

fn repo_args(repo: &Path) -> Vec<String> {
    vec![
        "--repository".into(),
        repo.display().to_string(),
        "--default-model".into(),
        "m".into(),
    ]
}

async fn admin(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value, f64) {
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    let mut rq = c
        .request(method, url)
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(120));
    if let Some(b) = body {
        rq = rq.json(&b);
    }
    match rq.send().await {
        Ok(r) => {
            let st = r.status().as_u16();
            let v = r.json::<Value>().await.unwrap_or(Value::Null);
            (st, v, t0.elapsed().as_secs_f64())
        }
        Err(e) => (0, json!(e.to_string()), t0.elapsed().as_secs_f64()),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Probe 7: Manifests whose sizes lie (max_len 10^12, ffn_dim 10^9, d_model 2^22, n_layers 2000, and
/// the middling max_len 10^7): loaded through the admin route beside a good version; then a
/// server started on a repository whose newest version is one of them, polling every second.
pub async fn bad_manifests(bin: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    good_version(&repo.join("m/1"));
    let args = repo_args(&repo);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = match Server::start_with(bin, &argv, &[], None) {
        Ok(s) => s,
        Err(e) => return say("bad-manifest", "server on a good repository", e),
    };
    let cases = [
        ("2", "max_len", json!(1_000_000_000_000u64)),
        ("3", "ffn_dim", json!(1_000_000_000u64)),
        ("4", "d_model", json!(1u64 << 22)),
        ("5", "n_layers", json!(2000)),
        ("6", "max_len", json!(10_000_000u64)),
    ];
    let (rss0, _) = s.rss_mb();
    for (v, key, value) in &cases {
        lying_version(&repo.join(format!("m/{v}")), key, value.clone());
        let (st, body, secs) = admin(
            reqwest::Method::POST,
            s.url(&format!("/models/m/versions/{v}")),
            None,
        )
        .await;
        let (rss, peak) = s.rss_mb();
        let alive = s.ready_blocking();
        say(
            "bad-manifest",
            &format!("admin load, {key} = {value}: status, s, RSS/peak MB"),
            format!(
                "{st} in {secs:.2} s, {rss:.0}/{peak:.0} MB, alive {alive}: {}",
                body["error"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(100)
                    .collect::<String>()
            ),
        );
        if !alive {
            return;
        }
    }
    let models: Value = reqwest::get(s.url("/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    let states: Vec<String> = models["models"][0]["load_events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}={}",
                        e["version"].as_str().unwrap_or("?"),
                        e["state"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    say("bad-manifest", "/models load events", states.join(" "));
    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    say(
        "bad-manifest",
        "seqserve_model_loads_total{result=\"failed\"}",
        metric(&text, "seqserve_model_loads_total{result=\"failed\"}"),
    );
    say(
        "bad-manifest",
        "RSS before / after the five failed loads, MB",
        format!("{rss0:.0} / {:.0}", s.rss_mb().0),
    );
    drop(s);
    // A restart whose newest version is bad, polling every second.
    let tmp2 = tempfile::tempdir().unwrap();
    let repo2 = tmp2.path().join("repo");
    good_version(&repo2.join("m/1"));
    lying_version(&repo2.join("m/2"), "max_len", json!(1_000_000_000_000u64));
    let mut args = repo_args(&repo2);
    args.extend(["--poll-interval-secs".into(), "1".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match Server::start_with(bin, &argv, &[], None) {
        Ok(s) => {
            let models: Value = reqwest::get(s.url("/models"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            say(
                "bad-manifest",
                "start with a bad newest version: serves version",
                models["models"][0]["default_version"].clone(),
            );
            let l0 = s.log_lines.load(Ordering::Relaxed);
            let b0 = s.log_bytes.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(6)).await;
            say(
                "bad-manifest",
                "polling 1 s for 6 s: log lines / KB",
                format!(
                    "{} / {:.1}",
                    s.log_lines.load(Ordering::Relaxed) - l0,
                    (s.log_bytes.load(Ordering::Relaxed) - b0) as f64 / 1024.0
                ),
            );
        }
        Err(e) => say("bad-manifest", "start with a bad newest version", e),
    }
}

/// Probe 8: 1,000 load + unload cycles of a non-default version: RSS, memory mappings and threads
/// after the first cycle and after the last.
pub async fn swap_leak(bin: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    good_version(&repo.join("m/1"));
    good_version(&repo.join("m/2"));
    let args = repo_args(&repo);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start_with(bin, &argv, &[], None).expect("server");
    let cycles: usize = std::env::var("ATTACK_SWAP_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let c = reqwest::Client::new();
    let mut after_first = None;
    let t0 = Instant::now();
    for i in 0..cycles {
        for (m, path) in [
            (reqwest::Method::POST, "/models/m/versions/1"),
            (reqwest::Method::DELETE, "/models/m/versions/1"),
        ] {
            let _ = c
                .request(m, s.url(path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .map(|r| r.status());
        }
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = c.get(s.url("/models")).send().await;
            after_first = Some((s.rss_mb().0, s.maps(), s.threads()));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = c.get(s.url("/models")).send().await;
    let (r1, m1, t1) = after_first.unwrap();
    let (r2, m2, t2) = (s.rss_mb().0, s.maps(), s.threads());
    say(
        "swap-leak",
        &format!(
            "{cycles} load+unload cycles ({:.0} s): RSS MB first -> last",
            t0.elapsed().as_secs_f64()
        ),
        format!("{r1:.0} -> {r2:.0} ({:+.1}%)", (r2 / r1 - 1.0) * 100.0),
    );
    say(
        "swap-leak",
        "memory mappings / threads, first -> last",
        format!("{m1} -> {m2} / {t1} -> {t2}"),
    );
}

/// Probe 9: Stalled uploads: 2,000 connections declaring a 1 MB body and sending 1,040,000 bytes of it;
/// then 2,000 connections stuck in a 390 KB header line. RSS peak, /health/live p99 during, RSS
/// a minute after; a single 200 KB header.
pub async fn stalled_uploads(bin: &str) {
    let s = Server::start(bin, &[], None);
    let (rss0, _) = s.rss_mb();
    let conns: usize = std::env::var("ATTACK_STALLED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let health = {
        let base = s.base.clone();
        tokio::spawn(async move { health_probe(&base, 15.0).await })
    };
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (pid, peak) = (s.child.id(), peak.clone());
        tokio::spawn(async move {
            for _ in 0..160 {
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|st| {
                        st.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let chunk = vec![b'1'; 65_000];
    let refused = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..conns {
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(&s.addr),
        )
        .await
        else {
            continue;
        };
        let head = "POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
        let (chunk, refused) = (chunk.clone(), refused.clone());
        held.push(tokio::spawn(async move {
            let _ = c.write_all(head.as_bytes()).await;
            let mut sent = 0;
            while sent < 1_040_000 {
                let n = (1_040_000 - sent).min(chunk.len());
                if c.write_all(&chunk[..n]).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                    return c;
                }
                sent += n;
            }
            // Stall: hold the connection, read whatever the server answers.
            let mut b = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(20), c.read(&mut b)).await {
                if n > 0 && b.starts_with(b"HTTP/1.1 503") {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            c
        }));
    }
    let mut lat = health.await.unwrap();
    let _ = sampler.await;
    let kept: Vec<_> = futures_util::future::join_all(held).await;
    say(
        "stalled",
        &format!("{conns} uploads stalled at 1,040,000 of 1 MB: RSS before / peak MB"),
        format!(
            "{rss0:.0} / {:.0}",
            peak.load(Ordering::Relaxed) as f64 / 1024.0
        ),
    );
    say(
        "stalled",
        "their /health/live p50 / p99 ms; uploads refused early (503)",
        format!(
            "{:.1} / {:.1}; {}",
            pct(&mut lat.clone(), 0.5),
            pct(&mut lat, 0.99),
            refused.load(Ordering::Relaxed)
        ),
    );
    drop(kept);
    tokio::time::sleep(Duration::from_secs(60)).await;
    say(
        "stalled",
        "RSS a minute after, MB",
        format!("{:.0}", s.rss_mb().0),
    );
    // Headers that never end: 2,000 connections with 390 KB of one header line each.
    let before = s.rss_mb().0;
    let line = vec![b'a'; 390_000];
    let mut hs = Vec::new();
    for _ in 0..conns {
        let Ok(mut c) = tokio::net::TcpStream::connect(&s.addr).await else {
            continue;
        };
        let line = line.clone();
        hs.push(tokio::spawn(async move {
            let _ = c
                .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
                .await;
            let _ = c.write_all(&line).await;
            c
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    say(
        "stalled",
        &format!("{conns} connections stuck in a 390 KB header: RSS before / during MB"),
        format!("{before:.0} / {:.0}", s.rss_mb().0),
    );
    drop(futures_util::future::join_all(hs).await);
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let big = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = c.write_all(big.as_bytes()).await;
    let mut b = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0);
    say(
        "stalled",
        "one request with a 200 KB header: status line",
        String::from_utf8_lossy(&b[..n.min(15)]).to_string(),
    );
}

/// Probe 10: Overload: 300 clients looping /recommend/batch with 64 requests × 1,600 candidates
/// (~0.9 MB) for 20 s, against the same request's unloaded rate.
pub async fn overload(bin: &str, items: Arc<Vec<String>>) {
    let s = Server::start(bin, &[], None);
    let mut r = Rng(5);
    let mut one = || {
        let mut r2 = Rng(r.next(1 << 30) as u64);
        let h: Vec<&String> = (0..20).map(|_| &items[r2.next(items.len())]).collect();
        let cands: Vec<&String> = (0..1600).map(|_| &items[r2.next(items.len())]).collect();
        json!({"history": h, "candidates": cands, "k": 10})
    };
    let reqs: Vec<Value> = (0..64).map(|_| one()).collect();
    // Bytes: every send shares the one buffer (no 0.7 MB copy per request in the load generator).
    let body = axum::body::Bytes::from(serde_json::to_vec(&json!({"requests": reqs})).unwrap());
    let url = s.url("/recommend/batch");
    let run = |conc: usize, secs: f64| {
        let (body, url) = (body.clone(), url.clone());
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(conc)
                .build()
                .unwrap();
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let tasks: Vec<_> = (0..conc)
                .map(|_| {
                    let (client, body, url) = (client.clone(), body.clone(), url.clone());
                    tokio::spawn(async move {
                        // (status, ms at the client, ms in the server: its x-total-time header)
                        let mut out: Vec<(u16, f64, f64)> = Vec::new();
                        while Instant::now() < end {
                            let t0 = Instant::now();
                            let (st, server_ms) = client
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .timeout(Duration::from_secs(10))
                                .send()
                                .await
                                .map(|r| {
                                    let ms = r
                                        .headers()
                                        .get("x-total-time")
                                        .and_then(|v| v.to_str().ok()?.parse().ok())
                                        .unwrap_or(f64::NAN);
                                    (r.status().as_u16(), ms)
                                })
                                .unwrap_or((0, f64::NAN));
                            out.push((st, t0.elapsed().as_secs_f64() * 1000.0, server_ms));
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            all
        }
    };
    let unloaded = run(2, 10.0).await;
    let ok_unloaded = unloaded.iter().filter(|x| x.0 == 200).count() as f64 / 10.0;
    let mut lat: Vec<f64> = unloaded
        .iter()
        .filter(|x| x.0 == 200)
        .map(|x| x.1)
        .collect();
    say(
        "overload",
        &format!(
            "batch of 64 x 1,600 candidates ({} KB), 2 clients: 200/s, p50 ms",
            body.len() / 1024
        ),
        format!("{ok_unloaded:.1}, {:.0}", pct(&mut lat, 0.5)),
    );
    let loaded = run(300, 20.0).await;
    let mut by: std::collections::BTreeMap<u16, usize> = Default::default();
    for (st, _, _) in &loaded {
        *by.entry(*st).or_default() += 1;
    }
    let ok = by.get(&200).copied().unwrap_or(0) as f64 / 20.0;
    let mut refusals: Vec<f64> = loaded.iter().filter(|x| x.0 != 200).map(|x| x.1).collect();
    let mut in_server: Vec<f64> = loaded
        .iter()
        .filter(|x| x.0 != 200 && x.2.is_finite())
        .map(|x| x.2)
        .collect();
    say(
        "overload",
        "300 clients for 20 s: answers by status",
        format!("{by:?}"),
    );
    say(
        "overload",
        "200/s under overload / unloaded (goal >= 70%)",
        format!(
            "{ok:.1} / {ok_unloaded:.1} = {:.0}%",
            ok / ok_unloaded * 100.0
        ),
    );
    say(
        "overload",
        "refusals at the client (300 clients' own queueing): p50 / p99 ms",
        format!(
            "{:.1} / {:.1}",
            pct(&mut refusals.clone(), 0.5),
            pct(&mut refusals, 0.99)
        ),
    );
    say(
        "overload",
        "refusals in the server (x-total-time): p50 / p99 ms (goal p99 <= 5)",
        format!(
            "{:.2} / {:.2}",
            pct(&mut in_server.clone(), 0.5),
            pct(&mut in_server, 0.99)
        ),
    );
}

async fn raw(addr: &str, request: &[u8]) -> String {
    let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
        return "connect failed".into();
    };
    let _ = c.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// Probe 11: The smaller findings, one line each.
pub async fn small_findings(bin: &str) {
    let s = Server::start(bin, &[], None);
    let c = reqwest::Client::new();
    let r = c.get(s.url("/models/%ff%fe")).send().await.unwrap();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    say(
        "small",
        "GET /models/%ff%fe: status, content type",
        format!("{}, {ct}", r.status().as_u16()),
    );
    let post = |body: Value| {
        let c = c.clone();
        let url = s.url("/recommend");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.text().await.unwrap_or_default())
        }
    };
    let (st, text) = post(json!({"history": [1], "context": {"x": "v".repeat(100_000)}})).await;
    say(
        "small",
        "100 KB context value: status, error body bytes",
        format!("{st}, {}", text.len()),
    );
    let (st, text) = post(json!({"history": [1], "model": "m".repeat(5000)})).await;
    say(
        "small",
        "5,000-character model name: status, error body bytes",
        format!("{st}, {}", text.len()),
    );
    let r = c
        .post(s.url("/recommend"))
        .header("content-type", "application/json")
        .body(r#"{"history": [1e-400]}"#)
        .send()
        .await
        .unwrap();
    say("small", "history [1e-400]: status", r.status().as_u16());
    let r = c
        .post(s.url("/recommend"))
        .header("content-type", "application/json; charset=utf-16")
        .body(r#"{"history": [1]}"#)
        .send()
        .await
        .unwrap();
    say(
        "small",
        "Content-Type charset=utf-16: status",
        r.status().as_u16(),
    );
    let resp = raw(
        &s.addr,
        b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    say(
        "small",
        "HTTP/1.1 without Host: status line",
        resp.lines().next().unwrap_or("").to_string(),
    );
}
