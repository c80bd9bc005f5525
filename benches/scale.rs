//! Catalogue-scale benchmark (run: `scripts/bench-scale.sh`, or `cargo bench --bench scale`).
//!
//! For each catalogue size (SCALE_SIZES, default 12101,100000,1000000) it builds a synthetic model
//! from the trained `models/beauty-2l`: the trained encoder and its 12,101 real item vectors, plus
//! synthetic items, each a real item's vector (and bias) with Gaussian noise, so the catalogue keeps
//! the trained model's structure. Queries are real Beauty histories (`../shared/data`; random
//! catalogue items when the data is absent, said in the output). In one run it prints, per size:
//! 1. the raw matmul floor: one libtorch addmm of a 32-row batch against the item matrix, nothing else;
//! 2. exact retrieval alone (`retrieval::exact`, seen items masked, top 10) and the whole exact
//!    `Model::recommend` (encoder included), both at batch 32, as requests/s and as a share of the floor;
//!    then the exact scan as the server configures it for large catalogues: f32 over all cores, and
//!    the bf16 first pass with f32 re-rank over all cores, beside the compute limit: the peak GEMM
//!    rate (a 2048×64×2048 product on all cores, measured at start) over 2·d·N FLOP a request;
//! 3. the approximate indexes (SCALE_ANN: `ivf`, the server's default, and/or `hnsw`): build time,
//!    in-process ANN requests/s at batch 32 and recall@10 against the exact ranking, over a sweep of
//!    the lists read (IVF: half, once and twice the automatic setting, about 8k items read;
//!    SCALE_PROBES overrides) or of the
//!    search expansion (HNSW: SCALE_EFS);
//! 4. the real server (`seqserve serve`, a child process): time from spawn to ready, RSS, and closed-loop
//!    requests/s and p99 at 16 and 64 concurrent clients, with exact and with ANN retrieval (the
//!    first index of SCALE_ANN, opened from the file saved in step 3, with its automatic setting).
//!
//! The in-process rows use one libtorch thread, as the server's model worker does on two cores.
//! Sizes above SCALE_ANN_MAX (default 1000000) skip the ANN rows (at 10M items the IVF build alone
//! takes about 5 minutes here).
mod common;

use common::{closed_loop, percentile, Lcg};
use seqserve::model::retrieval::{
    exact, ivf, AnnParams, IvfParams, Retrieval, INDEX_FILE, IVF_FILE,
};
use seqserve::model::{Catalogue, Model, Query, RankSpec};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const BASE: &str = "models/beauty-2l";
const BEAUTY: &str = "../shared/data/amazon_s3rec/Beauty.txt";

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

/// Writes a model directory with `n` items: the base model's, then noisy copies of them, the noise
/// `noise` times the embeddings' spread (SCALE_NOISE: 0.5 by default, spread in all directions; a
/// small value such as 0.05 keeps the copies close to real items: a structured catalogue).
fn synthesize(base: &Model, n: usize, dir: &Path, noise: f64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let real = base.catalogue.len();
    let vars = base.vs.variables();
    let (emb, bias) = base.encoder.item_matrix();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let (new_emb, new_bias) = if n <= real {
        (emb.narrow(0, 0, n as i64), bias.narrow(0, 0, n as i64))
    } else {
        let extra = (n - real) as i64;
        tch::manual_seed(1);
        let src = Tensor::randint(real as i64, [extra], (Kind::Int64, Device::Cpu));
        let spread = f64::try_from(emb.std(true)).unwrap();
        let e = emb.index_select(0, &src)
            + Tensor::randn([extra, emb.size()[1]], (Kind::Float, Device::Cpu)) * (noise * spread);
        let b = bias.index_select(0, &src);
        (
            Tensor::cat(&[emb.shallow_clone(), e], 0),
            Tensor::cat(&[bias.shallow_clone(), b], 0),
        )
    };
    let pad_e = Tensor::zeros([1, new_emb.size()[1]], (Kind::Float, Device::Cpu));
    let pad_b = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for (name, t) in vars.iter() {
        let t = match name.as_str() {
            "item_emb" => Tensor::cat(&[pad_e.shallow_clone(), new_emb.shallow_clone()], 0),
            "item_bias" => Tensor::cat(&[pad_b.shallow_clone(), new_bias.shallow_clone()], 0),
            _ => t.shallow_clone(),
        };
        named.push((name.clone(), t.contiguous()));
    }
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
    let ids: Vec<String> = (1..=n)
        .map(|i| {
            if i <= real {
                base.catalogue.id_of(i).to_string()
            } else {
                format!("s{i}")
            }
        })
        .collect();
    Catalogue::new(ids)
        .unwrap()
        .write(&dir.join("items.txt"))
        .unwrap();
    let mut m = base.manifest.clone();
    m.name = format!("synthetic-{n}");
    m.architecture.n_items = n;
    m.write(&dir.join("model.json")).unwrap();
}

