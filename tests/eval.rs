//! Evaluation correctness: holdouts without leakage, metric properties, agreement with ranx, the
//! evaluate CLI end to end.
mod common;

use seqserve::data::{read_sequences, ReadOptions, Split};
use seqserve::eval::holdout::{build_holdout, parse_holdout, resolve, write_holdout};
use seqserve::eval::{at_k, evaluate_cases, EvalCase, EvalOptions};
use seqserve::model::{rank, ItemId, Query, RankSpec};
use seqserve::train::examples;
use std::io::Write;
use std::path::Path;

#[test]
fn holdout_and_training_share_one_split_without_leakage() {
    // Every event has a unique item, so "training saw a relevant item" is unambiguous.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let mut next = 1;
    for u in 0..30 {
        let len = 2 + u % 9;
        let items: Vec<String> = (0..len)
            .map(|_| {
                next += 1;
                next.to_string()
            })
            .collect();
        writeln!(f, "u{u} {}", items.join(" ")).unwrap();
    }
    let data = read_sequences(f.path(), &ReadOptions::default()).unwrap();
    let split = Split::LeaveLastN(3);
    let cases = build_holdout(&data, &split, None).unwrap();
    let splits = examples::splits(&data, &split).unwrap();
    let model = common::random_model(5, 1, 1);
    let catalogue = seqserve::model::Catalogue::new(
        data.users
            .iter()
            .flat_map(|u| u.events.iter().map(|e| e.item.clone()))
            .collect(),
    )
    .unwrap();
    let seqs = examples::train_sequences(&splits, &catalogue, &[], None, 50);
    let trained: std::collections::HashSet<i64> = seqs
        .iter()
        .flat_map(|s| s.inputs.iter().chain(&s.targets).copied())
        .collect();
    let _ = model;
    assert_eq!(cases.len(), 30);
    for (c, u) in cases.iter().zip(&data.users) {
        let n = u.events.len();
        let want: Vec<ItemId> = u.events[n.saturating_sub(3)..]
            .iter()
            .map(|e| ItemId::Str(e.item.clone()))
            .collect();
        assert_eq!(c.relevant, want, "last 3 events are relevant");
        assert_eq!(c.history.len(), n - want.len());
        for r in &c.relevant {
            let ItemId::Str(id) = r else { unreachable!() };
            let idx = catalogue.index_of(id).unwrap() as i64;
            assert!(!trained.contains(&idx), "training saw relevant item {id}");
        }
    }
    // Round trip through the file format.
    let out = tempfile::NamedTempFile::new().unwrap();
    write_holdout(&cases, None, out.path()).unwrap();
    let back = seqserve::eval::holdout::read_holdout(out.path())
        .unwrap()
        .cases;
    assert_eq!(back, cases);
}

#[test]
fn malformed_holdout_lines_are_named() {
    let p = std::path::Path::new("h.jsonl");
    let e = parse_holdout(
        "{\"history\": [1], \"relevant\": [2]}\n{\"history\": [1]}\n",
        p,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("h.jsonl:2:") && e.to_string().contains("relevant"),
        "{e}"
    );
    let e = parse_holdout("{\"history\": [1], \"relevant\": []}\n", p).unwrap_err();
    assert!(
        e.to_string().contains("h.jsonl:1:") && e.to_string().contains("at least one"),
        "{e}"
    );
    let e = parse_holdout("{\"history\": [1], \"relevant\": [2], \"extra\": 1}\n", p).unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    assert!(parse_holdout("\n\n", p).is_err());
    // As in requests: 0.0 is the item id 0, 1e-400 (which parses to the same f64) is no id.
    assert!(parse_holdout("{\"history\": [1], \"relevant\": [0.0]}\n", p).is_ok());
    let e = parse_holdout(
        "{\"history\": [1], \"relevant\": [2]}\n{\"history\": [1], \"relevant\": [1e-400]}\n",
        p,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("h.jsonl:2:") && e.to_string().contains("1e-400"),
        "{e}"
    );
}

