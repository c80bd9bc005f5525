//! Short training runs: the loss falls, the best epoch is kept, and the written model loads and ranks.
mod common;

use seqserve::data::Split;
use seqserve::model::{Head, HistoryEvent, Model, Norm, Positions, RankSpec};
use seqserve::train::loss::{LogitsPrecision, LossConfig, LossKind, Sampling};
use seqserve::train::optim::Schedule;
use seqserve::train::{checkpoint, train, Batches, Init, Recipe, Targets, TrainConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

/// libtorch's random generator (dropout, sampled negatives) is global to the process: tests that
/// train hold this lock so that one run's draws are never interleaved with another's.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    common::RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        format: None,
        users: None,
        skip_malformed: false,
        limit_users: None,
        skip_test: false,
        split: Split::LeaveLastN(1),
        out: out.to_path_buf(),
        force: false,
        name: "t".into(),
        version: "1".into(),
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        ffn_dim: 64,
        dropout: 0.1,
        max_len: 20,
        embedding_norm: false,
        norm: Norm::Pre,
        layer_norm_eps: 1e-5,
        item_input_scale: 1.0,
        activation: Default::default(),
        positions: Default::default(),
        head: Some(Default::default()),
        recipe: Recipe {
            batch_size: 64,
            learning_rate: 3e-3,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            min_lr_ratio: 0.0,
            loss: LossConfig {
                kind: LossKind::Full,
                negatives: 16,
                sampling: Sampling::Uniform,
                label_smoothing: 0.0,
                logits_precision: Default::default(),
                exclude_history: false,
            },
            targets: Targets::All,
            max_epochs: 4,
            patience: 10,
            smoothing: 0.0,
            seed: 1,
            init: Default::default(),
            batches: Default::default(),
        },
        k: 10,
        device: Device::Cpu,
        threads: 1,
        resume: false,
        stop_after: None,
        phase_times: false,
        finish: false,
        command: "test".into(),
    }
}

/// Each user walks the 40-item ring from a different start: the next item is fully predictable.
fn ring(dir: &Path) -> PathBuf {
    let data = dir.join("ring.txt");
    let mut f = std::fs::File::create(&data).unwrap();
    for u in 0..400 {
        let len = 6 + u % 7;
        let items: Vec<String> = (0..len)
            .map(|j| ((u * 7 + j) % 40 + 1).to_string())
            .collect();
        writeln!(f, "{u} {}", items.join(" ")).unwrap();
    }
    data
}

#[test]
fn learns_a_synthetic_pattern_and_writes_a_loadable_model() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let out = dir.path().join("model");
    let res = train(&config(&data, &out)).unwrap();
    let t = res.model.manifest.training.clone().unwrap();
    assert_eq!(t.epochs.len(), 4);
    assert!(
        t.epochs[3].loss < t.epochs[0].loss * 0.8,
        "loss {:?}",
        t.epochs.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
    let m = res.model.manifest.metrics.clone().unwrap();
    // Random ranking would give HR@10 = 10/40 = 0.25.
    assert!(m.test["hr@10"] > 0.6, "test hr@10 {}", m.test["hr@10"]);
    assert!(m.test["f1@10"] <= m.test["hr@10"]);
    let best = t.best_epoch;
    let best_f1 = t.epochs[best - 1].validation["f1@10"];
    assert!(
        t.epochs.iter().all(|e| e.validation["f1@10"] <= best_f1),
        "best epoch kept"
    );

    let loaded = Model::load(&out, Device::Cpu).unwrap();
    let p = loaded
        .prepare(
            &["8", "9", "10"].map(|i| HistoryEvent {
                item: i.into(),
                behaviour: None,
            }),
            &BTreeMap::new(),
        )
        .unwrap();
    let top = loaded.recommend(
        &[&p.query],
        &[RankSpec {
            k: 3,
            exclude: p.seen.clone(),
            candidates: None,
        }],
    );
    let ids: Vec<&str> = top[0]
        .iter()
        .map(|(i, _)| loaded.catalogue.id_of(*i))
        .collect();
    assert!(
        ids.contains(&"11"),
        "after 8 9 10 the ring continues with 11: {ids:?}"
    );
}

