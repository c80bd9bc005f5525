//! Encoder correctness: parity with an independent PyTorch reference, causality, padding invariance,
//! save/load round trip and every load error.
mod common;

use common::{random_model, random_model_arch, random_model_with};
use seqserve::model::{
    Activation, Architecture, ContextValue, EncodedContext, Head, HistoryEvent, Model, Norm,
    Padding, Positions, Query, RankSpec, ITEMS_FILE, MANIFEST_FILE, WEIGHTS_FILE,
};
use seqserve::ModelError;
use std::collections::BTreeMap;
use tch::{Device, Tensor};

fn random_queries(n: usize, n_items: i64, max_len: usize, seed: u64) -> Vec<Query> {
    let mut rng = common::Lcg(seed);
    let mut next = move |m: u64| rng.next(m);
    (0..n)
        .map(|q| {
            // Lengths 0..=max_len, including the empty (cold-start) history.
            let len = if q == 0 {
                0
            } else {
                next(max_len as u64 + 1) as usize
            };
            Query {
                items: (0..len).map(|_| 1 + next(n_items as u64) as i64).collect(),
                behaviours: (0..len).map(|_| next(5) as i64).collect(),
                context: EncodedContext {
                    categorical: vec![next(3) as i64, next(4) as i64],
                    numeric: vec![(next(1000) as f32 / 250.0) - 2.0],
                },
            }
        })
        .collect()
}

