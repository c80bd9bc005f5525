use anyhow::Result;
use clap::Args;
use seqserve::data::{LogFormat, Split};
use seqserve::model::{Activation, Head, Norm, Positions};
use seqserve::train::loss::{LogitsPrecision, LossConfig, LossKind, Sampling};
use seqserve::train::optim::Schedule;
use seqserve::train::{train, Batches, Init, Recipe, Targets, TrainConfig, TrainOutcome};
use std::path::PathBuf;

/// The defaults are the recipe of the shipped Beauty models (chosen on Beauty's validation split,
/// README "Training recipe"); other Amazon-style logs should start from them untouched.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Behaviour log: sequence lines (`user item item ...`) or event CSV (`user,item,category,behaviour,timestamp`).
    #[arg(long)]
    data: PathBuf,
    /// Log format (default: .csv = events, else sequences).
    #[arg(long, value_enum)]
    format: Option<LogFormat>,
    /// MovieLens users.dat whose gender, age and occupation become context features.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Skip (and count) malformed lines instead of failing on the first.
    #[arg(long)]
    skip_malformed: bool,
    /// Train on the first N users only (quick runs).
    #[arg(long)]
    limit_users: Option<usize>,
    /// leave-one-out | leave-last-N | temporal:UNIX_SECONDS (shared with `seqserve holdout`).
    #[arg(long, default_value = "leave-one-out")]
    split: Split,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing model directory at --out (without it, an existing directory is refused).
    #[arg(long)]
    force: bool,
    /// Model name (default: the output directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Recorded in the manifest: 1-64 of A-Z a-z 0-9 . _ - (a repository's version directory).
    #[arg(long, default_value = "1")]
    model_version: String,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 1)]
    heads: usize,
    /// Feed-forward width (default 4 × d_model).
    #[arg(long)]
    ffn_dim: Option<usize>,
    /// Dropout on the input embeddings, attention weights and both residual branches.
    #[arg(long, default_value_t = 0.5)]
    dropout: f64,
    #[arg(long, default_value_t = 50)]
    max_len: usize,
    /// LayerNorm + dropout over the summed input embeddings before the first block (`false` for
    /// the encoder of models trained before it existed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    embedding_norm: bool,
    /// pre: LayerNorm before attention/FFN and once at the end; post: after each residual sum;
    /// sasrec: SASRec's original code (queries and the attention residual from LN1(x), keys and
    /// values from x, the FFN residual from LN2 of the sum; a final LayerNorm).
    #[arg(long, value_enum, default_value = "post")]
    norm: Norm,
    /// LayerNorm epsilon (SASRec's code uses 1e-8).
    #[arg(long, default_value_t = seqserve::model::manifest::default_layer_norm_eps())]
    layer_norm_eps: f64,
    /// Factor on the item embeddings where they enter the encoder (scores keep the plain
    /// matrix): `sqrt-d` (SASRec's code: sqrt(d_model)) or a positive number.
    #[arg(long, default_value = "1", value_parser = parse_item_scale)]
    item_input_scale: ItemScale,
    /// The feed-forward non-linearity.
    #[arg(long, value_enum, default_value = "gelu")]
    activation: Activation,
    /// from-oldest: position = items before it; from-newest: items after it (SASRec's right
    /// alignment: the most recent item is always position 0).
    #[arg(long, value_enum, default_value = "from-newest")]
    positions: Positions,
    /// linear: z = FC(concat(y, context)), scores z · Eᵀ + b; none: scores y · Eᵀ (no head, no item
    /// bias; models without context only). Default: none without context features, linear with.
    #[arg(long, value_enum)]
    head: Option<Head>,
    /// torch: tch's default initialisation; normal: N(0, 0.02) weights and zero biases (the
    /// references').
    #[arg(long, value_enum, default_value = "normal")]
    init: Init,
    /// bucketed: batches of similar lengths (less padding); random: uniformly random batches.
    #[arg(long, value_enum, default_value = "bucketed")]
    batches: Batches,
    /// Sequences (users) per batch; every position of each is a training target.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Peak learning rate of AdamW.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// AdamW decoupled weight decay (matrices and embeddings; not biases or LayerNorm).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, value_enum, default_value = "constant")]
    schedule: Schedule,
    /// Linear learning-rate warm-up, in epochs.
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    /// Where the cosine schedule ends (fraction of --lr, reached at --epochs).
    #[arg(long, default_value_t = 0.05)]
    min_lr_ratio: f64,
    /// full: softmax over the whole catalogue; sampled: over the target and --negatives sampled items
    /// (log-Q corrected), for catalogues too large for the full softmax.
    #[arg(long, value_enum, default_value = "full")]
    loss: LossKind,
    #[arg(long, default_value_t = 256)]
    negatives: usize,
    /// all: one sample per sequence with a target at every position; prefixes: one sample per
    /// prefix, trained on its last target (more updates per epoch, more encoder work).
    #[arg(long, value_enum, default_value = "prefixes")]
    targets: Targets,
    #[arg(long, value_enum, default_value = "uniform")]
    negative_sampling: Sampling,
    /// Full loss: leave each row's own user's other items out of its softmax (as the SASRec+
    /// reference's negatives do; evaluation masks them anyway). No label smoothing.
    #[arg(long)]
    exclude_history: bool,
    /// Label smoothing of the full loss.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Precision of the full loss's product with the catalogue (the step's largest): f32, or bf16
    /// operands and scores (accumulated in f32), the softmax in f32. Default: bf16 on a CPU that
    /// multiplies bf16 natively (AVX512-BF16 or AMX; elsewhere libtorch emulates it, slower than f32), f32
    /// otherwise and on CUDA. The manifest records which one ran.
    #[arg(long, value_enum)]
    logits_precision: Option<LogitsPrecision>,
    #[arg(long, default_value_t = 80)]
    epochs: usize,
    /// Stop after this many epochs without a new best of the smoothed validation F1@K.
    #[arg(long, default_value_t = 15)]
    patience: usize,
    /// Weight of the past in the exponential smoothing of the validation curve for early stopping.
    #[arg(long, default_value_t = 0.5)]
    smoothing: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// K of the selection metric F1@K.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Do not read the test split (the manifest gets no test metrics): for recipe searches, which
    /// must choose on validation alone.
    #[arg(long)]
    skip_test: bool,
    /// Continue the interrupted run whose checkpoint is beside --out (`<out>.checkpoint`, written
    /// each epoch); the other options must be those of that run.
    #[arg(long)]
    resume: bool,
    /// End an interrupted run now: its checkpoint's best epoch becomes the model (evaluated and
    /// written as usual, the manifest saying how it stopped), without training further.
    #[arg(long)]
    finish: bool,
    /// Train at most N epochs in this sitting, then leave the checkpoint for --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// After each epoch, print where its training time went: the step's one-thread parts (zeroing
    /// gradients, the optimizer update), the data-parallel part, and worker 0's split of it
    /// (batch, encoder forward, loss, backward, item gradient, waiting for the other workers).
    #[arg(long)]
    phase_times: bool,
    /// auto | cpu | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// Training threads (0 = the CPU quota): with several, each takes a part of every batch with one
    /// libtorch thread (data-parallel; faster, but not bit-reproducible); with one, libtorch runs
    /// single-threaded and a run reproduces exactly.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Write the training curves (loss and validation metrics per epoch, best epoch marked) as
    /// index.html and curves.svg into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl TrainArgs {
    #[cfg(test)]
    pub fn lr_value(&self) -> f64 {
        self.lr
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    // argv[0] is wherever the binary happened to be; the manifest records the command as a user
    // would type it.
    let command = std::iter::once("seqserve".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let report = a.report.clone();
    let out = train_with(a, command)?;
    if !out.finished {
        println!(
            "checkpoint written to {}; continue with --resume",
            out.dir.display()
        );
        return Ok(());
    }
    let m = &out.model.manifest;
    let t = m.training.as_ref().expect("training record");
    let metrics = m.metrics.as_ref().expect("metrics");
    println!(
        "wrote {} (best epoch {} of {}, {:.1} s/epoch, {:.0} s total)",
        out.dir.display(),
        t.best_epoch,
        t.epochs_run,
        t.seconds_per_epoch,
        t.wall_time_seconds
    );
    if let Some(d) = &report {
        seqserve::eval::curves::write_page(d, &m.name, t).map_err(anyhow::Error::msg)?;
        eprintln!("wrote {}", d.join("index.html").display());
    }
    for key in ["hr@10", "ndcg@10", "f1@10", "hr@20", "ndcg@20"] {
        match metrics.test.get(key) {
            Some(t) => println!(
                "  test {key:<8} {t:.4}   (validation {:.4})",
                metrics.validation[key]
            ),
            None => println!("  validation {key:<8} {:.4}", metrics.validation[key]),
        }
    }
    Ok(())
}

/// The loss precision asked for; by default the one a resumed run started with, else bf16 where
/// the CPU multiplies it natively.
fn logits_precision(a: &TrainArgs, device: tch::Device) -> LogitsPrecision {
    if let Some(p) = a.logits_precision {
        return p;
    }
    if a.resume || a.finish {
        if let Some(p) = seqserve::train::checkpoint::logits_precision_of(&a.out) {
            return p;
        }
    }
    // Only the full loss has the catalogue product the option is about.
    if a.loss == LossKind::Full && device == tch::Device::Cpu && seqserve::device::cpu_has_bf16() {
        LogitsPrecision::Bf16
    } else {
        LogitsPrecision::F32
    }
}

/// Trains from parsed arguments; `command` is recorded in the manifest as how to reproduce it.
pub fn train_with(a: TrainArgs, command: String) -> Result<TrainOutcome> {
    let device = seqserve::device::parse_device(&a.device)?;
    let threads = super::configure_threads(a.threads)?;
    let precision = logits_precision(&a, device);
    if precision == LogitsPrecision::Bf16
        && device == tch::Device::Cpu
        && !seqserve::device::cpu_has_bf16()
    {
        // Asked for explicitly (or by the checkpoint being resumed): honoured, as the manifest
        // records it, but libtorch emulates bf16 products on such a CPU (1-2 GFLOPS measured on
        // an AVX2-only EPYC against 35-132 in f32), so an epoch can take 20x as long.
        tracing::warn!(
            "--logits-precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): libtorch \
             emulates the bf16 products, many times slower than f32 here; the same recipe in f32 is \
             --logits-precision f32"
        );
    }
    let name = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let cfg = TrainConfig {
        data: a.data,
        format: a.format,
        users: a.users,
        skip_malformed: a.skip_malformed,
        limit_users: a.limit_users,
        split: a.split,
        out: a.out,
        force: a.force,
        name,
        version: a.model_version,
        d_model: a.d_model,
        n_layers: a.layers,
        n_heads: a.heads,
        ffn_dim: a.ffn_dim.unwrap_or(4 * a.d_model),
        dropout: a.dropout,
        max_len: a.max_len,
        embedding_norm: a.embedding_norm,
        norm: a.norm,
        layer_norm_eps: a.layer_norm_eps,
        item_input_scale: match a.item_input_scale {
            ItemScale::SqrtD => (a.d_model as f64).sqrt(),
            ItemScale::Factor(f) => f,
        },
        activation: a.activation,
        positions: a.positions,
        head: a.head,
        recipe: Recipe {
            batch_size: a.batch_size,
            learning_rate: a.lr,
            weight_decay: a.weight_decay,
            schedule: a.schedule,
            warmup_epochs: a.warmup_epochs,
            min_lr_ratio: a.min_lr_ratio,
            loss: LossConfig {
                kind: a.loss,
                negatives: a.negatives,
                sampling: a.negative_sampling,
                label_smoothing: a.label_smoothing,
                logits_precision: precision,
                exclude_history: a.exclude_history,
            },
            targets: a.targets,
            max_epochs: a.epochs,
            patience: a.patience,
            smoothing: a.smoothing,
            seed: a.seed,
            init: a.init,
            batches: a.batches,
        },
        k: a.k,
        device,
        threads,
        skip_test: a.skip_test,
        resume: a.resume,
        stop_after: a.stop_after,
        phase_times: a.phase_times,
        finish: a.finish,
        command,
    };
    train(&cfg)
}

#[derive(Debug, Clone, Copy)]
enum ItemScale {
    SqrtD,
    Factor(f64),
}

fn parse_item_scale(s: &str) -> Result<ItemScale, String> {
    if s == "sqrt-d" {
        return Ok(ItemScale::SqrtD);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(ItemScale::Factor(f)),
        _ => Err(format!("expected `sqrt-d` or a positive number, got {s:?}")),
    }
}