/// Real Beauty histories (each user's sequence without its last item, most recent 50), or random
/// catalogue items when the data is absent.
fn histories(base: &Model, n: usize) -> (Vec<Vec<String>>, &'static str) {
    if let Ok(text) = std::fs::read_to_string(BEAUTY) {
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().skip(1).collect();
            if f.len() < 3 {
                continue;
            }
            let h = &f[..f.len() - 1];
            let h = &h[h.len().saturating_sub(50)..];
            out.push(h.iter().map(|s| s.to_string()).collect());
            if out.len() == n {
                break;
            }
        }
        return (out, "real Beauty histories");
    }
    let mut r = Lcg(7);
    let items = base.catalogue.len() as u64;
    let out = (0..n)
        .map(|_| {
            (0..1 + r.next(50))
                .map(|_| base.catalogue.id_of(1 + r.next(items) as usize).to_string())
                .collect()
        })
        .collect();
    (out, "random histories (../shared/data absent)")
}

fn prepare(model: &Model, hist: &[Vec<String>]) -> Vec<(Query, RankSpec)> {
    hist.iter()
        .map(|h| {
            let ev = common::events(h);
            let p = model.prepare(&ev, &BTreeMap::new()).unwrap();
            let spec = RankSpec {
                k: 10,
                exclude: p.seen.clone(),
                candidates: None,
            };
            (p.query, spec)
        })
        .collect()
}

/// Runs `f` on successive batches of 32 for `secs`; returns requests/s.
fn rate(secs: f64, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    let t0 = Instant::now();
    let mut done = 0;
    let mut i = 0;
    while t0.elapsed().as_secs_f64() < secs {
        f(i);
        done += 32;
        i += 32;
    }
    done as f64 / t0.elapsed().as_secs_f64()
}

