//! Short training runs: the loss falls, the best epoch is kept, and the written model loads and ranks.
mod common;

use seqserve::data::Split;
use seqserve::model::{HistoryEvent, Model, RankSpec};
use seqserve::train::{train, TrainConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

fn config(data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        format: None,
        users: None,
        skip_malformed: false,
        limit_users: None,
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
        batch_size: 64,
        learning_rate: 3e-3,
        max_epochs: 4,
        patience: 10,
        seed: 1,
        k: 10,
        device: Device::Cpu,
        threads: 1,
        command: "test".into(),
    }
}

#[test]
fn learns_a_synthetic_pattern_and_writes_a_loadable_model() {
    // Each user walks the 40-item ring from a different start: the next item is fully predictable.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ring.txt");
    let mut f = std::fs::File::create(&data).unwrap();
    for u in 0..400 {
        let len = 6 + u % 7;
        let items: Vec<String> = (0..len)
            .map(|j| ((u * 7 + j) % 40 + 1).to_string())
            .collect();
        writeln!(f, "{u} {}", items.join(" ")).unwrap();
    }
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

fn shared(rel: &str) -> Option<PathBuf> {
    common::shared_data(rel)
}

#[test]
fn real_beauty_slice_trains_and_loads() {
    // Needs ../shared/data (Amazon Beauty): a short run on real data.
    let Some(data) = shared("amazon_s3rec/Beauty.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&data, &dir.path().join("m"));
    cfg.limit_users = Some(2000);
    cfg.max_epochs = 3;
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
    // Needs ../shared/data (Taobao sample): behaviour-typed, timestamped events.
    let Some(data) = shared("taobao_userbehavior_sample/UserBehavior.csv") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&data, &dir.path().join("m"));
    cfg.max_epochs = 2;
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
}