/// The other architecture and loss: post-LN blocks with the input LayerNorm, trained on prefixes
/// with sampled softmax (popularity negatives, log-Q) under warm-up + cosine, AdamW with weight decay.
#[test]
fn sampled_loss_with_post_norm_learns_the_pattern() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let mut cfg = config(&data, &dir.path().join("model"));
    cfg.embedding_norm = true;
    cfg.norm = Norm::Post;
    cfg.recipe.loss.kind = LossKind::Sampled;
    cfg.recipe.loss.sampling = Sampling::Popularity;
    cfg.recipe.schedule = Schedule::Cosine;
    cfg.recipe.warmup_epochs = 0.5;
    cfg.recipe.weight_decay = 0.01;
    cfg.recipe.max_epochs = 6;
    cfg.recipe.targets = Targets::Prefixes;
    cfg.recipe.batch_size = 256;
    let res = train(&cfg).unwrap();
    let m = res.model.manifest.metrics.clone().unwrap();
    assert!(m.test["hr@10"] > 0.6, "test hr@10 {}", m.test["hr@10"]);
    let loaded = Model::load(&dir.path().join("model"), Device::Cpu).unwrap();
    assert!(loaded.manifest.architecture.embedding_norm);
    assert_eq!(loaded.manifest.architecture.norm, Norm::Post);
    let recipe = &loaded.manifest.training.unwrap().recipe.unwrap();
    assert_eq!(recipe["loss"]["kind"], "sampled");
}

/// Two data-parallel threads (each with half of every batch) and the references' options (normal
/// initialisation, no head, right-aligned positions, random batches): the pattern is learnt, by a
/// second run too, and the options are recorded.
#[test]
fn two_training_threads_learn_with_the_reference_options() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let run = |out: &str| {
        let mut cfg = config(&data, &dir.path().join(out));
        cfg.threads = 2;
        cfg.embedding_norm = true;
        cfg.head = Some(Head::None);
        cfg.positions = Positions::FromNewest;
        cfg.recipe.init = Init::Normal;
        cfg.recipe.batches = Batches::Random;
        cfg.recipe.loss.kind = LossKind::Sampled;
        cfg.recipe.targets = Targets::Prefixes;
        cfg.recipe.batch_size = 128;
        cfg.recipe.max_epochs = 6;
        train(&cfg).unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    let m = a.model.manifest.metrics.clone().unwrap();
    assert!(m.test["hr@10"] > 0.6, "test hr@10 {}", m.test["hr@10"]);
    let loaded = Model::load(&dir.path().join("a"), Device::Cpu).unwrap();
    let arch = &loaded.manifest.architecture;
    assert_eq!(
        (arch.head, arch.positions),
        (Head::None, Positions::FromNewest)
    );
    assert!(!loaded.vs.variables().contains_key("item_bias"));
    let t = loaded.manifest.training.unwrap();
    assert_eq!(t.threads, 2);
    let recipe = t.recipe.unwrap();
    assert_eq!(
        (recipe["init"].as_str(), recipe["batches"].as_str()),
        (Some("normal"), Some("random"))
    );
    // Two-thread runs are not bit-identical (CI saw a bias differ by 0.007 after 6 epochs; see
    // batch_step), but the second learns the pattern as well. Exact reproduction is a one-thread
    // property, tested by resumed_run_reproduces_the_uninterrupted_one.
    let mb = b.model.manifest.metrics.clone().unwrap();
    assert!(
        mb.test["hr@10"] > 0.6,
        "second run: test hr@10 {}",
        mb.test["hr@10"]
    );
}

