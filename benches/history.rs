//! User-history benchmark (run: `scripts/bench-history.sh`, which starts a redis-server and
//! passes its URL in BENCH_REDIS_URL). In one run, on one machine, load generator included:
//! 1. `/recommend` by user id (history read from Redis) against the same requests with the
//!    history inline, closed loop at several concurrencies, alternating, so the ratio is fair;
//! 2. `POST /events` into Redis: events/s at batches of 1, 10 and 100 events;
//! 3. the embedded (memory) store's bytes per user at 50 events: its own estimate and the
//!    process RSS growth.
mod common;

use common::{closed_loop, percentile, Lcg};
use seqserve::model::Model;
use seqserve::serve::config::{Config, HistoryStoreKind};
use seqserve::serve::history::memory::MemoryStore;
use seqserve::serve::history::{HistoryStore, NewEvent, StoredEvent};
use std::sync::Arc;
use std::time::Instant;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The best rate among concurrencies whose p99 is within 25 ms, with that p99 and concurrency.
fn best_within(points: &[(usize, f64, f64)]) -> (f64, f64, usize) {
    points
        .iter()
        .filter(|p| p.2 <= 25.0)
        .map(|&(c, rps, p99)| (rps, p99, c))
        .fold((0.0, f64::NAN, 0), |a, b| if b.0 > a.0 { b } else { a })
}

