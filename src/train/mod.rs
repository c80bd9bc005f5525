//! `seqserve train`: SASRec trained at every position of the shifted sequence with full or sampled
//! softmax cross-entropy, AdamW under a warm-up + cosine schedule, a fixed seed; the best epoch is
//! chosen by validation F1@K (the seed's model-selection rule), early stopping on a smoothed curve,
//! and a checkpoint each epoch so a run can be resumed (`--resume`) with the same result.
pub mod checkpoint;
pub mod examples;
mod fused_ce;
mod fused_sampled;
pub mod loss;
pub mod optim;
mod phases;
mod schema;
mod step;

use crate::data::{read_inputs, LogFormat, ReadOptions, Split};
use crate::eval::{self, EvalOptions};
use crate::model::manifest::{EpochRecord, MetricsRecord, TrainingRecord};
use crate::model::{
    Activation, Architecture, Head, Manifest, Model, Norm, Positions, Query, FORMAT_VERSION,
};
use anyhow::{bail, Context, Result};
use examples::{Part, TrainSequence};
use loss::{Loss, LossConfig};
use optim::{AdamW, Schedule};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

/// How the weights are fitted (recorded in the manifest; part of the resume fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub batch_size: usize,
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay on matrices and embeddings.
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Linear warm-up, in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// The cosine schedule ends at this fraction of the peak learning rate, at `max_epochs`.
    pub min_lr_ratio: f64,
    pub loss: LossConfig,
    pub targets: Targets,
    pub max_epochs: usize,
    /// Stop after this many epochs without a new best of the smoothed validation curve.
    pub patience: usize,
    /// Weight of the past in the exponential smoothing of the validation curve used for early
    /// stopping (0 = the raw curve). The best epoch is still the raw best.
    pub smoothing: f64,
    pub seed: u64,
    /// How the weights start (absent in recipes recorded before it existed: `torch`).
    #[serde(default)]
    pub init: Init,
    /// How samples are grouped into batches (absent before it existed: `bucketed`).
    #[serde(default)]
    pub batches: Batches,
}

/// Initial weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// tch's defaults: Linear weights and biases Kaiming-uniform (std ≈ 0.18 at fan-in 64, biases
    /// up to ±1/sqrt(fan-in)); embeddings N(0, 0.02); LayerNorm gains 1 and shifts 0.
    #[default]
    Torch,
    /// The references' (SASRec, BSARec, RecBole): every Linear weight and embedding N(0, 0.02),
    /// biases 0, LayerNorm gains 1 and shifts 0.
    Normal,
    /// `normal`, and the linear head (models with context) starts as the identity on the sequence
    /// part and zero on the context part: the model starts as the references' y·Eᵀ and learns
    /// what the context adds, instead of first learning to pass y through N(0, 0.02) weights.
    NormalIdentityHead,
}

/// Batch composition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Batches {
    /// Shuffle, then sort chunks of 64 batches by length (less padding), then shuffle the batches.
    #[default]
    Bucketed,
    /// Uniformly random batches, as the references draw them (more padding).
    Random,
}

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
    pub embedding_norm: bool,
    pub norm: Norm,
    pub layer_norm_eps: f64,
    /// Factor on the item embeddings at the encoder's input (see `Architecture`).
    pub item_input_scale: f64,
    pub activation: Activation,
    pub positions: Positions,
    /// None: `none` for a model without context features (scores y·Eᵀ, as the references), `linear`
    /// with them (the head is how the features get in).
    pub head: Option<Head>,
    pub recipe: Recipe,
    pub k: usize,
    pub device: Device,
    pub threads: usize,
    /// Leave the test split unread (metrics.test stays empty): for recipe searches, which must
    /// choose on validation alone; a shipped model's test metrics are computed once, at the end.
    pub skip_test: bool,
    /// Continue from the checkpoint beside `out` (see `checkpoint`).
    pub resume: bool,
    /// Write the checkpoint and return after this many epochs in this sitting (None: run to the end).
    pub stop_after: Option<usize>,
    /// Print where each epoch's training time went ([`phases`]), for work on the trainer's speed.
    pub phase_times: bool,
    /// Resume and end the run now: the checkpoint's best epoch becomes the model, without training
    /// further (a time budget ran out; recorded in the manifest as how the run stopped).
    pub finish: bool,
    /// Recorded in the manifest: how to reproduce this model.
    pub command: String,
}

