//! Retrieval through a real model: the exact path against the full score matrix ranked by
//! `rank::top_k` (the pre-retrieval serving path), the approximate index (recall, exact re-scoring,
//! fallback when exclusions empty it, stale index refused), and a memory-mapped load.
mod common;

use common::random_model;
use seqserve::model::rank;
use seqserve::model::retrieval::{AnnParams, IvfParams, Retrieval, INDEX_FILE, IVF_FILE};
use seqserve::model::{EncodedContext, Model, Query, RankSpec};
use std::collections::HashSet;
use tch::Device;

fn queries(n: usize, n_items: u64, seed: u64) -> Vec<Query> {
    let mut r = common::Lcg(seed);
    (0..n)
        .map(|_| {
            let len = r.next(9) as usize;
            Query {
                items: (0..len).map(|_| 1 + r.next(n_items) as i64).collect(),
                behaviours: (0..len).map(|_| r.next(5) as i64).collect(),
                context: EncodedContext {
                    categorical: vec![r.next(3) as i64, r.next(4) as i64],
                    numeric: vec![(r.next(1000) as f32 / 250.0) - 2.0],
                },
            }
        })
        .collect()
}

fn specs(qs: &[Query], k: usize, n_items: u64, seed: u64) -> Vec<RankSpec> {
    let mut r = common::Lcg(seed);
    qs.iter()
        .map(|q| {
            let mut exclude: Vec<usize> = q.items.iter().map(|&i| i as usize).collect();
            exclude.extend((0..r.next(5)).map(|_| 1 + r.next(n_items) as usize));
            let candidates =
                (r.next(5) == 0).then(|| (0..20).map(|_| r.next(n_items + 2) as usize).collect());
            RankSpec {
                k,
                exclude,
                candidates,
            }
        })
        .collect()
}

#[test]
fn exact_recommend_equals_ranking_the_full_score_matrix() {
    let n = 3000;
    let model = random_model(n, 2, 3);
    let qs = queries(40, n as u64, 1);
    let refs: Vec<&Query> = qs.iter().collect();
    let sp = specs(&qs, 10, n as u64, 2);
    let full = model.score(&refs);
    let want: Vec<Vec<(usize, f32)>> = full
        .iter()
        .zip(&sp)
        .map(|(row, s)| rank::top_k(row, s.k, &s.exclude, s.candidates.as_deref()))
        .collect();
    let got = model.recommend(&refs, &sp);
    assert_same_lists(&got, &want, 1e-5, "recommend");
}

/// The same items in the same order in every list, each score within `tol` of the other's.
fn assert_same_lists(got: &[Vec<(usize, f32)>], want: &[Vec<(usize, f32)>], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        let ids = |l: &[(usize, f32)]| l.iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(ids(g), ids(w), "{what}");
        for (a, b) in g.iter().zip(w) {
            assert!((a.1 - b.1).abs() < tol, "{what}: {a:?} vs {b:?}");
        }
    }
}