/// A run paused after 2 epochs and resumed from its checkpoint ends with exactly the weights and
/// curve of the same run made in one sitting; a resume under another recipe is refused.
#[test]
fn resumed_run_reproduces_the_uninterrupted_one() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let mut base = config(&data, &dir.path().join("straight"));
    base.recipe.schedule = Schedule::Cosine;
    base.recipe.warmup_epochs = 1.0;
    base.recipe.max_epochs = 5;
    let straight = train(&base).unwrap();
    assert!(straight.finished);

    let out = dir.path().join("paused");
    let mut cfg = base.clone();
    cfg.out = out.clone();
    cfg.stop_after = Some(2);
    let first = train(&cfg).unwrap();
    assert!(!first.finished);
    assert!(!out.exists(), "no model is written before the run ends");
    let ckpt = checkpoint::dir_for(&out);
    assert!(ckpt.join("state.json").exists());

    let mut other = cfg.clone();
    other.recipe.learning_rate = 1e-2;
    other.resume = true;
    let e = train(&other).err().unwrap().to_string();
    assert!(e.contains("different training configuration"), "{e}");

    // --finish on a copy of the checkpoint: the best of the 2 epochs run becomes the model.
    let copy_out = dir.path().join("finished");
    let copy_ckpt = checkpoint::dir_for(&copy_out);
    std::fs::create_dir_all(&copy_ckpt).unwrap();
    for f in std::fs::read_dir(&ckpt).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy_ckpt.join(f.file_name())).unwrap();
    }
    let mut fin = cfg.clone();
    fin.out = copy_out.clone();
    fin.finish = true;
    let finished = train(&fin).unwrap();
    assert!(finished.finished && copy_out.join("model.json").exists());
    let ft = finished.model.manifest.training.unwrap();
    assert_eq!(ft.epochs_run, 2);
    assert!(ft.stopped_by.unwrap().contains("--finish after epoch 2"));

    cfg.resume = true;
    cfg.stop_after = None;
    let resumed = train(&cfg).unwrap();
    assert!(resumed.finished);
    assert!(
        !ckpt.exists(),
        "the checkpoint is removed once the model is written"
    );
    let (a, b) = (
        straight.model.manifest.training.unwrap(),
        resumed.model.manifest.training.unwrap(),
    );
    assert_eq!(a.epochs.len(), b.epochs.len());
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!(x.loss, y.loss, "epoch {}", x.epoch);
        // Identical rankings; the means may differ in the last bit (summation order).
        for (key, v) in &x.validation {
            assert!(
                (v - y.validation[key]).abs() < 1e-12,
                "epoch {} {key}",
                x.epoch
            );
        }
    }
    assert_eq!(a.best_epoch, b.best_epoch);
    assert_eq!(b.stopped_by.as_deref(), Some("max epochs"));
    let (va, vb) = (straight.model.vs.variables(), resumed.model.vs.variables());
    for (name, t) in &va {
        let diff = (t - &vb[name]).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name} differs by {diff}");
    }
}

fn shared(rel: &str) -> Option<PathBuf> {
    common::shared_data(rel)
}

#[test]
fn real_beauty_slice_trains_and_loads() {
    let _rng = lock();
    // Needs ../shared/data (Amazon Beauty): a short run on real data.
    let Some(data) = shared("amazon_s3rec/Beauty.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&data, &dir.path().join("m"));
    cfg.limit_users = Some(2000);
    cfg.recipe.max_epochs = 3;
    cfg.max_len = 50;
    let res = train(&cfg).unwrap();
    let t = res.model.manifest.training.as_ref().unwrap();
    assert!(t.epochs[2].loss < t.epochs[0].loss, "loss should fall");
    let loaded = Model::load(&dir.path().join("m"), Device::Cpu).unwrap();
    assert_eq!(loaded.catalogue.len(), res.model.catalogue.len());
    assert!(loaded
        .manifest
        .metrics
        .unwrap()
        .test
        .contains_key("ndcg@10"));
}

#[test]
fn taobao_events_train_with_behaviour_types() {
    let _rng = lock();
    // Needs ../shared/data (Taobao sample): behaviour-typed, timestamped events.
    let Some(data) = shared("taobao_userbehavior_sample/UserBehavior.csv") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&data, &dir.path().join("m"));
    cfg.recipe.max_epochs = 2;
    cfg.split = Split::Temporal {
        cutoff: 1_511_900_000,
    };
    let res = train(&cfg).unwrap();
    assert_eq!(res.model.manifest.behaviours, ["pv", "cart", "fav", "buy"]);
    let loaded = Model::load(&dir.path().join("m"), Device::Cpu).unwrap();
    let h = [HistoryEvent {
        item: "2268318".into(),
        behaviour: Some("cart".into()),
    }];
    let p = loaded.prepare(&h, &BTreeMap::new()).unwrap();
    assert_eq!(p.query.behaviours, vec![2]);
}

