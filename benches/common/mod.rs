//! Helpers shared by the benchmark binaries: a fixed-seed generator, percentiles and a closed-loop
//! HTTP load generator.
#![allow(dead_code)]
use seqserve::model::HistoryEvent;
use std::sync::Arc;
use std::time::Instant;

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self, m: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % m
    }
}

/// A history of plain item ids as the model's input events.
pub fn events(h: &[String]) -> Vec<HistoryEvent> {
    h.iter()
        .map(|i| HistoryEvent {
            item: i.clone(),
            behaviour: None,
        })
        .collect()
}

/// The model directory (the first argument that is not a `--flag` cargo bench passes; default
/// models/beauty-2l) and the seconds per measurement point (BENCH_SECONDS, default 5).
pub fn model_dir_and_seconds() -> (String, f64) {
    let model_dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "models/beauty-2l".into());
    let secs = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    (model_dir, secs)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `conc` clients each sending the next body as soon as the previous answer arrived, for `secs`:
/// (requests/s, sorted latencies in ms of the 200 answers, errors).
pub async fn closed_loop(
    url: &str,
    bodies: Arc<Vec<String>>,
    conc: usize,
    secs: f64,
) -> (f64, Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conc {
        let (client, url, bodies) = (client.clone(), url.to_string(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = c;
            while t0.elapsed().as_secs_f64() < secs {
                let s = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        lat.push(s.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => errors += 1,
                }
                i += conc;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let rps = all.len() as f64 / t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (rps, all, errors)
}

/// The real server, in this process on its own 2-thread runtime, on a free loopback port.
pub struct InProcessServer {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessServer {
    pub fn start(cfg: seqserve::serve::config::Config) -> InProcessServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(seqserve::serve::run(
                cfg,
                async {
                    let _ = stop_rx.await;
                },
                move |a| {
                    let _ = addr_tx.send(a);
                },
            ))
            .unwrap();
        });
        let addr = addr_rx.recv().expect("the server reports its address");
        InProcessServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits until /health/ready answers 200.
    pub async fn ready(&self) {
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/health/ready", self.addr)).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Drains and stops the server, waiting for its thread.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
