//! Helpers shared by the benchmark binaries: a fixed-seed generator, percentiles and a closed-loop
//! HTTP load generator.
#![allow(dead_code)]
use seqserve::model::HistoryEvent;
use std::collections::BTreeMap;
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

/// CPU seconds (user + system) this process's threads have used so far, summed by thread name.
/// The load generator, the server's HTTP runtime and its model worker run in this one process on
/// the same cores, so their shares of a measurement say what each request costs and how close a
/// rate is to what the cores can give at all. Threads that libtorch or OpenMP start inherit the name
/// of the thread that started them, so a model worker's helpers count as that worker.
pub fn thread_cpu() -> BTreeMap<String, f64> {
    let ticks = clock_ticks();
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3 (state).
        let cpu = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name
            .entry(stat[open + 1..close].to_string())
            .or_insert(0.0) += (cpu(11) + cpu(12)) / ticks;
    }
    by_name
}

/// The machine's busy CPU seconds so far, all processes (/proc/stat's first line: everything but
/// idle and iowait), to count what another server's processes (TorchServe's) use.
pub fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / clock_ticks()
}

/// The kernel's clock ticks per second, the unit of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// CPU seconds used between two `thread_cpu` readings, by thread name (threads that ended in
/// between are lost with their time: the benchmarks' threads live for the whole run).
pub fn cpu_since(before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut now = thread_cpu();
    for (name, secs) in now.iter_mut() {
        *secs -= before.get(name).copied().unwrap_or(0.0);
    }
    now.retain(|_, s| *s > 0.0);
    now
}

/// The name of the in-process server's runtime threads (HTTP, JSON, queueing), as `thread_cpu`
/// reports them; its model worker's threads are named `seqserve-model-…`.
pub const SERVER_THREADS: &str = "server-http";
/// The name benchmarks give their load generator's runtime threads.
pub const CLIENT_THREADS: &str = "bench-client";

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
                .thread_name(SERVER_THREADS)
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