#[test]
fn an_existing_output_directory_is_refused_before_training() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shipped");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model.json"), "{}").unwrap();
    // The data path does not even exist: the refusal comes first, not after hours of training.
    let cfg = config(&dir.path().join("no-such-log.txt"), &out);
    let e = train(&cfg).err().unwrap().to_string();
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("model.json")).unwrap(),
        "{}"
    );
    // So is a version no request could name, before the data is read.
    let fresh = dir.path().join("fresh");
    let mut cfg = config(&dir.path().join("no-such-log.txt"), &fresh);
    cfg.version = "../2".into();
    let e = train(&cfg).err().unwrap().to_string();
    assert!(e.contains("version \"../2\" is not a valid name"), "{e}");
    assert!(!fresh.exists());
}

/// Settings that could only train nonsense or crash are refused with what to change, and nothing
/// is written.
#[test]
fn meaningless_settings_are_refused_before_training() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let out = dir.path().join("m");
    let refused = |edit: &dyn Fn(&mut TrainConfig), needle: &str| {
        let mut cfg = config(&data, &out);
        edit(&mut cfg);
        let e = train(&cfg).err().expect(needle).to_string();
        assert!(e.contains(needle), "{e}");
        assert!(!out.exists());
    };
    refused(&|c| c.k = 0, "k must be at least 1");
    refused(&|c| c.recipe.patience = 0, "patience must be at least 1");
    // 40 items in the ring: 41 negatives could only repeat them.
    refused(
        &|c| {
            c.recipe.loss.kind = LossKind::Sampled;
            c.recipe.loss.negatives = 41;
        },
        "--negatives 41 is more than the catalogue's 40 items",
    );
    refused(
        &|c| {
            c.recipe.loss.exclude_history = true;
            c.recipe.loss.kind = LossKind::Sampled;
        },
        "--exclude-history applies to the full loss",
    );
    refused(
        &|c| {
            c.recipe.loss.exclude_history = true;
            c.recipe.loss.label_smoothing = 0.1;
        },
        "--exclude-history applies to the full loss without label smoothing",
    );
}

/// `--exclude-history` (each row's softmax without its user's other items): the ring is still
/// learnt, on prefixes and at every position, and the manifest records the option (and only when
/// it is on, so that older recipes' fingerprints are unchanged).
#[test]
fn the_loss_without_the_users_history_learns_and_is_recorded() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let run = |name: &str, exclude: bool, targets: Targets| {
        let mut cfg = config(&data, &dir.path().join(name));
        cfg.recipe.loss.exclude_history = exclude;
        cfg.recipe.targets = targets;
        cfg.recipe.max_epochs = 6;
        train(&cfg).unwrap().model.manifest
    };
    let plain = run("plain", false, Targets::All);
    let first_loss =
        |m: &seqserve::model::manifest::Manifest| m.training.as_ref().unwrap().epochs[0].loss;
    for targets in [Targets::All, Targets::Prefixes] {
        let m = run(&format!("{targets:?}"), true, targets);
        let hr = m.metrics.as_ref().unwrap().test["hr@10"];
        assert!(hr > 0.6, "{targets:?}: test hr@10 {hr}");
        let recipe = m.training.as_ref().unwrap().recipe.clone().unwrap();
        assert_eq!(recipe["loss"]["exclude_history"], true);
        if targets == Targets::All {
            // The same start and draws as the plain run, with fewer items in each softmax.
            assert!(
                first_loss(&m) < first_loss(&plain),
                "{} vs {}",
                first_loss(&m),
                first_loss(&plain)
            );
        }
    }
    let recipe = plain.training.unwrap().recipe.unwrap();
    assert!(recipe["loss"].get("exclude_history").is_none());
}

