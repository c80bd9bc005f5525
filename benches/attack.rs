//! Attack and operations probes against a real seqserve binary (run: `scripts/attack.sh [BINARY]`).
//!
//! Loopback only, every loop bounded in count and time. Runs the binary it is given (default
//! target/release/seqserve) on models/beauty-2l, so an older build can be measured side by side
//! with the current one; only configuration keys that every build knows are set. Prints one line per
//! figure: `scenario  figure  value`.
//!
//! 1. heavy bodies: /recommend/batch bodies of 16 histories × 10,000 unknown ids, looped by two
//!    clients: /health/live latency and live /recommend rate, before vs during.
//! 2. evaluation flood: 40 concurrent POST /evaluate (2,001 inline cases each): accepted, refused,
//!    server threads, live p99 at a fixed rate idle vs during.
//! 3. half-open connections: 1,100 connections that never finish their headers, server started
//!    with a 1,024 descriptor limit: can a new client get /health/live, are they closed, and how long
//!    does SIGTERM then take.
//! 4. drain timeout: drain_timeout_secs = 5 with three evaluations running: seconds from SIGTERM
//!    to exit.
//! 5. drain visibility: 256 closed-loop clients and a readiness poller, SIGTERM: what each saw.
//! 6. log volume: max_queue_size = 1 under 64 clients (a 429 flood): log lines and bytes per second.
//!
//! Round 2 (`attack/round2.rs`): 7. manifests that lie about their sizes; 8. load/unload leaks;
//! 9. stalled bodies and headers (memory, /health/live); 10. overload goodput; 11. small findings.
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Hardening round 2's probes: bad manifests, swap leaks, stalled bodies and headers, overload
// goodput, small findings.
#[path = "attack/round2.rs"]
mod round2;

const MODEL: &str = "models/beauty-2l";
const TOKEN: &str = "attack-token";

struct Server {
    child: Child,
    base: String,
    addr: String,
    log_lines: Arc<AtomicU64>,
    log_bytes: Arc<AtomicU64>,
}

impl Server {
    fn start(bin: &str, envs: &[(&str, String)], nofile: Option<u64>) -> Server {
        Server::start_with(bin, &["--model", MODEL], envs, nofile).expect("server ready")
    }