/// The largest |Rust − PyTorch| score over `queries`, the Rust side scoring them as one padded
/// batch and the reference one query at a time.
fn reference_diff(model: &Model, queries: &[Query]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let refs: Vec<&Query> = queries.iter().collect();
    // Rust scores the whole batch at once (padded to the longest history).
    let rust = model.score(&refs);
    let inputs = serde_json::json!({
        "queries": queries.iter().map(|q| serde_json::json!({
            "items": q.items, "behaviours": q.behaviours,
            "cat": q.context.categorical, "num": q.context.numeric,
        })).collect::<Vec<_>>()
    });
    let inp = dir.path().join("inputs.json");
    let out = dir.path().join("out.json");
    std::fs::write(&inp, inputs.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/reference.py");
    let status = std::process::Command::new(common::python())
        .args([
            script,
            dir.path().to_str().unwrap(),
            inp.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .status()
        .expect("run python reference");
    assert!(status.success(), "python reference failed");
    let py: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let py = py["scores"].as_array().unwrap();
    assert_eq!(rust.len(), py.len());
    let mut worst = 0f64;
    for (r, p) in rust.iter().zip(py) {
        let p = p.as_array().unwrap();
        assert_eq!(r.len(), p.len());
        for (a, b) in r.iter().zip(p) {
            worst = worst.max((*a as f64 - b.as_f64().unwrap()).abs());
        }
    }
    worst
}

#[test]
fn scores_match_pytorch_reference() {
    // Every architecture variant: 1 and 2 layers, pre- and post-LN, with and without the input
    // embedding LayerNorm.
    let variants = [
        (1, false, Norm::Pre),
        (2, false, Norm::Pre),
        (1, true, Norm::Post),
        (2, true, Norm::Post),
        (2, true, Norm::Pre),
    ];
    for (layers, emb_norm, norm) in variants {
        let model = random_model_with(40, layers, 7 + layers as i64, emb_norm, norm);
        let queries = random_queries(24, 40, 8, 3);
        let worst = reference_diff(&model, &queries);
        eprintln!("layers={layers} emb_norm={emb_norm} {norm:?}: max |rust - pytorch| = {worst:e}");
        assert!(
            worst < 1e-4,
            "layers={layers} emb_norm={emb_norm} {norm:?}: max abs diff {worst}"
        );
    }
}

#[test]
fn every_encoder_option_matches_the_pytorch_reference() {
    // Each option on its own, then all of RecBole's together (post-LN, eps 1e-12, input
    // LayerNorm, no head), pmixer/SASRec.pytorch's (pre-LN, ReLU, eps 1e-8, positions counted from
    // the newest item, attended padding, no head), SASRec's original blocks and input scale (the
    // SASRec+ reference's code), and everything at once.
    type Edit = fn(&mut Architecture);
    let variants: [(&str, Edit); 11] = [
        ("item_input_scale 8", |a| a.item_input_scale = 8.0),
        ("norm sasrec", |a| a.norm = Norm::Sasrec),
        ("sasrec+ (antklen/sasrec-bert4rec-recsys23)", |a| {
            a.norm = Norm::Sasrec;
            a.item_input_scale = 8.0;
            a.layer_norm_eps = 1e-8;
            a.activation = Activation::Relu;
            a.positions = Positions::FromOldest;
            a.head = Head::None;
        }),
        ("layer_norm_eps 1e-12", |a| a.layer_norm_eps = 1e-12),
        ("relu", |a| a.activation = Activation::Relu),
        ("positions from_newest", |a| {
            a.positions = Positions::FromNewest
        }),
        ("head none", |a| a.head = Head::None),
        ("padding attended", |a| a.padding = Padding::Attended),
        ("recbole", |a| {
            a.norm = Norm::Post;
            a.embedding_norm = true;
            a.layer_norm_eps = 1e-12;
            a.head = Head::None;
        }),
        ("pmixer", |a| {
            a.norm = Norm::Pre;
            a.layer_norm_eps = 1e-8;
            a.activation = Activation::Relu;
            a.positions = Positions::FromNewest;
            a.padding = Padding::Attended;
            a.head = Head::None;
        }),
        ("all", |a| {
            a.norm = Norm::Post;
            a.embedding_norm = true;
            a.layer_norm_eps = 1e-12;
            a.activation = Activation::Relu;
            a.positions = Positions::FromNewest;
            a.padding = Padding::Attended;
            a.head = Head::None;
        }),
    ];
    for (name, edit) in variants {
        let model = random_model_arch(40, 2, 21, edit);
        let mut queries = random_queries(24, 40, 8, 5);
        if model.manifest.context.is_empty() {
            for q in &mut queries {
                q.context = EncodedContext::default();
            }
        }
        let worst = reference_diff(&model, &queries);
        eprintln!("{name}: max |rust - pytorch| = {worst:e}");
        assert!(worst < 1e-4, "{name}: max abs diff {worst}");
    }
}

#[test]
fn later_positions_never_change_earlier_outputs() {
    let model = random_model(30, 2, 11);
    let base: Vec<i64> = vec![3, 9, 4, 17, 22, 5];
    let batch = |items: Vec<i64>| Query {
        behaviours: vec![1; items.len()],
        items,
        context: EncodedContext {
            categorical: vec![1, 2],
            numeric: vec![0.5],
        },
    };
    let a = batch(base.clone());
    let mut changed = base.clone();
    changed[4] = 28;
    changed[5] = 1;
    let b = batch(changed);
    let hidden = |q: &Query| {
        tch::no_grad(|| {
            let tb = seqserve::model::to_tensors(&[q], &model.manifest, Device::Cpu);
            model.encoder.hidden(&tb, false)
        })
    };
    let (ha, hb) = (hidden(&a), hidden(&b));
    let early = |h: &Tensor| h.narrow(1, 0, 4);
    let diff = (early(&ha) - early(&hb)).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "earlier positions changed by {diff}");
    let late = (ha.narrow(1, 4, 2) - hb.narrow(1, 4, 2))
        .abs()
        .max()
        .double_value(&[]);
    assert!(late > 1e-4, "the changed positions should differ ({late})");
}

#[test]
fn padding_in_a_batch_does_not_change_scores() {
    // Attended padding too: there a history is always widened to the max_len window, however
    // wide its batch is.
    for padding in [Padding::Masked, Padding::Attended] {
        let model = random_model_arch(30, 2, 5, |a| a.padding = padding);
        let qs = random_queries(6, 30, 8, 9);
        let refs: Vec<&Query> = qs.iter().collect();
        let together = model.score(&refs);
        for (q, row) in qs.iter().zip(&together) {
            let alone = &model.score(&[q])[0];
            let d = alone
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{padding:?}: batched vs alone differ by {d}");
        }
    }
}

/// Inference packs the real positions (`Encoder::encode_packed`); the padded encoder that training
/// uses must give the same query vectors, for every norm placement and position scheme, in batches
/// of mixed lengths with an empty history.
#[test]
fn packed_inference_equals_the_padded_encoder() {
    use seqserve::model::manifest::{Norm, Positions};
    for layers in [1, 2, 3] {
        for norm in [Norm::Pre, Norm::Post, Norm::Sasrec] {
            for positions in [Positions::FromOldest, Positions::FromNewest] {
                let model = random_model_arch(40, layers, 11, |a| {
                    a.norm = norm;
                    a.positions = positions;
                    if norm == Norm::Sasrec {
                        a.item_input_scale = 8.0;
                    }
                });
                let qs = random_queries(9, 40, 8, layers as u64);
                let refs: Vec<&Query> = qs.iter().collect();
                let _guard = tch::no_grad_guard();
                let batch = seqserve::model::to_tensors(&refs, &model.manifest, Device::Cpu);
                let packed = model.encoder.query_vectors(&batch);
                let y = model.encoder.hidden_last(&batch, false).select(1, 0);
                let c = model.encoder.context_vector(&batch);
                let padded = model.encoder.project(&y, c.as_ref());
                let d = f64::try_from((packed - padded).abs().max()).unwrap();
                assert!(
                    d < 1e-5,
                    "{layers} layers, {norm:?}, {positions:?}: differ by {d}"
                );
            }
        }
    }
}

#[test]
fn save_load_round_trip_gives_identical_scores() {
    let model = random_model(25, 1, 21);
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = Model::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(loaded.manifest, model.manifest);
    assert_eq!(loaded.catalogue, model.catalogue);
    let qs = random_queries(5, 25, 8, 1);
    let refs: Vec<&Query> = qs.iter().collect();
    assert_eq!(model.score(&refs), loaded.score(&refs));
}

#[test]
fn prepare_resolves_ids_truncates_and_rejects_bad_input() {
    let model = random_model(20, 1, 2);
    let h = |ids: &[&str]| -> Vec<HistoryEvent> {
        ids.iter()
            .map(|i| HistoryEvent {
                item: i.to_string(),
                behaviour: Some("pv".into()),
            })
            .collect()
    };
    let mut ctx = BTreeMap::new();
    ctx.insert("gender".to_string(), ContextValue::Text("F".into()));
    ctx.insert("hour".to_string(), ContextValue::Number(18.0));
    let p = model
        .prepare(
            &h(&[
                "i1", "nope", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i9", "i10",
            ]),
            &ctx,
        )
        .unwrap();
    assert_eq!(p.unknown_items, vec!["nope".to_string()]);
    assert_eq!(p.query.items, vec![3, 4, 5, 6, 7, 8, 9, 10]); // most recent max_len = 8
    assert_eq!(p.seen.len(), 10);
    assert_eq!(p.query.context.categorical, vec![1, 0]); // device missing = 0
    assert!((p.query.context.numeric[0] - 1.0).abs() < 1e-6); // (18 - 12) / 6

    let bad_beh = vec![HistoryEvent {
        item: "i1".into(),
        behaviour: Some("like".into()),
    }];
    assert!(model.prepare(&bad_beh, &BTreeMap::new()).is_err());
    for (k, v) in [
        ("colour", ContextValue::Text("red".into())),
        ("gender", ContextValue::Text("X".into())),
        ("hour", ContextValue::Text("noon".into())),
    ] {
        let mut c = BTreeMap::new();
        c.insert(k.to_string(), v);
        let e = model.prepare(&h(&["i1"]), &c).unwrap_err().to_string();
        assert!(e.contains(k), "{e}");
    }
    // Cold start: empty history is valid and ranks the whole catalogue.
    let p = model.prepare(&[], &BTreeMap::new()).unwrap();
    let r = model.recommend(
        &[&p.query],
        &[RankSpec {
            k: 5,
            ..Default::default()
        }],
    );
    assert_eq!(r[0].len(), 5);
}

fn expect_err(dir: &std::path::Path, needle: &str) {
    let e = match Model::load(dir, Device::Cpu) {
        Ok(_) => panic!("load should fail with {needle:?}"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
}

#[test]
fn every_load_error_names_file_and_problem() {
    let model = random_model(10, 1, 3);
    let fresh = || {
        let d = tempfile::tempdir().unwrap();
        model.save(d.path()).unwrap();
        d
    };
    for f in [MANIFEST_FILE, WEIGHTS_FILE, ITEMS_FILE] {
        let d = fresh();
        std::fs::remove_file(d.path().join(f)).unwrap();
        expect_err(d.path(), f);
    }
    let d = tempfile::tempdir().unwrap();
    expect_err(&d.path().join("nothing"), "not a model directory");

    let edit_manifest = |f: &dyn Fn(&mut serde_json::Value)| {
        let d = fresh();
        let p = d.path().join(MANIFEST_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        d
    };
    let d = edit_manifest(&|v| v["format_version"] = 99.into());
    expect_err(d.path(), "unsupported format version 99");
    let d = edit_manifest(&|v| v["architecture"]["d_model"] = 15.into());
    expect_err(d.path(), "multiple of n_heads");
    let d = edit_manifest(&|v| v["architecture"]["d_model"] = 32.into());
    expect_err(d.path(), "expected shape");
    let d = edit_manifest(&|v| v["architecture"]["n_items"] = 11.into());
    expect_err(d.path(), "n_items = 11");
    let d = edit_manifest(&|v| v["behaviours"] = serde_json::json!([]));
    expect_err(d.path(), "unexpected tensor behaviour_emb");
    let d = edit_manifest(&|v| v["surprise"] = 1.into());
    expect_err(d.path(), "unknown field");
    let d = fresh();
    std::fs::write(d.path().join(MANIFEST_FILE), "{not json").unwrap();
    expect_err(d.path(), MANIFEST_FILE);

    let d = fresh();
    let p = d.path().join(ITEMS_FILE);
    let mut items = std::fs::read_to_string(&p).unwrap();
    items = items.replacen("i2\n", "i1\n", 1);
    std::fs::write(&p, items).unwrap();
    expect_err(d.path(), "already on line 1");

    let d = fresh();
    std::fs::write(d.path().join(WEIGHTS_FILE), b"garbage").unwrap();
    expect_err(d.path(), "not a readable safetensors file");

    // A weights file from another architecture: missing tensors.
    let other = random_model(10, 2, 3);
    let d = fresh();
    let d2 = tempfile::tempdir().unwrap();
    other.save(d2.path()).unwrap();
    std::fs::copy(d2.path().join(WEIGHTS_FILE), d.path().join(WEIGHTS_FILE)).unwrap();
    let e = Model::load(d.path(), Device::Cpu).err().unwrap();
    assert!(matches!(e, ModelError::BadFile { .. }), "{e}");
    assert!(e.to_string().contains("unexpected tensor blocks.1"), "{e}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let model = random_model(10, 1, 3);
        let vars = model.vs.variables();
        let name = vars
            .keys()
            .find(|k| k.starts_with("blocks.0"))
            .unwrap()
            .clone();
        tch::no_grad(|| {
            let mut t = vars[&name].shallow_clone();
            let _ = t.fill_(bad);
        });
        let d = tempfile::tempdir().unwrap();
        model.save(d.path()).unwrap();
        expect_err(d.path(), &format!("tensor {name} holds non-finite values"));
    }
    // One bad value among many: the item matrix of 301 × 16 floats is read in blocks of 4,096, so
    // these land in the first block, the last (partial) one and across the boundary.
    for (bad, at) in [
        (f64::NEG_INFINITY, 4815),
        (f64::NAN, 0),
        (f64::INFINITY, 4096),
    ] {
        let model = random_model(300, 1, 3);
        let vars = model.vs.variables();
        tch::no_grad(|| {
            let t = vars["item_emb"].view(-1);
            assert_eq!(t.size(), [4816]);
            let _ = t.get(at).fill_(bad);
        });
        let d = tempfile::tempdir().unwrap();
        model.save(d.path()).unwrap();
        expect_err(d.path(), "tensor item_emb holds non-finite values");
    }
}

#[test]
fn atomic_save_refuses_an_existing_directory_unless_replacing_and_leaves_no_debris() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("m");
    let a = random_model(10, 1, 3);
    a.save_atomically(&dir, false).unwrap();
    assert!(Model::load(&dir, Device::Cpu).is_ok());
    let b = random_model(12, 1, 4);
    let e = b.save_atomically(&dir, false).unwrap_err().to_string();
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(
        Model::load(&dir, Device::Cpu).unwrap().catalogue.len(),
        10,
        "refused: the old model is untouched"
    );
    b.save_atomically(&dir, true).unwrap();
    assert_eq!(Model::load(&dir, Device::Cpu).unwrap().catalogue.len(), 12);
    let names: Vec<String> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["m"], "no temporary or old directories left behind");
}

#[test]
fn expected_shapes_are_exactly_the_variables_the_encoder_builds() {
    type Edit = fn(&mut Architecture);
    let variants: [Edit; 4] = [
        |_| {},
        |a| {
            a.norm = Norm::Post;
            a.embedding_norm = true;
        },
        |a| a.head = Head::None,
        |a| {
            a.n_layers = 3;
            a.ffn_dim = 7;
        },
    ];
    for edit in variants {
        let model = random_model_arch(12, 2, 1, edit);
        let built: BTreeMap<String, Vec<i64>> = model
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(
            seqserve::model::encoder::expected_shapes(&model.manifest),
            built
        );
    }
}

/// A manifest that lies about its sizes (an attacker's, or a careless operator's) is refused
/// before any tensor is built: at once, with the sizes named, whatever it claims.
#[test]
fn manifest_sizes_are_checked_against_the_weights_before_anything_is_allocated() {
    let model = random_model(10, 1, 3);
    for (key, value, needle) in [
        (
            "max_len",
            serde_json::json!(1_000_000_000_000u64),
            "max_len",
        ),
        ("ffn_dim", serde_json::json!(1_000_000_000u64), "ffn_dim"),
        ("d_model", serde_json::json!(1u64 << 22), "d_model"),
        ("n_layers", serde_json::json!(2000), "n_layers"),
        // Within the sanity bounds: caught by the header comparison instead.
        (
            "max_len",
            serde_json::json!(60_000),
            "pos_emb: expected shape [60000, 16], found [8, 16]",
        ),
        (
            "n_layers",
            serde_json::json!(200),
            "missing tensor blocks.1",
        ),
        (
            "ffn_dim",
            serde_json::json!(200_000),
            "expected shape [200000, 16]",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        model.save(d.path()).unwrap();
        let p = d.path().join(MANIFEST_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["architecture"][key] = value;
        std::fs::write(&p, v.to_string()).unwrap();
        let t = std::time::Instant::now();
        let e = Model::load(d.path(), Device::Cpu)
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("{key} accepted"));
        assert!(e.contains(needle), "{key}: {e}");
        // A refusal reads a header, it builds nothing: no time to speak of.
        assert!(
            t.elapsed().as_secs_f64() < 1.0,
            "{key}: took {:?}",
            t.elapsed()
        );
    }
    // A truncated weights file: its tensors' data ranges run past its end.
    let d = tempfile::tempdir().unwrap();
    model.save(d.path()).unwrap();
    let w = d.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let e = Model::load(d.path(), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("truncated or corrupt"), "{e}");
}

/// Models trained before the encoder options existed (no layer_norm_eps, activation, positions or
/// head in their manifest) load and score as they always did: models/beauty-2l-prev is the
/// shipped beauty-2l of 2026-12-02, kept unchanged, scored against the independent reference on
/// real catalogue items.
#[test]
fn a_model_trained_before_the_options_loads_and_scores_unchanged() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/beauty-2l-prev");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    for key in [
        "layer_norm_eps",
        "activation",
        "positions",
        "head",
        "item_input_scale",
    ] {
        assert!(raw["architecture"].get(key).is_none(), "{key} is new");
    }
    let model = Model::load(&dir, Device::Cpu).unwrap();
    let a = &model.manifest.architecture;
    assert_eq!(
        (a.activation, a.positions, a.head, a.layer_norm_eps),
        (Activation::Gelu, Positions::FromOldest, Head::Linear, 1e-5)
    );
    assert_eq!((a.norm, a.item_input_scale), (Norm::Pre, 1.0));
    // Written back, the manifest gains no key it did not have (no `item_input_scale: 1`).
    let written = serde_json::to_value(&model.manifest).unwrap();
    assert!(written["architecture"].get("item_input_scale").is_none());
    // A scale that is not a positive finite number is refused with its name.
    for bad in [0.0, -8.0, f64::NAN, f64::INFINITY] {
        let mut m = model.manifest.clone();
        m.architecture.item_input_scale = bad;
        let e = m.validate().unwrap_err();
        assert!(e.contains("item_input_scale"), "{bad}: {e}");
    }
    let n = model.catalogue.len() as u64;
    let mut rng = common::Lcg(11);
    let queries: Vec<Query> = (0..16)
        .map(|i| {
            let len = if i == 0 { 0 } else { 1 + rng.next(30) as usize };
            Query {
                items: (0..len).map(|_| 1 + rng.next(n) as i64).collect(),
                ..Default::default()
            }
        })
        .collect();
    let worst = reference_diff(&model, &queries);
    assert!(worst < 1e-4, "max |rust - pytorch| = {worst}");
}