/// `seqserve sweep` trains each grid point and keeps the best by validation F1@10.
#[test]
fn sweep_trains_every_configuration_and_keeps_the_validation_best() {
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let out = dir.path().join("sweep");
    let bin = env!("CARGO_BIN_EXE_seqserve");
    let run = std::process::Command::new(bin)
        .args(["sweep", "--grid", "lr=1e-5,3e-3", "--out"])
        .arg(&out)
        .args(["--", "--data"])
        .arg(&data)
        .args([
            "--split",
            "leave-last-1",
            "--d-model",
            "16",
            "--max-len",
            "20",
            "--epochs",
            "3",
            "--schedule",
            "constant",
            "--warmup-epochs",
            "0",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let rows = summary["configurations"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // A learning rate of 1e-5 barely moves in 3 epochs; 3e-3 learns the ring.
    assert_eq!(summary["best"], "lr-3e-3");
    let best = Model::load(&out.join("best"), Device::Cpu).unwrap();
    let t = best.manifest.training.unwrap();
    assert_eq!(t.learning_rate, 3e-3);
    assert!(t.command.contains("--lr 3e-3"), "{}", t.command);
    assert!(t.command.starts_with("seqserve train "), "{}", t.command);
    assert!(out.join("lr-1e-5").join("model.json").exists());
    assert!(
        best.manifest.metrics.unwrap().test.is_empty(),
        "a sweep chooses on validation and never reads the test split"
    );

    // A typo in the grid fails before anything trains.
    let bad = std::process::Command::new(bin)
        .args(["sweep", "--grid", "learning-rate=1,2", "--out"])
        .arg(dir.path().join("bad"))
        .args(["--", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("learning-rate"));
    assert!(!dir.path().join("bad").exists());
}

/// `train --report`: the curves of a run drawn from its training record, the best epoch marked.
#[test]
fn training_curves_are_drawn_from_the_record() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let mut cfg = config(&data, &dir.path().join("m"));
    cfg.recipe.max_epochs = 3;
    let out = train(&cfg).unwrap();
    let t = out.model.manifest.training.unwrap();
    let files = seqserve::eval::curves::write_page(&dir.path().join("report"), "m", &t).unwrap();
    let svg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("best epoch"),
        "{}",
        &svg[..200]
    );
    // One line per validation metric and the loss, at least.
    assert!(svg.matches("<polyline").count() >= 4, "lines drawn");
    let html = std::fs::read_to_string(&files[1]).unwrap();
    assert!(html.contains("curves.svg") && html.contains(&format!("best epoch {}", t.best_epoch)));
}

/// Without `--head`, a model without context features scores y·Eᵀ (no head, as the references),
/// and one with context features gets the linear head through which the features enter.
#[test]
fn the_head_defaults_to_none_without_context_and_linear_with_it() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let users = dir.path().join("users.dat");
    let rows: Vec<String> = (0..400)
        .map(|u| format!("{u}::{}::25::4::00000", if u % 2 == 0 { "F" } else { "M" }))
        .collect();
    std::fs::write(&users, rows.join("\n") + "\n").unwrap();
    for (users, want) in [(None, Head::None), (Some(users), Head::Linear)] {
        let mut cfg = config(&data, &dir.path().join(format!("{want:?}")));
        cfg.head = None;
        cfg.users = users;
        cfg.recipe.max_epochs = 1;
        let t = train(&cfg).unwrap();
        assert_eq!(t.model.manifest.architecture.head, want);
        assert_eq!(
            Model::load(&dir.path().join(format!("{want:?}")), Device::Cpu)
                .unwrap()
                .manifest
                .architecture
                .head,
            want
        );
    }
}

/// `--init normal-identity-head`: the linear head starts as z = y (identity on the sequence part),
/// where `normal` draws it N(0, 0.02). With a learning rate too small to move anything, the saved
/// head is still what the initialisation made.
#[test]
fn the_identity_head_initialisation_starts_the_head_as_z_equals_y() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let head_of = |init: Init, out: &str| {
        let mut cfg = config(&data, &dir.path().join(out));
        cfg.head = Some(Head::Linear);
        cfg.recipe.init = init;
        cfg.recipe.learning_rate = 1e-12;
        cfg.recipe.max_epochs = 1;
        cfg.skip_test = true;
        let model = train(&cfg).unwrap().model;
        let w = model.vs.variables()["head.weight"].copy();
        let d = model.manifest.architecture.d_model as i64;
        assert_eq!(w.size(), vec![d, d]);
        f64::try_from(
            (w - tch::Tensor::eye(d, (tch::Kind::Float, Device::Cpu)))
                .abs()
                .max(),
        )
        .unwrap()
    };
    let identity = head_of(Init::NormalIdentityHead, "identity");
    assert!(identity < 1e-6, "max |W - I| = {identity}");
    let normal = head_of(Init::Normal, "normal");
    assert!(normal > 0.5, "a N(0, 0.02) head is far from I: {normal}");
}