pub struct TrainOutcome {
    pub model: Model,
    pub dir: PathBuf,
    /// False when the run paused (`stop_after`) with a checkpoint instead of writing the model.
    pub finished: bool,
}

pub fn train(cfg: &TrainConfig) -> Result<TrainOutcome> {
    let started = Instant::now();
    // Refuse before hours of training, not after: `--out` naming a shipped model would replace it.
    let r = &cfg.recipe;
    r.validate()?;
    // A version the repository and the API could not address (`../x`, spaces) is refused here.
    crate::model::repository::check_name("version", &cfg.version).map_err(anyhow::Error::msg)?;
    if cfg.k == 0 {
        bail!("k must be at least 1 (the best epoch is chosen by validation F1@K)");
    }
    if cfg.out.exists() && !cfg.force {
        bail!(
            "{} already exists; pass --force to replace it (the new model is written beside it and \
             swapped in only when complete)",
            cfg.out.display()
        );
    }
    tch::manual_seed(r.seed as i64);
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
    if r.loss.kind == loss::LossKind::Sampled && r.loss.negatives > catalogue.len() {
        // Drawn with replacement, so more are possible, but the full loss scores every item for less.
        bail!(
            "--negatives {} is more than the catalogue's {} items: use --loss full",
            r.loss.negatives,
            catalogue.len()
        );
    }
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
            embedding_norm: cfg.embedding_norm,
            norm: cfg.norm,
            layer_norm_eps: cfg.layer_norm_eps,
            activation: cfg.activation,
            positions: cfg.positions,
            head: cfg.head.unwrap_or(if context.is_empty() {
                Head::None
            } else {
                Head::Linear
            }),
            padding: Default::default(),
            item_input_scale: cfg.item_input_scale,
        },
        behaviours: behaviours.clone(),
        context,
        training: None,
        metrics: None,
        imported: None,
    };
    let mut model = Model::new(manifest, catalogue, cfg.device).map_err(anyhow::Error::msg)?;
    if r.init != Init::Torch {
        init_normal(&model, r.init == Init::NormalIdentityHead);
    }

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
    let fingerprint = fingerprint(cfg, &model.manifest)?;
    let ckpt_dir = checkpoint::dir_for(&cfg.out);
    let counts = target_counts(&train_queries, model.catalogue.len());
    let loss_fn = Loss::new(r.loss.clone(), &counts, cfg.device);
    let mut opt = AdamW::new(&model.vs, r.weight_decay);
    let samples = samples(&train_queries, r.targets);
    let steps_per_epoch = samples.len().div_ceil(r.batch_size);
    let total_steps = steps_per_epoch * r.max_epochs;
    let warmup_steps = (r.warmup_epochs * steps_per_epoch as f64).round() as usize;

    let mut st = checkpoint::State {
        fingerprint: fingerprint.clone(),
        epochs_done: 0,
        optimizer_step: 0,
        best_epoch: 0,
        best_score: f64::NEG_INFINITY,
        smoothed_best: f64::NEG_INFINITY,
        smoothed: None,
        since_best: 0,
        epochs: Vec::new(),
        epoch_seconds: Vec::new(),
    };
    let mut best: Option<Weights> = None;
    if cfg.resume || cfg.finish {
        let ck = checkpoint::load(&ckpt_dir, &fingerprint)?;
        restore(&model, &ck.weights)?;
        opt.load_state(&ck.optimizer, ck.state.optimizer_step)?;
        best = Some(ck.best.into_iter().collect());
        st = ck.state;
        eprintln!(
            "resuming from {} after epoch {}",
            ckpt_dir.display(),
            st.epochs_done
        );
    }
    let epochs_before = st.epoch_seconds.len();
    // Data-parallel threads: each takes a share of every batch with one libtorch thread. At d 64
    // the operations are too small for libtorch's intra-op threads to use a second core (1.3x on
    // two), where two threads on halves of the batch nearly double the rate.
    let workers = cfg.threads.max(1);
    let mut stopped_early = false;
    for (ran_now, epoch) in (st.epochs_done + 1..=r.max_epochs).enumerate() {
        if st.since_best >= r.patience {
            stopped_early = true;
            break;
        }
        if cfg.finish || cfg.stop_after.is_some_and(|n| ran_now >= n) {
            break;
        }
        let t0 = Instant::now();
        // Every epoch's randomness (batch order, dropout, negatives) derives from (seed, epoch)
        // alone, so a resumed run continues exactly as an uninterrupted one would.
        let epoch_seed = r.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        tch::manual_seed(epoch_seed as i64);
        crate::model::Encoder::seed_dropout(epoch_seed);
        // One worker: libtorch's own threads, as many as the run has (results depend on the
        // count, so it is set here rather than left to whoever called before).
        tch::set_num_threads(if workers > 1 {
            1
        } else {
            cfg.threads.max(1) as i32
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(epoch_seed);
        let batches = make_batches(&samples, r.batch_size, r.batches, &mut rng);
        let bar = crate::progress::Progress::new(batches.len() as u64, &format!("epoch {epoch}"));
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        let mut times = phases::Epoch::default();
        let inputs = step::Inputs {
            model: &model,
            loss: &loss_fn,
            data: &train_queries,
            samples: &samples,
        };
        for batch in &batches {
            let lr = optim::learning_rate(
                r.learning_rate,
                r.schedule,
                opt.step as usize,
                warmup_steps,
                total_steps,
                r.min_lr_ratio,
            );
            let negatives = loss_fn.draw_negatives();
            let mut clock = Instant::now();
            opt.zero_grad();
            times.zero_grad += phases::lap(&mut clock);
            // Seeds the threads' dropout streams of this step (one worker keeps the epoch's).
            let step_seed = epoch_seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(opt.step as u64);
            let (l, worker0) =
                step::batch_step(inputs, workers, batch, negatives.as_ref(), step_seed);
            times.parallel += phases::lap(&mut clock);
            times.worker0 += worker0;
            opt.update(lr);
            times.update += phases::lap(&mut clock);
            if !l.is_finite() {
                bail!("loss became {l} at epoch {epoch}: lower the learning rate");
            }
            loss_sum += l;
            loss_n += 1;
            bar.inc(1);
            bar.set_message(format!("loss {:.4}", loss_sum / loss_n as f64));
        }
        bar.finish();
        let train_secs = t0.elapsed().as_secs_f64();
        if cfg.phase_times {
            eprintln!("epoch {epoch:>3}  {times}");
        }
        // Validation ranks the whole catalogue in large batches: libtorch's own threads.
        tch::set_num_threads(cfg.threads.max(1) as i32);
        let vres = eval::evaluate_cases(&model, &valid, &eval_opts, |_| {});
        let vmap = eval::summary_map(&vres);
        let score = vmap[&selection];
        let secs = t0.elapsed().as_secs_f64();
        let loss = loss_sum / loss_n.max(1) as f64;
        let smoothed = match st.smoothed {
            Some(prev) => r.smoothing * prev + (1.0 - r.smoothing) * score,
            None => score,
        };
        eprintln!(
            "epoch {epoch:>3}  loss {loss:.4}  train {train_secs:.1}s  total {secs:.1}s  valid {selection} {:.5} (smoothed {smoothed:.5})  hr@{k} {:.5}  ndcg@{k} {:.5}",
            score,
            vmap[&format!("hr@{}", cfg.k)],
            vmap[&format!("ndcg@{}", cfg.k)],
            k = cfg.k
        );
        st.epoch_seconds.push(train_secs);
        st.epochs.push(EpochRecord {
            epoch,
            loss,
            seconds: secs,
            validation: vmap,
        });
        if score > st.best_score {
            st.best_score = score;
            st.best_epoch = epoch;
            best = Some(snapshot(&model));
        }
        st.smoothed = Some(smoothed);
        if smoothed > st.smoothed_best {
            st.smoothed_best = smoothed;
            st.since_best = 0;
        } else {
            st.since_best += 1;
        }
        st.epochs_done = epoch;
        st.optimizer_step = opt.step;
        checkpoint::save(
            &ckpt_dir,
            &st,
            &snapshot(&model),
            best.as_deref().unwrap_or_default(),
            &opt.state(),
        )?;
    }
    let stopped_by = if stopped_early || st.since_best >= r.patience {
        eprintln!(
            "early stop: no smoothed {selection} improvement for {} epochs",
            r.patience
        );
        format!(
            "early stopping (no smoothed {selection} improvement for {} epochs)",
            r.patience
        )
    } else if st.epochs_done >= r.max_epochs {
        "max epochs".to_string()
    } else if cfg.finish {
        eprintln!("finishing after epoch {} (--finish)", st.epochs_done);
        format!(
            "--finish after epoch {} of {} (training budget)",
            st.epochs_done, r.max_epochs
        )
    } else {
        eprintln!(
            "paused after epoch {}; continue with --resume (checkpoint {})",
            st.epochs_done,
            ckpt_dir.display()
        );
        return Ok(TrainOutcome {
            model,
            dir: ckpt_dir,
            finished: false,
        });
    };
    let best_epoch = st.best_epoch;
    let weights = best.context("no epoch ran (max_epochs = 0?)")?;
    restore_list(&model, &weights)?;

    let k_list = vec![5, 10, 20];
    let final_opts = EvalOptions {
        ks: k_list,
        ..eval_opts
    };
    let vres = eval::evaluate_cases(&model, &valid, &final_opts, |_| {});
    let test_metrics = if cfg.skip_test {
        BTreeMap::new()
    } else {
        round_map(eval::summary_map(&eval::evaluate_cases(
            &model,
            &test,
            &final_opts,
            |_| {},
        )))
    };
    // A run resumed over several sittings: the earlier sittings' epochs count too (their time
    // outside epochs is lost with them; this sitting's is in `started`).
    let wall = started.elapsed().as_secs_f64()
        + st.epoch_seconds[..epochs_before.min(st.epoch_seconds.len())]
            .iter()
            .sum::<f64>();
    let spe = st.epoch_seconds.iter().sum::<f64>() / st.epoch_seconds.len().max(1) as f64;
    model.manifest.training = Some(TrainingRecord {
        data: std::iter::once(cfg.data.display().to_string())
            .chain(cfg.users.iter().map(|p| p.display().to_string()))
            .collect(),
        log_sha256: Some(crate::data::fingerprint::sha256_file(&cfg.data)?),
        split: cfg.split,
        seed: r.seed,
        epochs_run: st.epochs.len(),
        best_epoch,
        max_epochs: r.max_epochs,
        patience: r.patience,
        batch_size: r.batch_size,
        learning_rate: r.learning_rate,
        recipe: Some(serde_json::to_value(r)?),
        stopped_by: Some(stopped_by),
        selection_metric: selection,
        threads: tch::get_num_threads() as usize,
        device: crate::device::device_name(cfg.device),
        train_users: seqs.len(),
        train_positions: positions,
        seconds_per_epoch: round(spe, 2),
        wall_time_seconds: round(wall, 1),
        epochs: st.epochs,
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
        test: test_metrics,
        test_cases: if cfg.skip_test { 0 } else { test.len() },
    });
    model.save_atomically(&cfg.out, cfg.force)?;
    checkpoint::remove(&ckpt_dir);
    Ok(TrainOutcome {
        model,
        dir: cfg.out.clone(),
        finished: true,
    })
}

impl Recipe {
    fn validate(&self) -> Result<()> {
        use loss::LossKind;
        if self.batch_size == 0 {
            bail!("batch size must be positive");
        }
        if self.max_epochs == 0 || self.patience == 0 {
            bail!("epochs and patience must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!("learning rate must be positive");
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            bail!("weight decay must be in [0, 1)");
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            bail!("warm-up epochs must be 0 or more");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("min-lr-ratio must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            bail!("smoothing must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.loss.label_smoothing) {
            bail!("label smoothing must be in [0, 1)");
        }
        if self.loss.exclude_history
            && (self.loss.kind != LossKind::Full || self.loss.label_smoothing > 0.0)
        {
            bail!("--exclude-history applies to the full loss without label smoothing");
        }
        if self.loss.kind == LossKind::Sampled {
            if self.loss.negatives == 0 {
                bail!("the sampled loss needs at least one negative");
            }
            if self.loss.label_smoothing > 0.0 {
                bail!("label smoothing applies to the full loss only");
            }
        }
        Ok(())
    }
}

/// What a resumed run must share with the run that wrote the checkpoint.
fn fingerprint(cfg: &TrainConfig, manifest: &Manifest) -> Result<String> {
    Ok(serde_json::to_string(&serde_json::json!({
        "data": cfg.data,
        "users": cfg.users,
        "format": cfg.format.map(|f| format!("{f:?}")),
        "limit_users": cfg.limit_users,
        "skip_malformed": cfg.skip_malformed,
        "split": cfg.split.to_string(),
        "architecture": manifest.architecture,
        "recipe": cfg.recipe,
        "k": cfg.k,
    }))?)
}

/// How often each item column is a training target (the popularity the sampled loss can draw by).
fn target_counts(data: &[(Query, Vec<i64>)], n_items: usize) -> Vec<i64> {
    let mut counts = vec![0i64; n_items];
    for (_, targets) in data {
        for &t in targets {
            if t > 0 {
                counts[(t - 1) as usize] += 1;
            }
        }
    }
    counts
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

/// Which targets of a training sequence one sample trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// One sample per sequence, a target at every position of the shifted sequence (SASRec).
    All,
    /// One sample per prefix, its last target only (the augmentation of CL4SRec/ICLRec/BSARec):
    /// several times the encoder work per epoch, and as many more updates, each prefix with its
    /// own dropout draw.
    Prefixes,
}

/// A training sample: sequence `seq`, inputs `..end`, targets `first..end` (aligned with inputs).
#[derive(Debug, Clone, Copy)]
struct Sample {
    seq: usize,
    first: usize,
    end: usize,
}

fn samples(data: &[(Query, Vec<i64>)], targets: Targets) -> Vec<Sample> {
    match targets {
        Targets::All => (0..data.len())
            .map(|seq| Sample {
                seq,
                first: 0,
                end: data[seq].1.len(),
            })
            .collect(),
        Targets::Prefixes => data
            .iter()
            .enumerate()
            .flat_map(|(seq, (_, t))| {
                (1..=t.len()).map(move |end| Sample {
                    seq,
                    first: end - 1,
                    end,
                })
            })
            .collect(),
    }
}

/// Shuffled batches: uniformly random, or of similar lengths (shuffle, sort chunks of 64 batches by
/// length for less padding, then shuffle the batch order).
fn make_batches(
    samples: &[Sample],
    batch_size: usize,
    kind: Batches,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.shuffle(rng);
    if kind == Batches::Random {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches = Vec::new();
    for chunk in order.chunks(batch_size * 64) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| samples[i].end);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

/// The references' initialisation (see [`Init::Normal`]), by variable name: LayerNorm parameters
/// (`ln1`, `ln2`, `emb_ln`, `final_ln`) keep their 1 / 0, other biases become 0, every other
/// weight N(0, 0.02).
fn init_normal(model: &Model, identity_head: bool) {
    // In name order: the store's map iterates in a random order, and the draws must not depend
    // on it.
    let vars: BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
    tch::no_grad(|| {
        for (name, mut v) in vars {
            let is_norm = name
                .split('.')
                .any(|seg| seg == "ln1" || seg == "ln2" || seg.ends_with("_ln"));
            if is_norm {
                continue;
            }
            if name.ends_with(".bias") || name == "item_bias" {
                let _ = v.zero_();
            } else if identity_head && name == "head.weight" {
                // (d, d + context width): z = y at the start.
                let d = v.size()[0];
                let _ = v.zero_();
                v.narrow(1, 0, d)
                    .copy_(&Tensor::eye(d, (v.kind(), v.device())));
            } else {
                let _ = v.normal_(0.0, 0.02);
            }
        }
    });
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

fn restore_list(model: &Model, weights: &[(String, Tensor)]) -> Result<()> {
    let vars = model.vs.variables();
    for (name, t) in weights {
        let mut v = vars
            .get(name)
            .with_context(|| format!("unknown variable {name}"))?
            .shallow_clone();
        tch::no_grad(|| v.f_copy_(t))?;
    }
    Ok(())
}

/// Restores every variable from `weights`, which must hold all of them (a checkpoint).
fn restore(model: &Model, weights: &BTreeMap<String, Tensor>) -> Result<()> {
    for name in model.vs.variables().keys() {
        if !weights.contains_key(name) {
            bail!("checkpoint lacks weights {name}");
        }
    }
    let list: Weights = weights
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    restore_list(model, &list)
}
