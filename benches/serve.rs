//! Serving benchmark (run: `scripts/bench.sh`, or `cargo bench --bench serve -- [MODEL_DIR]`).
//!
//! In one run, on one machine, load generator included:
//! 1. raw in-process throughput of the model (no HTTP) at batch 1, 8 and 32;
//! 2. the real server over HTTP, closed loop at several concurrencies: requests/s, p50, p99;
//! 3. open loop at half the best HTTP rate: p50, p99;
//! 4. the same open loop while an evaluation job (POST /evaluate) shares the model: p99 ratio;
//! 5. where the CPU went at each closed-loop point (load generator, HTTP runtime, model worker; for
//!    TorchServe, its processes as the rest of the machine's busy time), and so the most requests/s
//!    these cores could give with this client at that cost.
//!
//! Prints a markdown table. Histories are random catalogue items (lengths 1..=50, fixed seed).
mod common;

use common::{closed_loop, cpu_since, machine_busy, percentile, thread_cpu, Lcg};
use seqserve::model::{Model, Query, RankSpec};
use seqserve::serve::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn histories(model: &Model, n: usize) -> Vec<Vec<String>> {
    let mut r = Lcg(7);
    let items = model.catalogue.len() as u64;
    (0..n)
        .map(|_| {
            let len = 1 + r.next(50) as usize;
            (0..len)
                .map(|_| {
                    model
                        .catalogue
                        .id_of(1 + r.next(items) as usize)
                        .to_string()
                })
                .collect()
        })
        .collect()
}

fn raw_throughput(model: &Model, hist: &[Vec<String>], batch: usize, secs: f64) -> f64 {
    let queries: Vec<Query> = hist
        .iter()
        .map(|h| {
            let ev = common::events(h);
            model.prepare(&ev, &BTreeMap::new()).unwrap().query
        })
        .collect();
    let spec = RankSpec {
        k: 10,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut i = 0usize;
    while t0.elapsed().as_secs_f64() < secs {
        let qs: Vec<&Query> = (0..batch)
            .map(|j| &queries[(i + j) % queries.len()])
            .collect();
        let specs = vec![spec.clone(); batch];
        let _ = model.recommend(&qs, &specs);
        done += batch;
        i += batch;
    }
    done as f64 / t0.elapsed().as_secs_f64()
}

async fn open_loop(
    url: &str,
    bodies: Arc<Vec<String>>,
    rate: f64,
    secs: f64,
) -> (f64, Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0;
    while t0.elapsed().as_secs_f64() < secs {
        tick.tick().await;
        let (client, url, body) = (
            client.clone(),
            url.to_string(),
            bodies[i % bodies.len()].clone(),
        );
        i += 1;
        tasks.push(tokio::spawn(async move {
            let s = Instant::now();
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let _ = r.bytes().await;
                    Some(s.elapsed().as_secs_f64() * 1000.0)
                }
                _ => None,
            }
        }));
    }
    let sent = tasks.len();
    let mut lat = Vec::new();
    for t in tasks {
        if let Some(l) = t.await.unwrap() {
            lat.push(l);
        }
    }
    let errors = sent - lat.len();
    lat.sort_by(f64::total_cmp);
    (sent as f64 / secs, lat, errors)
}

async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON answer")
}

/// One closed-loop point's CPU, in µs per answered request: [load generator, the server's HTTP
/// runtime, its model worker(s), everything else on the machine (TorchServe's processes when it is
/// the server measured; otherwise other load, which should be ~0 on a quiet machine)].
struct CpuPoint {
    per_request: [f64; 4],
}

impl CpuPoint {
    fn total(&self) -> f64 {
        self.per_request.iter().sum()
    }
}

/// Runs one closed-loop point and accounts its CPU time.
async fn measured_point(
    url: &str,
    bodies: Arc<Vec<String>>,
    conc: usize,
    secs: f64,
) -> (f64, Vec<f64>, usize, CpuPoint) {
    let (before, busy0) = (thread_cpu(), machine_busy());
    let (rps, lat, err) = closed_loop(url, bodies, conc, secs).await;
    let (used, busy) = (cpu_since(&before), machine_busy() - busy0);
    let sum = |f: &dyn Fn(&str) -> bool| {
        // A fold from +0.0: an empty f64 sum is -0.0, which prints as "-0".
        used.iter()
            .filter(|(n, _)| f(n))
            .fold(0.0, |a, (_, s)| a + s)
    };
    let client = sum(&|n| n == common::CLIENT_THREADS);
    let http = sum(&|n| n == common::SERVER_THREADS);
    let model = sum(&|n| n.starts_with("seqserve-model"));
    let ours: f64 = used.values().sum();
    let n = lat.len().max(1) as f64 / 1e6;
    let rest = (busy - ours).max(0.0);
    let cpu = CpuPoint {
        per_request: [
            client / n,
            http / n,
            model / n,
            // Rounding can leave a sum a hair below its parts.
            ((ours - client - http - model).max(0.0) + rest) / n,
        ],
    };
    (rps, lat, err, cpu)
}