/// `logits_precision: bf16` (the catalogue product in bfloat16, f32 accumulation) learns the
/// pattern as f32 does, is recorded in the recipe, and is in effect: with one thread (bit-for-bit
/// reproducible) the same run in f32 ends with other weights. An f32 recipe does not write the
/// field, so older manifests' fingerprints are unchanged.
#[test]
fn bf16_logits_learn_the_pattern_and_are_recorded() {
    let _rng = lock();
    let dir = tempfile::tempdir().unwrap();
    let data = ring(dir.path());
    let run = |out: &str, precision: LogitsPrecision| {
        let mut cfg = config(&data, &dir.path().join(out));
        cfg.recipe.loss.logits_precision = precision;
        train(&cfg).unwrap()
    };
    let bf16 = run("bf16", LogitsPrecision::Bf16);
    let f32 = run("f32", LogitsPrecision::F32);
    let m = bf16.model.manifest.metrics.clone().unwrap();
    assert!(m.test["hr@10"] > 0.6, "test hr@10 {}", m.test["hr@10"]);
    let recipe = |r: &seqserve::train::TrainOutcome| {
        r.model.manifest.training.clone().unwrap().recipe.unwrap()
    };
    assert_eq!(
        recipe(&bf16)["loss"]["logits_precision"].as_str(),
        Some("bf16")
    );
    assert!(recipe(&f32)["loss"].get("logits_precision").is_none());
    let item = |r: &seqserve::train::TrainOutcome| r.model.vs.variables()["item_emb"].copy();
    let diff = (item(&bf16) - item(&f32)).abs().max().double_value(&[]);
    assert!(diff > 0.0, "bf16 and f32 runs ended with the same weights");
    // A paused run's checkpoint says which precision it started with (what `train --resume`
    // keeps when the command does not name one); an f32 run's says f32, no checkpoint nothing.
    for (name, precision) in [
        ("paused-bf16", LogitsPrecision::Bf16),
        ("paused-f32", LogitsPrecision::F32),
    ] {
        let mut cfg = config(&data, &dir.path().join(name));
        cfg.recipe.loss.logits_precision = precision;
        cfg.stop_after = Some(1);
        train(&cfg).unwrap();
        assert_eq!(
            checkpoint::logits_precision_of(&dir.path().join(name)),
            Some(precision)
        );
    }
    assert_eq!(
        checkpoint::logits_precision_of(&dir.path().join("none")),
        None
    );
}