    /// A server on `serving` (`--model DIR`, or `--repository DIR ...`); Err with its last log
    /// lines when it exits or never becomes ready.
    fn start_with(
        bin: &str,
        serving: &[&str],
        envs: &[(&str, String)],
        nofile: Option<u64>,
    ) -> Result<Server, String> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-format",
            "json",
            "--device",
            "cpu",
        ])
        .args(serving)
        .env("SEQSERVE_LOG", "info")
        .env("SEQSERVE__ADMIN__TOKEN", TOKEN)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; called in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (lines, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tail = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (l2, b2, t2) = (lines.clone(), bytes.clone(), tail.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.fetch_add(1, Ordering::Relaxed);
                b2.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "listening" {
                        let _ = tx.send(v["fields"]["local"].as_str().unwrap_or("").to_string());
                    }
                }
                let mut t = t2.lock().unwrap();
                t.push(line.chars().take(300).collect());
                let excess = t.len().saturating_sub(5);
                t.drain(..excess);
            }
        });
        let last_lines = |tail: &std::sync::Mutex<Vec<String>>| tail.lock().unwrap().join(" | ");
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("never listened: {}", last_lines(&tail)));
        };
        let mut s = Server {
            child,
            base: format!("http://{addr}"),
            addr,
            log_lines: lines,
            log_bytes: bytes,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = s.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return Err(format!("exited ({status}): {}", last_lines(&tail)));
            }
            if s.ready_blocking() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("never became ready".into())
    }

    /// (RSS, peak RSS) in MB, from /proc.
    fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Lines of /proc/PID/maps: each thread stack left behind is two more.
    fn maps(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))
            .map(|m| m.lines().count())
            .unwrap_or(0)
    }

    fn ready_blocking(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = c.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = String::new();
        let _ = c.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200")
    }

    fn url(&self, p: &str) -> String {
        format!("{}{}", self.base, p)
    }

    fn threads(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Threads:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    fn sigterm(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Seconds until the process exits (None: still running after `limit`).
    fn wait_exit(&mut self, limit: Duration) -> Option<f64> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(t0.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(scenario: &str, figure: &str, value: impl std::fmt::Display) {
    println!("{scenario:<14} {figure:<52} {value}");
}

fn catalogue() -> Vec<String> {
    std::fs::read_to_string(format!("{MODEL}/items.txt"))
        .expect("items.txt")
        .lines()
        .map(str::to_string)
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, m: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % m as u64) as usize
    }
}

fn live_body(items: &[String], r: &mut Rng) -> Value {
    let h: Vec<&String> = (0..20).map(|_| &items[r.next(items.len())]).collect();
    json!({"history": h, "k": 10})
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Closed loop with `conc` clients for `secs`: requests/s with 2xx.
async fn closed_loop(base: &str, items: &Arc<Vec<String>>, conc: usize, secs: f64) -> f64 {
    let client = reqwest::Client::new();
    let ok = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..conc {
        let (client, ok, items, url) = (
            client.clone(),
            ok.clone(),
            items.clone(),
            format!("{base}/recommend"),
        );
        tasks.push(tokio::spawn(async move {
            let mut r = Rng(c as u64 + 1);
            while Instant::now() < end {
                let b = live_body(&items, &mut r);
                let resp = client
                    .post(&url)
                    .json(&b)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if resp.is_ok_and(|r| r.status().is_success()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ok.load(Ordering::Relaxed) as f64 / secs
}

/// Open loop at `rate` req/s for `secs`: latencies (ms) of 2xx answers and the error count.
async fn open_loop(
    base: &str,
    items: &Arc<Vec<String>>,
    rate: f64,
    secs: f64,
) -> (Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let n = (rate * secs) as usize;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut r = Rng(99);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let b = live_body(items, &mut r);
        let (client, url) = (client.clone(), format!("{base}/recommend"));
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let ok = client
                .post(&url)
                .json(&b)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (ok, t0.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok((true, ms)) => lat.push(ms),
            _ => errors += 1,
        }
    }
    (lat, errors)
}

/// /health/live latencies (ms) sampled every 20 ms for `secs`; a probe that fails counts as 5000.
async fn health_probe(base: &str, secs: f64) -> Vec<f64> {
    let client = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut out = Vec::new();
    while Instant::now() < end {
        let t0 = Instant::now();
        let ok = client
            .get(format!("{base}/health/live"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        out.push(if ok {
            t0.elapsed().as_secs_f64() * 1000.0
        } else {
            5000.0
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

async fn heavy_bodies(bin: &str, items: Arc<Vec<String>>) {
    let s = Server::start(bin, &[], None);
    // Integer ids above the catalogue's range: unknown, and 16 histories stay under the 1 MB limit.
    let history: Vec<u64> = (0..10_000).map(|i| 20_000 + i).collect();
    let one = json!({"history": history, "k": 10});
    let batch = json!({"requests": vec![one.clone(); 16]});
    let body = serde_json::to_vec(&batch).unwrap();
    say("heavy", "batch body bytes", body.len());
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let r = client
        .post(s.url("/recommend"))
        .json(&one)
        .send()
        .await
        .unwrap();
    say(
        "heavy",
        "one 10k-unknown-id /recommend ms (status)",
        format!(
            "{:.1} ({})",
            t0.elapsed().as_secs_f64() * 1000.0,
            r.status().as_u16()
        ),
    );
    let mut idle = health_probe(&s.base, 2.0).await;
    say(
        "heavy",
        "health/live p99 ms, idle",
        format!("{:.1}", pct(&mut idle, 0.99)),
    );
    let base_rate = closed_loop(&s.base, &items, 4, 3.0).await;
    say(
        "heavy",
        "live req/s (4 clients), idle",
        format!("{base_rate:.0}"),
    );
    let end = Instant::now() + Duration::from_secs(6);
    let mut attackers = Vec::new();
    let sent = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (client, url, body, sent) = (
            client.clone(),
            s.url("/recommend/batch"),
            body.clone(),
            sent.clone(),
        );
        attackers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let _ = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut health, rate) = tokio::join!(
        health_probe(&s.base, 4.0),
        closed_loop(&s.base, &items, 4, 4.0)
    );
    for a in attackers {
        let _ = a.await;
    }
    say(
        "heavy",
        "health/live p99 / max ms, under attack",
        format!(
            "{:.1} / {:.1}",
            pct(&mut health, 0.99),
            pct(&mut health, 1.0)
        ),
    );
    say(
        "heavy",
        "live req/s (4 clients), under attack",
        format!("{rate:.0}"),
    );
    say(
        "heavy",
        "attack bodies answered",
        sent.load(Ordering::Relaxed),
    );
}

fn eval_cases(items: &[String], n: usize, seed: u64) -> Vec<Value> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let h: Vec<&String> = (0..20).map(|_| &items[r.next(items.len())]).collect();
            json!({"history": h, "relevant": [items[r.next(items.len())]]})
        })
        .collect()
}

async fn evaluation_flood(bin: &str, items: Arc<Vec<String>>) {
    let s = Server::start(bin, &[], None);
    let (mut idle, e0) = open_loop(&s.base, &items, 200.0, 4.0).await;
    say(
        "eval-flood",
        "live p99 ms at 200 req/s, idle (errors)",
        format!("{:.1} ({e0})", pct(&mut idle, 0.99)),
    );
    let threads_before = s.threads();
    let client = reqwest::Client::new();
    let mut posts = Vec::new();
    for i in 0..40 {
        let body = json!({"cases": eval_cases(&items, 2001, i + 1), "k": [10]});
        let (client, url) = (client.clone(), s.url("/evaluate"));
        posts.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(TOKEN)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for p in posts {
        *statuses.entry(p.await.unwrap_or(0)).or_insert(0) += 1;
    }
    say(
        "eval-flood",
        "POST /evaluate answers (status: count)",
        format!("{statuses:?}"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(
        "eval-flood",
        "server threads before / while evaluations run",
        format!("{threads_before} / {}", s.threads()),
    );
    let (mut busy, e1) = open_loop(&s.base, &items, 200.0, 4.0).await;
    let (p_idle, p_busy) = (pct(&mut idle, 0.99), pct(&mut busy, 0.99));
    say(
        "eval-flood",
        "live p99 ms at 200 req/s, evaluations running (errors)",
        format!("{p_busy:.1} ({e1})"),
    );
    say(
        "eval-flood",
        "p99 ratio running / idle",
        format!("{:.2}", p_busy / p_idle),
    );
}

async fn half_open(bin: &str) {
    let mut s = Server::start(bin, &[], Some(1024));
    let mut conns = Vec::new();
    for _ in 0..1100 {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(&s.addr),
        )
        .await
        {
            Ok(Ok(mut c)) => {
                let _ = c
                    .write_all(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: app")
                    .await;
                conns.push(c);
            }
            _ => break,
        }
    }
    say(
        "half-open",
        "connections opened (never finishing headers)",
        conns.len(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = reqwest::Client::new();
    let mut ok = 0;
    let mut worst: f64 = 0.0;
    for _ in 0..5 {
        let t0 = Instant::now();
        if client
            .get(s.url("/health/live"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ok += 1;
        }
        worst = worst.max(t0.elapsed().as_secs_f64() * 1000.0);
    }
    say(
        "half-open",
        "new clients served /health/live (of 5), worst ms",
        format!("{ok}, {worst:.0}"),
    );
    // After the header-read timeout (10 s by default) a hardened server has closed them.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut closed = 0;
    for c in conns.iter_mut() {
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(2), c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => closed += 1, // an error response, then close
            Err(_) => {}
        }
    }
    say(
        "half-open",
        "of them closed by the server after 12 s",
        closed,
    );
    // Fresh half-open connections, then SIGTERM: they must not hold the exit.
    let mut fresh = Vec::new();
    for _ in 0..200 {
        if let Ok(mut c) = tokio::net::TcpStream::connect(&s.addr).await {
            let _ = c.write_all(b"GET /health/live HTTP/1.1\r\nHo").await;
            fresh.push(c);
        }
    }
    s.sigterm();
    let exit = s.wait_exit(Duration::from_secs(40));
    say(
        "half-open",
        "SIGTERM to exit with 200 half-open connections, s",
        exit.map(|t| format!("{t:.2}"))
            .unwrap_or("still running after 40 s".into()),
    );
}

async fn drain_timeout(bin: &str, items: Arc<Vec<String>>) {
    // A holdout file of 50,000 cases: each evaluation runs for tens of seconds.
    let dir = std::env::temp_dir().join(format!("seqserve-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = eval_cases(&items, 50_000, 7)
        .iter()
        .map(|c| format!("{c}\n"))
        .collect();
    std::fs::write(dir.join("h.jsonl"), text).unwrap();
    let mut s = Server::start(
        bin,
        &[
            ("SEQSERVE__SERVER__DRAIN_TIMEOUT_SECS", "5".into()),
            ("SEQSERVE__ADMIN__HOLDOUT_DIR", dir.display().to_string()),
        ],
        None,
    );
    let client = reqwest::Client::new();
    let mut started = 0;
    for _ in 0..3 {
        let body = json!({"holdout": "h.jsonl", "k": [10]});
        let r = client
            .post(s.url("/evaluate"))
            .bearer_auth(TOKEN)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 202) {
            started += 1;
        }
    }
    say("drain", "evaluation jobs running at SIGTERM", started);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.sigterm();
    let exit = s.wait_exit(Duration::from_secs(60));
    say(
        "drain",
        "SIGTERM to exit, s (drain_timeout_secs = 5)",
        exit.map(|t| format!("{t:.2}"))
            .unwrap_or("still running after 60 s".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn drain_visibility(bin: &str, items: Arc<Vec<String>>) {
    let mut s = Server::start(bin, &[], None);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signalled = Arc::new(std::sync::Mutex::new(None::<Instant>));
    // Outcomes after the signal: ok, 503, other status, connect refused, other errors (read/reset).
    let counts: Arc<[AtomicUsize; 5]> = Arc::new(Default::default());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..256 {
        let (client, url, stop, sig, counts, items) = (
            client.clone(),
            s.url("/recommend"),
            stop.clone(),
            signalled.clone(),
            counts.clone(),
            items.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut r = Rng(c + 1);
            let mut refused_in_a_row = 0;
            while !stop.load(Ordering::Relaxed) && refused_in_a_row < 3 {
                let b = live_body(&items, &mut r);
                let res = client
                    .post(&url)
                    .json(&b)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let after = sig.lock().unwrap().is_some();
                let slot = match &res {
                    Ok(r) if r.status().is_success() => 0,
                    Ok(r) if r.status().as_u16() == 503 => 1,
                    Ok(_) => 2,
                    Err(e) if e.is_connect() => 3,
                    Err(_) => 4,
                };
                refused_in_a_row = if slot == 3 { refused_in_a_row + 1 } else { 0 };
                if after {
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
                if slot == 3 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let ready_counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let poller = {
        let (url, stop, sig, rc) = (
            s.url("/health/ready"),
            stop.clone(),
            signalled.clone(),
            ready_counts.clone(),
        );
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let res = c.get(&url).timeout(Duration::from_secs(2)).send().await;
                if sig.lock().unwrap().is_some() {
                    let slot = match res {
                        Ok(r) if r.status().is_success() => 0,
                        Ok(r) if r.status().as_u16() == 503 => 1,
                        _ => 2,
                    };
                    rc[slot].fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    *signalled.lock().unwrap() = Some(Instant::now());
    s.sigterm();
    let exit = tokio::task::spawn_blocking(move || s.wait_exit(Duration::from_secs(40)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = poller.await;
    let c: Vec<usize> = counts.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    say(
        "drain-ready",
        "after SIGTERM, 256 clients: 2xx / 503 / other / refused / read errors",
        format!("{} / {} / {} / {} / {}", c[0], c[1], c[2], c[3], c[4]),
    );
    let r: Vec<usize> = ready_counts
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    say(
        "drain-ready",
        "readiness poller after SIGTERM: 200 / 503 / no answer",
        format!("{} / {} / {}", r[0], r[1], r[2]),
    );
    say(
        "drain-ready",
        "SIGTERM to exit, s",
        exit.map(|t| format!("{t:.2}"))
            .unwrap_or("still running".into()),
    );
}

async fn log_volume(bin: &str, items: Arc<Vec<String>>) {
    let s = Server::start(
        bin,
        &[("SEQSERVE__BATCHING__MAX_QUEUE_SIZE", "1".into())],
        None,
    );
    let (l0, b0) = (
        s.log_lines.load(Ordering::Relaxed),
        s.log_bytes.load(Ordering::Relaxed),
    );
    let rate = closed_loop(&s.base, &items, 64, 4.0).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (l1, b1) = (
        s.log_lines.load(Ordering::Relaxed),
        s.log_bytes.load(Ordering::Relaxed),
    );
    say(
        "log-flood",
        "2xx req/s with max_queue_size = 1, 64 clients",
        format!("{rate:.0}"),
    );
    say(
        "log-flood",
        "log lines / KB per second during the flood",
        format!(
            "{:.0} / {:.1}",
            (l1 - l0) as f64 / 4.0,
            (b1 - b0) as f64 / 4.0 / 1024.0
        ),
    );
}

fn main() {
    // This process opens over a thousand sockets itself.
    seqserve::serve::http::listener::raise_fd_limit();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/seqserve".into());
    let only = std::env::var("ATTACK_ONLY").unwrap_or_default();
    let items = Arc::new(catalogue());
    println!("binary {bin}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let want = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    rt.block_on(async {
        if want("heavy") {
            heavy_bodies(&bin, items.clone()).await;
        }
        if want("eval-flood") {
            evaluation_flood(&bin, items.clone()).await;
        }
        if want("half-open") {
            half_open(&bin).await;
        }
        if want("drain") {
            drain_timeout(&bin, items.clone()).await;
        }
        if want("drain-ready") {
            drain_visibility(&bin, items.clone()).await;
        }
        if want("log-flood") {
            log_volume(&bin, items.clone()).await;
        }
        if want("bad-manifest") {
            round2::bad_manifests(&bin).await;
        }
        if want("swap-leak") {
            round2::swap_leak(&bin).await;
        }
        if want("stalled") {
            round2::stalled_uploads(&bin).await;
        }
        if want("overload") {
            round2::overload(&bin, items.clone()).await;
        }
        if want("small") {
            round2::small_findings(&bin).await;
        }
    });
}
