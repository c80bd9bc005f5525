//! Shared helpers for integration tests.
#![allow(dead_code)]
pub mod server;
use seqserve::model::{
    Architecture, Catalogue, CategoricalEncoding, ContextFeature, Manifest, Model, Norm,
    FORMAT_VERSION,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Device, Tensor};

/// Held while a test seeds tch's generator and draws from it.
pub static RNG: Mutex<()> = Mutex::new(());

/// A small random model with behaviours and every kind of context feature. All weights (biases and
/// LayerNorm gains included) are perturbed so that a parity test exercises every parameter.
pub fn random_model(n_items: usize, layers: usize, seed: i64) -> Model {
    random_model_with(n_items, layers, seed, false, Norm::Pre)
}

/// `random_model` with a chosen input-embedding LayerNorm and block normalisation.
pub fn random_model_with(
    n_items: usize,
    layers: usize,
    seed: i64,
    embedding_norm: bool,
    norm: Norm,
) -> Model {
    random_model_arch(n_items, layers, seed, |a| {
        a.embedding_norm = embedding_norm;
        a.norm = norm;
    })
}

/// `random_model` with its architecture changed by `edit`; a model whose head is `none` gets no
/// context features (it cannot have any).
pub fn random_model_arch(
    n_items: usize,
    layers: usize,
    seed: i64,
    edit: impl FnOnce(&mut Architecture),
) -> Model {
    // tch's generator is one for the process and the test harness runs tests on several threads:
    // the lock keeps another test's draws from landing between this seed and these weights.
    let _draws = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: "test".into(),
        version: "0".into(),
        architecture: Architecture {
            n_items,
            d_model: 16,
            n_layers: layers,
            n_heads: 2,
            ffn_dim: 24,
            dropout: 0.1,
            max_len: 8,
            embedding_norm: false,
            norm: Norm::Pre,
            layer_norm_eps: 1e-5,
            activation: Default::default(),
            positions: Default::default(),
            head: Default::default(),
            padding: Default::default(),
            item_input_scale: 1.0,
        },
        behaviours: vec!["pv".into(), "cart".into(), "fav".into(), "buy".into()],
        context: vec![
            ContextFeature::Categorical {
                name: "gender".into(),
                values: vec!["F".into(), "M".into()],
                encoding: CategoricalEncoding::Embedding,
                dim: 3,
            },
            ContextFeature::Categorical {
                name: "device".into(),
                values: vec!["ios".into(), "android".into(), "web".into()],
                encoding: CategoricalEncoding::OneHot,
                dim: 0,
            },
            ContextFeature::Numeric {
                name: "hour".into(),
                mean: 12.0,
                std: 6.0,
            },
        ],
        training: None,
        metrics: None,
        imported: None,
    };
    let mut manifest = manifest;
    edit(&mut manifest.architecture);
    if manifest.architecture.head == seqserve::model::Head::None {
        manifest.context.clear();
    }
    let catalogue = Catalogue::new((1..=n_items).map(|i| format!("i{i}")).collect()).unwrap();
    let model = Model::new(manifest, catalogue, Device::Cpu).unwrap();
    // By name: `variables()` is a HashMap, whose order (and so which variable gets which draw)
    // changes from run to run.
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let noise = Tensor::randn_like(&v) * 0.3;
            v.copy_(&(&v + noise));
        }
    });
    model
}

pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} is absent (real data lives in ../shared/data; see its README)",
            p.display()
        );
        None
    }
}

/// The Python of the project's venv (set by scripts/test.sh via scripts/setup.sh).
pub fn python() -> PathBuf {
    let p = std::env::var("SEQSERVE_PYTHON").expect(
        "SEQSERVE_PYTHON is not set: run the tests with scripts/test.sh, which sets up the venv",
    );
    PathBuf::from(p)
}

/// A tiny deterministic generator: reproducible test inputs without extra dependencies.
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

/// The `(item, score)` list of a `/recommend` answer or of `seqserve recommend --json`.
pub fn ranked_items(v: &serde_json::Value) -> Vec<(String, f64)> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["item"].as_str().unwrap().to_string(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Panics with the command's stderr unless it exited successfully.
pub fn assert_ran(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