/// Every scan a server can be configured with (threads; the bf16 first pass) returns the f32
/// ranking: on a random model, and on the shipped beauty-2l with real Beauty histories (skipped with
/// a message where ../shared/data is absent, as on a user's machine).
#[test]
fn configured_scans_return_the_f32_ranking() {
    use seqserve::model::retrieval::exact::ScanPrecision;
    let n = 5000;
    let mut model = random_model(n, 2, 3);
    let qs = queries(64, n as u64, 5);
    let refs: Vec<&Query> = qs.iter().collect();
    let sp = specs(&qs, 10, n as u64, 6);
    let want = model.recommend(&refs, &sp);
    for (threads, precision) in [
        (3, ScanPrecision::F32),
        (1, ScanPrecision::Bf16),
        (2, ScanPrecision::Bf16),
    ] {
        let said = model.configure_scan(threads, precision).unwrap();
        assert_same_lists(&model.recommend(&refs, &sp), &want, 1e-4, &said);
    }
    let Some(beauty) = common::shared_data("amazon_s3rec/Beauty.txt") else {
        return; // shared_data said it is skipped and why
    };
    let mut model = Model::load(std::path::Path::new("models/beauty-2l"), Device::Cpu).unwrap();
    let text = std::fs::read_to_string(beauty).unwrap();
    let prepared: Vec<_> = text
        .lines()
        .take(512)
        .map(|l| {
            let ids: Vec<String> = l.split_whitespace().skip(1).map(str::to_string).collect();
            let ev: Vec<seqserve::model::HistoryEvent> = ids[..ids.len() - 1]
                .iter()
                .map(|i| seqserve::model::HistoryEvent {
                    item: i.clone(),
                    behaviour: None,
                })
                .collect();
            model.prepare(&ev, &Default::default()).unwrap()
        })
        .collect();
    let refs: Vec<&Query> = prepared.iter().map(|p| &p.query).collect();
    let sp: Vec<RankSpec> = prepared
        .iter()
        .map(|p| RankSpec {
            k: 20,
            exclude: p.seen.clone(),
            candidates: None,
        })
        .collect();
    let want = model.recommend(&refs, &sp);
    for (threads, precision) in [(2, ScanPrecision::F32), (2, ScanPrecision::Bf16)] {
        let said = model.configure_scan(threads, precision).unwrap();
        assert_same_lists(
            &model.recommend(&refs, &sp),
            &want,
            1e-4,
            &format!("beauty-2l, {said}"),
        );
    }
}

#[test]
fn ann_recalls_the_exact_ranking_with_exact_scores_and_falls_back() {
    let n = 4000;
    let mut model = random_model(n, 1, 9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INDEX_FILE);
    let index = model.build_index(AnnParams::default(), 2).unwrap();
    assert_eq!(index.len(), n);
    index.save(&path).unwrap();
    // Without an attached index, "ann" is answered exactly.
    assert_eq!(model.retriever(Retrieval::Ann).kind(), Retrieval::Exact);
    assert!(model.concurrent_ranking());
    model.attach_index(AnnParams::default(), &path, 2).unwrap();
    assert_eq!(model.retriever(Retrieval::Ann).kind(), Retrieval::Ann);
    // usearch's searches need contexts reserved per thread: one worker for an HNSW model.
    assert!(!model.concurrent_ranking());

    let qs = queries(200, n as u64, 5);
    let refs: Vec<&Query> = qs.iter().collect();
    let sp = specs(&qs, 10, n as u64, 6);
    let exact = model.recommend(&refs, &sp);
    let ann = model.recommend_with(Retrieval::Ann, &refs, &sp);
    let full = model.score(&refs);
    // Gathered rows are scored by a product and sum, the scan by a GEMM: equal to float
    // rounding, not bit for bit.
    let recall = recall_against(&ann, &exact, &sp, &full);
    assert!(recall >= 0.95, "recall@10 {recall}");

    // Exclusions that leave fewer eligible items than k: the exact scan answers, in order.
    let keep = [17usize, 3999, 250];
    let all_but: Vec<usize> = (1..=n).filter(|i| !keep.contains(i)).collect();
    let s = vec![RankSpec {
        k: 10,
        exclude: all_but,
        candidates: None,
    }];
    let a = model.recommend_with(Retrieval::Ann, &refs[..1], &s);
    let e = model.recommend(&refs[..1], &s);
    let ids = |l: &[(usize, f32)]| l.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(ids(&a[0]), ids(&e[0]));
    assert_eq!(a[0].len(), 3);
}

