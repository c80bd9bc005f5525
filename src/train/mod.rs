//! `seqserve train`: SASRec with full cross-entropy over the catalogue, Adam, dropout, a fixed seed;
//! the best epoch is chosen by validation F1@K (the seed's model-selection rule) with early stopping.
pub mod examples;
mod schema;

use crate::data::{read_inputs, LogFormat, ReadOptions, Split};
use crate::eval::{self, EvalOptions};
use crate::model::manifest::{EpochRecord, MetricsRecord, TrainingRecord};
use crate::model::{to_tensors, Architecture, Manifest, Model, Query, FORMAT_VERSION};
use anyhow::{bail, Context, Result};
use examples::{Part, TrainSequence};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Tensor};

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub data: PathBuf,
    pub format: Option<LogFormat>,
    /// MovieLens users.dat joined as context features.
    pub users: Option<PathBuf>,
    pub skip_malformed: bool,
    /// Use only the first N users of the log (quick runs, tests).
    pub limit_users: Option<usize>,
    pub split: Split,
    pub out: PathBuf,
    /// Replace an existing model directory at `out` (refused otherwise).
    pub force: bool,
    pub name: String,
    pub version: String,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub ffn_dim: usize,
    pub dropout: f64,
    pub max_len: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_epochs: usize,
    pub patience: usize,
    pub seed: u64,
    pub k: usize,
    pub device: Device,
    pub threads: usize,
    /// Recorded in the manifest: how to reproduce this model.
    pub command: String,
}

pub struct TrainOutcome {
    pub model: Model,
    pub dir: PathBuf,
}

pub fn train(cfg: &TrainConfig) -> Result<TrainOutcome> {
    let started = Instant::now();
    // Refuse before hours of training, not after: `--out` naming a shipped model would replace it.
    if cfg.out.exists() && !cfg.force {
        bail!(
            "{} already exists; pass --force to replace it (the new model is written beside it and \
             swapped in only when complete)",
            cfg.out.display()
        );
    }
    tch::manual_seed(cfg.seed as i64);
    let opts = ReadOptions {
        skip_malformed: cfg.skip_malformed,
    };
    let (data, users) = read_inputs(
        &cfg.data,
        cfg.format,
        cfg.users.as_deref(),
        cfg.limit_users,
        &opts,
    )?;
    if !data.skipped.is_empty() {
        tracing::warn!(
            skipped = data.skipped.len(),
            first = %data.skipped[0],
            "skipped malformed lines"
        );
    }
    let catalogue = schema::catalogue(&data)?;
    let behaviours = schema::behaviours(&data);
    let context = users.as_ref().map(schema::context).unwrap_or_default();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: cfg.name.clone(),
        version: cfg.version.clone(),
        architecture: Architecture {
            n_items: catalogue.len(),
            d_model: cfg.d_model,
            n_layers: cfg.n_layers,
            n_heads: cfg.n_heads,
            ffn_dim: cfg.ffn_dim,
            dropout: cfg.dropout,
            max_len: cfg.max_len,
        },
        behaviours: behaviours.clone(),
        context,
        training: None,
        metrics: None,
    };
    let mut model = Model::new(manifest, catalogue, cfg.device).map_err(anyhow::Error::msg)?;

    let splits = examples::splits(&data, &cfg.split)?;
    let seqs = examples::train_sequences(
        &splits,
        &model.catalogue,
        &behaviours,
        users.as_ref(),
        cfg.max_len,
    );
    if seqs.is_empty() {
        bail!("no user has a training target under split {}", cfg.split);
    }
    let valid = examples::cases(&splits, &model, users.as_ref(), Part::Validation)?;
    let test = examples::cases(&splits, &model, users.as_ref(), Part::Test)?;
    if valid.is_empty() {
        bail!("no user has a validation target under split {}", cfg.split);
    }
    let train_queries = encode_sequences(&model, &seqs)?;
    let positions: usize = seqs.iter().map(|s| s.targets.len()).sum();
    tracing::info!(
        users = data.users.len(),
        items = model.catalogue.len(),
        train_sequences = seqs.len(),
        train_positions = positions,
        valid_cases = valid.len(),
        test_cases = test.len(),
        "training data ready"
    );

    let eval_opts = EvalOptions {
        ks: vec![cfg.k],
        mask_seen: true,
        batch_size: 256,
    };
    let selection = format!("f1@{}", cfg.k);
    let mut opt = nn::Adam::default().build(&model.vs, cfg.learning_rate)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut best: Option<(usize, f64, Weights)> = None;
    let mut epochs = Vec::new();
    let mut epoch_seconds = Vec::new();
    let mut since_best = 0;
    for epoch in 1..=cfg.max_epochs {
        let t0 = Instant::now();
        let batches = make_batches(&train_queries, cfg.batch_size, &mut rng);
        let bar = progress_bar(batches.len() as u64, &format!("epoch {epoch}"));
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        for batch in &batches {
            let loss = train_step(&model, &train_queries, batch);
            opt.backward_step(&loss);
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                bail!("loss became {l} at epoch {epoch}: lower the learning rate");
            }
            loss_sum += l;
            loss_n += 1;
            bar.inc(1);
            bar.set_message(format!("loss {:.4}", loss_sum / loss_n as f64));
        }
        bar.finish_and_clear();
        let train_secs = t0.elapsed().as_secs_f64();
        let vres = eval::evaluate_cases(&model, &valid, &eval_opts, |_| {});
        let vmap = eval::summary_map(&vres);
        let score = vmap[&selection];
        let secs = t0.elapsed().as_secs_f64();
        epoch_seconds.push(train_secs);
        let loss = loss_sum / loss_n.max(1) as f64;
        eprintln!(
            "epoch {epoch:>3}  loss {loss:.4}  train {train_secs:.1}s  total {secs:.1}s  valid {selection} {:.5}  hr@{k} {:.5}  ndcg@{k} {:.5}",
            score,
            vmap[&format!("hr@{}", cfg.k)],
            vmap[&format!("ndcg@{}", cfg.k)],
            k = cfg.k
        );
        epochs.push(EpochRecord {
            epoch,
            loss,
            seconds: secs,
            validation: vmap,
        });
        if best.as_ref().is_none_or(|b| score > b.1) {
            best = Some((epoch, score, snapshot(&model)));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                eprintln!(
                    "early stop: no {selection} improvement for {} epochs",
                    cfg.patience
                );
                break;
            }
        }
    }
    let (best_epoch, _, weights) = best.context("no epoch ran (max_epochs = 0?)")?;
    restore(&model, &weights)?;

    let k_list = vec![5, 10, 20];
    let final_opts = EvalOptions {
        ks: k_list,
        ..eval_opts
    };
    let vres = eval::evaluate_cases(&model, &valid, &final_opts, |_| {});
    let tres = eval::evaluate_cases(&model, &test, &final_opts, |_| {});
    let wall = started.elapsed().as_secs_f64();
    let spe = epoch_seconds.iter().sum::<f64>() / epoch_seconds.len().max(1) as f64;
    model.manifest.training = Some(TrainingRecord {
        data: std::iter::once(cfg.data.display().to_string())
            .chain(cfg.users.iter().map(|p| p.display().to_string()))
            .collect(),
        split: cfg.split,
        seed: cfg.seed,
        epochs_run: epochs.len(),
        best_epoch,
        max_epochs: cfg.max_epochs,
        patience: cfg.patience,
        batch_size: cfg.batch_size,
        learning_rate: cfg.learning_rate,
        selection_metric: selection,
        threads: tch::get_num_threads() as usize,
        device: crate::device::device_name(cfg.device),
        train_users: seqs.len(),
        train_positions: positions,
        seconds_per_epoch: round(spe, 2),
        wall_time_seconds: round(wall, 1),
        epochs,
        command: cfg.command.clone(),
    });
    model.manifest.metrics = Some(MetricsRecord {
        protocol: format!(
            "split {}: validation targets predicted from the training part, test targets from \
             training+validation; full-catalogue ranking, seen items masked, ties by item index; \
             F1 = mean of per-case F1",
            cfg.split
        ),
        validation: round_map(eval::summary_map(&vres)),
        test: round_map(eval::summary_map(&tres)),
        test_cases: test.len(),
    });
    model.save_atomically(&cfg.out, cfg.force)?;
    Ok(TrainOutcome {
        model,
        dir: cfg.out.clone(),
    })
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn round_map(m: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.into_iter().map(|(k, v)| (k, round(v, 6))).collect()
}