fn main() {
    let (model_dir, secs) = common::model_dir_and_seconds();
    let redis_url = std::env::var("BENCH_REDIS_URL")
        .expect("BENCH_REDIS_URL (scripts/bench-history.sh starts a redis-server)");
    let model =
        Model::load(std::path::Path::new(&model_dir), tch::Device::Cpu).expect("load model");
    let n_items = model.catalogue.len() as u64;
    let ids: Vec<String> = (1..=n_items as usize)
        .map(|i| model.catalogue.id_of(i).to_string())
        .collect();
    let item = |i: u64| ids[(i % n_items) as usize].clone();
    // 2,000 users, each with a history of 1..=50 random items (fixed seed).
    let mut r = Lcg(11);
    let hist: Vec<Vec<String>> = (0..2000)
        .map(|_| {
            let len = 1 + r.next(50);
            (0..len).map(|_| item(r.next(n_items))).collect()
        })
        .collect();
    drop(model);
    println!("# seqserve user-history benchmark");
    println!("model {model_dir}, Redis {redis_url}, {secs} s per point\n");

    let mut cfg = Config::default();
    cfg.server.host = "127.0.0.1".into();
    cfg.server.port = 0;
    cfg.model.path = model_dir.clone().into();
    cfg.model.device = "cpu".into();
    cfg.batching.max_queue_size = 4096;
    cfg.server.request_timeout_ms = 10_000;
    cfg.history.store = HistoryStoreKind::Redis;
    cfg.history.url = redis_url;
    cfg.history.key_prefix = format!("bench{}:", std::process::id());
    cfg.history.max_events_per_request = 1000;
    let server = common::InProcessServer::start(cfg);
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        server.ready().await;
        let client = reqwest::Client::new();
        // Each user's history into Redis, as events.
        for (u, h) in hist.iter().enumerate() {
            let events: Vec<_> = h
                .iter()
                .map(|i| serde_json::json!({"user": format!("u{u}"), "item": i}))
                .collect();
            let r = client
                .post(format!("http://{addr}/events"))
                .json(&serde_json::json!({ "events": events }))
                .send()
                .await
                .expect("seed events");
            assert_eq!(r.status(), 200, "seeding user u{u}");
        }
        // The two kinds of request rank the same histories (checked on a few).
        for u in [0usize, 1, 999] {
            let by_user: serde_json::Value = client
                .post(format!("http://{addr}/recommend"))
                .json(&serde_json::json!({"user": format!("u{u}"), "k": 10}))
                .send().await.unwrap().json().await.unwrap();
            let inline: serde_json::Value = client
                .post(format!("http://{addr}/recommend"))
                .json(&serde_json::json!({"history": hist[u], "k": 10}))
                .send().await.unwrap().json().await.unwrap();
            assert_eq!(by_user["items"], inline["items"], "user u{u} ranks as its history inline");
        }
        let inline: Arc<Vec<String>> = Arc::new(
            hist.iter()
                .map(|h| serde_json::json!({"history": h, "k": 10}).to_string())
                .collect(),
        );
        let by_user: Arc<Vec<String>> = Arc::new(
            (0..hist.len())
                .map(|u| serde_json::json!({"user": format!("u{u}"), "k": 10}).to_string())
                .collect(),
        );
        let url = format!("http://{addr}/recommend");
        println!("| /recommend, closed loop | concurrency | history inline req/s | p99 ms | by user id (Redis) req/s | p99 ms | ratio |\n|---|---|---|---|---|---|---|");
        let (mut pin, mut pus) = (Vec::new(), Vec::new());
        for conc in [8, 32, 64] {
            let (a, la, ea) = closed_loop(&url, inline.clone(), conc, secs).await;
            let (b, lb, eb) = closed_loop(&url, by_user.clone(), conc, secs).await;
            assert_eq!(ea + eb, 0, "errors during the closed loop");
            pin.push((conc, a, percentile(&la, 0.99)));
            pus.push((conc, b, percentile(&lb, 0.99)));
            println!("| | {conc} | {a:.0} | {:.2} | {b:.0} | {:.2} | {:.2} |",
                percentile(&la, 0.99), percentile(&lb, 0.99), b / a);
        }
        let (bi, pi, ci) = best_within(&pin);
        let (bu, pu, cu) = best_within(&pus);
        println!("\nbest at p99 <= 25 ms: inline {bi:.0} req/s (c={ci}, p99 {pi:.2} ms), by user {bu:.0} req/s (c={cu}, p99 {pu:.2} ms): by user / inline = {:.2} (target >= 0.90)\n", bu / bi);

        // POST /events into Redis, fresh users each time (u100000+).
        println!("| POST /events into Redis | events per request | concurrency | requests/s | events/s | p99 ms |\n|---|---|---|---|---|---|");
        let mut best_events = 0f64;
        let mut r = Lcg(5);
        for per in [1usize, 10, 100] {
            let bodies: Arc<Vec<String>> = Arc::new(
                (0..2000)
                    .map(|_| {
                        let events: Vec<_> = (0..per)
                            .map(|_| serde_json::json!({"user": format!("u{}", 100_000 + r.next(50_000)), "item": item(r.next(n_items))}))
                            .collect();
                        serde_json::json!({ "events": events }).to_string()
                    })
                    .collect(),
            );
            for conc in [8, 32] {
                let (rps, lat, err) = closed_loop(&format!("http://{addr}/events"), bodies.clone(), conc, secs).await;
                assert_eq!(err, 0, "errors posting events");
                let eps = rps * per as f64;
                best_events = best_events.max(eps);
                println!("| | {per} | {conc} | {rps:.0} | {eps:.0} | {:.2} |", percentile(&lat, 0.99));
            }
        }
        println!("\nbest POST /events rate into Redis: {best_events:.0} events/s (target >= 20,000)\n");
    });
    server.stop();

    // The embedded store at 50 events per user: its own estimate and the RSS it really took.
    let users = 20_000usize;
    let mut mcfg = Config::default().history;
    mcfg.max_users = users;
    let store = MemoryStore::new(&mcfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    seqserve::serve::telemetry::release_free_memory();
    let before = rss_bytes();
    let t0 = Instant::now();
    let mut r = Lcg(3);
    rt.block_on(async {
        for u in 0..users {
            let events: Vec<NewEvent> = (0..50)
                .map(|e| NewEvent {
                    user: format!("user-{u:08}"),
                    event_id: Some(format!("ev-{e}")),
                    event: StoredEvent {
                        item: item(r.next(n_items)),
                        behaviour: None,
                        timestamp: Some(1_700_000_000 + e),
                    },
                })
                .collect();
            store.append(&events).await.unwrap();
        }
    });
    let took = t0.elapsed().as_secs_f64();
    let after = rss_bytes();
    let (n, bytes) = store.usage().unwrap_or((0, 0));
    println!("| memory store, 50 events per user (item ids as in the catalogue, an event_id and a timestamp each) | users | bytes/user (store's estimate) | bytes/user (RSS growth) | events/s appended |\n|---|---|---|---|---|");
    println!(
        "| | {n} | {:.0} | {:.0} | {:.0} |",
        bytes as f64 / n as f64,
        after.saturating_sub(before) as f64 / users as f64,
        (users * 50) as f64 / took
    );
}