/// The table of where each point's CPU went.
fn print_cpu(title: &str, rows: &[(usize, f64, CpuPoint)]) {
    println!("\n| {title}: CPU µs per request | concurrency | load generator | server HTTP | model worker | rest of the machine | total | cores busy |\n|---|---|---|---|---|---|---|---|");
    for (conc, rps, c) in rows {
        let [a, b, m, r] = c.per_request;
        println!(
            "| | {conc} | {a:.0} | {b:.0} | {m:.0} | {r:.0} | {:.0} | {:.2} |",
            c.total(),
            c.total() * rps / 1e6
        );
    }
}

fn main() {
    let (model_dir, secs) = common::model_dir_and_seconds();
    let threads = seqserve::device::configure_threads(0);
    let model =
        Model::load(std::path::Path::new(&model_dir), tch::Device::Cpu).expect("load model");
    let hist = histories(&model, 512);
    println!("# seqserve serving benchmark");
    println!(
        "model {model_dir} ({} items, {} layers), libtorch threads {threads}, {secs} s per point\n",
        model.catalogue.len(),
        model.manifest.architecture.n_layers
    );
    println!("| in-process (no HTTP) | sequences/s |\n|---|---|");
    let mut raw32 = 0.0;
    for b in [1, 8, 32] {
        let t = tch::no_grad(|| raw_throughput(&model, &hist, b, secs));
        if b == 32 {
            raw32 = t;
        }
        println!("| batch {b} | {t:.0} |");
    }
    drop(model);
    if std::env::var("BENCH_RAW_ONLY").is_ok() {
        return;
    }

    let bodies: Arc<Vec<String>> = Arc::new(
        hist.iter()
            .map(|h| serde_json::json!({"history": h, "k": 10}).to_string())
            .collect(),
    );
    let mut cfg = Config::default();
    cfg.server.host = "127.0.0.1".into();
    cfg.server.port = 0;
    cfg.model.path = model_dir.clone().into();
    cfg.model.device = "cpu".into();
    // BENCH_SERVER_THREADS: libtorch intra-op threads of the server's model worker (default: CPU quota).
    cfg.model.intra_op_threads = std::env::var("BENCH_SERVER_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    cfg.batching.max_queue_size = 4096;
    // BENCH_MAX_BATCH / BENCH_MAX_DELAY_US: the batching knobs, for a search over them.
    let knob = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    if let Some(v) = knob("BENCH_MAX_BATCH") {
        cfg.batching.max_batch_size = v as usize;
    }
    if let Some(v) = knob("BENCH_MAX_DELAY_US") {
        cfg.batching.max_delay_us = v;
    }
    if let Some(v) = knob("BENCH_WORKERS") {
        cfg.batching.workers_per_model = v as usize;
    }
    println!(
        "server: max_batch_size {}, max_delay_us {}, workers per model {} (0 = auto), intra-op threads each {}\n",
        cfg.batching.max_batch_size,
        cfg.batching.max_delay_us,
        cfg.batching.workers_per_model,
        seqserve::device::serving_threads(cfg.model.intra_op_threads)
    );
    // An evaluation to run beside live traffic (step 4): a holdout of random cases in a temp dir.
    let holdout_dir = std::env::temp_dir().join(format!("seqserve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&holdout_dir).unwrap();
    let mut lines = String::new();
    for (i, h) in hist.iter().cycle().take(50_000).enumerate() {
        let rel = &hist[(i * 7) % hist.len()][0];
        lines.push_str(
            &serde_json::json!({"user": format!("u{i}"), "history": h, "relevant": [rel]})
                .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(holdout_dir.join("bench.jsonl"), lines).unwrap();
    cfg.admin.token = "bench".into();
    cfg.admin.holdout_dir = holdout_dir.clone();
    cfg.admin.max_inline_cases = 0;
    cfg.server.request_timeout_ms = 10_000;
    let server = common::InProcessServer::start(cfg);
    let addr = server.addr;
    let url = format!("http://{addr}/recommend");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(common::CLIENT_THREADS)
        .enable_all()
        .build()
        .unwrap();
    // The TorchServe anchor (scripts/bench.sh starts it; idle while seqserve is measured): the same
    // bodies, the same client and concurrencies.
    let torchserve = std::env::var("BENCH_TORCHSERVE_URL").ok().map(|ts_url| {
        rt.block_on(async {
            println!("\n| TorchServe closed loop (the same weights as TorchScript, batch 32 / 5 ms) | concurrency | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|");
            let (mut best_any, mut best_25) = (0f64, 0f64);
            let mut cpu = Vec::new();
            for conc in [1, 8, 32, 64, 128] {
                let (rps, lat, err, c) = measured_point(&ts_url, bodies.clone(), conc, secs).await;
                cpu.push((conc, rps, c));
                if err == 0 {
                    best_any = best_any.max(rps);
                    if percentile(&lat, 0.99) <= 25.0 {
                        best_25 = best_25.max(rps);
                    }
                }
                println!("| | {conc} | {rps:.0} | {:.2} | {:.2} | {err} |", percentile(&lat, 0.5), percentile(&lat, 0.99));
            }
            print_cpu("TorchServe (its processes are the rest of the machine)", &cpu);
            (best_any, best_25)
        })
    });
    rt.block_on(async {
        // Wait for readiness.
        server.ready().await;
        println!("\n| HTTP closed loop | concurrency | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|");
        // The best rate whose p99 stays within 25 ms (the target's condition).
        let mut best = 0f64;
        let mut cpu = Vec::new();
        let mut best_cpu = f64::NAN;
        for conc in [1, 8, 32, 64, 128] {
            let (rps, lat, err, c) = measured_point(&url, bodies.clone(), conc, secs).await;
            if percentile(&lat, 0.99) <= 25.0 && err == 0 && rps > best {
                best = rps;
                best_cpu = c.total();
            }
            println!("| | {conc} | {rps:.0} | {:.2} | {:.2} | {err} |", percentile(&lat, 0.5), percentile(&lat, 0.99));
            cpu.push((conc, rps, c));
        }
        print_cpu("seqserve", &cpu);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let rate = best / 2.0;
        let (sent, lat, err) = open_loop(&url, bodies.clone(), rate, secs).await;
        println!("\n| HTTP open loop at half the best rate | offered req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|");
        println!("| | {sent:.0} | {:.2} | {:.2} | {err} |", percentile(&lat, 0.5), percentile(&lat, 0.99));
        // 4. The same open loop while an evaluation job shares the model at low priority.
        let client = reqwest::Client::new();
        let job = json_of(
            client
                .post(format!("http://{addr}/evaluate"))
                .bearer_auth("bench")
                .json(&serde_json::json!({"holdout": "bench.jsonl", "k": [10]})),
        )
        .await;
        let id = job["id"].as_str().expect("evaluation job id").to_string();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (sent2, lat2, err2) = open_loop(&url, bodies.clone(), rate, secs).await;
        let status = json_of(client.get(format!("http://{addr}/evaluate/{id}")).bearer_auth("bench")).await;
        let progress = &status["progress"];
        let _ = client.delete(format!("http://{addr}/evaluate/{id}")).bearer_auth("bench").send().await;
        println!("| while an evaluation runs ({} status, {}/{} cases) | {sent2:.0} | {:.2} | {:.2} | {err2} |",
            status["status"], progress["done"], progress["total"], percentile(&lat2, 0.5), percentile(&lat2, 0.99));
        println!("\nbest HTTP rate = the best closed-loop rate at p99 <= 25 ms and no errors");
        println!("best HTTP rate / raw in-process batch-32 rate = {best:.0} / {raw32:.0} = {:.2}", best / raw32);
        // scripts/bench.sh measures the TorchScript anchor just before (same machine, same run).
        if let Some(ts) = std::env::var("BENCH_TORCHSCRIPT").ok().and_then(|v| v.parse::<f64>().ok()) {
            println!("best HTTP rate / raw TorchScript batch 32 of the same weights = {best:.0} / {ts:.0} = {:.2} (target >= 1.5)", best / ts);
            println!("raw in-process batch 32 / raw TorchScript batch 32 = {raw32:.0} / {ts:.0} = {:.2}", raw32 / ts);
        }
        if let Some((ts_any, ts_25)) = torchserve {
            println!("best HTTP rate / TorchServe's best rate at any p99 = {best:.0} / {ts_any:.0} = {:.2} (target >= 4); TorchServe's best at p99 <= 25 ms: {ts_25:.0}", best / ts_any);
            println!("4x TorchServe's best = {:.0} req/s needs at most {cores:.0} cores / that rate = {:.0} CPU µs per request, load generator included; at the best HTTP rate seqserve's point used {best_cpu:.0}",
                4.0 * ts_any, cores * 1e6 / (4.0 * ts_any));
        }
        println!("the most requests/s {cores:.0} cores could answer at the best point's CPU cost per request = {:.0}", cores * 1e6 / best_cpu);
        println!("p99 at half the best rate = {:.2} ms (target < 25 ms)", percentile(&lat, 0.99));
        println!("p99 during evaluation / unloaded p99 = {:.2} / {:.2} = {:.2} (target <= 1.30)",
            percentile(&lat2, 0.99), percentile(&lat, 0.99), percentile(&lat2, 0.99) / percentile(&lat, 0.99));
    });
    server.stop();
    let _ = std::fs::remove_dir_all(&holdout_dir);
}