#[test]
fn metric_properties_hold_on_random_cases() {
    let mut r = common::Lcg(3);
    for _ in 0..2000 {
        let n_rel = 1 + r.next(6) as usize;
        let mut relevant: Vec<u64> = Vec::new();
        while relevant.len() < n_rel {
            let x = r.next(40);
            if !relevant.contains(&x) {
                relevant.push(x);
            }
        }
        let mut ranked: Vec<u64> = Vec::new();
        while ranked.len() < 25 {
            let x = r.next(40);
            if !ranked.contains(&x) {
                ranked.push(x);
            }
        }
        for k in [1, 5, 10, 20, 50] {
            let m = at_k(&ranked, &relevant, k);
            for v in [m.precision, m.recall, m.f1, m.hr, m.ndcg, m.mrr, m.ap] {
                assert!((0.0..=1.0).contains(&v), "{m:?}");
            }
            assert!(m.f1 <= m.precision.max(m.recall) + 1e-12);
            assert!(m.mrr <= m.hr && m.recall <= m.hr);
            // A perfect ranking scores 1 on every recall-type metric.
            let mut perfect = relevant.clone();
            perfect.extend(ranked.iter().filter(|x| !relevant.contains(x)));
            let p = at_k(&perfect, &relevant, k);
            assert!((p.ndcg - 1.0).abs() < 1e-12 && p.hr == 1.0 && p.mrr == 1.0);
            if k >= relevant.len() {
                assert!((p.recall - 1.0).abs() < 1e-12 && (p.ap - 1.0).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn ties_k_beyond_catalogue_duplicates_and_unknown_relevant() {
    // Ties: equal scores rank by item index, so the result is deterministic.
    assert_eq!(
        rank::top_k(&[1.0, 2.0, 2.0, 2.0], 2, &[], None),
        vec![(2, 2.0), (3, 2.0)]
    );
    // K beyond the catalogue: every eligible item, precision still divides by K.
    let model = common::random_model(6, 1, 4);
    let holdout = "{\"history\": [\"i1\"], \"relevant\": [\"i2\", \"i2\", \"i3\", \"nope\"]}\n\
                   {\"history\": [\"i2\"], \"relevant\": [\"zzz\"]}\n";
    let cases = parse_holdout(holdout, std::path::Path::new("x")).unwrap();
    let res = resolve(&model.manifest, &model.catalogue, &cases).unwrap();
    assert_eq!(
        res.cases[0].relevant,
        vec![2, 3],
        "duplicates collapse, unknown dropped"
    );
    assert_eq!(res.unknown_relevant, 2);
    let r = evaluate_cases(
        &model,
        &res.cases,
        &EvalOptions {
            ks: vec![10],
            mask_seen: true,
            batch_size: 8,
        },
        |_| {},
    );
    assert_eq!(
        r.no_relevant, 1,
        "a case with only unknown relevant items is counted"
    );
    let c0 = r.per_case[0][0];
    assert!(
        (c0.recall - 1.0).abs() < 1e-12,
        "5 eligible items of 6 include both relevant ones"
    );
    assert!((c0.precision - 0.2).abs() < 1e-12, "2 hits / K = 10");
    assert_eq!(r.per_case[1][0].hr, 0.0);
    assert!(
        (r.coverage[0] - 1.0).abs() < 1e-12,
        "all 6 items appear in some list"
    );
}

#[test]
fn metrics_agree_with_ranx_on_a_generated_holdout() {
    let model = common::random_model(80, 2, 9);
    let mut r = common::Lcg(11);
    let cases: Vec<EvalCase> = (0..300)
        .map(|_| {
            let len = r.next(9) as usize;
            let items: Vec<i64> = (0..len).map(|_| 1 + r.next(80) as i64).collect();
            let mut relevant = Vec::new();
            let n_rel = 1 + r.next(5) as usize;
            while relevant.len() < n_rel {
                let x = 1 + r.next(80) as usize;
                if !relevant.contains(&x) {
                    relevant.push(x);
                }
            }
            let mut seen: Vec<usize> = items.iter().map(|&i| i as usize).collect();
            seen.sort_unstable();
            seen.dedup();
            EvalCase {
                query: Query {
                    behaviours: vec![0; items.len()],
                    items,
                    context: seqserve::model::EncodedContext {
                        categorical: vec![0, 0],
                        numeric: vec![0.0],
                    },
                },
                seen,
                relevant,
            }
        })
        .collect();
    let ks = vec![1, 5, 10, 20];
    let opts = EvalOptions {
        ks: ks.clone(),
        mask_seen: true,
        batch_size: 64,
    };
    let ours = evaluate_cases(&model, &cases, &opts, |_| {});
    // The same rankings, handed to ranx.
    let queries: Vec<&Query> = cases.iter().map(|c| &c.query).collect();
    let specs: Vec<RankSpec> = cases
        .iter()
        .map(|c| RankSpec {
            k: 20,
            exclude: c.seen.clone(),
            candidates: None,
        })
        .collect();
    let ranked = model.recommend(&queries, &specs);
    let input = serde_json::json!({
        "ks": ks,
        "cases": cases.iter().zip(&ranked).map(|(c, l)| serde_json::json!({
            "ranked": l.iter().map(|(i, _)| i).collect::<Vec<_>>(), "relevant": c.relevant,
        })).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&inp, input.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ranx_check.py");
    let st = std::process::Command::new(common::python())
        .args([script, inp.to_str().unwrap(), out.to_str().unwrap()])
        // ranx JIT-compiles its metrics with numba: a persistent cache makes later runs fast.
        .env(
            "NUMBA_CACHE_DIR",
            std::env::temp_dir().join("seqserve-numba-cache"),
        )
        .status()
        .unwrap();
    assert!(st.success(), "ranx script failed");
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let summary = seqserve::eval::summary_map(&ours);
    let mut checked = 0;
    for (key, v) in theirs.as_object().unwrap() {
        let mine = summary[key];
        let v = v.as_f64().unwrap();
        assert!((mine - v).abs() < 1e-9, "{key}: ours {mine} vs ranx {v}");
        checked += 1;
    }
    assert_eq!(checked, 28);
}

#[test]
fn evaluate_cli_reports_cis_and_paired_tests() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    common::random_model(30, 1, 1).save(&a).unwrap();
    common::random_model(30, 2, 2).save(&b).unwrap();
    let holdout = dir.path().join("h.jsonl");
    let mut f = std::fs::File::create(&holdout).unwrap();
    let mut r = common::Lcg(5);
    for u in 0..120 {
        let h: Vec<String> = (0..1 + r.next(6))
            .map(|_| format!("\"i{}\"", 1 + r.next(30)))
            .collect();
        let rel: Vec<String> = (0..3)
            .map(|j| format!("\"i{}\"", 1 + (u * 3 + j) % 30))
            .collect();
        writeln!(
            f,
            "{{\"user\": \"u{u}\", \"history\": [{}], \"relevant\": [{}]}}",
            h.join(","),
            rel.join(",")
        )
        .unwrap();
    }
    drop(f);
    let json = dir.path().join("r.json");
    let csv = dir.path().join("pc.csv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        // 5 twice: reported once, in the tables, the comparisons and the CSV alike.
        .args(["evaluate", "--device", "cpu", "--k", "5,10,5"])
        .arg("--model")
        .arg(&a)
        .arg("--model")
        .arg(&b)
        .arg("--holdout")
        .arg(&holdout)
        .arg("--json")
        .arg(&json)
        .arg("--per-case")
        .arg(&csv)
        .output()
        .unwrap();
    common::assert_ran(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("paired tests") && text.contains("f1@10"),
        "{text}"
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rep["cases"], 120);
    let ci = &rep["models"][0]["metrics"]["f1@10"];
    assert!(ci["lower"].as_f64().unwrap() <= ci["mean"].as_f64().unwrap());
    assert!(ci["mean"].as_f64().unwrap() <= ci["upper"].as_f64().unwrap());
    // 2 models → 1 pair × 3 metrics × 2 cut-offs.
    assert_eq!(rep["comparisons"].as_array().unwrap().len(), 6);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 120);
    let fields: Vec<usize> = csv.lines().map(|l| l.split(',').count()).collect();
    assert!(fields.iter().all(|&n| n == fields[0]), "ragged CSV");
    assert_eq!(csv.lines().next().unwrap().matches("f1@5,").count(), 1);
    // A holdout naming a behaviour the model does not know fails with the case named.
    std::fs::write(
        &holdout,
        "{\"history\": [{\"item\": \"i1\", \"behavior\": \"zap\"}], \"relevant\": [\"i2\"]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(["evaluate", "--device", "cpu"])
        .arg("--model")
        .arg(&a)
        .arg("--holdout")
        .arg(&holdout)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("case 1"));
}

/// The leakage guard on the shipped Beauty models and the real log (CI has it; skipped without it):
/// the leave-one-out model on a leave-last-3 holdout is refused, and when allowed, its HR@10 is
/// inflated well above the leave-last-3 model's on the same cases.
#[test]
fn evaluate_refuses_a_holdout_cut_from_the_training_log_by_another_split() {
    let Some(log) = common::shared_data("amazon_s3rec/Beauty.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let bin = env!("CARGO_BIN_EXE_seqserve");
    let holdout = |split: &str| {
        let out = dir.path().join(format!("{split}.jsonl"));
        let st = std::process::Command::new(bin)
            .args([
                "holdout",
                "--split",
                split,
                "--limit-users",
                "400",
                "--data",
            ])
            .arg(&log)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        common::assert_ran(&st);
        out
    };
    let evaluate = |model: &str, h: &Path, extra: &[&str]| {
        let json = dir.path().join(format!("{model}.json"));
        let out = std::process::Command::new(bin)
            .args(["evaluate", "--device", "cpu", "--k", "10"])
            .arg("--model")
            .arg(models.join(model))
            .arg("--holdout")
            .arg(h)
            .arg("--json")
            .arg(&json)
            .args(extra)
            .output()
            .unwrap();
        let report = out.status.success().then(|| {
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&json).unwrap())
                .unwrap()
        });
        (out, report)
    };
    let ll3 = holdout("leave-last-3");
    let (out, report) = evaluate("beauty-1l", &ll3, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && report.is_none());
    assert!(
        stderr.contains("LEAKAGE") && stderr.contains("--allow-leakage"),
        "{stderr}"
    );
    let (out, leaky) = evaluate("beauty-1l", &ll3, &["--allow-leakage"]);
    common::assert_ran(&out);
    let leaky = leaky.unwrap();
    assert_eq!(leaky["models"][0]["leakage"]["verdict"], "leakage");
    assert_eq!(leaky["models"][0]["leakage"]["allowed"], true);
    let (out, clean) = evaluate("beauty-ll3-1l", &ll3, &[]);
    common::assert_ran(&out);
    let clean = clean.unwrap();
    assert_eq!(clean["models"][0]["leakage"]["verdict"], "clean");
    let hr = |r: &serde_json::Value| r["models"][0]["metrics"]["hr@10"]["mean"].as_f64().unwrap();
    assert!(
        hr(&leaky) > 2.0 * hr(&clean),
        "leaky HR@10 {} against clean {}",
        hr(&leaky),
        hr(&clean)
    );
    // The model's own split: clean, no banner.
    let (out, own) = evaluate("beauty-1l", &holdout("leave-one-out"), &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("LEAKAGE"));
    assert_eq!(own.unwrap()["models"][0]["leakage"]["verdict"], "clean");
}

/// A bad output path fails before any work, naming the path; logs written to a pipe carry no ANSI
/// colour codes.
#[test]
fn output_paths_are_checked_first_and_piped_logs_are_plain() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    common::random_model(30, 1, 3).save(&model).unwrap();
    let holdout = dir.path().join("h.jsonl");
    std::fs::write(
        &holdout,
        "{\"history\": [\"i1\"], \"relevant\": [\"i2\"]}\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_seqserve");
    for (flag, bad) in [
        ("--json", dir.path().join("missing/r.json")),
        ("--per-case", dir.path().to_path_buf()),
    ] {
        let out = std::process::Command::new(bin)
            .args(["evaluate", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--holdout")
            .arg(&holdout)
            .arg(flag)
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }
    let out = std::process::Command::new(bin)
        .args(["holdout", "--data"])
        .arg(&holdout)
        .arg("--out")
        .arg(dir.path().join("nope/h.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    // A successful run logging to a pipe: no escape codes.
    let out = std::process::Command::new(bin)
        .args(["evaluate", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--holdout")
        .arg(&holdout)
        .env("SEQSERVE_LOG", "debug")
        .output()
        .unwrap();
    common::assert_ran(&out);
    assert!(!out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b));
}

/// `evaluate --report DIR`: an HTML page with the metric, paired-difference and distribution plots
/// (SVG) for two models.
#[test]
fn evaluate_writes_an_html_report_with_plots() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    common::random_model(30, 1, 3).save(&a).unwrap();
    common::random_model(30, 2, 4).save(&b).unwrap();
    let holdout = dir.path().join("h.jsonl");
    let lines: String = (0..80)
        .map(|u| {
            format!(
                "{{\"history\": [\"i{}\", \"i{}\"], \"relevant\": [\"i{}\", \"i{}\"]}}\n",
                1 + u % 30,
                1 + (u * 7) % 30,
                1 + (u * 3) % 30,
                1 + (u * 11) % 30
            )
        })
        .collect();
    std::fs::write(&holdout, lines).unwrap();
    let report = dir.path().join("report");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(["evaluate", "--device", "cpu", "--k", "5,10", "--model"])
        .arg(&a)
        .arg("--model")
        .arg(&b)
        .arg("--holdout")
        .arg(&holdout)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    common::assert_ran(&out);
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    for img in ["metrics.svg", "differences.svg", "distribution_ndcg@10.svg"] {
        assert!(
            html.contains(&format!("src=\"{img}\"")),
            "{img} not in the page"
        );
        let svg = std::fs::read_to_string(report.join(img)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{img}"
        );
    }
    let metrics = std::fs::read_to_string(report.join("metrics.svg")).unwrap();
    assert!(metrics.contains("ndcg@K, mean and 95% CI") && metrics.contains("K=10"));
    // Two models: one pair × 3 compared metrics × 2 cut-offs, each a row of the difference plot.
    let diff = std::fs::read_to_string(report.join("differences.svg")).unwrap();
    assert_eq!(
        diff.matches("ndcg@").count() + diff.matches("hr@").count() + diff.matches("f1@").count(),
        6
    );
    assert!(html.contains("Paired comparisons") && html.contains("<th>ndcg</th>"));
}