/// The share of `exact`'s items that `got` found, checking on the way that every returned item is
/// eligible, carries its exact score (to float rounding) and is ranked under the tie policy, and
/// that rows with their own candidates are answered exactly.
fn recall_against(
    got: &[Vec<(usize, f32)>],
    exact: &[Vec<(usize, f32)>],
    sp: &[RankSpec],
    full: &[Vec<f32>],
) -> f64 {
    let (mut hit, mut total) = (0, 0);
    for (((a, e), s), row) in got.iter().zip(exact).zip(sp).zip(full) {
        assert_eq!(a.len(), e.len());
        let excluded: HashSet<usize> = s.exclude.iter().copied().collect();
        for &(i, score) in a {
            assert!(!excluded.contains(&i), "excluded item {i} returned");
            assert!((score - row[i - 1]).abs() < 1e-5, "scores are exact scores");
        }
        assert!(a
            .windows(2)
            .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
        if s.candidates.is_some() {
            assert_eq!(a, e, "re-ranking never goes through the index");
        }
        let want: HashSet<usize> = e.iter().map(|x| x.0).collect();
        hit += a.iter().filter(|x| want.contains(&x.0)).count();
        total += want.len();
    }
    hit as f64 / total as f64
}

#[test]
fn ivf_reading_every_list_is_exact_and_recall_grows_with_the_lists_read() {
    let n = 6000;
    let mut model = random_model(n, 1, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(IVF_FILE);
    let params = |probe| IvfParams {
        lists: 64,
        probe,
        threads: 2,
    };
    let index = model.build_ivf(params(0), 2).unwrap();
    assert_eq!((index.len(), index.lists()), (n, 64));
    model.save_ivf(&index, &path).unwrap();

    let qs = queries(200, n as u64, 5);
    let refs: Vec<&Query> = qs.iter().collect();
    let sp = specs(&qs, 10, n as u64, 6);
    let exact = model.recommend(&refs, &sp);
    let full = model.score(&refs);
    // Every list read: the exact answer (scores summed in another order: ids equal, scores close).
    assert!(
        model.concurrent_ranking(),
        "the exact scan ranks on several threads at once"
    );
    model.attach_ivf(params(64), &path, 2).unwrap();
    assert_eq!(model.retriever(Retrieval::Ann).kind(), Retrieval::Ann);
    assert!(model.concurrent_ranking(), "so does the inverted file");
    let all = model.recommend_with(Retrieval::Ann, &refs, &sp);
    assert_same_lists(&all, &exact, 1e-5, "IVF reading all 64 lists");
    // Fewer lists read, fewer found; a quarter of them already finds most of the top 10 (random
    // weights: no structure for the lists to follow, the hardest case). Not down to one list: a
    // row whose lists hold fewer than k eligible items is answered by the exact scan, and k-means
    // on random vectors leaves a few small lists whose centroids, long vectors, win many queries'
    // single probe (seed 21: recall 0.60 reading 4 lists, 0.78 reading 1).
    let mut last = 1.0;
    for probe in [16, 4] {
        model.attach_ivf(params(probe), &path, 2).unwrap();
        let got = model.recommend_with(Retrieval::Ann, &refs, &sp);
        let r = recall_against(&got, &exact, &sp, &full);
        assert!(
            r <= last + 1e-9,
            "recall {r} reading {probe} lists, {last} reading more"
        );
        if probe == 16 {
            assert!(r >= 0.8, "recall@10 {r} reading 16 of 64 lists");
        }
        last = r;
    }
    model.attach_ivf(params(1), &path, 2).unwrap();
    let got = model.recommend_with(Retrieval::Ann, &refs, &sp);
    let one = recall_against(&got, &exact, &sp, &full);
    assert!(one < 0.9, "reading one list of 64 should miss items: {one}");

    // A rebuilt index (deterministic k-means) answers like the saved one; one thread like two.
    let built = IvfParams {
        lists: 64,
        probe: 16,
        threads: 1,
    };
    model
        .attach_ivf(built, &dir.path().join("absent"), 1)
        .unwrap();
    let rebuilt = model.recommend_with(Retrieval::Ann, &refs, &sp);
    model.attach_ivf(params(16), &path, 2).unwrap();
    assert_same_lists(
        &rebuilt,
        &model.recommend_with(Retrieval::Ann, &refs, &sp),
        1e-9,
        "rebuilt",
    );

    // Exclusions that leave fewer eligible items than k, in the probed lists or at all: the exact
    // scan answers.
    model.attach_ivf(params(1), &path, 2).unwrap();
    let keep = [17usize, 5999, 250];
    let all_but: Vec<usize> = (1..=n).filter(|i| !keep.contains(i)).collect();
    let s = vec![RankSpec {
        k: 10,
        exclude: all_but,
        candidates: None,
    }];
    let a = model.recommend_with(Retrieval::Ann, &refs[..1], &s);
    assert_same_lists(&a, &model.recommend(&refs[..1], &s), 1e-5, "exhausted");
    assert_eq!(a[0].len(), 3);
}

/// From 2,048 lists on, items are assigned among their 8 nearest groups of centroids (ivf.rs,
/// `assign`): the index must still recall the exact top 10 and rebuild the same, whatever the
/// threads.
#[test]
fn ivf_with_grouped_assignment_recalls_and_rebuilds_the_same() {
    let n = 40_000;
    let mut model = random_model(n, 1, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(IVF_FILE);
    let params = |probe, threads| IvfParams {
        lists: 2048,
        probe,
        threads,
    };
    let index = model.build_ivf(params(0, 2), 2).unwrap();
    assert_eq!((index.len(), index.lists()), (n, 2048));
    model.save_ivf(&index, &path).unwrap();
    let qs = queries(200, n as u64, 7);
    let refs: Vec<&Query> = qs.iter().collect();
    let sp = specs(&qs, 10, n as u64, 8);
    let exact = model.recommend(&refs, &sp);
    let full = model.score(&refs);
    let mut last = 0.0;
    for probe in [128, 512] {
        model.attach_ivf(params(probe, 2), &path, 2).unwrap();
        let got = model.recommend_with(Retrieval::Ann, &refs, &sp);
        let r = recall_against(&got, &exact, &sp, &full);
        eprintln!("grouped assignment: recall@10 {r:.4} reading {probe} of 2048 lists");
        assert!(
            r >= last,
            "recall {r} reading {probe} lists, {last} reading fewer"
        );
        last = r;
    }
    assert!(
        last >= 0.9,
        "recall@10 {last} reading a quarter of the lists"
    );
    model
        .attach_ivf(params(128, 1), &dir.path().join("absent"), 1)
        .unwrap();
    let rebuilt = model.recommend_with(Retrieval::Ann, &refs, &sp);
    model.attach_ivf(params(128, 2), &path, 2).unwrap();
    let saved = model.recommend_with(Retrieval::Ann, &refs, &sp);
    assert_same_lists(&rebuilt, &saved, 1e-9, "rebuilt on one thread");
}

#[test]
fn a_stale_or_foreign_ivf_index_is_refused() {
    let n = 500;
    let p = IvfParams::default();
    let old = random_model(n, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(IVF_FILE);
    old.save_ivf(&old.build_ivf(p, 1).unwrap(), &path).unwrap();
    let mut new = random_model(n, 1, 2);
    let e = new.attach_ivf(p, &path, 1).unwrap_err();
    assert!(e.contains("other weights"), "{e}");
    let mut other = random_model(n + 1, 1, 1);
    let e = other.attach_ivf(p, &path, 1).unwrap_err();
    assert!(e.contains("do not fit a model of 501 items"), "{e}");
    std::fs::write(&path, b"not an index").unwrap();
    let e = new.attach_ivf(p, &path, 1).unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
    // More lists than items.
    let e = old
        .build_ivf(IvfParams { lists: n + 1, ..p }, 1)
        .err()
        .unwrap();
    assert!(e.contains("at most one per item"), "{e}");
}

#[test]
fn a_stale_or_foreign_index_is_refused() {
    let n = 500;
    let old = random_model(n, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INDEX_FILE);
    old.build_index(AnnParams::default(), 1)
        .unwrap()
        .save(&path)
        .unwrap();
    // Retrained: same catalogue size, other weights.
    let mut new = random_model(n, 1, 2);
    let e = new
        .attach_index(AnnParams::default(), &path, 1)
        .unwrap_err();
    assert!(e.contains("rebuild it"), "{e}");
    // Another catalogue size.
    let mut other = random_model(n + 1, 1, 1);
    let e = other
        .attach_index(AnnParams::default(), &path, 1)
        .unwrap_err();
    assert!(e.contains("500 vectors") && e.contains("501 items"), "{e}");
    // Not an index at all.
    std::fs::write(&path, b"not an index").unwrap();
    assert!(new.attach_index(AnnParams::default(), &path, 1).is_err());
}

#[test]
fn mapped_load_scores_like_the_saved_model_and_survives_in_place_writes() {
    let n = 700;
    let model = random_model(n, 2, 4);
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = Model::load(dir.path(), Device::Cpu).unwrap();
    let qs = queries(8, n as u64, 3);
    let refs: Vec<&Query> = qs.iter().collect();
    assert_eq!(model.score(&refs), loaded.score(&refs));
    // The mapping is private: writing a loaded weight (as fine-tuning would) changes this process's
    // copy only, never the file.
    let before = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let vars = loaded.vs.variables();
    let mut emb = vars["item_emb"].shallow_clone();
    tch::no_grad(|| {
        let _ = emb.fill_(0.5);
    });
    assert_eq!(
        before,
        std::fs::read(dir.path().join("model.safetensors")).unwrap()
    );
    let again = Model::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(model.score(&refs), again.score(&refs));
    assert_ne!(loaded.score(&refs), again.score(&refs));
}

fn seqserve(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(args)
        .arg("--model")
        .arg(dir)
        .output()
        .unwrap()
}

async fn recommend(url: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({"history": ["i3", "i9", "i4"], "k": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_with_a_saved_ivf_index_and_says_which_retrieval() {
    saved_index_serves("ivf", IVF_FILE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_with_a_saved_hnsw_index_and_says_which_retrieval() {
    saved_index_serves("hnsw", INDEX_FILE).await;
}

/// `seqserve index --kind KIND` writes FILE; a server with retrieval.index_kind = KIND answers
/// from it with exact scores, and refuses to start on an index of other weights.
async fn saved_index_serves(kind: &str, file: &str) {
    let env = [
        ("SEQSERVE__RETRIEVAL__INDEX_KIND", kind),
        ("SEQSERVE__BATCHING__WORKERS_PER_MODEL", "2"),
    ];
    let dir = tempfile::tempdir().unwrap();
    common::random_model(400, 1, 8).save(dir.path()).unwrap();
    let out = seqserve(&["index", "--threads", "1", "--kind", kind], dir.path());
    common::assert_ran(&out);
    assert!(dir.path().join(file).is_file());
    // An existing index is refused before any work unless --force.
    let again = seqserve(&["index", "--kind", kind], dir.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let cli = seqserve(
        &[
            "recommend",
            "--json",
            "--device",
            "cpu",
            "--k",
            "7",
            "--history",
            "i3,i9,i4",
        ],
        dir.path(),
    );
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();

    let s = common::server::Server::start_env(dir, &["--retrieval", "ann"], &env);
    let v = recommend(&s.url("/recommend")).await;
    assert_eq!(v["retrieval"], "ann", "{v}");
    // Two workers asked for: the inverted file gets them, HNSW one (see Model::concurrent_ranking).
    let models: serde_json::Value = reqwest::get(s.url("/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let want = if kind == "ivf" { 2 } else { 1 };
    assert_eq!(
        models["models"][0]["versions"][0]["workers"], want,
        "{models}"
    );
    let items = common::ranked_items(&v);
    assert_eq!(items.len(), 7);
    // Every score the index path returns is the exact score of that item.
    let exact: std::collections::HashMap<String, f64> =
        common::ranked_items(&cli).into_iter().collect();
    let common_items = items
        .iter()
        .filter(|(i, s)| exact.get(i).is_some_and(|e| (e - s).abs() < 1e-4))
        .count();
    assert!(common_items >= 6, "ANN answer {v} vs exact {cli}");
    drop(s);

    // Retrained in place without rebuilding the index: the server refuses to start, naming it
    // (and exits, rather than serving from a mismatched index).
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path();
    common::random_model(400, 1, 8).save(model_dir).unwrap();
    assert!(
        seqserve(&["index", "--threads", "1", "--kind", kind], model_dir)
            .status
            .success()
    );
    common::random_model(400, 1, 99).save(model_dir).unwrap();
    assert!(model_dir.join(file).is_file());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--device",
            "cpu",
        ])
        .args(["--retrieval", "ann", "--model"])
        .arg(model_dir)
        .envs(env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rebuild it"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_is_the_default_and_says_so() {
    let s = common::server::Server::start(&[]);
    let v = recommend(&s.url("/recommend")).await;
    assert_eq!(v["retrieval"], "exact", "{v}");
}