/// Training inputs as queries (context encoded once, up front).
fn encode_sequences(model: &Model, seqs: &[TrainSequence]) -> Result<Vec<(Query, Vec<i64>)>> {
    seqs.iter()
        .map(|s| {
            let context = crate::model::encode_context(&model.manifest, &s.context)?;
            Ok((
                Query {
                    items: s.inputs.clone(),
                    behaviours: s.behaviours.clone(),
                    context,
                },
                s.targets.clone(),
            ))
        })
        .collect()
}

/// Shuffled batches of similar lengths: shuffle, sort chunks of 64 batches by length (less padding),
/// then shuffle the batch order.
fn make_batches(
    data: &[(Query, Vec<i64>)],
    batch_size: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::new();
    for chunk in order.chunks(batch_size * 64) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| data[i].0.items.len());
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

/// Loss of one batch: cross-entropy over the full catalogue, only at non-padding target positions.
fn train_step(model: &Model, data: &[(Query, Vec<i64>)], batch: &[usize]) -> Tensor {
    let queries: Vec<&Query> = batch.iter().map(|&i| &data[i].0).collect();
    let tb = to_tensors(&queries, &model.manifest, model.device);
    let (b, w) = tb.items.size2().expect("2-d");
    // Targets aligned with the left-padded inputs.
    let mut targets = vec![0i64; (b * w) as usize];
    for (r, &i) in batch.iter().enumerate() {
        let t = &data[i].1;
        let start = r * w as usize + (w as usize - t.len());
        targets[start..start + t.len()].copy_from_slice(t);
    }
    let targets = Tensor::from_slice(&targets).to(model.device);
    let h = model.encoder.hidden(&tb, true);
    let d = h.size()[2];
    let keep = targets.gt(0).nonzero().squeeze_dim(1);
    let h_sel = h.view([-1, d]).index_select(0, &keep);
    let c = model.encoder.context_vector(&tb);
    let c_sel = c.map(|c| c.index_select(0, &keep.divide_scalar_mode(w, "floor")));
    let z = model.encoder.project(&h_sel, c_sel.as_ref());
    let logits = model.encoder.logits(&z);
    let y = targets.index_select(0, &keep) - 1;
    logits.cross_entropy_for_logits(&y)
}

/// A copy of every variable, for restoring the best epoch.
type Weights = Vec<(String, Tensor)>;

fn snapshot(model: &Model) -> Weights {
    tch::no_grad(|| {
        model
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    })
}

fn restore(model: &Model, weights: &[(String, Tensor)]) -> Result<()> {
    let vars = model.vs.variables();
    for (name, t) in weights {
        let mut v = vars[name].shallow_clone();
        tch::no_grad(|| v.f_copy_(t))?;
    }
    Ok(())
}

fn progress_bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