fn rss_mb(pid: u32, key: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

struct Server {
    child: Child,
    port: u16,
    ready_s: f64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path, retrieval: Retrieval, ef: usize, kind: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--device",
            "cpu",
            "--max-queue-size",
            "4096",
        ])
        .arg("--port")
        .arg(port.to_string())
        .arg("--model")
        .arg(dir)
        .arg("--retrieval")
        .arg(retrieval.name())
        .env("SEQSERVE__RETRIEVAL__EXPANSION_SEARCH", ef.to_string())
        .env("SEQSERVE__RETRIEVAL__INDEX_KIND", kind)
        .env(
            "SEQSERVE__BATCHING__MAX_BATCH_SIZE",
            std::env::var("SCALE_MAX_BATCH").unwrap_or_else(|_| "32".into()),
        )
        .env("SEQSERVE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn seqserve");
    let mut s = Server {
        child,
        port,
        ready_s: 0.0,
    };
    let url = format!("http://127.0.0.1:{port}/health/ready");
    loop {
        if ready(&url) {
            break;
        }
        if let Ok(Some(st)) = s.child.try_wait() {
            panic!("seqserve exited during start: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "not ready in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s.ready_s = t0.elapsed().as_secs_f64();
    s
}

/// GET answered 200? A plain HTTP/1.0 exchange on loopback (no async runtime needed).
fn ready(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

/// Attaches one setting of an approximate index to the model.
type Attach = Box<dyn Fn(&mut Model)>;

fn main() {
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "12101,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let ann_max: usize = env_or("SCALE_ANN_MAX", 1_000_000);
    let secs: f64 = env_or("BENCH_SECONDS", 5.0);
    let kinds: Vec<String> = std::env::var("SCALE_ANN")
        .unwrap_or_else(|_| "ivf".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| s == "ivf" || s == "hnsw")
        .collect();
    let kinds = if kinds.is_empty() {
        vec!["ivf".to_string()]
    } else {
        kinds
    };
    let probes: Vec<usize> = std::env::var("SCALE_PROBES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let efs: Vec<usize> = std::env::var("SCALE_EFS")
        .unwrap_or_else(|_| "32,64,128,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // The served index's search expansion (HTTP rows).
    let ef: usize = env_or("SCALE_EF", AnnParams::default().expansion_search);
    let build_threads = seqserve::device::or_cpu_quota(0);
    let work = PathBuf::from(std::env::var("SCALE_DIR").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join(format!("seqserve-scale-{}", std::process::id()))
            .display()
            .to_string()
    }));
    let noise: f64 = env_or("SCALE_NOISE", 0.5);
    let cores = seqserve::device::or_cpu_quota(0);
    let peak_gflops = peak_gemm_gflops(cores, secs);
    tch::set_num_threads(1);
    let base = Model::load(Path::new(BASE), Device::Cpu).expect("load models/beauty-2l");
    let (hist, hist_kind) = histories(&base, 4096);
    let bodies: Arc<Vec<String>> = Arc::new(
        hist.iter()
            .map(|h| serde_json::json!({"history": h, "k": 10}).to_string())
            .collect(),
    );
    println!("# seqserve catalogue-scale benchmark");
    println!("synthetic items: real item vectors plus Gaussian noise of {noise} x their spread");
    println!(
        "base {BASE} (d {}, {} layers); {} queries: {hist_kind}; k 10, seen items masked; \
         in-process rows: batch 32, 1 libtorch thread; {secs} s per point; ANN: {} (IVF: k-means \
         lists, the IVF scan on {cores} threads; HNSW: usearch, connectivity {}, expansion_add {}, \
         min_candidates {}, the server runs expansion_search {ef})\n",
        base.manifest.architecture.d_model,
        base.manifest.architecture.n_layers,
        hist.len(),
        kinds.join(", "),
        AnnParams::default().connectivity,
        AnnParams::default().expansion_add,
        AnnParams::default().min_candidates,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table = Vec::new();
    for &n in &sizes {
        let dir = work.join(format!("n{n}"));
        let t0 = Instant::now();
        synthesize(&base, n, &dir, noise);
        eprintln!(
            "[scale] {n} items: model written in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let mut model = Model::load(&dir, Device::Cpu).expect("load synthetic model");
        let weights_mb = std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len() as f64
            / 1e6;
        let cases = prepare(&model, &hist);
        let batch = |i: usize| -> (Vec<&Query>, Vec<RankSpec>) {
            (0..32)
                .map(|j| {
                    let (q, s) = &cases[(i + j) % cases.len()];
                    (q, s.clone())
                })
                .unzip()
        };
        let (emb, bias) = model.encoder.item_matrix();
        let zs: Vec<Tensor> = (0..8)
            .map(|b| model.query_vectors(&batch(b * 32).0))
            .collect();
        if let Ok(dump) = std::env::var("SCALE_DUMP") {
            let qs: Vec<&Query> = cases.iter().take(2048).map(|c| &c.0).collect();
            let z = model.query_vectors(&qs);
            let zv = Vec::<f32>::try_from(z.contiguous().view(-1)).unwrap();
            let bytes: Vec<u8> = zv.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(format!("{dump}/z{n}.f32"), bytes).unwrap();
            let seen: Vec<&Vec<usize>> = cases.iter().take(2048).map(|c| &c.1.exclude).collect();
            std::fs::write(
                format!("{dump}/seen{n}.json"),
                serde_json::to_string(&seen).unwrap(),
            )
            .unwrap();
        }
        let floor = tch::no_grad(|| {
            rate(secs, |i| {
                let _ = bias.addmm(&zs[(i / 32) % zs.len()], &emb.tr());
            })
        });
        let exact_only = tch::no_grad(|| {
            rate(secs, |i| {
                let (_, specs) = batch(i);
                let _ = exact::retrieve(
                    exact::Strategy::Blocked,
                    &zs[(i / 32) % zs.len()],
                    &emb,
                    &bias,
                    &specs,
                );
            })
        });
        let exact_full = rate(secs, |i| {
            let (q, s) = batch(i);
            let _ = model.recommend(&q, &s);
        });
        let scan_rate = |scan: &exact::Scan| {
            tch::no_grad(|| {
                rate(secs, |i| {
                    let (_, specs) = batch(i);
                    let _ =
                        exact::retrieve_scan(scan, &zs[(i / 32) % zs.len()], &emb, &bias, &specs);
                })
            })
        };
        let f32_all = scan_rate(&exact::Scan {
            strategy: exact::Strategy::Blocked,
            threads: cores,
            bf16: None,
        });
        let bf16_all = match seqserve::model::retrieval::bf16::Items::new(&emb, &bias) {
            Ok(items) => scan_rate(&exact::Scan {
                strategy: exact::Strategy::Blocked,
                threads: cores,
                bf16: Some(items),
            }),
            Err(e) => {
                eprintln!("[scale] bf16 scan refused: {e}");
                f64::NAN
            }
        };
        let d = base.manifest.architecture.d_model as f64;
        let limit = peak_gflops * 1e9 / (2.0 * d * n as f64);
        let mut row = serde_json::json!({
            "n": n, "weights_mb": weights_mb, "floor": floor, "exact_only": exact_only,
            "exact_full": exact_full, "f32_all": f32_all, "bf16_all": bf16_all, "limit": limit,
        });
        if n <= ann_max {
            // The exact lists recall is measured against (2048 queries).
            let sample = &cases[..cases.len().min(2048)];
            let exact_lists: Vec<Vec<(usize, f32)>> = sample
                .chunks(64)
                .flat_map(|c| {
                    let q: Vec<&Query> = c.iter().map(|c| &c.0).collect();
                    let s: Vec<RankSpec> = c.iter().map(|c| c.1.clone()).collect();
                    model.recommend(&q, &s)
                })
                .collect();
            let recall = |model: &Model| {
                let (mut hit, mut total) = (0usize, 0usize);
                for (c, e) in sample.chunks(64).zip(exact_lists.chunks(64)) {
                    let q: Vec<&Query> = c.iter().map(|c| &c.0).collect();
                    let s: Vec<RankSpec> = c.iter().map(|c| c.1.clone()).collect();
                    for (a, e) in model.recommend_with(Retrieval::Ann, &q, &s).iter().zip(e) {
                        let want: HashSet<usize> = e.iter().map(|x| x.0).collect();
                        hit += a.iter().filter(|x| want.contains(&x.0)).count();
                        total += want.len();
                    }
                }
                hit as f64 / total.max(1) as f64
            };
            let mut sweep = Vec::new();
            for kind in &kinds {
                let t0 = Instant::now();
                let settings: Vec<(String, Attach)> = if kind == "ivf" {
                    let index = model
                        .build_ivf(IvfParams::default(), build_threads)
                        .expect("build IVF");
                    row["ivf_build_s"] = t0.elapsed().as_secs_f64().into();
                    tch::set_num_threads(1);
                    model.save_ivf(&index, &dir.join(IVF_FILE)).unwrap();
                    row["ivf_mb"] =
                        (std::fs::metadata(dir.join(IVF_FILE)).unwrap().len() as f64 / 1e6).into();
                    let (lists, auto) = (index.lists(), ivf::auto_probe(index.lists(), n));
                    drop(index);
                    let ps = if probes.is_empty() {
                        vec![(auto / 2).max(1), auto, (2 * auto).min(lists)]
                    } else {
                        probes.clone()
                    };
                    let path = dir.join(IVF_FILE);
                    ps.into_iter()
                        .map(|p| {
                            let path = path.clone();
                            (
                                format!("IVF, {p} of {lists} lists read"),
                                Box::new(move |m: &mut Model| {
                                    let params = IvfParams {
                                        lists: 0,
                                        probe: p,
                                        threads: cores,
                                    };
                                    m.attach_ivf(params, &path, build_threads).unwrap();
                                }) as Attach,
                            )
                        })
                        .collect()
                } else {
                    let index = model
                        .build_index(AnnParams::default(), build_threads)
                        .expect("build index");
                    row["ann_build_s"] = t0.elapsed().as_secs_f64().into();
                    tch::set_num_threads(1);
                    index.save(&dir.join(INDEX_FILE)).unwrap();
                    row["index_mb"] =
                        (std::fs::metadata(dir.join(INDEX_FILE)).unwrap().len() as f64 / 1e6)
                            .into();
                    drop(index);
                    let path = dir.join(INDEX_FILE);
                    efs.iter()
                        .map(|&ef| {
                            let path = path.clone();
                            (
                                format!("HNSW, expansion_search {ef}"),
                                Box::new(move |m: &mut Model| {
                                    let params = AnnParams {
                                        expansion_search: ef,
                                        ..AnnParams::default()
                                    };
                                    m.attach_index(params, &path, build_threads).unwrap();
                                }) as Attach,
                            )
                        })
                        .collect()
                };
                for (what, attach) in settings {
                    attach(&mut model);
                    tch::set_num_threads(1);
                    let ann_rate = rate(secs, |i| {
                        let (q, s) = batch(i);
                        let _ = model.recommend_with(Retrieval::Ann, &q, &s);
                    });
                    sweep.push(serde_json::json!({"setting": what, "rate": ann_rate,
                        "recall": recall(&model)}));
                }
            }
            row["ann"] = sweep.into();
        }
        drop(emb);
        drop(bias);
        drop(zs);
        drop(model);
        let modes: &[Retrieval] = if n <= ann_max {
            &[Retrieval::Exact, Retrieval::Ann]
        } else {
            &[Retrieval::Exact]
        };
        for &mode in modes {
            let server = start_server(&dir, mode, ef, &kinds[0]);
            let rss_ready = rss_mb(server.child.id(), "VmRSS:");
            let url = format!("http://127.0.0.1:{}/recommend", server.port);
            let res = rt.block_on(async {
                let mut out = Vec::new();
                for conc in [16, 64] {
                    let (rps, lat, err) = closed_loop(&url, bodies.clone(), conc, secs).await;
                    out.push((conc, rps, percentile(&lat, 0.99), err));
                }
                out
            });
            let m = mode.name();
            row[format!("{m}_ready_s")] = server.ready_s.into();
            row[format!("{m}_rss_ready_mb")] = rss_ready.into();
            row[format!("{m}_rss_peak_mb")] = rss_mb(server.child.id(), "VmHWM:").into();
            for (conc, rps, p99, err) in res {
                row[format!("{m}_c{conc}_rps")] = rps.into();
                row[format!("{m}_c{conc}_p99")] = p99.into();
                row[format!("{m}_c{conc}_err")] = err.into();
            }
        }
        eprintln!("[scale] {row}");
        table.push(row);
        if std::env::var("SCALE_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    print_tables(&table);
}

/// The peak GEMM rate on `threads` threads: a 2048×64×2048 product, as many as fit in `secs`.
fn peak_gemm_gflops(threads: usize, secs: f64) -> f64 {
    tch::set_num_threads(threads as i32);
    let a = Tensor::randn([2048, 64], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([64, 2048], (Kind::Float, Device::Cpu));
    let out = Tensor::empty([2048, 2048], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = a.mm_out(&out, &b);
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs.min(3.0) {
        let _ = a.mm_out(&out, &b);
        n += 1;
    }
    let g = 2.0 * 2048.0 * 64.0 * 2048.0 * n as f64 / t0.elapsed().as_secs_f64() / 1e9;
    println!("peak GEMM (2048×64×2048, {threads} threads): {g:.0} GFLOPS\n");
    g
}

fn print_tables(rows: &[serde_json::Value]) {
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!("| items | compute limit req/s | exact scan f32, all cores (share of limit) | exact scan bf16 first pass + f32 re-rank, all cores (share) | served exact c=64 req/s (share), p99 ms |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let limit = f(r, "limit");
        println!(
            "| {} | {:.0} | {:.0} ({:.0}%) | {:.0} ({:.0}%) | {:.0} ({:.0}%), {:.1} |",
            r["n"],
            limit,
            f(r, "f32_all"),
            100.0 * f(r, "f32_all") / limit,
            f(r, "bf16_all"),
            100.0 * f(r, "bf16_all") / limit,
            f(r, "exact_c64_rps"),
            100.0 * f(r, "exact_c64_rps") / limit,
            f(r, "exact_c64_p99"),
        );
    }
    println!();
    println!("| items | weights MB | matmul floor req/s | exact retrieval req/s (share of floor) | exact recommend req/s (share) | IVF build s | IVF MB | HNSW build s | HNSW MB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let floor = f(r, "floor");
        println!(
            "| {} | {:.0} | {:.0} | {:.0} ({:.0}%) | {:.0} ({:.0}%) | {:.1} | {:.0} | {:.1} | {:.0} |",
            r["n"],
            f(r, "weights_mb"),
            floor,
            f(r, "exact_only"),
            100.0 * f(r, "exact_only") / floor,
            f(r, "exact_full"),
            100.0 * f(r, "exact_full") / floor,
            f(r, "ivf_build_s"),
            f(r, "ivf_mb"),
            f(r, "ann_build_s"),
            f(r, "index_mb"),
        );
    }
    println!("\n| items | ANN setting | ANN recommend req/s (in-process, batch 32) | recall@10 vs exact |");
    println!("|---|---|---|---|");
    for r in rows {
        for p in r["ann"].as_array().into_iter().flatten() {
            println!(
                "| {} | {} | {:.0} | {:.4} |",
                r["n"],
                p["setting"].as_str().unwrap_or("?"),
                f(p, "rate"),
                f(p, "recall")
            );
        }
    }
    println!("\n| items | retrieval | ready after start s | RSS ready MB | RSS peak MB | req/s c=16 | p99 ms c=16 | req/s c=64 | p99 ms c=64 | errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        for m in ["exact", "ann"] {
            if r.get(format!("{m}_ready_s")).is_none() {
                continue;
            }
            let g = |k: &str| f(r, &format!("{m}_{k}"));
            println!(
                "| {} | {m} | {:.2} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.1} | {} |",
                r["n"],
                g("ready_s"),
                g("rss_ready_mb"),
                g("rss_peak_mb"),
                g("c16_rps"),
                g("c16_p99"),
                g("c64_rps"),
                g("c64_p99"),
                g("c16_err") + g("c64_err"),
            );
        }
    }
}
